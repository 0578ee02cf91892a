"""Finding the node's own address: which interface holds the public IP, and its MTU."""

from __future__ import annotations

from dataclasses import dataclass

from pyroute2 import IPRoute


@dataclass(frozen=True)
class Underlay:
    ifname: str
    index: int
    ip: str
    mtu: int


class UnderlayNotFound(Exception):
    pass


def find_underlay(ipr: IPRoute, public_ip: str | None = None, iface: str | None = None) -> Underlay:
    """The interface the overlay runs over. ``iface`` wins; else the one holding
    ``public_ip``; else the interface of the default route (flannel's choice)."""
    if iface:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            raise UnderlayNotFound(f"interface {iface} (--iface) does not exist on this node")
        index = found[0]
        addrs = [a.get("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)]
        if public_ip and public_ip not in addrs:
            raise UnderlayNotFound(f"--public-ip {public_ip} is not an address of {iface} (it has {addrs or 'none'})")
        if not addrs and not public_ip:
            raise UnderlayNotFound(f"interface {iface} has no IPv4 address")
        return Underlay(iface, index, public_ip or addrs[0], ipr.get_links(index)[0].get("IFLA_MTU"))
    if public_ip:
        for a in ipr.get_addr(family=2):
            if a.get("IFA_ADDRESS") == public_ip:
                link = ipr.get_links(a["index"])[0]
                return Underlay(link.get("IFLA_IFNAME"), a["index"], public_ip, link.get("IFLA_MTU"))
        raise UnderlayNotFound(
            f"--public-ip {public_ip} is not an address of any interface on this node; "
            "give an address the node has, or --iface"
        )
    for r in ipr.get_routes(family=2, dst_len=0, table=254):
        index = r.get("RTA_OIF")
        addrs = [a.get("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)]
        if addrs:
            link = ipr.get_links(index)[0]
            return Underlay(link.get("IFLA_IFNAME"), index, addrs[0], link.get("IFLA_MTU"))
    raise UnderlayNotFound("no default route to pick the node's interface from; give --public-ip or --iface")


def interface_ips(ipr: IPRoute) -> list[str]:
    """Every IPv4 address of the namespace's interfaces."""
    return [a.get("IFA_ADDRESS") for a in ipr.get_addr(family=2)]
