"""The VM tier: the cluster of vagrant/Vagrantfile, three VMs, checked across VMs.

The fixture ``vm_cluster`` (module scope) does what vagrant/mkvm.py ``up`` does: the
local box (built once, cached in /var/cache/minikubenet-vm), libvirtd in namespaces of
its own, ``vagrant up`` of node1..node3 (KVM when a probe boot works, TCG otherwise),
then two pods per VM made through the installed CNI plugin. It destroys everything
afterwards, also when a check fails; at the end of the run the tier prints its times
and the throughput figures.

Set MINIKUBENET_SKIP_VM=1 to leave the tier out (it takes minutes under TCG).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST_PODS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest_pods.py")
GUEST_PODS_PATH = "/usr/local/sbin/mkvm-pods"
GUEST_PYTHON = "/opt/minikubenet/bin/python"
POD_PORT = 8080

# figures for the summary at the end of the run: (label, text)
REPORT: list[tuple[str, str]] = []


def load_mkvm():
    spec = importlib.util.spec_from_file_location("mkvm", os.path.join(REPO, "vagrant", "mkvm.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mkvm", mod)
    spec.loader.exec_module(mod)
    return sys.modules["mkvm"]


mkvm = load_mkvm()


def report(label: str, text: str) -> None:
    REPORT.append((label, text))
    print(f"{label}: {text}", file=sys.stderr)


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("VM tier")
        for label, text in REPORT:
            terminalreporter.write_line(f"{label}: {text}")


def skip_unless_vm_tier():
    if os.environ.get("MINIKUBENET_SKIP_VM") == "1":
        pytest.skip("MINIKUBENET_SKIP_VM=1")
    try:
        mkvm.preflight()
    except mkvm.VmError as e:
        pytest.skip(f"the VM tier cannot run here: {e}")


def clean_crashed_runs() -> None:
    """Clusters of an earlier test run that was killed (its pytest, or its libvirtd, is
    gone) are removed; clusters someone started by hand (mkvm.py up) are left alone."""
    for name in mkvm.list_recorded():
        if mkvm.abandoned(name):
            mkvm.Cluster(name).down()


@pytest.fixture(scope="session")
def sigterm_tears_down():
    """SIGTERM (a CI time-out) becomes KeyboardInterrupt, so fixtures' teardown still runs."""

    def on_term(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    old = signal.signal(signal.SIGTERM, on_term)
    yield
    signal.signal(signal.SIGTERM, old)


class VmCluster:
    """The running cluster plus its pods: {"n1p1": {"ip", "mtu", "node"}, ...}."""

    def __init__(self, cluster):
        self.c = cluster
        self.pods: dict[str, dict] = {}

    def ssh(self, node, command, **kw):
        return self.c.ssh(node, command, **kw)

    def in_pod(self, pod: str, command: str, **kw):
        return self.c.ssh(self.pods[pod]["node"], f"ip netns exec {pod} {command}", **kw)

    def whoami(self, src_pod: str, dst_ip: str, port: int = POD_PORT) -> dict:
        out = self.in_pod(src_pod, f"timeout 20 busybox wget -q -O - http://{dst_ip}:{port}/").stdout
        return json.loads(out)

    def pods_on(self, node: str) -> list[str]:
        return sorted(p for p, info in self.pods.items() if info["node"] == node)

    def agent_ready(self, node: str) -> bool:
        return self.ssh(node, f"python3 -I -S {GUEST_PODS_PATH} ready", check=False).returncode == 0

    def add_pods(self, node: str, names: list[str]) -> dict:
        out = self.ssh(node, f"{GUEST_PYTHON} {GUEST_PODS_PATH} add {' '.join(names)}").stdout
        pods = json.loads(out.strip().splitlines()[-1])
        for info in pods.values():
            info["node"] = node
        self.pods.update(pods)
        return pods


@pytest.fixture(scope="session")  # one cluster for every VM module: a bring-up costs minutes under TCG
def vm_cluster(sigterm_tears_down):
    skip_unless_vm_tier()
    clean_crashed_runs()
    cluster = mkvm.Cluster(nodes=3, owned=True)
    t0 = time.monotonic()
    try:
        try:
            cluster.up()
        except mkvm.VmError as e:
            pytest.fail(f"the VM cluster did not come up: {e}", pytrace=False)
        up_s = time.monotonic() - t0
        vc = VmCluster(cluster)
        t1 = time.monotonic()
        with open(GUEST_PODS) as f:
            src = f.read()

        def make_pods(node):
            cluster.put(node, GUEST_PODS_PATH, src, mode="0755")
            k = node[len("node") :]
            return vc.add_pods(node, [f"n{k}p1", f"n{k}p2"])

        with ThreadPoolExecutor(max_workers=3) as pool:
            list(pool.map(make_pods, cluster.nodes))
        pods_s = time.monotonic() - t1
        t = cluster.timings
        report(
            "VM tier bring-up",
            f"{up_s:.0f}s ({'KVM' if cluster.driver == 'kvm' else 'TCG'}): "
            f"box {t.get('box', 0):.0f}s (cached unless its inputs changed), "
            f"libvirtd + box add {t.get('host', 0):.0f}s, vagrant up of 3 VMs {t.get('vagrant_up', 0):.0f}s; "
            f"6 pods through the CNI plugin {pods_s:.0f}s",
        )
        vc.checks_started = time.monotonic()
        yield vc
        report("VM tier checks", f"{time.monotonic() - vc.checks_started:.0f}s")
    finally:
        t2 = time.monotonic()
        removed = cluster.down()
        left = mkvm.leftovers(cluster.name)
        report(
            "VM tier teardown",
            f"{time.monotonic() - t2:.0f}s ({', '.join(removed)})" + (f"; LEFT BEHIND: {left}" if left else ""),
        )
