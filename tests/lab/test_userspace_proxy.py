"""The userspace proxy (proxy/userspace.py), the proxy-modes benchmark's baseline, on a
2-node lab: it balances connections over endpoints on both nodes, carries data intact
both ways, skips an endpoint that refuses, and its endpoints see the node, not the pod,
as the client (the mark of a userspace proxy). Keeps bench/proxy_modes.py from rotting.
"""

from __future__ import annotations

import pytest

from minikubenet.lab import probes, userspace_proxy
from minikubenet.lab import services as lab_services
from minikubenet.lab.topology import POD_PORT
from minikubenet.proxy.userspace import UserspaceError, parse_service
from tests.conftest import running_lab

CONNECTIONS = 60


@pytest.fixture(scope="module")
def lab(lab_root):
    """Name: lab. Scope: module. 2 nodes x 2 pods, no kube-proxy; the userspace proxy on n1."""
    with running_lab(lab_root, nodes=2, pods_per_node=2, proxy=False) as lab:
        eps = [(lab.pod_ips[p], POD_PORT) for p in ("n1-p2", "n2-p1", "n2-p2")]
        dead = ("10.244.254.254", POD_PORT)  # in no subnet: the proxy must try the next endpoint
        vip = str(userspace_proxy.USERSPACE_VIPS[0])
        userspace_proxy.start(lab, "n1", {(vip, 80): eps + [dead]})
        lab.vip = vip
        yield lab


def test_connections_are_spread_over_every_endpoint(lab):
    netns = lab.topo.node("n1").pods[0].netns  # n1-p1
    got = lab_services.hit(netns, lab.vip, 80, CONNECTIONS, workers=8)
    assert got["<error>"] == 0, got
    assert set(got) == {"n1-p2", "n2-p1", "n2-p2"}
    assert min(got.values()) >= 5, got  # random over 3 (+1 dead): each ~15-20 of 60


def test_data_crosses_intact_and_the_endpoint_sees_the_node(lab):
    netns = lab.topo.node("n1").pods[0].netns
    seconds = probes.transfer(netns, lab.vip, 80, 8 * 1024 * 1024)
    assert seconds < 10
    who = probes.whoami(netns, lab.vip, 80)
    assert who["client"] != lab.pod_ips["n1-p1"]  # the proxy connected, not the pod


def test_a_bad_service_spec_is_a_clear_error():
    with pytest.raises(UserspaceError, match="IPv4:PORT"):
        parse_service("10.96.0.1:80=nowhere")
    with pytest.raises(UserspaceError, match="expected CLUSTERIP:PORT="):
        parse_service("10.96.0.1:80")
