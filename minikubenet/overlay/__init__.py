"""The overlay: how a packet for a pod on another node finds that node.

Every node holds one subnet lease in etcd (``subnet_lease.py``). For each *remote*
lease the agent programs a few kernel entries so that traffic for the remote subnet
leaves towards the node that owns it. Which entries depends on the backend:

- ``vxlan.py``   – flannel's default: per remote node one neighbour (ARP) entry, one
                   FDB entry and one route on the VXLAN device ``flannel.<VNI>``; the
                   kernel wraps each inner Ethernet frame in UDP (port 8472);
- ``host_gw.py`` – no encapsulation: per remote node one plain route via its public
                   IP; needs all nodes on one L2 segment.

The pieces, model -> plan -> apply:

- ``leases.py``     – pure state machine over the remote leases (etcd snapshot and
                      watch events -> Added/Removed events);
- ``vxlan.py``, ``host_gw.py`` – pure: a lease -> a ``PeerPlan`` (this module's types);
- ``minikubenet/linux/vxlan_device.py``, ``minikubenet/linux/overlay_routes.py`` –
                      the only parts that touch the kernel;
- ``controller.py`` – the loop the agent runs: program all leases at start, follow the
                      watch, and reconcile periodically against what the kernel holds.

This module holds the plan vocabulary shared by the backends, and ``reconcile``, the
pure comparison of "what we want" with "what the kernel has".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True)
class Neigh:
    """A permanent neighbour (ARP) entry: ``ip neigh replace IP lladdr MAC dev DEV nud permanent``."""

    dev: str
    ip: ipaddress.IPv4Address
    mac: str

    def key(self) -> tuple:
        # The kernel keeps one neighbour per (device, IP): a "replace" overwrites the MAC.
        return ("neigh", self.dev, self.ip)

    def __str__(self) -> str:
        return f"neigh {self.ip} lladdr {self.mac} dev {self.dev} permanent"


@dataclass(frozen=True)
class Fdb:
    """A VXLAN forwarding entry: ``bridge fdb replace MAC dev DEV dst IP self permanent``.
    It tells the VXLAN device which underlay IP to send frames for MAC to."""

    dev: str
    mac: str
    dst: ipaddress.IPv4Address

    def key(self) -> tuple:
        # Keyed by MAC on the device; "replace" rewrites the destination.
        return ("fdb", self.dev, self.mac)

    def __str__(self) -> str:
        return f"fdb {self.mac} dev {self.dev} dst {self.dst} self permanent"


@dataclass(frozen=True)
class Route:
    """``ip route replace DST via GATEWAY dev DEV [onlink]`` in the main table."""

    dst: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    dev: str
    onlink: bool = False

    def key(self) -> tuple:
        # One route per destination in the main table: "replace" swaps gateway/device.
        return ("route", self.dst)

    def __str__(self) -> str:
        return f"route {self.dst} via {self.gateway} dev {self.dev}{' onlink' if self.onlink else ''}"


Entry = Union[Neigh, Fdb, Route]


@dataclass(frozen=True)
class PeerPlan:
    """Everything one remote lease needs, in the order it must be installed.

    VXLAN: neighbour, then FDB, then the route (flannel vxlan.go design notes): once the
    route exists the kernel may send to the gateway at once, and the gateway's MAC and
    that MAC's underlay address must already be known. host-gw and DirectRouting: a
    route only (``neigh`` and ``fdb`` are None).
    """

    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
    route: Route
    neigh: Neigh | None = None
    fdb: Fdb | None = None

    def entries(self) -> list[Entry]:
        """Install order."""
        return [e for e in (self.neigh, self.fdb, self.route) if e is not None]

    def removal_order(self) -> list[Entry]:
        # The route goes first, so that nothing is routed to a peer that is half gone.
        return list(reversed(self.entries()))

    def __str__(self) -> str:
        return "; ".join(str(e) for e in self.entries())


@dataclass(frozen=True)
class Skipped:
    """A lease we cannot or will not program, and why (logged once by the controller)."""

    subnet: ipaddress.IPv4Network
    reason: str

    def __str__(self) -> str:
        return f"not programming {self.subnet}: {self.reason}"


@dataclass(frozen=True)
class KernelState:
    """The overlay entries the kernel holds now (read back by linux/overlay_routes.py)."""

    neighs: frozenset = field(default_factory=frozenset)
    fdbs: frozenset = field(default_factory=frozenset)
    routes: frozenset = field(default_factory=frozenset)

    def entries(self) -> set:
        return set(self.neighs) | set(self.fdbs) | set(self.routes)


_INSTALL_RANK = {Neigh: 0, Fdb: 1, Route: 2}


def reconcile(wanted: list[PeerPlan], current: KernelState) -> tuple[list[Entry], list[Entry]]:
    """Compare the plans with the kernel: ``(to_add, to_remove)``.

    - ``to_add``: wanted entries the kernel does not hold exactly (missing, or a
      different MAC/destination/gateway), neighbours first, then FDB, then routes.
    - ``to_remove``: kernel entries nobody wants; routes first. An entry whose *key* is
      still wanted is not removed: the "replace" in ``to_add`` overwrites it, and
      deleting it first would open a gap (and could delete the new value).

    Apply ``to_remove`` first, then ``to_add``.
    """
    want = {}
    for plan in wanted:
        for e in plan.entries():
            want[e.key()] = e
    have = current.entries()
    to_add = [e for e in want.values() if e not in have]
    to_remove = [e for e in have if e.key() not in want]
    to_add.sort(key=lambda e: (_INSTALL_RANK[type(e)], str(e)))
    to_remove.sort(key=lambda e: (-_INSTALL_RANK[type(e)], str(e)))
    return to_add, to_remove


def removable(plan: PeerPlan, still_wanted: list[PeerPlan]) -> list[Entry]:
    """The entries of a removed peer that no remaining peer needs, in removal order.

    Two leases can share an entry: a node that moved to a new subnet keeps its VtepMAC,
    so its old and new lease name the same FDB entry. Deleting it with the old lease
    would cut off the new one.
    """
    keep = {e.key() for p in still_wanted for e in p.entries()}
    return [e for e in plan.removal_order() if e.key() not in keep]
