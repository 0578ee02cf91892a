"""The VXLAN backend, pure part: the device we want and what each remote lease needs.

How a pod packet crosses (flannel pkg/backend/vxlan/vxlan.go, design notes):

    pod 10.244.0.5 -> 10.244.1.7
      route   10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink
      neigh   10.244.1.0 lladdr <B's VtepMAC>       the inner Ethernet destination
      fdb     <B's VtepMAC> dst <B's PublicIP>      where the VXLAN device sends it
      kernel  wraps the frame: outer IP/UDP to B:8472, VNI 1 -> B's flannel.1 unwraps

Each remote node costs exactly one route, one neighbour and one FDB entry, all
permanent, all written by us: the device runs with learning off and without L2MISS/
L3MISS, so the kernel never floods or asks. The gateway ``10.244.1.0`` is node B's
subnet network address, which B carries as a /32 on its own flannel.1; ``onlink``
tells the kernel to trust that it is reachable through flannel.1 even though no
connected subnet covers it.

The device: ``flannel.<VNI>``, UDP port 8472 (the Linux default that predates IANA's
4789), local address = the node's public IP, bound to the underlay interface, and an
MTU 50 bytes below the underlay's, because every inner frame gains 50 bytes:

    outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14 = 50     (1500 -> 1450)

DirectRouting: peers on our own L2 segment need no tunnel; they get the host-gw route
(``via <PublicIP>``) instead of the three entries (host_gw.py).
"""

from __future__ import annotations

import ipaddress
import random
import re
from dataclasses import dataclass
from typing import Union

from minikubenet.overlay import Fdb, Neigh, PeerPlan, Route, Skipped
from minikubenet.overlay.host_gw import direct_route, on_segment, parse_public_ip
from minikubenet.subnet_lease_record import SubnetLeaseRecord

BACKEND_TYPE = "vxlan"
DEFAULT_VNI = 1
DEFAULT_PORT = 8472  # the kernel's historical VXLAN port; flannel's default (Port 0)
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
MIN_IPV4_MTU = 68  # RFC 791: every IPv4 link must carry 68 bytes

_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")


def device_name(vni: int) -> str:
    """flannel's name: ``flannel.1`` for VNI 1 (vxlan.go)."""
    return f"flannel.{vni}"


def overlay_mtu(underlay_mtu: int) -> int:
    """The VXLAN device's (and the pods') MTU: 1500 -> 1450, 9000 -> 8950."""
    mtu = underlay_mtu - VXLAN_OVERHEAD
    if mtu < MIN_IPV4_MTU:
        raise ValueError(
            f"underlay MTU {underlay_mtu} leaves {mtu} bytes after the {VXLAN_OVERHEAD}-byte "
            f"VXLAN overhead; IPv4 needs at least {MIN_IPV4_MTU}"
        )
    return mtu


@dataclass(frozen=True)
class VxlanSpec:
    """The VXLAN device we want (``ip link add flannel.1 type vxlan id 1 local <ip>
    dev <underlay> dstport 8472 nolearning``, then ``mtu 1450``)."""

    name: str
    vni: int
    port: int
    local_ip: str
    underlay_index: int
    mtu: int
    learning: bool = False
    gbp: bool = False


def device_spec(
    vni: int, local_ip: str, underlay_index: int, underlay_mtu: int, port: int | None = DEFAULT_PORT
) -> VxlanSpec:
    return VxlanSpec(
        name=device_name(vni),
        vni=vni,
        port=port or DEFAULT_PORT,
        local_ip=local_ip,
        underlay_index=underlay_index,
        mtu=overlay_mtu(underlay_mtu),
    )


def incompatibility(existing: dict, wanted: VxlanSpec) -> str | None:
    """Why an existing device of the same name cannot be reused (None: it can).

    ``existing`` holds what the kernel reports (linux/vxlan_device.py ``vxlan_attrs``):
    kind, vni, link, local, port, group, learning, gbp, l2miss. The reasons read
    "<field>: <wanted> vs <existing>", as flannel's vxlanLinksIncompat (device.go) says
    them. Like flannel, the underlay link, local IP and port only count when both sides
    name one. We also refuse a multicast group (we never want flooding) and learning
    (it would add FDB entries behind the agent's back). The MTU is not a reason: it can
    be changed in place.
    """
    kind = existing.get("kind")
    if kind != "vxlan":
        return f"link type: vxlan vs {kind or 'none'}"
    if existing.get("vni") != wanted.vni:
        return f"vni: {wanted.vni} vs {existing.get('vni')}"
    link = existing.get("link") or 0
    if link > 0 and wanted.underlay_index > 0 and link != wanted.underlay_index:
        return f"vtep (external) interface: {wanted.underlay_index} vs {link}"
    local = existing.get("local")
    if local and wanted.local_ip and local != wanted.local_ip:
        return f"vtep (external) IP: {wanted.local_ip} vs {local}"
    if existing.get("group"):
        return f"group address: none vs {existing['group']}"
    if existing.get("l2miss"):
        return "l2miss: False vs True"
    port = existing.get("port") or 0
    if port > 0 and wanted.port > 0 and port != wanted.port:
        return f"port: {wanted.port} vs {port}"
    if bool(existing.get("gbp")) != wanted.gbp:
        return f"gbp: {wanted.gbp} vs {bool(existing.get('gbp'))}"
    if bool(existing.get("learning")) != wanted.learning:
        return f"learning: {wanted.learning} vs {bool(existing.get('learning'))}"
    return None


def random_vtep_mac(rng: random.Random | None = None) -> str:
    """A random locally administered unicast MAC (flannel pkg/mac/mac.go).

    Set explicitly at creation rather than left to the kernel: udev's
    ``MACAddressPolicy=persistent`` rewrites kernel-random MACs of new devices, which
    could change the MAC after we published it in our lease.
    """
    octets = [(rng or random).randrange(256) for _ in range(6)]
    octets[0] = (octets[0] | 0x02) & 0xFE  # locally administered, not multicast
    return ":".join(f"{o:02x}" for o in octets)


def normalize_mac(text) -> str | None:
    if not isinstance(text, str):
        return None
    text = text.strip().lower()
    return text.replace("-", ":") if _MAC_RE.match(text) else None


@dataclass(frozen=True)
class DirectRouting:
    """VXLAN's DirectRouting option: where the plain routes go and which peers qualify."""

    underlay_dev: str
    connected: tuple[ipaddress.IPv4Network, ...]


def plan_peer(
    lease: SubnetLeaseRecord, vni: int = DEFAULT_VNI, direct: DirectRouting | None = None
) -> Union[PeerPlan, Skipped]:
    """What one remote lease needs on our side, in install order, or why nothing."""
    if lease.backend_type != BACKEND_TYPE:
        # flannel vxlan_network.go: "ignoring non-vxlan subnet"
        return Skipped(lease.subnet, f"its BackendType is {lease.backend_type!r}, not {BACKEND_TYPE!r}")
    public_ip = parse_public_ip(lease)
    if public_ip is None:
        return Skipped(lease.subnet, f"its PublicIP {lease.public_ip!r} is not an IPv4 address")
    if direct is not None and on_segment(public_ip, direct.connected):
        return direct_route(lease, public_ip, direct.underlay_dev)
    mac = normalize_mac(lease.backend_data.get("VtepMAC"))
    if mac is None:
        return Skipped(lease.subnet, f"its BackendData has no usable VtepMAC ({lease.backend_data!r})")
    their_vni = lease.backend_data.get("VNI", vni)
    if their_vni != vni:
        return Skipped(lease.subnet, f"its VNI {their_vni} differs from ours ({vni}): its node would drop our packets")
    dev = device_name(vni)
    gateway = lease.subnet.network_address  # held as a /32 by the peer's flannel device
    return PeerPlan(
        subnet=lease.subnet,
        public_ip=public_ip,
        neigh=Neigh(dev=dev, ip=gateway, mac=mac),
        fdb=Fdb(dev=dev, mac=mac, dst=public_ip),
        route=Route(dst=lease.subnet, gateway=gateway, dev=dev, onlink=True),
    )


def vtep_address(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Interface:
    """Our flannel device's address: the subnet's network address as a /32, so that
    the kernel creates no connected or broadcast route for it (flannel vxlan.go)."""
    return ipaddress.IPv4Interface(f"{subnet.network_address}/32")
