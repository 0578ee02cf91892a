"""The DaemonSet's containers from the locally built image (deploy/build-image.sh), run
with podman from the DaemonSet's own container spec (``minikubenet deploy podman``)
on a lab node that has no agent yet: the init container installs the CNI plugin and
its conflist into the node's (scratch) host paths, the agent from the image leases a
subnet and serves the CNI plugin, a pod made through the installed plugin reaches a pod
on the lab's other node over VXLAN, and the proxy from the image answers its healthz.

The image is built into scratch podman storage (vfs) the first time (about 50 s; the
Debian base is cached in /var/cache/minikubenet-vm/image); hostPaths are taken below a
scratch directory (``--host-root``), and "host network" is the lab node's namespace.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time

import pytest
import yaml

from minikubenet import deploy_check
from minikubenet.cli import main as cli
from minikubenet.cni.runtime import CniRuntime
from minikubenet.lab import daemons, probes
from minikubenet.lab.topology import POD_PORT
from tests.conftest import running_lab

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFESTS = os.path.join(REPO, "deploy", "minikubenet.yaml")
# root here lacks CAP_SYS_RESOURCE: podman's default rlimits make runc fail (tests/runtimes/podman.py)
RUN_OPTS = ["--ulimit nofile=1024:1024 --ulimit nproc=4096:4096"]


def missing_tool() -> str | None:
    for tool in ("podman", "debootstrap", "runc", "conmon"):
        if not shutil.which(tool):
            return tool
    return None


# What podman writes on a host whatever --root/--runroot say (its SHM lock, its tmpdir):
# removed again if this test made them, so the runtimes tier finds the host as it was.
PODMAN_HOST_PATHS = ("/dev/shm/libpod_lock", "/run/libpod", "/run/containers")


@pytest.fixture(scope="module")
def deployed(lab_root, tmp_path_factory):
    if missing_tool():
        pytest.skip(f"`{missing_tool()}` is not installed")
    existed = {p for p in PODMAN_HOST_PATHS if os.path.exists(p)}
    try:
        yield from _deployed(lab_root, tmp_path_factory)
    finally:
        for path in set(PODMAN_HOST_PATHS) - existed:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.unlink(path)


def _deployed(lab_root, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("deploy")
    podman = f"podman --root {scratch}/storage --runroot {scratch}/run --storage-driver vfs"
    t0 = time.monotonic()
    built = subprocess.run(
        [os.path.join(REPO, "deploy", "build-image.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "PODMAN_OPTS": podman.split(" ", 1)[1]},
        timeout=900,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    build_s = time.monotonic() - t0
    with running_lab(lab_root, nodes=1, pods_per_node=1, proxy=False) as lab:
        node = lab.add_node(start_agent=False)  # n2: no agent, no pods
        # a node's default route (the agent picks its underlay from it, as flannel does)
        subprocess.run(["ip", "-n", node.netns, "route", "replace", "default", "dev", "eth0"], check=True)
        docs = deploy_check.load(open(MANIFESTS).read(), MANIFESTS)
        cm = next(d for d in docs if d["kind"] == "ConfigMap")
        cm["data"]["etcd_endpoints"] = lab.topo.etcd_endpoints
        files = {}
        for user in ("agent", "proxy"):
            tls = lab.etcd_tls(user)
            files["ca.crt"] = open(tls.ca, "rb").read()
            files[f"{user}.crt"], files[f"{user}.key"] = open(tls.cert, "rb").read(), open(tls.key, "rb").read()
        docs = [deploy_check.secret_manifest(files) if d["kind"] == "Secret" else d for d in docs]
        manifests = scratch / "minikubenet.yaml"
        manifests.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        assert deploy_check.check(manifests.read_text()) == []
        host = scratch / "host"
        (host / "lib/modules").mkdir(parents=True)  # a hostPath without a type must exist, as on a node
        argv = [
            "deploy",
            "podman",
            str(manifests),
            "--node-name",
            node.name,
            "--host-root",
            str(host),
            "--secret-root",
            str(scratch / "secrets"),
            "--network",
            f"ns:/run/netns/{node.netns}",
            "--prefix",
            lab.topo.name,
            "--podman",
            podman,
            *[f"--run-opt={o}" for o in RUN_OPTS],
        ]
        try:
            t1 = time.monotonic()
            assert cli(argv) == 0
            sock = host / "run/minikubenet/agent.sock"
            deadline = time.monotonic() + 60
            while not daemons.agent_ready(str(sock)):
                if time.monotonic() > deadline:
                    logs = subprocess.run(
                        [*shlex.split(podman), "logs", f"{lab.topo.name}-agent"], capture_output=True, text=True
                    )
                    pytest.fail(f"the agent from the image is not ready after 60 s:\n{logs.stdout}{logs.stderr}")
                time.sleep(0.2)
            yield {
                "lab": lab,
                "node": node,
                "host": host,
                "podman": podman,
                "build_s": build_s,
                "ready_s": time.monotonic() - t1,
            }
        finally:
            cli([*argv, "--down"])


def test_the_init_container_installs_the_plugin_and_the_conflist_on_the_host(deployed):
    host = deployed["host"]
    plugin = (host / "opt/cni/bin/minikubenet").read_text()
    assert plugin.startswith("#!/usr/bin/python3")  # the host's interpreter, not the image's
    conflist = json.loads((host / "etc/cni/net.d/10-minikubenet.conflist").read_text())
    assert conflist["plugins"][0]["type"] == "minikubenet"
    assert conflist["plugins"][0]["agentSocket"] == "/run/minikubenet/agent.sock"


def test_the_agent_from_the_image_leases_a_subnet_and_its_pod_reaches_the_other_node(deployed):
    lab, node, host = deployed["lab"], deployed["node"], deployed["host"]
    assert node.name in lab.leases()
    assert "FLANNEL_MTU=1450" in (host / "run/minikubenet/subnet.env").read_text()
    # a pod through the installed plugin, with the conflist the init container wrote; only
    # the socket path is the scratch host's (the container sees it at /run/minikubenet)
    conf = json.loads((host / "etc/cni/net.d/10-minikubenet.conflist").read_text())
    conf["plugins"][0]["agentSocket"] = str(host / "run/minikubenet/agent.sock")
    rt = CniRuntime(conf, [str(host / "opt/cni/bin")], node_netns=node.netns)
    pod_ns = f"{lab.topo.name}-img1"
    lab._netns(pod_ns)
    result = rt.add("image-pod-1", f"/run/netns/{pod_ns}", "eth0")
    ip = result["ips"][0]["address"].split("/")[0]
    assert ip.startswith(lab.leases()[node.name]["subnet"].rsplit(".", 2)[0])
    other = lab.topo.node("n1").pods[0]
    assert probes.whoami(pod_ns, lab.pod_ips[other.name], POD_PORT)["client"] == ip
    rt.delete("image-pod-1", f"/run/netns/{pod_ns}", "eth0")
    print(
        f"\nDaemonSet containers from the image: build {deployed['build_s']:.0f}s, "
        f"agent ready {deployed['ready_s']:.1f}s after `deploy podman`"
    )


def test_the_proxy_from_the_image_answers_its_healthz(deployed):
    node = deployed["node"]
    deadline = time.monotonic() + 30
    while True:
        try:
            health = json.loads(probes.http_get(node.netns, str(node.ip), 10256, "/healthz"))
            break
        except (probes.ProbeFailed, ValueError):
            assert time.monotonic() < deadline, subprocess.run(
                [*shlex.split(deployed["podman"]), "logs", f"{deployed['lab'].topo.name}-proxy"],
                capture_output=True,
                text=True,
            ).stderr[-2000:]
            time.sleep(0.5)
    assert health["lastUpdated"]
