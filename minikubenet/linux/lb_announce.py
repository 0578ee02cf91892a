"""Answering ARP for a LoadBalancer IP on this node (layer-2 mode), and telling the LAN.

The IP becomes a /32 address on the underlay interface, labelled ``<if>:mknlb``: the
kernel then answers ARP requests for it like for any local address (arp_ignore=0), and
the proxy's rules DNAT what arrives (KUBE-SERVICES / @service-ips match the LB IP in
PREROUTING, before the address being local matters). The label is our mark: only
addresses carrying it are ever removed here, never an address someone else added.

On taking an IP over (failover) we send a gratuitous ARP (an ARP request from the IP
to itself, broadcast; RFC 5227 section 3 "ARP Announcement") so that switches and the
clients' neighbour caches move to our MAC at once instead of after their timeout.
MetalLB's speaker does the same (internal/layer2/arp.go, gratuitous on acquire).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

LABEL_SUFFIX = ":mknlb"
ETH_P_ARP = 0x0806


class AnnounceError(Exception):
    pass


def _label(ifname: str) -> str:
    return (ifname + LABEL_SUFFIX)[:15]  # IFNAMSIZ - 1


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise AnnounceError(f"interface {ifname} does not exist")
    return found[0]


def announced(ipr: IPRoute, ifname: str) -> set[ipaddress.IPv4Address]:
    """The LB IPs this node answers for: /32 addresses with our label."""
    index = _index(ipr, ifname)
    return {
        ipaddress.IPv4Address(a.get_attr("IFA_ADDRESS"))
        for a in ipr.get_addr(index=index, family=socket.AF_INET)
        if a.get_attr("IFA_LABEL") == _label(ifname) and a["prefixlen"] == 32
    }


def ensure_announced(ipr: IPRoute, ifname: str, ip: ipaddress.IPv4Address) -> bool:
    """Add the labelled /32 (idempotent); True when it was added now (then announce)."""
    if ip in announced(ipr, ifname):
        return False
    index = _index(ipr, ifname)
    try:
        ipr.addr("add", index=index, address=str(ip), prefixlen=32, label=_label(ifname))
    except NetlinkError as e:
        raise AnnounceError(f"cannot add {ip}/32 to {ifname}: {e}") from None
    send_gratuitous_arp(ifname, ip)
    return True


def withdraw(ipr: IPRoute, ifname: str, ip: ipaddress.IPv4Address) -> bool:
    """Remove the address, only if it carries our label; True when removed."""
    if ip not in announced(ipr, ifname):
        return False
    ipr.addr("del", index=_index(ipr, ifname), address=str(ip), prefixlen=32)
    return True


def gratuitous_arp_frame(mac: bytes, ip: ipaddress.IPv4Address) -> bytes:
    """Ethernet broadcast + ARP request with sender IP = target IP = ``ip``."""
    eth = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip.packed, b"\x00" * 6, ip.packed)
    return eth + arp


def send_gratuitous_arp(ifname: str, ip: ipaddress.IPv4Address, count: int = 2) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, ETH_P_ARP))
        mac = s.getsockname()[4][:6]
        frame = gratuitous_arp_frame(mac, ip)
        for _ in range(count):
            s.send(frame)


def reconcile(ifname: str, want: set[ipaddress.IPv4Address]) -> tuple[list[str], list[str]]:
    """Answer for exactly ``want`` on ``ifname`` (our labelled addresses only):
    (added, withdrawn)."""
    added, removed = [], []
    with IPRoute() as ipr:
        have = announced(ipr, ifname)
        for ip in sorted(want - have):
            ensure_announced(ipr, ifname, ip)
            added.append(str(ip))
        for ip in sorted(have - want):
            withdraw(ipr, ifname, ip)
            removed.append(str(ip))
    return added, removed
