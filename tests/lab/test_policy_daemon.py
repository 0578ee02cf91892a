"""minikubenet-policy on a two-node lab, both modes: a NetworkPolicy written to etcd is
enforced by the node of the selected pod (a blocked connection, an allowed one, same
node across the bridge and across nodes), the node itself still reaches the pod,
removing the policy opens it again, a flushed ruleset is repaired, and ``--dry-run`` /
``--explain`` name the policy and rule.

Policies and Namespaces are written with etcdctl as root, as ``minikubenet apply -f``
stores them (store/policy_watch.py): /minikubenet/networkpolicies/<ns>/<name>.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from minikubenet.lab import probes
from minikubenet.lab import services as S
from minikubenet.lab.processes import tail
from minikubenet.lab.topology import POD_PORT
from minikubenet.waiting import wait_until
from tests.conftest import make_lab

pytestmark = pytest.mark.lab

ONLY_SLOT2 = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "only-from-p2", "namespace": "default"},
    "spec": {
        "podSelector": {"matchLabels": {"node": "n1", "slot": "p1"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"slot": "p2"}}}], "ports": [{"port": "http"}]}],
    },
}
KEY = "/minikubenet/networkpolicies/default/only-from-p2"


@pytest.fixture(scope="module")
def lab(lab_root):
    lab = make_lab(lab_root, nodes=2, pods_per_node=2)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def put(lab, key: str, doc: dict | None) -> int:
    if doc is None:
        lab.etcdctl("del", key)
    else:
        lab.etcdctl("put", key, json.dumps(doc))
    return json.loads(lab.etcdctl("get", key, "-w", "json"))["header"]["revision"]


def reaches(lab, src: str, dst: str) -> bool:
    pods = {p.name: p for p in lab.topo.pods()}
    ip = lab.pods()[dst]["ip"]
    return probes.connect_error(pods[src].netns, ip, POD_PORT, timeout=0.7) is None


def policy_cli(lab, node, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            node.netns,
            sys.executable,
            "-m",
            "minikubenet.policy.daemon",
            "--etcd-endpoints",
            lab.topo.etcd_endpoints,
            *lab.etcd_tls("policy").argv(),
            "--node-name",
            node.name,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def forward_rules(node) -> list[str]:
    out = subprocess.run(
        ["ip", "netns", "exec", node.netns, "iptables", "-S", "FORWARD"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line.startswith("-A ")]


def test_a_rule_inserted_above_the_policy_jump_is_moved_below_it_at_once(lab):
    """iptables mode (the lab's first): a rule someone inserts at the top of FORWARD is
    judged before every policy (a proxy starting inserts its jumps there, and its
    KUBE-FORWARD accepts established and masquerade-marked traffic). The controller hears
    the insert and moves its jump back to the top within --min-sync-period (0.1 s here),
    not at its next check (every 5 s here)."""
    node1 = lab.topo.nodes[0]
    S.wait_policy_applied(lab, put(lab, KEY, ONLY_SLOT2))
    above = ["-m", "comment", "--comment", "test: a rule above the policy", "-j", "ACCEPT"]
    log = os.path.join(lab.dir, "logs", "policy-n1.log")
    try:
        assert forward_rules(node1)[0].endswith("-j MKN-POLICY"), forward_rules(node1)
        subprocess.run(["ip", "netns", "exec", node1.netns, "iptables", "-I", "FORWARD", "1", *above], check=True)
        assert wait_until(lambda: forward_rules(node1)[0].endswith("-j MKN-POLICY"), 1.5, interval=0.05), (
            f"{forward_rules(node1)}\n{tail(log)}"
        )
        assert any("test: a rule above the policy" in r for r in forward_rules(node1)[1:])  # moved below, kept
        assert "no longer first" in tail(log)
        assert not reaches(lab, "n2-p1", "n1-p1")
    finally:
        subprocess.run(["ip", "netns", "exec", node1.netns, "iptables", "-D", "FORWARD", *above], check=False)
        S.wait_policy_applied(lab, put(lab, KEY, None))


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_policy_enforced_repaired_and_explained(lab, mode):
    if mode != "iptables":
        S.restart_proxies(lab, mode)
    S.wait_policy_applied(lab, put(lab, KEY, ONLY_SLOT2))
    assert reaches(lab, "n2-p2", "n1-p1")  # across nodes, allowed (slot p2)
    assert reaches(lab, "n1-p2", "n1-p1")  # same node, across the bridge, allowed
    assert not reaches(lab, "n2-p1", "n1-p1")  # slot p1: blocked
    assert reaches(lab, "n2-p1", "n1-p2")  # n1-p2 is not selected
    node1 = lab.topo.nodes[0]
    assert probes.connect_error(node1.netns, lab.pods()["n1-p1"]["ip"], POD_PORT, timeout=1.0) is None

    out = policy_cli(lab, node1, "--mode", mode, "--dry-run")
    assert out.returncode == 0 and "default/only-from-p2 ingress rule 0" in out.stdout, out.stderr
    out = policy_cli(lab, node1, "--mode", mode, "--explain", "default/n2-p1", "default/n1-p1", f"{POD_PORT}/TCP")
    assert out.returncode == 3 and "isolated by default/only-from-p2" in out.stdout, out.stdout + out.stderr
    if mode == "iptables":
        assert "dropped by rule 'default/n1-p1 ingress isolated by default/only-from-p2: drop'" in out.stdout

    # someone flushes our rules: the controller notices and restores them
    if mode == "iptables":
        subprocess.run(["ip", "netns", "exec", node1.netns, "iptables", "-F", "FORWARD"], check=True)
    else:
        subprocess.run(
            ["ip", "netns", "exec", node1.netns, "nft", "delete", "table", "ip", "minikubenet-policy"], check=True
        )
    assert wait_until(lambda: not reaches(lab, "n2-p1", "n1-p1"), 15.0), (
        "the flushed policy was not repaired; log:\n" + tail(os.path.join(lab.dir, "logs", "policy-n1.log"))
    )

    S.wait_policy_applied(lab, put(lab, KEY, None))
    assert reaches(lab, "n2-p1", "n1-p1")
