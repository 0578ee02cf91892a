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
