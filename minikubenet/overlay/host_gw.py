"""The host-gw backend: no tunnel, just one route per remote node.

``ip route replace 10.244.1.0/24 via <node B's PublicIP> dev <underlay>``: the node
itself becomes the pods' gateway (flannel pkg/backend/hostgw/hostgw.go,
pkg/backend/route_network.go). Pod packets cross the underlay unwrapped, so the pod MTU
is the underlay MTU and nothing is spent on encapsulation.

The catch: a route's gateway must be directly reachable. If node B sits behind a router,
``via <B>`` is refused by the kernel ("Nexthop has invalid gateway") or, worse, the
router drops packets for a pod subnet it has never heard of. So host-gw needs every node
on one L2 segment; a peer outside our connected subnets gets a ``Skipped`` with the
reason instead of a route. flannel asks ``ip route get <PublicIP>`` and wants one route
without a gateway (pkg/ip/iface.go DirectRouting); we ask the equivalent question of
the underlay's connected subnets, which keeps this module pure.

The same test decides VXLAN's DirectRouting option (vxlan.py), which is host-gw for the
peers that happen to share our segment.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Union

from minikubenet.overlay import PeerPlan, Route, Skipped
from minikubenet.subnet_lease_record import SubnetLeaseRecord

BACKEND_TYPE = "host-gw"


class HostGwError(Exception):
    """The node cannot run host-gw at all (not a per-peer problem)."""


def on_segment(public_ip: ipaddress.IPv4Address, connected: Iterable[ipaddress.IPv4Network]) -> bool:
    """Is ``public_ip`` inside one of the underlay's connected subnets (same L2 segment)?"""
    return any(public_ip in net for net in connected)


def parse_public_ip(lease: SubnetLeaseRecord) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(lease.public_ip)
    except ValueError:
        return None


def check_public_ip(public_ip: str, interface_ips: Iterable[str]) -> None:
    """host-gw cannot work behind NAT: the IP we publish must be on our interface
    (flannel refuses to start otherwise, hostgw.go)."""
    ips = list(interface_ips)
    if public_ip not in ips:
        raise HostGwError(
            f"host-gw needs the public IP {public_ip} to be an address of the underlay "
            f"interface (it has {', '.join(ips) or 'none'}): host-gw does not work behind NAT"
        )


def direct_route(lease: SubnetLeaseRecord, public_ip: ipaddress.IPv4Address, underlay_dev: str) -> PeerPlan:
    return PeerPlan(
        subnet=lease.subnet, public_ip=public_ip, route=Route(dst=lease.subnet, gateway=public_ip, dev=underlay_dev)
    )


def plan_peer(
    lease: SubnetLeaseRecord, underlay_dev: str, connected: Iterable[ipaddress.IPv4Network]
) -> Union[PeerPlan, Skipped]:
    """The route for one remote lease, or why there is none."""
    if lease.backend_type != BACKEND_TYPE:
        # flannel route_network.go: "Ignoring non-host-gw subnet"
        return Skipped(lease.subnet, f"its BackendType is {lease.backend_type!r}, not {BACKEND_TYPE!r}")
    public_ip = parse_public_ip(lease)
    if public_ip is None:
        return Skipped(lease.subnet, f"its PublicIP {lease.public_ip!r} is not an IPv4 address")
    connected = list(connected)
    if not on_segment(public_ip, connected):
        nets = ", ".join(str(n) for n in connected) or "none"
        return Skipped(
            lease.subnet,
            f"its node {public_ip} is not on our L2 segment ({underlay_dev} is connected to {nets}); "
            f"host-gw needs all nodes on one segment: use the vxlan backend",
        )
    return direct_route(lease, public_ip, underlay_dev)
