"""minikubenet.lab.topology: the lab's shape as data (pure: building it creates nothing).

Every namespace (and every container ID) starts with the lab's name, so ``lab down``
and a person can tell exactly what belongs to a lab; names stay short enough for
interface names; addresses come from the underlay: etcd .2, node i at .10+i.
"""

import re
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest

from minikubenet.lab.topology import build_topology, validate_name


@pytest.mark.parametrize("name", ["mkn", "a", "t3f9a1", "abcdefgh", "lab1"])
def test_valid_lab_names(name):
    assert validate_name(name) == name
    assert build_topology(name).name == name


@pytest.mark.parametrize(
    "name", ["", "Mkn", "MKN", "1lab", "abcdefghi", "my-lab", "my_lab", "my lab", "lab.1", "lab/1", "läb", "-", " mkn"]
)
def test_invalid_lab_names_are_refused_naming_them(name):
    with pytest.raises(ValueError) as e:
        validate_name(name)
    assert repr(name) in str(e.value)
    with pytest.raises(ValueError):
        build_topology(name)


def test_a_trailing_newline_is_not_a_valid_lab_name():
    with pytest.raises(ValueError):
        validate_name("mkn\n")


@pytest.mark.parametrize("name, nodes, pods", [("mkn", 3, 2), ("abcdefgh", 12, 3), ("t1", 1, 0)])
def test_every_namespace_and_container_id_starts_with_the_lab_name(name, nodes, pods):
    t = build_topology(name, nodes=nodes, pods_per_node=pods)
    names = t.all_netns() + [p.container_id for p in t.pods()]
    assert names
    for n in names:
        assert n.startswith(f"{name}-"), n
    assert t.switch_netns == f"{name}-sw" and t.etcd_netns == f"{name}-etcd"


def test_namespaces_are_distinct_and_in_creation_order():
    t = build_topology("mkn", nodes=3, pods_per_node=2)
    assert t.all_netns() == [
        "mkn-sw",
        "mkn-etcd",
        "mkn-n1",
        "mkn-n1-p1",
        "mkn-n1-p2",
        "mkn-n2",
        "mkn-n2-p1",
        "mkn-n2-p2",
        "mkn-n3",
        "mkn-n3-p1",
        "mkn-n3-p2",
    ]
    assert len(set(t.all_netns())) == len(t.all_netns())


def test_two_labs_share_no_namespace():
    a = build_topology("laba", nodes=3, pods_per_node=2)
    b = build_topology("labb", nodes=3, pods_per_node=2)
    assert not set(a.all_netns()) & set(b.all_netns())


def test_switch_ports_fit_an_interface_name():
    t = build_topology("abcdefgh", nodes=40, pods_per_node=1, underlay="172.31.0.0/24")
    ports = [n.switch_port for n in t.nodes]
    assert len(set(ports)) == len(ports)
    assert all(0 < len(p) <= 15 for p in ports)


def test_default_addresses():
    t = build_topology("mkn", nodes=3)
    assert t.underlay == N("172.31.0.0/24")
    assert t.pod_network == N("10.244.0.0/16")
    assert t.etcd_ip == A("172.31.0.2")
    assert t.etcd_endpoint == "https://172.31.0.2:2379"
    assert [n.ip for n in t.nodes] == [A("172.31.0.11"), A("172.31.0.12"), A("172.31.0.13")]
    assert (t.backend, t.mtu) == ("vxlan", 1500)


@pytest.mark.parametrize("underlay, nodes", [("172.31.0.0/24", 20), ("192.168.50.0/28", 3), ("10.9.0.0/16", 100)])
def test_node_addresses_are_distinct_hosts_of_the_underlay(underlay, nodes):
    t = build_topology("mkn", nodes=nodes, underlay=underlay)
    net = N(underlay)
    ips = [n.ip for n in t.nodes] + [t.etcd_ip]
    assert len(set(ips)) == len(ips)
    for ip in ips:
        assert ip in net and ip not in (net.network_address, net.broadcast_address)


def test_nodes_and_pods():
    t = build_topology("mkn", nodes=2, pods_per_node=3)
    assert [n.name for n in t.nodes] == ["n1", "n2"]
    assert [p.name for p in t.pods()] == ["n1-p1", "n1-p2", "n1-p3", "n2-p1", "n2-p2", "n2-p3"]
    assert all(p.node == p.name.split("-")[0] for p in t.pods())
    assert t.node("n2").netns == "mkn-n2"


def test_unknown_node_names_lab_and_nodes():
    t = build_topology("mkn", nodes=2)
    with pytest.raises(KeyError) as e:
        t.node("n9")
    assert "n9" in str(e.value) and "mkn" in str(e.value) and "n1, n2" in str(e.value)


@pytest.mark.parametrize(
    "kw, named",
    [
        ({"nodes": 0}, "node"),
        ({"nodes": -1}, "node"),
        ({"nodes": 4, "underlay": "192.168.50.0/28"}, "192.168.50.0/28"),
        ({"pods_per_node": -1}, "pods"),
        ({"pods_per_node": 251}, "pods"),
        ({"mtu": 1279}, "1279"),
        ({"mtu": 9001}, "9001"),
        ({"underlay": "172.31.0.1/24"}, "172.31.0.1/24"),  # host bits set
        ({"underlay": "banana"}, "banana"),
    ],
)
def test_bad_shapes_are_refused(kw, named):
    with pytest.raises(ValueError) as e:
        build_topology("mkn", **kw)
    assert named in str(e.value)


def test_building_is_pure_and_repeatable():
    assert build_topology("mkn", nodes=3, pods_per_node=2) == build_topology("mkn", nodes=3, pods_per_node=2)


def test_a_lab_name_that_prefixes_another_does_not_claim_its_namespaces():
    # `lab down` finds a lab's pieces by "<name>-"; a lab "mk" must not match lab "mkn"
    mkn = build_topology("mkn", nodes=2, pods_per_node=2)
    assert not [n for n in mkn.all_netns() if n.startswith("mk-")]


# --------------------------------------------------------------------------- racks (a routed underlay)


def test_racks_fill_in_blocks_each_on_its_own_segment_behind_the_router():
    t = build_topology("r", nodes=5, racks=2, backend="bgp")
    assert [(n.name, n.rack, str(n.ip)) for n in t.nodes] == [
        ("n1", 0, "172.31.0.11"),
        ("n2", 0, "172.31.0.12"),
        ("n3", 0, "172.31.0.13"),
        ("n4", 1, "172.31.1.14"),
        ("n5", 1, "172.31.1.15"),
    ]
    assert [str(t.rack_net(r)) for r in range(2)] == ["172.31.0.0/24", "172.31.1.0/24"]
    assert [str(t.router_ip(r)) for r in range(2)] == ["172.31.0.1", "172.31.1.1"]
    assert t.other_racks(1) == [t.rack_net(0)] and [t.bridge(r) for r in range(2)] == ["br0", "br1"]
    assert t.all_netns()[:2] == ["r-sw", "r-rt"]
    assert "r-rt" not in build_topology("r", nodes=2).all_netns()  # one segment: no router


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"racks": 0}, "at least one rack"),
        ({"racks": 4, "nodes": 3}, "--racks 4 is more than the 3 nodes"),
        ({"racks": 2, "backend": "host-gw"}, "host-gw cannot cross racks"),
        ({"racks": 2, "underlay": "172.31.0.0/23"}, "--racks needs a /24 underlay"),
        ({"racks": 2, "underlay": "10.243.255.0/24", "pod_network": "10.244.0.0/16"}, "rack 1's underlay"),
    ],
)
def test_bad_racks_are_refused_before_anything_is_made(kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_topology("r", **{"nodes": 3, **kw})


def test_the_router_reflects_every_node_and_sets_itself_as_next_hop():
    from minikubenet.lab import router

    text = router.render(A("172.31.0.1"), [A("172.31.1.13"), A("172.31.0.11")], "/x/bird.log")
    assert "rr client;" in text and "next hop self;" in text and "export where source = RTS_BGP;" in text
    assert text.index("neighbor 172.31.0.11 as 64512") < text.index("neighbor 172.31.1.13 as 64512")


def test_network_init_peer_syntax():
    from minikubenet.cli.network import _bgp_peer

    assert _bgp_peer("172.31.1.1@172.31.1.0/24") == {"PeerIP": "172.31.1.1", "NodeSubnet": "172.31.1.0/24"}
    assert _bgp_peer("10.0.0.1/65001") == {"PeerIP": "10.0.0.1", "AS": 65001}
