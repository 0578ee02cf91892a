"""Packet-level proof: what crosses the underlay when one pod talks to a pod on
another node. With VXLAN: outer UDP to port 8472, VNI 1, outer addresses = the two
nodes' public IPs, inner addresses = the two pods' IPs. With host-gw: the pods' own
packets, no encapsulation at all."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP

from minikubenet.lab import probes
from minikubenet.lab.capture import Capture, vxlan_packets, wait_for
from minikubenet.lab.topology import POD_PORT
from tests.conftest import make_lab


def talk_across(lab):
    src, dst = lab.topo.node("n1").pods[0], lab.topo.node("n2").pods[0]
    ips = {name: rec["ip"] for name, rec in lab.pods().items()}
    with Capture(lab.topo.switch_netns, lab.topo.node("n1").switch_port) as cap:
        assert probes.whoami(src.netns, ips[dst.name], POD_PORT)["pod"] == dst.name
        wait_for(lambda: len(cap.frames) >= 6)
    return cap.decoded(), ips[src.name], ips[dst.name]


def test_vxlan_capture_shows_vni_1_on_port_8472_between_the_nodes(three_nodes):
    lab = three_nodes
    frames, src_ip, dst_ip = talk_across(lab)
    packets = vxlan_packets(frames)
    assert packets, f"no VXLAN packets among {len(frames)} frames"
    n1, n2 = str(lab.topo.node("n1").ip), str(lab.topo.node("n2").ip)
    forward = [p for p in packets if p[3].src == src_ip and p[3].dst == dst_ip]
    back = [p for p in packets if p[3].src == dst_ip and p[3].dst == src_ip]
    assert forward and back, "both directions of the TCP exchange are encapsulated"
    for outer_ip, outer_udp, vx, _inner_ip in forward:
        assert (outer_ip.src, outer_ip.dst) == (n1, n2)
        assert outer_udp.dport == 8472
        assert vx.vni == 1
    for outer_ip, _, vx, _ in back:
        assert (outer_ip.src, outer_ip.dst) == (n2, n1) and vx.vni == 1


@pytest.fixture(scope="module")
def host_gw_lab(lab_root):
    lab = make_lab(lab_root, nodes=2, pods_per_node=1, backend="host-gw")
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def test_host_gw_capture_shows_the_pod_packets_themselves(host_gw_lab):
    frames, src_ip, dst_ip = talk_across(host_gw_lab)
    assert not vxlan_packets(frames)
    plain = [f for f in frames if IP in f and f[IP].src == src_ip and f[IP].dst == dst_ip]
    assert plain, "the pod's own packet crosses the underlay unchanged"
    assert not any(UDP in f and f[UDP].dport == 8472 for f in frames)
