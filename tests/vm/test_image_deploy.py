"""The DaemonSet deployment on a VM (issue 15 item 5): node3's agent and proxy, run until
now as systemd units, are replaced by the containers of deploy/minikubenet.yaml, run by
podman in the VM from the image deploy/build-image.sh built on the host, with exactly the
DaemonSet's container spec (``minikubenet deploy podman``: image, command, args, env,
mounts, host network, privileged; the init container installs the CNI plugin and its
conflist first). Then the cluster's checks on node3: the agent keeps node3's subnet, its
pods are reached from node1 over VXLAN, a new pod gets an address through the plugin the
init container installed, and the proxy from the image serves. The systemd units come
back afterwards.

Runs last in the session's cluster (the VM tier shares one: tests/vm/conftest.py). About
5 minutes under TCG (copy + load 95 s, the agent ready 144 s after the start);
MINIKUBENET_SKIP_VM_IMAGE=1 leaves it out.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time

import pytest

from minikubenet import deploy_check
from tests.vm.conftest import report

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE = "node3"
# storage of its own: the box's podman keeps its default store (another graph driver)
PODMAN = "podman --root /var/lib/minikubenet-containers --storage-driver vfs"
VM_CLI = "/opt/minikubenet/bin/minikubenet"
PKI = "/etc/minikubenet/pki"


# What podman writes on the host whatever --root/--runroot say: removed again if the
# build made it (the runtimes tier checks the host is as it found it).
PODMAN_HOST_PATHS = ("/dev/shm/libpod_lock", "/run/libpod", "/run/containers")


def build_image(tmp: str) -> str:
    archive = os.path.join(tmp, "minikubenet.tar")
    opts = f"--root {tmp}/storage --runroot {tmp}/run --storage-driver vfs"
    existed = {p for p in PODMAN_HOST_PATHS if os.path.exists(p)}
    try:
        p = subprocess.run(
            [os.path.join(REPO, "deploy", "build-image.sh"), "--oci-archive", archive],
            capture_output=True,
            text=True,
            env={**os.environ, "PODMAN_OPTS": opts},
            timeout=900,
        )
    finally:
        for path in set(PODMAN_HOST_PATHS) - existed:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.unlink(path)
    assert p.returncode == 0, p.stderr[-3000:]
    return archive


def manifests(vc) -> str:
    """deploy/minikubenet.yaml for this cluster: node1's etcd, node3's underlay interface,
    node3's own etcd certificates in the Secret; JSON (the VM's venv has no PyYAML)."""
    with open(os.path.join(REPO, "deploy", "minikubenet.yaml")) as f:
        docs = deploy_check.load(f.read())
    env = dict(
        line.split("=", 1)
        for line in vc.ssh(NODE, "cat /etc/default/minikubenet-agent").stdout.splitlines()
        if "=" in line
    )
    ip = vc.c.node_ip(NODE)
    iface = json.loads(vc.ssh(NODE, f"ip -j -4 addr show to {ip}/32").stdout)[0]["ifname"]
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    cm["data"].update(etcd_endpoints=env["MINIKUBENET_ETCD_ENDPOINTS"], underlay_iface=iface)
    files = {k: vc.ssh(NODE, f"cat {PKI}/{k}").stdout.encode() for k in deploy_check.SECRET_KEYS}
    docs = [deploy_check.secret_manifest(files) if d["kind"] == "Secret" else d for d in docs]
    assert deploy_check.check(json.dumps(docs)) == []
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})


def test_node3_runs_the_daemonset_containers_from_the_image(vm_cluster):
    vc = vm_cluster
    if os.environ.get("MINIKUBENET_SKIP_VM_IMAGE") == "1":
        pytest.skip("MINIKUBENET_SKIP_VM_IMAGE=1 (this test adds about 5 minutes under TCG)")
    if vc.ssh(NODE, "command -v podman", check=False).returncode != 0:
        pytest.skip("the box has no podman (vagrant/build-box.sh installs it; the box is rebuilt when it changes)")
    subnet_env = vc.ssh(NODE, "cat /run/minikubenet/subnet.env").stdout
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mkn-image-") as tmp:
        archive = build_image(tmp)
        build_s = time.monotonic() - t0
        t1 = time.monotonic()
        with open(archive, "rb") as f:
            subprocess.run(
                vc.c.ssh_argv(NODE, "cat > /tmp/minikubenet-image.tar"),
                stdin=f,
                check=True,
                capture_output=True,
                timeout=600,
            )
        size_mb = os.path.getsize(archive) / 1e6
    vc.ssh(NODE, f"{PODMAN} load -q -i /tmp/minikubenet-image.tar && rm /tmp/minikubenet-image.tar", timeout=600)
    load_s = time.monotonic() - t1
    vc.c.put(NODE, "/tmp/minikubenet.json", manifests(vc))
    deploy = f"{VM_CLI} deploy podman /tmp/minikubenet.json --node-name {NODE} --podman {shlex.quote(PODMAN)}"
    try:
        vc.ssh(NODE, "systemctl stop minikubenet-agent minikubenet-proxy")
        t2 = time.monotonic()
        out = vc.ssh(NODE, deploy, timeout=600).stdout
        assert "ran minikubenet-install-cni" in out and "started minikubenet-agent" in out, out
        deadline = time.monotonic() + 300
        while not vc.agent_ready(NODE):
            assert time.monotonic() < deadline, vc.ssh(NODE, f"{PODMAN} logs minikubenet-agent 2>&1 | tail -20").stdout
            time.sleep(2)
        ready_s = time.monotonic() - t2
        ps = vc.ssh(NODE, f"{PODMAN} ps --format '{{{{.Names}}}} {{{{.Image}}}}'").stdout
        assert f"minikubenet-agent {deploy_check.IMAGE}" in ps and f"minikubenet-proxy {deploy_check.IMAGE}" in ps, ps
        assert vc.ssh(NODE, "systemctl is-active minikubenet-agent", check=False).stdout.strip() != "active"
        # the same subnet (the lease is node3's, the agent from the image reclaims it)
        assert vc.ssh(NODE, "cat /run/minikubenet/subnet.env").stdout == subnet_env
        # node3's pods, from node1, over VXLAN; and a new pod through the plugin the init container installed
        assert vc.whoami("n1p1", vc.pods["n3p1"]["ip"])["pod"] == "n3p1"
        new = vc.add_pods(NODE, ["n3p9"])["n3p9"]
        subnet = next(line.split("=", 1)[1] for line in subnet_env.splitlines() if line.startswith("FLANNEL_SUBNET="))
        assert ipaddress.IPv4Address(new["ip"]) in ipaddress.IPv4Interface(subnet).network
        assert vc.whoami("n1p1", new["ip"]) == {"pod": "n3p9", "ip": new["ip"], "client": vc.pods["n1p1"]["ip"]}
        # the proxy from the image: healthy, its rules in node3's kernel
        deadline = time.monotonic() + 120
        while vc.ssh(NODE, "busybox wget -q -O - http://127.0.0.1:10256/healthz", check=False).returncode != 0:
            assert time.monotonic() < deadline, vc.ssh(NODE, f"{PODMAN} logs minikubenet-proxy 2>&1 | tail -20").stdout
            time.sleep(2)
        assert vc.ssh(NODE, "iptables -t nat -S KUBE-SERVICES", check=False).returncode == 0
        report(
            "DaemonSet containers from the image on node3 (podman, TCG)",
            f"image build on the host {build_s:.0f}s, copy {size_mb:.0f} MB + podman load {load_s:.0f}s, "
            f"agent ready {ready_s:.0f}s after `minikubenet deploy podman`; same subnet, pods reached, "
            "a new pod through the installed plugin, proxy healthy",
        )
    finally:
        vc.ssh(NODE, f"{deploy} --down; systemctl start minikubenet-agent minikubenet-proxy", check=False)
    deadline = time.monotonic() + 300
    while not vc.agent_ready(NODE):
        assert time.monotonic() < deadline, "node3's systemd agent did not come back"
        time.sleep(2)
