"""Layer-2 announcement in a real kernel: the labelled /32 appears and disappears, only
ours is ever removed, and a gratuitous ARP for the IP leaves the interface on takeover.
In a throwaway namespace (``netns`` fixture); needs root."""

import ipaddress
import os
import socket
import sys

import pytest

from minikubenet.linux.netns import path_of, socket_in
from tests.netns.node_in_one_ns import run

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

IP = ipaddress.IPv4Address("172.31.0.240")


def addresses(ns):
    return run(ns, "ip", "-4", "-o", "addr", "show", "dev", "lan0")


def test_announce_withdraw_and_gratuitous_arp(netns):
    run(netns, "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan1")
    run(netns, "ip", "link", "set", "lan0", "up")
    run(netns, "ip", "link", "set", "lan1", "up")
    run(netns, "ip", "addr", "add", "172.31.0.11/24", "dev", "lan0")
    run(netns, "ip", "addr", "add", "172.31.0.241/32", "dev", "lan0")  # someone else's

    listener = socket_in(path_of(netns), socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    listener.bind(("lan1", 0x0806))
    listener.settimeout(5)

    def reconcile(*ips):
        code = (
            "import ipaddress, sys; from minikubenet.linux import lb_announce; "
            "print(lb_announce.reconcile('lan0', {ipaddress.IPv4Address(a) for a in sys.argv[1:]}))"
        )
        return run(netns, sys.executable, "-c", code, *ips).strip()

    try:
        assert reconcile(str(IP)) == "(['172.31.0.240'], [])"
        frames = []
        while not any(f[28:32] == IP.packed and f[38:42] == IP.packed for f in frames):
            frames.append(listener.recv(128))  # times out (fails) if none comes
    finally:
        listener.close()
    garp = next(f for f in frames if f[28:32] == IP.packed)
    assert garp[:6] == b"\xff" * 6 and garp[20:22] == b"\x00\x01"  # broadcast ARP request
    assert "172.31.0.240/32" in addresses(netns) and "lan0:mknlb" in addresses(netns)
    assert reconcile(str(IP)) == "([], [])"  # idempotent
    assert reconcile() == "([], ['172.31.0.240'])"
    assert "172.31.0.240" not in addresses(netns)
    assert "172.31.0.241/32" in addresses(netns)  # not ours: kept
