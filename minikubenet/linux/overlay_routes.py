"""Programming remote peers: neighbour, FDB and route entries, and reading them back.

The netlink calls behind a ``PeerPlan`` (overlay/__init__.py), as flannel makes them
(pkg/backend/vxlan/device.go, vxlan_network.go):

    neigh  RTM_NEWNEIGH  AF_INET    NUD_PERMANENT          on flannel.1   (NLM_F_REPLACE)
    fdb    RTM_NEWNEIGH  AF_BRIDGE  NUD_PERMANENT NTF_SELF on flannel.1   (NLM_F_REPLACE)
    route  RTM_NEWROUTE  main table, RTNH_F_ONLINK                        (NLM_F_REPLACE)

Every add is a *replace*, so applying a plan twice changes nothing, and a plan with a
new MAC or gateway overwrites the old value in place. ``NTF_SELF`` puts the FDB entry
into the VXLAN device's own table (not a bridge master's); that table is where the
device looks up the underlay destination of a MAC.

If one step of a peer fails, the steps before it are undone (flannel does the same):
a neighbour without its FDB entry would silently swallow traffic.

Deletions continue past "already gone" (ENOENT for neighbours and FDB entries, ESRCH
for routes, ENODEV when the device itself is gone): removing a peer twice, or one that
someone already cleaned up by hand, is a success.

``read_state`` reads back what the kernel holds on our devices, for
``overlay.reconcile``: permanent IPv4 neighbours and FDB entries with a remote
destination on the VXLAN device, and main-table routes into the cluster network on
the overlay devices (flannel.1, and the underlay for host-gw/DirectRouting).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from minikubenet.overlay import Entry, Fdb, KernelState, Neigh, PeerPlan, Route

log = logging.getLogger(__name__)

NUD_PERMANENT = ndmsg.states["permanent"]
NTF_SELF = ndmsg.flags["self"]
RTNH_F_ONLINK = 4
MAIN_TABLE = 254
# Errors that mean "the thing to delete is not there": success for a delete.
ALREADY_GONE = {"ENOENT", "ESRCH", "ENODEV", "EADDRNOTAVAIL"}


class OverlayRouteError(Exception):
    pass


def _is_already_gone(e: NetlinkError) -> bool:
    return errno.errorcode.get(e.code) in ALREADY_GONE


class Devices:
    """Name -> ifindex, looked up once per batch (plans name devices, netlink wants indexes)."""

    def __init__(self, ipr: IPRoute):
        self.ipr = ipr
        self._cache: dict[str, int] = {}

    def index(self, name: str) -> int:
        if name not in self._cache:
            found = self.ipr.link_lookup(ifname=name)
            if not found:
                raise OverlayRouteError(f"device {name} does not exist")
            self._cache[name] = found[0]
        return self._cache[name]


# -- one entry ------------------------------------------------------------------------------


def add_entry(ipr: IPRoute, devs: Devices, e: Entry) -> None:
    index = devs.index(e.dev)
    if isinstance(e, Neigh):
        ipr.neigh("replace", ifindex=index, dst=str(e.ip), lladdr=e.mac, state=NUD_PERMANENT)
    elif isinstance(e, Fdb):
        ipr.neigh(
            "replace",
            family=socket.AF_BRIDGE,
            ifindex=index,
            lladdr=e.mac,
            dst=str(e.dst),
            state=NUD_PERMANENT,
            flags=NTF_SELF,
        )
    else:
        ipr.route(
            "replace",
            dst=str(e.dst),
            gateway=str(e.gateway),
            oif=index,
            table=MAIN_TABLE,
            flags=RTNH_F_ONLINK if e.onlink else 0,
        )


def delete_entry(ipr: IPRoute, devs: Devices, e: Entry) -> bool:
    """Delete one entry; False if it was already gone."""
    try:
        index = devs.index(e.dev)
        if isinstance(e, Neigh):
            ipr.neigh("del", ifindex=index, dst=str(e.ip), lladdr=e.mac)
        elif isinstance(e, Fdb):
            ipr.neigh("del", family=socket.AF_BRIDGE, ifindex=index, lladdr=e.mac, dst=str(e.dst), flags=NTF_SELF)
        else:
            ipr.route("del", dst=str(e.dst), gateway=str(e.gateway), oif=index, table=MAIN_TABLE)
    except OverlayRouteError:
        return False  # the device is gone, and everything on it with it
    except NetlinkError as err:
        if _is_already_gone(err):
            return False
        raise
    return True


# -- batches and plans -------------------------------------------------------------------------


def add_entries(ipr: IPRoute, entries: Iterable[Entry]) -> list[str]:
    """Add (replace) all of ``entries`` in the given order, going on past errors (one
    broken peer must not keep the others out); returns the errors it met."""
    devs = Devices(ipr)
    errors = []
    for e in entries:
        try:
            add_entry(ipr, devs, e)
        except (NetlinkError, OverlayRouteError) as err:
            errors.append(f"could not add {e}: {err}")
    return errors


def delete_entries(ipr: IPRoute, entries: Iterable[Entry]) -> list[str]:
    """Delete all of ``entries``, going on past errors; returns the errors it met."""
    devs = Devices(ipr)
    errors = []
    for e in entries:
        try:
            delete_entry(ipr, devs, e)
        except NetlinkError as err:
            errors.append(f"could not delete {e}: {err}")
    return errors


def apply_plan(ipr: IPRoute, plan: PeerPlan) -> None:
    """Install one peer in order (neighbour, FDB, route); on failure undo what was done."""
    devs = Devices(ipr)
    done: list[Entry] = []
    for e in plan.entries():
        try:
            add_entry(ipr, devs, e)
        except (NetlinkError, OverlayRouteError) as err:
            for undo in reversed(done):
                try:
                    delete_entry(ipr, devs, undo)
                except NetlinkError as undo_err:
                    log.warning("while undoing %s: %s", undo, undo_err)
            raise OverlayRouteError(f"could not add {e} for {plan.subnet}: {err}") from None
        done.append(e)


def remove_plan(ipr: IPRoute, plan: PeerPlan) -> list[str]:
    """Remove one peer (route, FDB, neighbour); returns the errors other than "already gone"."""
    return delete_entries(ipr, plan.removal_order())


# -- reading back -------------------------------------------------------------------------------


def connected_networks(ipr: IPRoute, index: int) -> list[ipaddress.IPv4Network]:
    """The IPv4 subnets directly attached to an interface (its L2 segment)."""
    return [
        ipaddress.IPv4Interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}").network
        for a in ipr.get_addr(index=index, family=socket.AF_INET)
    ]


def read_state(
    ipr: IPRoute, vxlan_dev: str | None, route_devs: Iterable[str], network: ipaddress.IPv4Network
) -> KernelState:
    """The overlay entries the kernel holds now.

    ``vxlan_dev``: neighbours and FDB entries are read from it (None for host-gw).
    ``route_devs``: devices whose routes into ``network`` are ours (a route into the
    cluster network on the underlay or the VXLAN device can only be the overlay's).
    """
    names = {}
    for link in ipr.get_links():
        names[link["index"]] = link.get("IFLA_IFNAME")
    by_name = {v: k for k, v in names.items()}
    neighs, fdbs, routes = set(), set(), set()
    vx = by_name.get(vxlan_dev) if vxlan_dev else None
    if vx is not None and vxlan_dev:
        for n in ipr.get_neighbours(family=socket.AF_INET, ifindex=vx):
            if n["state"] & NUD_PERMANENT and n.get("NDA_LLADDR"):
                neighs.add(Neigh(vxlan_dev, ipaddress.IPv4Address(n.get("NDA_DST")), n.get("NDA_LLADDR")))
        for n in ipr.get_neighbours(family=socket.AF_BRIDGE, ifindex=vx):
            # Entries without NDA_DST are the device's own unicast/multicast addresses.
            if n.get("NDA_DST") and n["state"] & NUD_PERMANENT:
                fdbs.add(Fdb(vxlan_dev, n.get("NDA_LLADDR"), ipaddress.IPv4Address(n.get("NDA_DST"))))
    wanted_oifs = {by_name[d] for d in route_devs if d in by_name}
    for r in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
        oif, gateway = r.get("RTA_OIF"), r.get("RTA_GATEWAY")
        if oif not in wanted_oifs or gateway is None or r.get("RTA_TABLE", r["table"]) != MAIN_TABLE:
            continue
        dst = ipaddress.IPv4Network(f"{r.get('RTA_DST', '0.0.0.0')}/{r['dst_len']}")
        if dst.subnet_of(network):
            routes.add(Route(dst, ipaddress.IPv4Address(gateway), names[oif], bool(r["flags"] & RTNH_F_ONLINK)))
    return KernelState(frozenset(neighs), frozenset(fdbs), frozenset(routes))


# -- the overlay controller's kernel (overlay/controller.py) -------------------------------------


class NetlinkKernel:
    """The real kernel behind the overlay loop's four calls, over one IPRoute socket
    (the tests' fake has the same calls over dicts: tests/unit/test_overlay_plan.py)."""

    def __init__(self, ipr: IPRoute, network: ipaddress.IPv4Network):
        self.ipr = ipr
        self.network = network

    @classmethod
    def open(cls, network: ipaddress.IPv4Network) -> NetlinkKernel:
        """One on a new socket in the calling thread's namespace (the controller calls
        this on its worker thread)."""
        return cls(IPRoute(), network)

    def apply_plan(self, plan: PeerPlan) -> None:
        apply_plan(self.ipr, plan)

    def add(self, entries: list[Entry]) -> list[str]:
        return add_entries(self.ipr, entries)

    def delete(self, entries: list[Entry]) -> list[str]:
        return delete_entries(self.ipr, entries)

    def read(self, backend) -> KernelState:
        """``backend``: overlay/controller.py's VxlanBackend or HostGwBackend."""
        return read_state(self.ipr, backend.vxlan_dev, backend.route_devs, self.network)

    def close(self) -> None:
        self.ipr.close()
