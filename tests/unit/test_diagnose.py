"""trace and doctor over hand-made snapshots: the walk and the checks, without a kernel."""

from __future__ import annotations

import datetime
import ipaddress

import pytest

from minikubenet.diagnose import doctor
from minikubenet.diagnose.cluster import ClusterView, IpRecord, Lease, NodeInfo, PodInfo, ServiceInfo
from minikubenet.diagnose.gather import view_from_etcd
from minikubenet.diagnose.trace import TraceError, kube_rules_only, nft_endpoints, resolve, trace
from minikubenet.linux.conntrack_table import ConntrackTable
from minikubenet.linux.live_state import FdbEntry, Link, NeighEntry, NodeSnapshot, RouteEntry
from minikubenet.pod_network import ownership_mark

A, N = ipaddress.IPv4Address, ipaddress.IPv4Network
MAC1, MAC2 = "aa:aa:aa:00:00:01", "aa:aa:aa:00:00:02"


def node_snapshot(name, ip, subnet, other_subnet, other_gw_mac, other_ip, pods=(), mtu=1500):
    s = NodeSnapshot(node=name, netns=f"lab-{name}")
    own_mac = MAC1 if name == "n1" else MAC2
    s.links = {
        "eth0": Link("eth0", 2, mtu, "", None, "minikubenet-node:x", True, "02:00:00:00:00:01"),
        "flannel.1": Link("flannel.1", 3, mtu - 50, "vxlan", None, None, True, own_mac, 1),
        "cni0": Link("cni0", 4, mtu - 50, "bridge", None, None, True, "02:00:00:00:00:09"),
    }
    s.addresses = {
        "eth0": [ipaddress.IPv4Interface(f"{ip}/24")],
        "cni0": [ipaddress.IPv4Interface(f"{subnet.network_address + 1}/24")],
        "flannel.1": [ipaddress.IPv4Interface(f"{subnet.network_address}/32")],
    }
    s.routes = [
        RouteEntry(N("172.31.0.0/24"), "eth0", None, False, "kernel"),
        RouteEntry(subnet, "cni0", None, False, "kernel"),
        RouteEntry(other_subnet, "flannel.1", other_subnet.network_address, True, "static"),
    ]
    s.neighbours = [NeighEntry("flannel.1", other_subnet.network_address, other_gw_mac, True)]
    s.fdb = [FdbEntry("flannel.1", other_gw_mac, A(other_ip))]
    for i, (cid, _pod_ip) in enumerate(pods):
        veth = f"veth{i}{name}"
        s.links[veth] = Link(veth, 10 + i, mtu - 50, "veth", "cni0", ownership_mark(cid, "eth0"), True, None)
    s.sysctls = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0"}
    s.conntrack = ConntrackTable(10, 1000, {})
    return s


@pytest.fixture
def view():
    s1, s2 = N("10.244.1.0/24"), N("10.244.2.0/24")
    v = ClusterView(pod_network=N("10.244.0.0/16"), backend="vxlan")
    v.nodes = {
        "n1": NodeInfo("n1", A("172.31.0.11"), s1, MAC1, True),
        "n2": NodeInfo("n2", A("172.31.0.12"), s2, MAC2, True),
    }
    v.leases = [Lease(s1, A("172.31.0.11"), "vxlan", MAC1), Lease(s2, A("172.31.0.12"), "vxlan", MAC2)]
    v.pods = {
        "default/a": PodInfo("default", "a", A("10.244.1.2"), "n1", "cid-a"),
        "default/b": PodInfo("default", "b", A("10.244.2.2"), "n2", "cid-b"),
    }
    v.ip_records = [
        IpRecord(A("10.244.1.2"), s1, "cid-a", "eth0", "n1", "default/a"),
        IpRecord(A("10.244.2.2"), s2, "cid-b", "eth0", "n2", "default/b"),
    ]
    v.services = {"default/web": ServiceInfo("default", "web", A("10.96.0.10"), (("http", 80, "TCP"),))}
    v.snapshots = {
        "n1": node_snapshot("n1", "172.31.0.11", s1, s2, MAC2, "172.31.0.12", [("cid-a", "10.244.1.2")]),
        "n2": node_snapshot("n2", "172.31.0.12", s2, s1, MAC1, "172.31.0.11", [("cid-b", "10.244.2.2")]),
    }
    return v


# --------------------------------------------------------------------------- trace


def test_pod_to_pod_across_vxlan_is_delivered_hop_by_hop(view):
    r = trace(view, resolve(view, "default/a", False), resolve(view, "b:8080", True))
    (path,) = r.paths
    assert path.delivered and path.result == "delivered to default/b"
    assert [h.what for h in path.hops] == ["source", "route", "neighbour", "fdb", "vxlan", "route", "bridge"]
    assert [h.node for h in path.hops][-3:] == ["n2", "n2", "n2"]
    assert "dst 172.31.0.12" in path.hops[3].entry


def test_a_missing_fdb_entry_is_the_drop_point(view):
    view.snapshots["n1"].fdb.clear()
    (path,) = trace(view, resolve(view, "a", False), resolve(view, "b", True)).paths
    assert not path.delivered
    assert path.result.startswith("dropped by fdb aa:aa:aa:00:00:02 dev flannel.1 on n1")


def test_a_missing_neighbour_and_a_stale_vtep_mac_are_named(view):
    view.snapshots["n1"].neighbours.clear()
    (path,) = trace(view, resolve(view, "a", False), resolve(view, "b", True)).paths
    assert "dropped by neigh 10.244.2.0 dev flannel.1 on n1" in path.result
    view.snapshots["n1"].neighbours.append(NeighEntry("flannel.1", A("10.244.2.0"), "de:ad:00:00:00:01", True))
    view.snapshots["n1"].fdb.append(FdbEntry("flannel.1", "de:ad:00:00:00:01", A("172.31.0.12")))
    (path,) = trace(view, resolve(view, "a", False), resolve(view, "b", True)).paths
    assert "the decapsulated frame is not for it" in path.result and "on n2" in path.result


def test_a_pod_whose_veth_is_gone_is_not_delivered(view):
    snap = view.snapshots["n2"]
    snap.links = {k: v for k, v in snap.links.items() if v.kind != "veth"}
    (path,) = trace(view, resolve(view, "a", False), resolve(view, "b", True)).paths
    assert "veth is missing on n2" in path.result


def test_a_service_is_followed_through_the_live_iptables_rules(view):
    view.snapshots["n1"].iptables_nat = LIVE_IPTABLES
    r = trace(view, resolve(view, "a", False), resolve(view, "svc/default/web", True))
    assert {p.endpoint for p in r.paths} == {"10.244.1.2:8080", "10.244.2.2:8080"}
    assert all(p.delivered for p in r.paths) and sum(p.probability for p in r.paths) == pytest.approx(1)
    hop = next(h for h in r.paths[1].hops if h.what == "service")
    assert "--to-destination 10.244.2.2:8080" in hop.entry
    assert "OTHER-SOFTWARE" not in kube_rules_only(LIVE_IPTABLES)


def test_nftables_service_map_is_read_from_the_live_table():
    eps, element = nft_endpoints(LIVE_NFT, A("10.96.0.10"), 80, "tcp")
    assert sorted(eps) == [("10.244.1.2:8080", 0.5), ("10.244.2.2:8080", 0.5)]
    assert "goto service-ABC-default/web/tcp/http" in element


@pytest.mark.parametrize(
    "text, message",
    [
        ("default/nope", "no pod default/nope"),
        ("svc/default/nope", "no service default/nope"),
        ("192.0.2.7", "in no network of this cluster"),
        ("10.244.99.9", "in no node's subnet"),
    ],
)
def test_names_that_do_not_exist_are_refused_with_what_exists(view, text, message):
    with pytest.raises(TraceError, match=message):
        resolve(view, text, True)


def test_a_node_that_cannot_be_read_is_named(view):
    del view.snapshots["n2"]
    view.unreadable["n2"] = "network namespace lab-n2 does not exist (is the node down?)"
    (path,) = trace(view, resolve(view, "a", False), resolve(view, "b", True)).paths
    assert "is the node down?" in path.result and not path.delivered


def across_a_router(view, readable: bool):
    """n2 moved to another rack (172.31.1.0/24) behind a router at .1 of each; bgp routes."""
    view.backend = "bgp"
    view.nodes["n2"] = NodeInfo("n2", A("172.31.1.12"), N("10.244.2.0/24"), None, True)
    n1 = view.snapshots["n1"]
    n1.routes = [
        RouteEntry(N("172.31.0.0/24"), "eth0", None, False, "kernel"),
        RouteEntry(N("172.31.1.0/24"), "eth0", A("172.31.0.1"), False, "static"),
        RouteEntry(N("10.244.1.0/24"), "cni0", None, False, "kernel"),
        RouteEntry(N("10.244.2.0/24"), "eth0", A("172.31.0.1"), False, "bird"),
    ]
    n2 = view.snapshots["n2"]
    n2.addresses["eth0"] = [ipaddress.IPv4Interface("172.31.1.12/24")]
    if readable:
        rt = NodeSnapshot(node="lab-rt", netns="lab-rt")
        rt.addresses = {
            "eth0": [ipaddress.IPv4Interface("172.31.0.1/24")],
            "eth1": [ipaddress.IPv4Interface("172.31.1.1/24")],
        }
        rt.routes = [
            RouteEntry(N("172.31.0.0/24"), "eth0", None, False, "kernel"),
            RouteEntry(N("172.31.1.0/24"), "eth1", None, False, "kernel"),
            RouteEntry(N("10.244.2.0/24"), "eth1", A("172.31.1.12"), False, "bird"),
        ]
        view.routers["lab-rt"] = rt
    return view


def test_a_bgp_route_via_a_router_is_followed_through_the_routers_table(view):
    across_a_router(view, readable=True)
    (path,) = trace(view, resolve(view, "a", False), resolve(view, "b", True)).paths
    assert path.delivered and path.result == "delivered to default/b"
    assert [(h.node, h.what) for h in path.hops][1:5] == [
        ("n1", "route"),
        ("n1", "bgp"),
        ("lab-rt", "route"),
        ("lab-rt", "router"),
    ]
    assert "10.244.2.0/24 via 172.31.1.12 dev eth1 proto bird" in path.hops[3].entry
    # the router without a route there: the drop is the router's
    view.routers["lab-rt"].routes.pop()
    (path,) = trace(view, resolve(view, "a", False), resolve(view, "b", True)).paths
    assert "on lab-rt: the router has no route to 10.244.2.2" in path.result


def test_a_router_that_cannot_be_read_ends_the_walk_without_a_drop(view):
    across_a_router(view, readable=False)
    (path,) = trace(view, resolve(view, "a", False), resolve(view, "b", True)).paths
    assert path.uninspected and not path.delivered and not path.result.startswith("dropped")
    assert "leaves for router 172.31.0.1" in path.result and "is on n2" in path.result


# --------------------------------------------------------------------------- doctor


def checks(view, **kw):
    return {(f.check, f.node) for f in doctor.check_all(view, **kw)}, doctor.check_all(view, **kw)


def test_a_healthy_cluster_has_no_findings(view):
    assert doctor.check_all(view) == []


def test_each_break_is_named(view):
    n1, n2 = view.snapshots["n1"], view.snapshots["n2"]
    n1.links["cni0"] = Link("cni0", 4, 1500, "bridge", None, None, True, None)  # MTU
    n1.fdb.clear()  # overlay
    n2.sysctls["net.ipv4.ip_forward"] = "0"  # sysctl
    n2.conntrack = ConntrackTable(1000, 1000, {"drop": 7})  # conntrack
    view.ip_records.append(IpRecord(A("10.244.2.9"), N("10.244.2.0/24"), "leaked", "eth0", "n2", "leaked"))
    view.nodes["n2"] = NodeInfo("n2", A("172.31.0.12"), N("10.244.2.0/24"), MAC2, agent_running=False)
    found = doctor.check_all(view)
    text = "\n".join(f"{f.severity} {f.check} {f.node} {f.text}" for f in found)
    assert "error mtu n1 cni0 has MTU 1500, the pod MTU here is 1450" in text
    assert "error overlay n1 missing FDB entry aa:aa:aa:00:00:02 dst 172.31.0.12" in text
    assert "error sysctl n2 net.ipv4.ip_forward is 0" in text
    assert "error conntrack n2 the conntrack table is full" in text
    assert "drop 7" in text
    assert "error ipam n2 IP record 10.244.2.9" in text
    assert "error leases n2 lease 10.244.2.0/24" in text
    assert all(f.fix for f in found)


def overlay_findings(view, node="n1"):
    return [f.text for f in doctor.check_overlay(view, view.nodes[node], view.snapshots[node])]


def test_vxlan_direct_routing_wants_a_plain_route_for_a_lease_on_the_segment(view):
    n1 = view.snapshots["n1"]
    n1.routes[2] = RouteEntry(N("10.244.2.0/24"), "eth0", A("172.31.0.12"), False, "static")
    n1.neighbours.clear()
    n1.fdb.clear()
    assert len(overlay_findings(view)) == 3  # without DirectRouting: the tunnel route, neighbour, FDB entry
    view.direct_routing = True
    assert overlay_findings(view) == []
    n1.routes.pop(2)
    assert overlay_findings(view) == [
        "missing route 10.244.2.0/24 via 172.31.0.12: n1's pods cannot reach 10.244.2.0/24"
    ]


def test_bgp_across_racks_accepts_the_route_via_the_router_and_names_a_stray_one(view):
    across_a_router(view, readable=False)
    view.leases[1] = Lease(N("10.244.2.0/24"), A("172.31.1.12"), "bgp", None)
    assert overlay_findings(view) == []
    view.snapshots["n1"].routes.append(RouteEntry(N("10.244.9.0/24"), "eth0", A("172.31.0.1"), False, "bird"))
    assert overlay_findings(view) == [
        "stray route 10.244.9.0/24 via 172.31.0.1 dev eth0: no lease calls for it, so traffic to it goes to a node that is gone"
    ]


def test_stray_entries_and_unrecorded_veths_are_named(view):
    n1 = view.snapshots["n1"]
    n1.neighbours.append(NeighEntry("flannel.1", A("10.244.7.0"), "de:ad:00:00:00:07", True))
    n1.links["vethX"] = Link("vethX", 40, 1450, "veth", "cni0", ownership_mark("ghost", "eth0"), True, None)
    text = "\n".join(f.text for f in doctor.check_all(view))
    assert "stray neighbour 10.244.7.0 lladdr de:ad:00:00:00:07" in text
    assert "interface vethX (minikubenet:ghost:eth0) has no IP record" in text


def test_etcd_certificate_expiry_and_a_failed_probe(view):
    now = datetime.datetime(2026, 12, 5, tzinfo=datetime.timezone.utc)
    soon = doctor.EtcdHealth(True, 0.01, cert_not_after=now + datetime.timedelta(days=3), cert_path="c.pem")
    gone = doctor.EtcdHealth(True, 0.01, cert_not_after=now - datetime.timedelta(days=1), cert_path="c.pem")
    assert [f.severity for f in doctor.check_etcd(soon, now)] == ["warning"]
    assert [f.severity for f in doctor.check_etcd(gone, now)] == ["error"]
    probe = doctor.MtuProbe("n1", "n2", A("10.244.2.1"), 1450, passed=False)
    (f,) = doctor.check_all(view, probes=[probe])
    assert f.check == "mtu" and "1450-byte packet with DF set does not reach n2" in f.text


def test_the_view_is_read_from_etcd_keys():
    kvs = [
        ("/coreos.com/network/config", '{"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}'),
        (
            "/coreos.com/network/subnets/10.244.1.0-24",
            '{"PublicIP": "172.31.0.11", "BackendType": "vxlan", "BackendData": {"VNI": 1, "VtepMAC": "aa:aa:aa:00:00:01"}}',
        ),
        (
            "/minikubenet/ipam/10.244.1.0-24/10.244.1.2",
            '{"containerID": "c1", "ifname": "eth0", "node": "n1", "podName": "a", "podNamespace": "x"}',
        ),
        (
            "/minikubenet/services/default/web",
            '{"metadata": {"namespace": "default", "name": "web"}, "spec": {"clusterIP": "10.96.0.10", '
            '"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}',
        ),
        ("/minikubenet/services/default/broken", "{not json"),
    ]
    v = view_from_etcd(kvs, node_names={A("172.31.0.11"): "n1"})
    assert v.nodes["n1"].subnet == N("10.244.1.0/24") and v.nodes["n1"].vtep_mac == "aa:aa:aa:00:00:01"
    assert v.pods["x/a"].container_id == "c1" and list(v.services) == ["default/web"]
    with pytest.raises(LookupError, match="no network config"):
        view_from_etcd([])


LIVE_IPTABLES = """# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-WEB - [0:0]
:KUBE-SEP-ONE - [0:0]
:KUBE-SEP-TWO - [0:0]
:OTHER-SOFTWARE - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m weird --something -j OTHER-SOFTWARE
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OTHER-SOFTWARE -m weird --something -j ACCEPT
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-WEB
-A KUBE-SVC-WEB -m comment --comment "default/web:http -> 10.244.1.2:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-ONE
-A KUBE-SVC-WEB -m comment --comment "default/web:http -> 10.244.2.2:8080" -j KUBE-SEP-TWO
-A KUBE-SEP-ONE -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.244.1.2:8080
-A KUBE-SEP-TWO -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.244.2.2:8080
COMMIT
"""

LIVE_NFT = """table ip minikubenet-proxy {
\tmap service-ips {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = { 10.96.0.10 . tcp . 80 : goto service-ABC-default/web/tcp/http }
\t}

\tchain service-ABC-default/web/tcp/http {
\t\tip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
\t\tnumgen random mod 2 vmap { 0 : goto endpoint-E1-default/web/tcp/http__10.244.1.2/8080, 1 : goto endpoint-E2-default/web/tcp/http__10.244.2.2/8080 }
\t}

\tchain endpoint-E1-default/web/tcp/http__10.244.1.2/8080 {
\t\tmeta l4proto tcp dnat to 10.244.1.2:8080
\t}

\tchain endpoint-E2-default/web/tcp/http__10.244.2.2/8080 {
\t\tmeta l4proto tcp dnat to 10.244.2.2:8080
\t}
}
"""


def test_a_node_not_inspected_ends_the_walk_without_a_drop(view):
    # on a real node, trace reads only the host it runs on
    del view.snapshots["n2"]
    r = trace(view, resolve(view, "a", False), resolve(view, "b", True))
    assert not r.dropped and not r.delivered
    assert r.paths[0].result.startswith("leaves for n2 (VXLAN)")


# --------------------------------------------------------------------------- trace: NetworkPolicy


def policy_cluster(*policies):
    from minikubenet.policy.model import Cluster, Pod, policy_from_k8s

    pods = [
        Pod("default", "a", "10.244.1.2", "n1", {"app": "a"}),
        Pod("default", "b", "10.244.2.2", "n2", {"app": "b"}),
    ]
    return Cluster([policy_from_k8s(p) for p in policies], pods, {"default": {}})


def netpol_doc(name, spec):
    return {"metadata": {"namespace": "default", "name": name}, "spec": spec}


DENY_B = netpol_doc("deny-b", {"podSelector": {"matchLabels": {"app": "b"}}})
ALLOW_A_80 = netpol_doc(
    "allow-a-80",
    {
        "podSelector": {"matchLabels": {"app": "b"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": 80}]}],
    },
)
A_NO_EGRESS = netpol_doc("a-no-egress", {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"]})


def test_an_ingress_denial_is_named_on_the_destination_node(view):
    view.policy = policy_cluster(DENY_B)
    (path,) = trace(view, resolve(view, "default/a", False), resolve(view, "b:8080", True)).paths
    assert not path.delivered
    assert path.hops[-1].what == "policy" and path.hops[-1].node == "n2"  # crossed the overlay first
    assert "default/deny-b" in path.hops[-1].entry and "ingress" in path.hops[-1].entry
    assert path.result.startswith("dropped by NetworkPolicy default/deny-b")


def test_an_egress_denial_drops_at_the_source_node(view):
    view.policy = policy_cluster(A_NO_EGRESS)
    (path,) = trace(view, resolve(view, "default/a", False), resolve(view, "b:8080", True)).paths
    assert not path.delivered and [h.what for h in path.hops] == ["source", "policy"]
    assert path.hops[-1].node == "n1" and "default/a-no-egress" in path.hops[-1].entry


def test_the_allowing_rule_is_named_and_other_ports_stay_denied(view):
    view.policy = policy_cluster(DENY_B, ALLOW_A_80)
    (path,) = trace(view, resolve(view, "default/a", False), resolve(view, "b:80", True)).paths
    assert path.delivered
    assert any(h.what == "policy" and h.entry == "NetworkPolicy default/allow-a-80 rule 0 (ingress)" for h in path.hops)
    (path,) = trace(view, resolve(view, "default/a", False), resolve(view, "b:81", True)).paths
    assert not path.delivered and "default/allow-a-80" in path.hops[-1].entry


def test_a_service_is_judged_on_its_endpoint_after_dnat(view):
    view.snapshots["n1"].iptables_nat = LIVE_IPTABLES
    view.policy = policy_cluster(DENY_B, ALLOW_A_80)
    r = trace(view, resolve(view, "default/a", False), resolve(view, "svc/default/web", True))
    paths = {p.endpoint: p for p in r.paths}
    assert paths["10.244.1.2:8080"].delivered  # a itself: not isolated
    to_b = paths["10.244.2.2:8080"]  # b allows a on 80, the service's port, not 8080, the endpoint's
    assert not to_b.delivered and to_b.hops[-1].what == "policy" and "default/allow-a-80" in to_b.hops[-1].entry


def test_the_nodes_own_pods_are_always_reachable_from_it(view):
    view.policy = policy_cluster(DENY_B)
    (path,) = trace(view, resolve(view, "n2", False), resolve(view, "b:8080", True)).paths
    assert path.delivered


def test_policies_namespaces_and_pods_are_read_from_etcd_for_trace():
    kvs = [
        ("/coreos.com/network/config", '{"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}'),
        (
            "/minikubenet/networkpolicies/x/deny",
            '{"metadata": {"namespace": "x", "name": "deny"}, "spec": {"podSelector": {}}}',
        ),
        ("/minikubenet/networkpolicies/x/broken", '{"metadata": {"namespace": "x", "name": "broken"}, "spec": 7}'),
        ("/minikubenet/namespaces/x", '{"metadata": {"name": "x", "labels": {"team": "t"}}}'),
        (
            "/minikubenet/pods/x/a",
            '{"metadata": {"namespace": "x", "name": "a", "labels": {"app": "a"}}, '
            '"spec": {"nodeName": "n1"}, "status": {"podIP": "10.244.1.2"}}',
        ),
    ]
    v = view_from_etcd(kvs)
    assert v.policy is not None
    assert [p.key for p in v.policy.policies] == ["x/deny"]  # the malformed one skipped
    assert v.policy.namespaces["x"]["team"] == "t"
    assert v.policy.pod_by_ip("10.244.1.2").labels == {"app": "a"}
