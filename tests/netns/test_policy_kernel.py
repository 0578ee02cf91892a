"""NetworkPolicy in a real kernel: one node with the 9 pods of the x/y/z layout
(tests/netns/policy_node.py), both renderings loaded into the node's namespace, and the
connections that pass equal to what the pure model says (a fixed case, then random
policies with hypothesis on a sample of pairs). Needs root."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings

from minikubenet.policy import iptables_render, nft_render
from minikubenet.policy.model import Address, policy_from_k8s, verdict
from minikubenet.policy.plan import plan_node
from minikubenet.proxy.iptables_render import chains_from_save
from tests.unit.policy_cases import netpol
from tests.unit.policy_strategies import policies

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

from tests.netns.policy_node import PolicyNode  # noqa: E402


@pytest.fixture(scope="module")
def node():
    n = PolicyNode()
    try:
        yield n.up()
    finally:
        n.down()


def load(node: PolicyNode, mode: str, cluster) -> None:
    """Replace whatever policy rules the node has with this cluster's (as a full sync does)."""
    plan = plan_node(cluster, "n1")
    node.exec_node("nft", "-f", "-", input=nft_render.render_cleanup())
    node.exec_node("iptables", "-F", "FORWARD")
    node.exec_node("iptables", "-F", "INPUT")
    # clean up the chains that ARE there (as the syncer's cleanup does), not the ones this
    # plan would write: a chain of the previous example that still jumps to one of ours would
    # keep it referenced, and its -X would fail (EBUSY)
    present = chains_from_save(node.exec_node("iptables-save", "-t", "filter"))
    cleanup = iptables_render.render_cleanup(present)
    if cleanup:
        node.exec_node("iptables-restore", "--noflush", input=cleanup)
    if mode == "iptables":
        node.exec_node(
            "iptables-restore", "--noflush", input=iptables_render.render(iptables_render.chains(plan), jump=True)
        )
    else:
        node.exec_node("nft", "-f", "-", input=nft_render.render_full(nft_render.ruleset(plan)))


def check(node: PolicyNode, cluster, pairs) -> None:
    by_src: dict = {}
    for s, d in pairs:
        by_src.setdefault(s, []).append(d)
    wrong = []
    for s, dsts in by_src.items():
        got = node.probe(s, dsts)
        for (dkey, port, proto), passed in got.items():
            d = next(p for p in dsts if p.key == dkey)
            want = verdict(cluster, Address(s.ip, s), Address(d.ip, d), port, proto)
            if passed != want.allowed:
                wrong.append(
                    f"{s.key} -> {dkey}:{port}/{proto}: kernel {'passes' if passed else 'drops'}, model: {want.reason}"
                )
    assert not wrong, "\n".join(wrong)


CASE = [
    netpol(
        "allow-b-http",
        {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"pod": "b"}}, "namespaceSelector": {}}],
                    "ports": [{"port": "serve-80-tcp"}, {"port": 81, "protocol": "UDP"}],
                }
            ],
        },
    ),
    netpol(
        "y-egress",
        {
            "podSelector": {"matchLabels": {"pod": "c"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.244.1.0/24", "except": ["10.244.1.12/32"]}}]}],
        },
        namespace="y",
    ),
]


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_blocked_and_allowed_connections(node, mode):
    cluster = node.cluster([policy_from_k8s(p) for p in CASE])
    load(node, mode, cluster)
    pods = {p.key: p for p in node.pods}
    got = node.probe(pods["y/b"], [pods["x/a"]])
    assert got[("x/a", 80, "TCP")] and got[("x/a", 81, "UDP")]  # allowed by rule 0
    assert not got[("x/a", 81, "TCP")] and not got[("x/a", 80, "UDP")]  # isolated, no rule
    got = node.probe(pods["y/a"], [pods["x/a"]])
    assert not any(got.values())  # not a "b" pod
    got = node.probe(pods["y/c"], [pods["x/b"], pods["x/c"], pods["z/a"]])
    assert got[("x/c", 80, "TCP")] and not got[("x/b", 80, "TCP")] and not got[("z/a", 80, "TCP")]
    # the node itself always reaches its pods (kubelet probes)
    node.exec_node("python3", "-c", f"import socket; socket.create_connection(('{pods['x/a'].ip}', 81), timeout=1)")
    check(node, cluster, [(s, d) for s in node.pods for d in node.pods if s != d])


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pols=policies)
def test_random_policies_kernel_equals_model(node, mode, pols):
    cluster = node.cluster([policy_from_k8s(netpol(f"p{i}", s, ns)) for i, (ns, s) in enumerate(pols)])
    load(node, mode, cluster)
    rnd = random.Random(str(pols))
    pairs = [(s, d) for s in node.pods for d in node.pods if s != d]
    check(node, cluster, rnd.sample(pairs, 16))


EGRESS_DENY_XA = netpol("xa-no-egress", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]})


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_egress_policy_also_judges_a_pods_traffic_to_its_own_node(node, mode):
    """A pod's packets to its node's own address take INPUT, not FORWARD: the egress
    policy must judge them there too (as Calico does), while other pods still reach it."""
    import subprocess
    import sys

    from minikubenet.policy.model import Pod
    from tests.netns.policy_node import SERVER

    server = subprocess.Popen(
        ["ip", "netns", "exec", node.node, sys.executable, "-I", "-S", "-c", SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        cluster = node.cluster([policy_from_k8s(EGRESS_DENY_XA)])
        load(node, mode, cluster)
        pods = {p.key: p for p in node.pods}
        the_node = Pod("node", "n1", "10.244.1.1")  # the node's address on cni0
        for src in (pods["x/a"], pods["x/b"]):
            want = verdict(cluster, Address(src.ip, src), Address(the_node.ip, node="n1"), 80, "TCP").allowed
            got = node.probe(src, [the_node], ports=[(80, "TCP"), (81, "UDP")])
            assert got[("node/n1", 80, "TCP")] == want and got[("node/n1", 81, "UDP")] == want, (src.key, got)
            assert want == (src.key != "x/a")
    finally:
        server.kill()
        server.wait()
