"""Fixtures for the runtime tier: real container runtimes on a lab's node.

One two-node lab for the whole tier (``runtime_lab``), each node with one lab pod
serving HTTP (the targets for same-node and cross-node checks); the runtimes run on
node n1 (scratch_ns.py keeps them off the host's /etc, /opt, /var/lib and /run).
Each test module installs the plugins with the real ``minikubenet install`` into its
own scratch dirs and stops what it started, by PID.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import running_lab
from tests.runtimes import oci_image

REFERENCE_DIR = "/usr/lib/cni"


def missing_grpc_tools() -> str | None:
    if importlib.util.find_spec("grpc_tools") is None:
        return "grpcio-tools is not installed in the venv (pip install grpcio-tools)"
    return None


def missing_base() -> str | None:
    if not os.path.exists(oci_image.BUSYBOX):
        return "busybox-static is not installed (apt: busybox-static)"
    if not os.path.exists(os.path.join(REFERENCE_DIR, "loopback")):
        return "containernetworking-plugins is not installed"
    return None


# What the runtimes would write on a host; the tier must leave all of it as it found it.
HOST_PATHS = (
    "/etc/cni/net.d",
    "/opt/cni",
    "/var/lib/cni",
    "/var/lib/containerd",
    "/var/lib/containers",
    "/run/containerd",
    "/run/containers",
    "/run/libpod",
    "/run/runc",
    "/dev/shm/libpod_lock",
)


def host_snapshot() -> dict:
    out = {}
    for path in HOST_PATHS:
        out[path] = sorted(os.listdir(path)) if os.path.isdir(path) else os.path.exists(path)
    out["/run/netns (runtime-made)"] = (
        sorted(n for n in os.listdir("/run/netns") if n.startswith(("cni-", "netns-")))
        if os.path.isdir("/run/netns")
        else []
    )
    return out


@pytest.fixture(scope="session", autouse=True)
def host_untouched():
    """Name: host_untouched. Scope: session. Fails the tier if the host's /etc, /opt,
    /var/lib, /run or /dev/shm paths of a runtime changed while it ran."""
    before = host_snapshot()
    yield
    after = host_snapshot()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"the runtime tests changed the host: {changed}"


@pytest.fixture(scope="session")
def runtime_lab(lab_root):
    """Name: runtime_lab. Scope: session. Two nodes, one HTTP pod each."""
    with running_lab(lab_root, nodes=2, pods_per_node=1) as lab:
        yield lab


@pytest.fixture(scope="session")
def images(runtime_lab):
    """Busybox images built locally: a CRI sandbox ("pause") image, a shell image (both
    OCI layouts for ``ctr image import``) and a plain rootfs tarball (``podman import``)."""
    why = missing_base()
    if why:
        pytest.skip(why)
    d = os.path.join(runtime_lab.dir, "images")
    rootfs = oci_image.make_rootfs(os.path.join(d, "rootfs"))
    return {
        "pause": oci_image.make_oci_tar(
            rootfs, os.path.join(d, "pause.tar"), "localhost/mknpause:latest", ["/bin/sleep", "2147483647"]
        ),
        "busybox": oci_image.make_oci_tar(
            rootfs, os.path.join(d, "busybox.tar"), "localhost/mknbusybox:latest", ["/bin/sh"]
        ),
        "rootfs_tar": oci_image.make_rootfs_tar(rootfs, os.path.join(d, "rootfs.tar")),
    }


# -- helpers shared by the runtime tests --------------------------------------------------------------


def agent_socket(lab, node: str = "n1") -> str:
    return lab.conflist(node)["plugins"][0]["agentSocket"]


def install_plugins(
    lab,
    scratch: str,
    *,
    bin_dir: str | None = None,
    conf_dir: str | None = None,
    network: str = "minikubenet",
    cni_version: str = "1.0.0",
    chain: tuple[str, ...] = (),
    sysctls: tuple[str, ...] = (),
    log: bool = True,
    link_reference: bool = True,
) -> dict:
    """``minikubenet install`` into scratch dirs, exactly as an operator runs it; then the
    reference plugins linked next to ours (the CRI wants one bin dir holding ``loopback``)."""
    bin_dir = bin_dir or os.path.join(scratch, "cni-bin")
    conf_dir = conf_dir or os.path.join(scratch, "net.d")
    log_file = os.path.join(scratch, "invocations.jsonl") if log else ""
    argv = [
        sys.executable,
        "-m",
        "minikubenet",
        "install",
        "--bin-dir",
        bin_dir,
        "--conf-dir",
        conf_dir,
        "--state-dir",
        os.path.join(scratch, "install-state"),
        "--agent-socket",
        agent_socket(lab),
        "--network",
        network,
        "--cni-version",
        cni_version,
    ]
    for c in chain:
        argv += ["--chain", c]
    for s in sysctls:
        argv += ["--sysctl", s]
    if log_file:
        argv += ["--log-invocations", log_file]
    p = subprocess.run(argv, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    if link_reference:
        for name in os.listdir(REFERENCE_DIR):
            link = os.path.join(bin_dir, name)
            if not os.path.lexists(link):
                os.symlink(os.path.join(REFERENCE_DIR, name), link)
    return {"bin_dir": bin_dir, "conf_dir": conf_dir, "log": log_file}


def invocations(log_file: str) -> list[dict]:
    try:
        with open(log_file) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def records(lab) -> dict[str, dict]:
    """containerID -> pod IP record (with "ip") from etcd."""
    out = {}
    for key, value in lab.etcd_dump("/minikubenet/ipam/"):
        doc = json.loads(value)
        out[doc["containerID"]] = {"ip": key.rsplit("/", 1)[1], **doc}
    return out


def has_overlay(lab) -> bool:
    """Cross-node pod traffic needs the VXLAN device on every node."""
    return all(
        subprocess.run(["ip", "-n", n.netns, "link", "show", "flannel.1"], capture_output=True).returncode == 0
        for n in lab.topo.nodes
    )


def skip_without_overlay(lab) -> None:
    if not has_overlay(lab):
        pytest.skip(
            "the lab's nodes have no flannel.1 (the agent does not build the VXLAN overlay yet): "
            "cross-node pod traffic cannot work"
        )


def node_subnet(lab, node: str = "n1"):
    import ipaddress

    return ipaddress.IPv4Network(lab.leases()[node]["subnet"])
