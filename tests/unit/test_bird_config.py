"""The bgp backend's plan: bird.conf rendered from the leases, and its bad inputs."""

from __future__ import annotations

import ipaddress

import pytest

from minikubenet.agent.backends import BackendError, for_config
from minikubenet.network_config import ConfigError, make_config, parse_config
from minikubenet.overlay import bird_config

A, N = ipaddress.IPv4Address, ipaddress.IPv4Network


def test_a_full_mesh_names_every_other_node_once():
    peers = bird_config.mesh_peers(
        A("172.31.0.11"), [A("172.31.0.13"), A("172.31.0.11"), A("172.31.0.12"), A("172.31.0.12")], 64512
    )
    assert [(p.name, str(p.ip), p.asn) for p in peers] == [
        ("node_172_31_0_12", "172.31.0.12", 64512),
        ("node_172_31_0_13", "172.31.0.13", 64512),
    ]


def test_the_config_announces_the_subnet_and_installs_only_what_bgp_learned():
    text = bird_config.render(
        A("172.31.0.11"),
        64512,
        N("10.244.1.0/24"),
        bird_config.mesh_peers(A("172.31.0.11"), [A("172.31.0.12")], 64512),
        "/run/x/bird.log",
    )
    assert "router id 172.31.0.11;" in text
    assert "route 10.244.1.0/24 blackhole;" in text  # announced, never exported to the kernel
    assert "export where source = RTS_BGP;" in text and "persist;" in text and "learn off;" in text
    assert 'export where proto = "pod_subnet";' in text  # nothing but our own subnet goes out
    assert "protocol bgp node_172_31_0_12 from node_peer {\n  neighbor 172.31.0.12 as 64512;\n}" in text
    assert "graceful restart on;" in text and "direct;" in text


@pytest.mark.parametrize("asn", [0, -1, 4294967295, "64512", True])
def test_a_bad_as_number_is_refused(asn):
    with pytest.raises(ValueError, match="AS number"):
        bird_config.check_asn(asn)
    with pytest.raises(ConfigError, match="Backend.AS"):
        parse_config(
            '{"Network": "10.244.0.0/16", "Backend": {"Type": "bgp", "AS": %s}}'
            % (f'"{asn}"' if isinstance(asn, str) else str(asn).lower())
        )


def test_the_network_config_defaults_to_calicos_as():
    assert make_config("10.244.0.0/16", backend="bgp").backend_options == {"AS": 64512}


def test_without_bird_the_backend_refuses_before_making_anything(monkeypatch):
    from minikubenet.linux import bird

    monkeypatch.setattr(bird.shutil, "which", lambda tool: None)
    with pytest.raises(
        BackendError, match=r"the bgp backend runs BIRD: `bird` is not installed \(Debian: apt install bird2\)"
    ):
        for_config("bgp").prepare(make_config("10.244.0.0/16", backend="bgp"), underlay=None, run_dir="/nonexistent")


# --------------------------------------------------------------------------- peers that are not nodes


def bgp_config(**backend) -> str:
    import json

    return json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "bgp", **backend}})


def test_configured_peers_apply_by_node_subnet_or_node_list():
    peers = [
        {"PeerIP": "172.31.0.200"},  # every node
        {"PeerIP": "172.31.1.1", "AS": 65001, "NodeSubnet": "172.31.1.0/24"},  # rack 1's router only
        {"PeerIP": "172.31.0.1", "Nodes": ["172.31.0.12"]},  # one node only
    ]
    mine = bird_config.configured_peers(A("172.31.0.11"), peers, 64512)
    assert [(p.name, str(p.ip), p.asn) for p in mine] == [("peer_172_31_0_200", "172.31.0.200", 64512)]
    theirs = bird_config.configured_peers(A("172.31.0.12"), peers, 64512)
    assert [p.name for p in theirs] == ["peer_172_31_0_200", "peer_172_31_0_1"]
    rack1 = bird_config.configured_peers(A("172.31.1.5"), peers, 64512)
    assert [(p.name, p.asn) for p in rack1] == [("peer_172_31_0_200", 64512), ("peer_172_31_1_1", 65001)]


@pytest.mark.parametrize(
    "backend, message",
    [
        ({"Peers": {"PeerIP": "10.0.0.1"}}, "Backend.Peers must be a list"),
        ({"Peers": ["10.0.0.1"]}, "Backend.Peers[0] must be an object"),
        ({"Peers": [{"PeerIP": "10.0.0.300"}]}, "Backend.Peers[0].PeerIP '10.0.0.300' is not an IPv4 address"),
        ({"Peers": [{"PeerIP": 167772161}]}, "Backend.Peers[0].PeerIP 167772161 is not an IPv4 address"),
        ({"Peers": [{"PeerIP": "127.0.0.1"}]}, "Backend.Peers[0].PeerIP 127.0.0.1 cannot be a BGP neighbour"),
        (
            {"Peers": [{"PeerIP": "10.0.0.1"}, {"PeerIP": "10.0.0.1"}]},
            "Backend.Peers[1].PeerIP 10.0.0.1 is given twice",
        ),
        ({"Peers": [{"PeerIP": "10.0.0.1", "AS": 0}]}, "Backend.Peers[0].AS 0 is not an AS number"),
        ({"Peers": [{"PeerIP": "10.0.0.1", "Asn": 1}]}, "Backend.Peers[0]: unknown key 'Asn'"),
        (
            {"Peers": [{"PeerIP": "10.0.0.1", "NodeSubnet": "10.0.0.0/24", "Nodes": ["10.0.0.2"]}]},
            "give NodeSubnet or Nodes, not both",
        ),
        ({"Peers": [{"PeerIP": "10.0.0.1", "NodeSubnet": "10.0.0.0/33"}]}, "Backend.Peers[0].NodeSubnet"),
        ({"Peers": [{"PeerIP": "10.0.0.1", "Nodes": []}]}, "Backend.Peers[0].Nodes must be a non-empty list"),
        ({"NodeToNodeMesh": "no"}, "Backend.NodeToNodeMesh 'no' must be true or false"),
    ],
)
def test_bad_peering_is_refused_with_the_key(backend, message):
    with pytest.raises(ConfigError) as e:
        parse_config(bgp_config(**backend))
    assert message in str(e.value), str(e.value)


def test_network_init_style_peers_and_no_mesh():
    config = make_config("10.244.0.0/16", backend="bgp", bgp_peers=[{"PeerIP": "172.31.0.200"}], node_mesh=False)
    assert config.backend_options == {"AS": 64512, "Peers": [{"PeerIP": "172.31.0.200"}], "NodeToNodeMesh": False}


def test_lb_routes_are_learned_from_the_speakers_table_and_announced_beside_the_subnet():
    text = bird_config.render(A("172.31.0.11"), 64512, N("10.244.1.0/24"), [], "/run/x/bird.log", lb_table=2410)
    assert "kernel table 2410;" in text and "learn;" in text and "peer table lb_ips;" in text
    assert 'export where proto = "pod_subnet" || proto = "lb_ips_kernel";' in text
    # the main kernel protocol still installs only BGP-learned routes, never the speaker's
    assert "export where source = RTS_BGP;" in text
    with pytest.raises(ValueError, match="kernel table 254"):
        bird_config.render(A("172.31.0.11"), 64512, N("10.244.1.0/24"), [], "/x", lb_table=254)


def test_a_peer_off_every_connected_network_is_not_peered_but_reported():
    from minikubenet.agent.backends.bgp import BgpPeers

    class Daemon:
        log_file = "/x"

    planner = BgpPeers(
        Daemon(),  # type: ignore[arg-type]
        A("172.31.0.11"),
        N("10.244.1.0/24"),
        64512,
        {"Peers": [{"PeerIP": "172.31.0.200"}, {"PeerIP": "192.168.7.1"}]},
        [N("172.31.0.0/24")],
    )
    assert planner.peer_names([]) == ["peer_172_31_0_200"]
    assert planner.off_link == [
        "Backend.Peers 192.168.7.1: outside every network this node is on (172.31.0.0/24): "
        "not peered (BGP sessions here are direct)"
    ]
    assert "neighbor 192.168.7.1" not in planner.config([])


def test_route_reflectors_replace_the_mesh_a_client_peers_with_the_reflectors_only():
    rrs = [A("172.31.0.11"), A("172.31.0.12")]
    nodes = [A(f"172.31.0.{i}") for i in (11, 12, 13, 14)]
    client = bird_config.reflector_peers(A("172.31.0.13"), nodes, rrs, 64512)
    assert [(p.name, p.rr_client) for p in client] == [("node_172_31_0_11", False), ("node_172_31_0_12", False)]
    rr = bird_config.reflector_peers(A("172.31.0.11"), nodes, rrs, 64512)
    # the other reflector is a plain iBGP peer; the non-reflectors are its clients
    assert [(p.name, p.rr_client) for p in rr] == [
        ("node_172_31_0_12", False),
        ("node_172_31_0_13", True),
        ("node_172_31_0_14", True),
    ]


def test_a_reflector_passes_on_what_it_learned_with_the_next_hop_unchanged():
    peers = bird_config.reflector_peers(A("172.31.0.11"), [A("172.31.0.12")], [A("172.31.0.11")], 64512)
    text = bird_config.render(A("172.31.0.11"), 64512, N("10.244.1.0/24"), peers, "/x", reflector=True)
    assert "protocol bgp node_172_31_0_12 from node_peer {\n  neighbor 172.31.0.12 as 64512;\n  rr client;\n}" in text
    assert 'export where proto = "pod_subnet" || proto = "lb_ips_kernel" || source = RTS_BGP;' in text
    # no next hop self: a client's subnet reaches the other clients via the client itself
    assert "next hop self" not in text
    plain = bird_config.render(A("172.31.0.12"), 64512, N("10.244.2.0/24"), [], "/x")
    assert "next hop self;" in plain and "rr client" not in plain and "RTS_BGP;\n    next hop" not in plain


@pytest.mark.parametrize(
    "backend, message",
    [
        ({"RouteReflectors": "10.0.0.1"}, "Backend.RouteReflectors must be a non-empty list"),
        ({"RouteReflectors": []}, "Backend.RouteReflectors must be a non-empty list"),
        ({"RouteReflectors": ["10.0.0.x"]}, "Backend.RouteReflectors[0] '10.0.0.x' is not an IPv4 address"),
        ({"RouteReflectors": ["10.0.0.1", "10.0.0.1"]}, "names a node twice"),
        ({"RouteReflectors": ["10.0.0.1"], "NodeToNodeMesh": True}, "replace the node-to-node mesh"),
    ],
)
def test_bad_route_reflectors_are_refused(backend, message):
    with pytest.raises(ConfigError) as e:
        parse_config(bgp_config(**backend))
    assert message in str(e.value), str(e.value)


def test_the_planner_with_route_reflectors_peers_on_its_segment_and_says_when_none_is_there():
    from minikubenet.agent.backends.bgp import BgpPeers
    from minikubenet.subnet_lease_record import SubnetLeaseRecord

    class Daemon:
        log_file = "/x"

    leases = [
        SubnetLeaseRecord(N(f"10.244.{i}.0/24"), ip, "bgp", {})
        for i, ip in enumerate(["172.31.0.11", "172.31.0.12", "172.31.1.13", "172.31.1.14"])
    ]
    options = {"RouteReflectors": ["172.31.0.11", "172.31.1.13"]}
    client = BgpPeers(Daemon(), A("172.31.1.14"), N("10.244.3.0/24"), 64512, options, [N("172.31.1.0/24")])  # type: ignore[arg-type]
    assert client.peer_names(leases) == ["node_172_31_1_13"]  # its rack's reflector, not rack 0's
    assert client.off_link == [] and "rr client" not in client.config(leases)
    rr = BgpPeers(Daemon(), A("172.31.0.11"), N("10.244.0.0/24"), 64512, options, [N("172.31.0.0/24")])  # type: ignore[arg-type]
    assert rr.peer_names(leases) == ["node_172_31_0_12"] and "rr client;" in rr.config(leases)
    alone = BgpPeers(Daemon(), A("172.31.2.5"), N("10.244.9.0/24"), 64512, options, [N("172.31.2.0/24")])  # type: ignore[arg-type]
    assert alone.peer_names(leases) == [] and "none is on this node's networks" in alone.off_link[0]
    # the reflector of the segment has no lease (not started, or gone): said, not silent
    lonely = BgpPeers(Daemon(), A("172.31.1.14"), N("10.244.3.0/24"), 64512, options, [N("172.31.1.0/24")])  # type: ignore[arg-type]
    lonely.configured_at = {name: 0.0 for name in lonely.peer_names(leases[:2] + leases[3:])}
    assert lonely.configured_at == {} and "none of them holds a lease" in lonely._no_reflector()[0]
    lonely.configured_at = {name: 0.0 for name in lonely.peer_names(leases)}
    assert lonely._no_reflector() == []


def test_network_init_style_route_reflectors():
    config = make_config("10.244.0.0/16", backend="bgp", route_reflectors=["172.31.0.11"])
    assert config.backend_options == {"AS": 64512, "RouteReflectors": ["172.31.0.11"]}
