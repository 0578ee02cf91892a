"""Announcing a LoadBalancer IP over BGP from this node: a marked route BIRD picks up.

With the bgp backend the LB speaker does not answer ARP; it tells the node's BIRD to
announce the IP (MetalLB's BGP mode). It does so without touching the agent's BIRD
config or control socket: each IP it announces becomes a ``blackhole <ip>/32`` route
in kernel table ``LB_TABLE`` with routing protocol ``LB_PROTO``. No ``ip rule`` looks
up that table, so the routes steer no packet on this node (traffic to the LB IP is
DNATed by the proxy's rules in PREROUTING before any route matters); BIRD's second
kernel protocol ``learn``s the table (overlay/bird_config.py) and exports the /32s to
its peers with this node as next hop. BIRD follows the table through netlink
notifications, so a withdrawn route leaves BGP within a second.

The table and protocol numbers are our mark: only routes carrying both are ever
removed here, never a route someone else put in (an admin's own table 2410 routes with
another protocol stay).
"""

from __future__ import annotations

import ipaddress
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

LB_TABLE = 2410  # a table no rule consults; bird_config renders the same number
LB_PROTO = 233  # "minikubenet-lb" (unassigned in iproute2's rt_protos)
RTN_BLACKHOLE = 6


class LbRouteError(Exception):
    pass


def announced(ipr: IPRoute) -> set[ipaddress.IPv4Address]:
    """The LB IPs this node announces: our /32s in our table, with our protocol."""
    out = set()
    for r in ipr.get_routes(family=socket.AF_INET, table=LB_TABLE):
        if r.get_attr("RTA_TABLE") == LB_TABLE and r["proto"] == LB_PROTO and r["dst_len"] == 32:
            out.add(ipaddress.IPv4Address(r.get_attr("RTA_DST")))
    return out


def reconcile(want: set[ipaddress.IPv4Address]) -> tuple[list[str], list[str]]:
    """Announce exactly ``want`` (our marked routes only): (added, withdrawn)."""
    added, removed = [], []
    with IPRoute() as ipr:
        have = announced(ipr)
        for ip in sorted(want - have):
            try:
                ipr.route("add", dst=f"{ip}/32", table=LB_TABLE, proto=LB_PROTO, type=RTN_BLACKHOLE)
            except NetlinkError as e:
                raise LbRouteError(f"cannot add the route for {ip} to table {LB_TABLE}: {e}") from None
            added.append(str(ip))
        for ip in sorted(have - want):
            try:
                ipr.route("del", dst=f"{ip}/32", table=LB_TABLE, proto=LB_PROTO, type=RTN_BLACKHOLE)
            except NetlinkError as e:
                if e.code != 3:  # ESRCH: gone meanwhile
                    raise LbRouteError(f"cannot remove the route for {ip} from table {LB_TABLE}: {e}") from None
            removed.append(str(ip))
    return added, removed
