"""A routed underlay (``lab up --racks 2``): two L2 segments joined by the router
namespace, the bgp column across racks, and the same with vxlan for contrast.

bgp (module lab 1: 4 nodes, n1 n2 in rack 0, n3 n4 in rack 1, --bgp-mode mesh): the
nodes of a rack learn each other directly, the other rack's subnets from the router
(a route reflector setting itself as next hop, like a ToR); every pod reaches every
pod across racks with DF pings at the full 1472 bytes; a capture on the router's leg
into rack 1 shows plain IP packets with the pods' own addresses and no UDP 8472.

bgp with in-cluster route reflectors (module lab 3: 6 nodes, --bgp-mode rr): n1 and n4,
the first node of each rack, reflect for their rack and alone peer with the router; a
client's subnet reaches the other clients of its rack with the client as next hop.

vxlan with DirectRouting (module lab 2): plain routes inside a rack, VXLAN between
racks; the same capture shows the pods' packets inside UDP 8472 between the nodes.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from minikubenet.lab import capture
from tests.conftest import lab_cli as cli
from tests.conftest import running_lab


def routes(netns: str, *selector: str) -> list[dict]:
    p = subprocess.run(["ip", "-n", netns, "-j", "route", "show", *selector], capture_output=True, text=True)
    return json.loads(p.stdout or "[]") if p.returncode == 0 else []


def ping(lab, src_pod, dst_ip: str, size: int = 56, count: int = 3) -> bool:
    argv = ["ip", "netns", "exec", src_pod.netns, "ping", "-c", str(count), "-i", "0.2", "-W", "1"]
    argv += ["-M", "do", "-s", str(size), dst_ip]
    return subprocess.run(argv, capture_output=True).returncode == 0


def pod_ip(lab, pod) -> str:
    return lab.pod_ips[pod.name]


@pytest.fixture(scope="module")
def bgp_lab(lab_root):
    """Name: bgp_lab. Scope: module. 4 bgp nodes on 2 racks, 1 pod each, no proxies."""
    with running_lab(lab_root, nodes=4, pods_per_node=1, proxy=False, backend="bgp", racks=2) as lab:
        yield lab


def test_bgp_routes_inside_a_rack_are_direct_and_between_racks_via_the_router(bgp_lab):
    t = bgp_lab.topo
    subnets = {n: lease["subnet"] for n, lease in bgp_lab.leases().items()}
    for node in t.nodes:
        learned = {r["dst"]: r.get("gateway") for r in routes(node.netns, "proto", "bird")}
        for other in t.nodes:
            if other is node:
                continue
            want = str(other.ip) if other.rack == node.rack else str(t.router_ip(node.rack))
            assert learned.get(subnets[other.name]) == want, (node.name, other.name, learned)
    router = {r["dst"]: r.get("gateway") for r in routes(t.router_netns, "proto", "bird")}
    assert router == {subnets[n.name]: str(n.ip) for n in t.nodes}, router
    report = bgp_lab.overlay_report()
    assert f"router {t.router_netns}:" in report and "NOT ESTABLISHED" not in report, report


def test_bgp_pods_reach_across_racks_at_the_full_mtu(bgp_lab):
    pods = [n.pods[0] for n in bgp_lab.topo.nodes]
    for src in pods:
        for dst in pods:
            if src is not dst:
                assert ping(bgp_lab, src, pod_ip(bgp_lab, dst), size=1472, count=1), (src.name, dst.name)
    assert not ping(bgp_lab, pods[0], pod_ip(bgp_lab, pods[2]), size=1473, count=1)  # 1501 bytes: over the MTU


def test_bgp_between_racks_is_plain_ip_with_the_pods_addresses(bgp_lab):
    t = bgp_lab.topo
    src, dst = t.nodes[0].pods[0], t.nodes[2].pods[0]  # rack 0 -> rack 1
    with capture.Capture(t.switch_netns, "rt1") as cap:  # the router's leg into rack 1
        assert ping(bgp_lab, src, pod_ip(bgp_lab, dst))
    from scapy.layers.inet import ICMP, IP, UDP

    frames = cap.decoded()
    plain = [f for f in frames if IP in f and ICMP in f and f[IP].src == pod_ip(bgp_lab, src)]
    assert plain and all(f[IP].dst == pod_ip(bgp_lab, dst) for f in plain), [f.summary() for f in frames]
    assert not [f for f in frames if UDP in f and 8472 in (f[UDP].sport, f[UDP].dport)]


def doctor_overlay_findings(lab) -> list[str]:
    p = cli(lab, "doctor", "--json", "--no-probe")
    assert "Traceback" not in p.stderr and p.stdout.strip().startswith("{"), p.stdout + p.stderr
    return [f["text"] for f in json.loads(p.stdout)["findings"] if f["check"] == "overlay"]


def test_trace_follows_a_bgp_route_through_the_router(bgp_lab):
    src, dst = bgp_lab.topo.nodes[0].pods[0], bgp_lab.topo.nodes[2].pods[0]  # rack 0 -> rack 1
    p = cli(bgp_lab, "trace", f"default/{src.name}", f"default/{dst.name}:8080", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    (path,) = json.loads(p.stdout)["paths"]
    assert path["result"] == f"delivered to default/{dst.name}", path
    router = bgp_lab.topo.router_netns
    assert [h["node"] for h in path["hops"] if h["what"] == "router"] == [router], path["hops"]


def test_doctor_takes_the_routes_via_the_router_as_right(bgp_lab):
    assert doctor_overlay_findings(bgp_lab) == []


@pytest.fixture(scope="module")
def vxlan_lab(lab_root):
    """Name: vxlan_lab. Scope: module. 4 vxlan nodes on 2 racks with DirectRouting."""
    with running_lab(lab_root, nodes=4, pods_per_node=1, proxy=False, racks=2, direct_routing=True) as lab:
        yield lab


def test_vxlan_direct_routing_routes_inside_a_rack_and_encapsulates_between_racks(vxlan_lab):
    t = vxlan_lab.topo
    n1, n2, n3 = t.nodes[0], t.nodes[1], t.nodes[2]
    subnets = {n: lease["subnet"] for n, lease in vxlan_lab.leases().items()}
    by_dst = {r["dst"]: r for r in routes(n1.netns)}
    assert by_dst[subnets[n2.name]].get("dev") == "eth0" and by_dst[subnets[n2.name]].get("gateway") == str(n2.ip)
    assert by_dst[subnets[n3.name]].get("dev") == "flannel.1"
    src, dst = n1.pods[0], n3.pods[0]
    with capture.Capture(t.switch_netns, "rt1") as cap:
        assert ping(vxlan_lab, src, pod_ip(vxlan_lab, dst))
    packets = capture.vxlan_packets(cap.decoded())
    assert packets, "no VXLAN between the racks"
    outer, _udp, _vx, inner = packets[0]
    assert (outer.src, outer.dst) == (str(n1.ip), str(n3.ip))
    assert (inner.src, inner.dst) == (pod_ip(vxlan_lab, src), pod_ip(vxlan_lab, dst))
    # doctor knows DirectRouting: the plain routes inside a rack are what it wants there
    assert doctor_overlay_findings(vxlan_lab) == []
    report = vxlan_lab.overlay_report()
    assert f"route {subnets[n2.name]} via {n2.ip} dev eth0 (DirectRouting: same segment, no tunnel)" in report, report


def bgp_sessions(lab, node) -> list[str]:
    """The names of the node's BGP protocols that are Established (birdc show protocols)."""
    sock = os.path.join(lab.run_dir(node.name), "bird", "bird.ctl")
    p = subprocess.run(
        ["ip", "netns", "exec", node.netns, "birdc", "-s", sock, "show", "protocols"], capture_output=True, text=True
    )
    return sorted(line.split()[0] for line in p.stdout.splitlines() if "BGP" in line and "Established" in line)


@pytest.fixture(scope="module")
def rr_lab(lab_root):
    """Name: rr_lab. Scope: module. 6 bgp nodes on 2 racks, route reflectors n1 and n4."""
    with running_lab(lab_root, nodes=6, pods_per_node=1, proxy=False, backend="bgp", racks=2, bgp_mode="rr") as lab:
        yield lab


def test_rr_clients_peer_with_their_racks_reflector_only_and_reach_each_other_directly(rr_lab):
    t = rr_lab.topo
    rr = {n.rack: n for n in rr_lab.route_reflectors()}
    assert [n.name for n in rr.values()] == ["n1", "n4"]
    subnets = {n: lease["subnet"] for n, lease in rr_lab.leases().items()}
    client = "peer_" + str(rr_lab._bgp_client_ip()).replace(".", "_")  # the LB check's client network
    for node in t.nodes:
        name = "node_" + str(rr[node.rack].ip).replace(".", "_")
        sessions = [s for s in bgp_sessions(rr_lab, node) if s != client]
        if node is rr[node.rack]:
            clients = ["node_" + str(n.ip).replace(".", "_") for n in t.nodes if n.rack == node.rack and n is not node]
            router = "peer_" + str(t.router_ip(node.rack)).replace(".", "_")
            assert sessions == sorted(clients + [router]), (node.name, sessions)
        else:
            assert sessions == [name], (node.name, sessions)  # no mesh: one session
        learned = {r["dst"]: r.get("gateway") for r in routes(node.netns, "proto", "bird")}
        for other in t.nodes:
            if other is not node:
                # reflected with the next hop unchanged inside a rack; across racks the router's
                want = str(other.ip) if other.rack == node.rack else str(t.router_ip(node.rack))
                assert learned.get(subnets[other.name]) == want, (node.name, other.name, learned)
    pods = [n.pods[0] for n in t.nodes]
    for src in pods:
        for dst in pods:
            if src is not dst:
                assert ping(rr_lab, src, pod_ip(rr_lab, dst), size=1472, count=1), (src.name, dst.name)
