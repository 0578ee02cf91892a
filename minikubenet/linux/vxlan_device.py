"""The VXLAN device ``flannel.<VNI>``: created once per node, reused across restarts.

``ensure_vxlan_device`` follows flannel's ``newVXLANDevice``/``ensureLink``
(pkg/backend/vxlan/device.go):

1. if a device of that name exists and is compatible (same VNI, underlay, local IP,
   port, no multicast group, learning off) keep it: its MAC is what other nodes have
   in their FDB, and keeping it spares them a change;
2. if it is incompatible, delete it and create it again, logging why; if it cannot be
   deleted, or another device already holds our VNI, say so and stop;
3. create it with an explicit MAC (see vxlan.py ``random_vtep_mac``):
   ``kind vxlan, id VNI, local <public IP>, link <underlay>, dstport 8472, nolearning``;
4. MTU = underlay − 50, IPv6 ``accept_ra=0`` (flannel sets it: nothing should
   configure this device from router adverts), up;
5. once the lease is known: the subnet's network address as a /32 (``10.244.0.0/32``),
   the address peers use as our gateway, with no connected or broadcast route attached
   to it; other addresses inside the cluster network are removed.

The device exists *before* the node's lease is claimed, because its MAC goes into the
lease (``BackendData.VtepMAC``): call it first without ``subnet``, then again with the
lease's subnet and the MAC you published.

If something fails after we created the device, we delete it again: a half-configured
flannel.1 (say, down, or without its address) would look fine to a later run and be
reused.

Offloads: we change none, on purpose (the measurements are in docs/benchmarks.md).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import threading
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from minikubenet.linux import netns as _netns
from minikubenet.overlay.vxlan import VxlanSpec, incompatibility, random_vtep_mac, vtep_address

log = logging.getLogger(__name__)


class VxlanDeviceError(Exception):
    """The VXLAN device could not be made to match its spec; the message says why."""


def _info(link) -> tuple[str | None, Any]:
    info = link.get("IFLA_LINKINFO")
    if not info:
        return None, None
    return info.get("IFLA_INFO_KIND"), info.get("IFLA_INFO_DATA")


def vxlan_attrs(link) -> dict:
    """What the kernel says about a link, in the shape ``incompatibility`` compares."""
    kind, data = _info(link)
    out = {"kind": kind, "mtu": link.get("IFLA_MTU"), "mac": link.get("IFLA_ADDRESS")}
    if kind == "vxlan" and data is not None:
        out.update(
            vni=data.get("IFLA_VXLAN_ID"),
            link=data.get("IFLA_VXLAN_LINK"),
            local=data.get("IFLA_VXLAN_LOCAL"),
            port=data.get("IFLA_VXLAN_PORT"),
            group=data.get("IFLA_VXLAN_GROUP"),
            learning=bool(data.get("IFLA_VXLAN_LEARNING")),
            gbp=data.get("IFLA_VXLAN_GBP") is not None,
            l2miss=bool(data.get("IFLA_VXLAN_L2MISS")),
        )
    return out


def _lookup(ipr: IPRoute, name: str):
    found = ipr.link_lookup(ifname=name)
    return ipr.get_links(found[0])[0] if found else None


def _same_vni_device(ipr: IPRoute, spec: VxlanSpec) -> str | None:
    """Another VXLAN device already using our VNI on our UDP port: the kernel allows
    only one, and says EEXIST ("A VXLAN device with the specified VNI already exists")."""
    for link in ipr.get_links():
        attrs = vxlan_attrs(link)
        if (
            attrs["kind"] == "vxlan"
            and attrs.get("vni") == spec.vni
            and attrs.get("port") == spec.port
            and link.get("IFLA_IFNAME") != spec.name
        ):
            return link.get("IFLA_IFNAME")
    return None


def _create(ipr: IPRoute, spec: VxlanSpec, mac: str) -> int:
    try:
        ipr.link(
            "add",
            ifname=spec.name,
            kind="vxlan",
            address=mac,
            mtu=spec.mtu,
            vxlan_id=spec.vni,
            vxlan_local=spec.local_ip,
            vxlan_link=spec.underlay_index,
            vxlan_port=spec.port,
            vxlan_learning=int(spec.learning),
        )
    except NetlinkError as e:
        # EEXIST with no device of our name means another device holds VNI+port+local.
        other = _same_vni_device(ipr, spec) if e.code == errno.EEXIST else None
        if other:
            raise VxlanDeviceError(
                f"cannot create {spec.name}: device {other} already uses VNI {spec.vni} "
                f"on UDP port {spec.port}; delete it (ip link del {other}) "
                "or choose another VNI"
            ) from None
        raise VxlanDeviceError(
            f"cannot create {spec.name} (vni {spec.vni}, local {spec.local_ip}, "
            f"underlay index {spec.underlay_index}, port {spec.port}): {e}"
        ) from None
    return ipr.link_lookup(ifname=spec.name)[0]


def _delete(ipr: IPRoute, index: int, name: str) -> None:
    try:
        ipr.link("del", index=index)
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise VxlanDeviceError(
                f"{name} must be replaced but cannot be deleted: {e}; delete it by hand (ip link del {name})"
            ) from None


def _write_proc_sys(relpath: str, value: str, netns: str | None) -> None:
    """Write a /proc/sys file of the namespace at ``netns`` (None: our own).

    /proc/sys/net belongs to the network namespace of the thread that *opens* it, so
    for another namespace a short-lived thread enters it first (see linux/netns.py).
    """
    path = "/proc/sys/" + relpath

    def write():
        with open(path, "w") as f:
            f.write(value)

    if netns is None:
        write()
        return
    errors: list[BaseException] = []

    def enter_and_write():
        try:
            _netns._setns(netns)
            write()
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=enter_and_write, name="netns-sysctl")
    t.start()
    t.join()
    if errors:
        raise errors[0]


def _configure(ipr: IPRoute, index: int, spec: VxlanSpec, netns: str | None, mac: str | None) -> None:
    link = ipr.get_links(index)[0]
    if link.get("IFLA_MTU") != spec.mtu:
        ipr.link("set", index=index, mtu=spec.mtu)
    if mac and link.get("IFLA_ADDRESS") != mac:
        # Peers send to the VtepMAC in our lease: the device must keep answering to it.
        log.warning("%s has MAC %s, but our lease says %s: setting it back", spec.name, link.get("IFLA_ADDRESS"), mac)
        ipr.link("set", index=index, address=mac)
    # accept_ra: the name holds a dot, so this is a path, not a dotted sysctl key.
    try:
        _write_proc_sys(f"net/ipv6/conf/{spec.name}/accept_ra", "0", netns)
    except FileNotFoundError:
        pass  # IPv6 is disabled on this node: nothing to refuse
    ipr.link("set", index=index, state="up")


def ensure_vxlan_device(
    ipr: IPRoute,
    spec: VxlanSpec,
    netns: str | None = None,
    mac: str | None = None,
    subnet: ipaddress.IPv4Network | None = None,
    network: ipaddress.IPv4Network | None = None,
) -> tuple[int, str]:
    """Make ``spec.name`` the VXLAN device ``spec`` describes, up. Returns (ifindex, MAC).

    - ``netns``: path of the namespace ``ipr`` talks to, when that is not our own (the
      tests, the lab); needed for the accept_ra write.
    - ``mac``: the MAC the device must have: the VtepMAC already published in our lease
      (so a device deleted by hand comes back as peers know it). None before the lease
      exists: a new device then gets a random MAC, an existing one keeps its own.
    - ``subnet`` and ``network``: once the lease is known, also give the device its
      address (``ensure_vxlan_address``). Before that, leave them out.

    Idempotent and cheap (a few netlink round trips): the overlay controller calls it
    before every resync.
    """
    link = _lookup(ipr, spec.name)
    if link is not None:
        reason = incompatibility(vxlan_attrs(link), spec)
        if reason is not None:
            log.warning(
                "%s exists with an incompatible configuration (%s; wanted vs existing): recreating it",
                spec.name,
                reason,
            )
            _delete(ipr, link["index"], spec.name)
            link = None
    created = link is None
    index = _create(ipr, spec, mac or random_vtep_mac()) if created else link["index"]
    if created:
        log.info(
            "created %s (vni %d, local %s, port %d, mtu %d)", spec.name, spec.vni, spec.local_ip, spec.port, spec.mtu
        )
    try:
        _configure(ipr, index, spec, netns, mac)
        if subnet is not None:
            ensure_vxlan_address(ipr, index, vtep_address(subnet), network or subnet)
    except (NetlinkError, OSError) as e:
        if created:
            _delete(ipr, index, spec.name)  # never leave a half-configured device to be reused
        raise VxlanDeviceError(f"could not configure {spec.name}: {e}") from None
    return index, ipr.get_links(index)[0].get("IFLA_ADDRESS")


def ensure_vxlan_address(
    ipr: IPRoute, index: int, address: ipaddress.IPv4Interface, network: ipaddress.IPv4Network
) -> None:
    """Give the device ``address`` (the lease's network address /32) and remove every
    other IPv4 address inside the cluster ``network`` (a stale one from an earlier
    subnet would make this node answer for another node's gateway). Addresses outside
    the network are someone else's business and stay (flannel EnsureV4AddressOnLink)."""
    want = (str(address.ip), address.network.prefixlen)
    have = [(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)]
    for ip, plen in have:
        if (ip, plen) != want and ipaddress.IPv4Address(ip) in network:
            log.warning("removing stale address %s/%s from the VXLAN device (ours is now %s)", ip, plen, address)
            ipr.addr("del", index=index, address=ip, prefixlen=plen)
    if want not in have:
        ipr.addr("add", index=index, address=want[0], prefixlen=want[1])


def vxlan_device_exists(ipr: IPRoute, name: str) -> bool:
    """Is there a device by this name (before ``ensure_vxlan_device``: did we create it)?"""
    return bool(ipr.link_lookup(ifname=name))


def delete_vxlan_device(ipr: IPRoute, name: str) -> bool:
    """Remove the device (and with it every neighbour, FDB entry and route on it)."""
    link = _lookup(ipr, name)
    if link is None:
        return False
    _delete(ipr, link["index"], name)
    return True
