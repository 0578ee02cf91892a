"""Services across three nodes, in both proxy modes: every node's minikubenet-proxy
balances connections over endpoints on all nodes, NodePorts answer on any node,
ClientIP affinity pins a client, a removed endpoint gets no new connections once the
proxies have synced, and a UDP client moves off a removed endpoint.

One lab per mode (3 nodes, 2 pods each; pods labelled app=web, node=nX, slot=pY by
the lab). Traffic crosses the VXLAN overlay.
"""

from __future__ import annotations

import json
import math
import subprocess
import time

import pytest

from minikubenet.lab import services as S
from tests.conftest import make_lab

MODES = ["iptables", "nftables"]


@pytest.fixture(scope="module", params=MODES)
def lab(request, lab_root):
    """Name: lab. Scope: module, once per proxy mode. A 3-node lab (2 pods per node)
    whose proxies run in that mode; removed in teardown, also on failure."""
    lab = make_lab(lab_root, nodes=3, pods_per_node=2)
    try:
        lab.up()
        if request.param != "iptables":
            S.restart_proxies(lab, request.param)
        lab.mode = request.param
        yield lab
    finally:
        lab.down()


def ips(lab) -> dict[str, str]:
    return {name: rec["ip"] for name, rec in lab.pods().items()}


def pod(lab, name):
    return next(p for p in lab.topo.pods() if p.name == name)


def binomial_bounds(n: int, p: float, alpha: float) -> tuple[int, int]:
    """(lo, hi) with P(X < lo) <= alpha/2 and P(X > hi) <= alpha/2 for X ~ Bin(n, p)."""

    def pmf(k):
        return math.exp(
            math.lgamma(n + 1)
            - math.lgamma(k + 1)
            - math.lgamma(n - k + 1)
            + k * math.log(p)
            + (n - k) * math.log(1 - p)
        )

    lo, tail = 0, 0.0
    while tail + pmf(lo) <= alpha / 2:
        tail += pmf(lo)
        lo += 1
    hi, tail = n, 0.0
    while tail + pmf(hi) <= alpha / 2:
        tail += pmf(hi)
        hi -= 1
    return lo, hi


def test_three_endpoints_on_three_nodes_share_3000_connections(lab):
    svc = S.create_service(lab, "spread", {"slot": "p1"}, [{"name": "http", "port": 80, "targetPort": 8080}])
    client = pod(lab, "n1-p2")
    got = S.hit(client.netns, svc["clusterIP"], 80, 3000)
    assert got["<error>"] == 0, got
    assert set(got) == {"n1-p1", "n2-p1", "n3-p1"}
    # Each endpoint's count is Binomial(3000, 1/3); all three inside these bounds with
    # probability > 1 - 1e-9 if the balancing is fair (the bounds are about 1000 +- 160).
    lo, hi = binomial_bounds(3000, 1 / 3, 1e-9 / 3)
    assert all(lo <= n <= hi for n in got.values()), (got, lo, hi)
    # and the chi-square statistic of the same counts, for the record in a failure message
    chi2 = sum((n - 1000) ** 2 / 1000 for n in got.values())
    assert chi2 < 45, (got, chi2)  # P(chi2_2 > 45) ~ 2e-10


def test_a_node_port_answers_on_every_node_from_another_node(lab):
    svc = S.create_service(
        lab, "nodeport", {"slot": "p1"}, [{"name": "http", "port": 80, "targetPort": 8080}], type="NodePort"
    )
    node_port = svc["ports"][0]
    for target in lab.topo.nodes:
        for source in lab.topo.nodes:
            if source.name == target.name:
                continue
            # from the other node itself, and from a pod on it
            for netns in (source.netns, source.pods[1].netns):
                got = S.hit(netns, str(target.ip), node_port, 12, workers=4)
                assert got["<error>"] == 0 and set(got) <= {"n1-p1", "n2-p1", "n3-p1"}, (source.name, target.name, got)


def test_client_ip_affinity_pins_each_client(lab):
    svc = S.create_service(
        lab,
        "sticky",
        {"slot": "p1"},
        [{"name": "http", "port": 80, "targetPort": 8080}],
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}},
    )
    chosen = {}
    for client in [p for p in lab.topo.pods() if p.name.endswith("-p2")]:  # not endpoints themselves
        got = S.hit(client.netns, svc["clusterIP"], 80, 30, workers=1)
        assert len(got) == 1 and "<error>" not in got, (client.name, got)
        chosen[client.name] = next(iter(got))
    assert len(chosen) == 3
    # a service without affinity spreads the same client's connections
    plain = S.create_service(lab, "loose", {"slot": "p1"}, [{"name": "http", "port": 80, "targetPort": 8080}])
    assert len(S.hit(pod(lab, "n1-p2").netns, plain["clusterIP"], 80, 30, workers=1)) > 1


def hairpin_on(lab) -> bool:
    out = subprocess.run(
        ["ip", "-n", lab.topo.node("n1").netns, "-d", "-j", "link", "show", "master", "cni0"],
        capture_output=True,
        text=True,
    ).stdout
    ports = json.loads(out or "[]")
    return bool(ports) and all(p.get("linkinfo", {}).get("info_slave_data", {}).get("hairpin") for p in ports)


def test_a_pod_reaches_itself_through_its_service(lab):
    """Hairpin: the proxy masquerades it (KUBE-SEP "-s <pod> -j KUBE-MARK-MASQ"), but the
    bridge must also send the frame back out of the port it came in on: the bridge
    port's hairpin mode, which the bridge plugin sets with "hairpinMode": true."""
    assert hairpin_on(lab), "the agent sets hairpin mode on every pod's bridge port"
    svc = S.create_service(
        lab, "self", {"node": "n1", "slot": "p1"}, [{"name": "http", "port": 80, "targetPort": 8080}]
    )
    got = S.hit(pod(lab, "n1-p1").netns, svc["clusterIP"], 80, 20, workers=1)
    assert got == {"n1-p1": 20}, got


def test_a_removed_endpoint_gets_no_new_connections_after_one_sync(lab):
    svc = S.create_service(lab, "shrink", {"slot": "p1"}, [{"name": "http", "port": 80, "targetPort": 8080}])
    client = pod(lab, "n2-p2")
    assert set(S.hit(client.netns, svc["clusterIP"], 80, 90)) == {"n1-p1", "n2-p1", "n3-p1"}
    S.store_call(lab, "set-pod-ready", name="n3-p1", ready=False)
    try:
        started = time.monotonic()
        # the endpoints controller writes the new endpoints; every proxy applies them
        S.wait_endpoints(lab, "shrink", sorted(ips(lab)[p] for p in ("n1-p1", "n2-p1")))
        took = time.monotonic() - started
        got = S.hit(client.netns, svc["clusterIP"], 80, 300)
        assert "n3-p1" not in got and got["<error>"] == 0, got
        assert set(got) == {"n1-p1", "n2-p1"}
        assert took < 10, f"the removal took {took:.1f}s to reach every node"
    finally:
        S.store_call(lab, "set-pod-ready", name="n3-p1", ready=True)


def test_a_udp_client_moves_after_its_endpoint_is_removed(lab):
    svc = S.create_service(
        lab, "echo", {"slot": "p1"}, [{"name": "echo", "port": 53, "protocol": "UDP", "targetPort": S.UDP_PORT}]
    )
    client = S.UdpClient(pod(lab, "n1-p2").netns, svc["clusterIP"], 53)
    try:
        first = {client.ask() for _ in range(5)}
        assert len(first) == 1 and None not in first, first  # one flow, one endpoint
        (endpoint,) = first
        S.store_call(lab, "set-pod-ready", name=endpoint, ready=False)
        rest = [p for p in ("n1-p1", "n2-p1", "n3-p1") if p != endpoint]
        S.wait_endpoints(lab, "echo", sorted(ips(lab)[p] for p in rest))
        # The old endpoint still answers (only its readiness changed), so only the
        # deleted conntrack entry can move the client: its next datagram is balanced anew.
        after = [client.ask() for _ in range(5)]
        assert after[0] in rest and len(set(after)) == 1, (endpoint, after)
    finally:
        client.close()
        S.store_call(lab, "set-pod-ready", name=endpoint, ready=True)


def test_every_node_reports_healthy_and_its_rules(lab):
    for node in lab.topo.nodes:
        h = S.healthz(lab, node)
        assert h["healthy"] and h["mode"] == lab.mode
        text = S.metrics(lab, node)
        assert "kubeproxy_sync_proxy_rules_last_timestamp_seconds" in text
        key = (
            'kubeproxy_sync_proxy_rules_iptables_total{table="nat"}'
            if lab.mode == "iptables"
            else "kubeproxy_sync_proxy_rules_nftables_total"
        )
        assert float(next(line for line in text.splitlines() if line.startswith(key)).split()[-1]) > 10
