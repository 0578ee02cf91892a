"""What a pod's attachment to its node looks like: the plan for one CNI ADD.

    pod netns                         node (the agent's netns)
    ┌───────────────────────┐        ┌───────────────────────────────────────────┐
    │ eth0 10.244.1.5/24 ───┼─ veth ─┼─ veth1a2b3c4d ── cni0 10.244.1.1/24 ─ ... │
    │ default via 10.244.1.1│        │   (bridge port)   (the pod's gateway)     │
    └───────────────────────┘        └───────────────────────────────────────────┘

Every pod on a node hangs off one Linux bridge, ``cni0``, which holds the subnet's
gateway address, exactly as flannel's CNI plugin delegates to the reference ``bridge``
plugin. Both veth ends and the bridge get the MTU from ``subnet.env`` (1450 with
VXLAN), so a pod never sends a frame the overlay cannot carry.

The host end's name is derived from (container ID, interface), not random as the
reference plugin does: a repeated ADD or a DEL after an agent restart finds it by name.

A name is not proof of ownership, though: a careless runtime may send an ADD for a new
container into a namespace where another pod's ``eth0`` already lives, or into a node's
own namespace. So both ends carry a mark of ownership in their alias (IFLA_IFALIAS,
``ip link show`` prints it as ``alias``): ``minikubenet:<container ID>:<ifname>``.
Every verb that deletes an interface first compares its mark with the attachment it
acts for (``owns``), and refuses, rather than "fixes", an interface that is not its own.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

BRIDGE = "cni0"

MARK_PREFIX = "minikubenet:"
# A device's alias holds at most IFALIASZ - 1 = 255 bytes (include/uapi/linux/if.h; the
# kernel refuses a longer IFLA_IFALIAS with EINVAL). "minikubenet:" + ":" + an ifname of
# at most 15 leaves 227 bytes for the container ID: a 64-hex-digit ID fits many times, and
# a longer one (the spec allows any length) is written as its SHA-256, stable and unique.
IFALIAS_MAX = 255
# What marks a namespace as some node's own (host) namespace, beside the devices a pod
# namespace never holds (see host_namespace_reason): the lab's underlay ports carry it.
NODE_MARK_PREFIX = "minikubenet-node:"


def host_veth_name(container_id: str, ifname: str) -> str:
    """ "veth" + 8 hex digits: fits IFNAMSIZ (15) and is stable for one attachment."""
    return "veth" + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:8]


def attachment_macs(container_id: str, ifname: str) -> tuple[str, str]:
    """Stable, locally administered unicast MACs for the (host, pod) ends, derived from
    the attachment: set at creation, so no read-back is needed for the CNI result, and a
    re-created pod interface keeps the MAC its neighbours have cached."""
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).digest()

    def mac(tag: int) -> str:
        octets = [0x0A | (tag << 4)] + list(digest[:5])  # 0x?a: bit 1 set (local), bit 0 clear (unicast)
        return ":".join(f"{o:02x}" for o in octets)

    return mac(0), mac(1)


def ownership_mark(container_id: str, ifname: str) -> str:
    """The alias both ends of an attachment's veth carry."""
    mark = f"{MARK_PREFIX}{container_id}:{ifname}"
    if len(mark.encode()) <= IFALIAS_MAX:
        return mark
    digest = hashlib.sha256(container_id.encode()).hexdigest()
    return f"{MARK_PREFIX}sha256-{digest}:{ifname}"


def owns(mark: str, alias: str | None, mac: str | None, expected_mac: str) -> bool:
    """Is a device with this alias and MAC the one ``mark`` names? An alias decides. A
    device without any alias is ours only if it has the MAC we derive from the same
    attachment (attachment_macs): that is how an agent from before the mark made
    its veths, so their pods can still be deleted after an upgrade."""
    if alias:
        return alias == mark
    return mac is not None and mac != "" and mac.lower() == expected_mac.lower()


@dataclass(frozen=True)
class LinkSeen:
    """One device of a namespace as a link dump shows it (rtnl_batch.dump_links)."""

    index: int
    name: str
    kind: str = ""  # IFLA_INFO_KIND: "veth", "bridge", "vxlan", "" for a plain device
    alias: str = ""
    mac: str = ""


# Devices a pod's namespace does not hold but a node's does: the pod bridge (cni0, or
# docker0...) and an overlay device (flannel.1). A node without either still has its
# underlay, which this project cannot tell from a pod's eth0 by kind; the lab (and an
# operator, with ``ip link set eth0 alias minikubenet-node:<name>``) marks it.
NODE_DEVICE_KINDS = ("bridge", "vxlan", "geneve")


def host_namespace_reason(links: list[LinkSeen]) -> str | None:
    """Why a namespace looks like some node's host namespace, or None for a pod's."""
    for link in links:
        if link.kind in NODE_DEVICE_KINDS:
            return f"it holds {link.name} (a {link.kind} device: a node's, not a pod's)"
        if link.alias.startswith(NODE_MARK_PREFIX):
            return f"it holds {link.name}, marked as a node's device ({link.alias})"
    return None


@dataclass(frozen=True)
class PodLink:
    """The veth pair between a pod and its node: everything but the IP, so the kernel
    can build it while etcd is still recording which IP the pod gets."""

    container_id: str
    ifname: str  # the interface inside the pod (CNI_IFNAME)
    netns: str  # CNI_NETNS (or the agent's /proc/self/fd/N of it)
    mtu: int
    bridge: str = BRIDGE

    @property
    def host_veth(self) -> str:
        return host_veth_name(self.container_id, self.ifname)

    @property
    def mark(self) -> str:
        return ownership_mark(self.container_id, self.ifname)


@dataclass(frozen=True)
class PodAttachment:
    link: PodLink
    address: ipaddress.IPv4Interface  # pod IP with the subnet's prefix
    gateway: ipaddress.IPv4Address  # the bridge's address


def plan_attachment(link: PodLink, ip: ipaddress.IPv4Address, subnet: ipaddress.IPv4Network) -> PodAttachment:
    return PodAttachment(
        link=link, address=ipaddress.IPv4Interface(f"{ip}/{subnet.prefixlen}"), gateway=subnet.network_address + 1
    )
