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
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

BRIDGE = "cni0"


def host_veth_name(container_id: str, ifname: str) -> str:
    """"veth" + 8 hex digits: fits IFNAMSIZ (15) and is stable for one attachment."""
    return "veth" + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:8]


@dataclass(frozen=True)
class PodLink:
    """The veth pair between a pod and its node: everything but the IP, so the kernel
    can build it while etcd is still recording which IP the pod gets."""
    container_id: str
    ifname: str                       # the interface inside the pod (CNI_IFNAME)
    netns: str                        # CNI_NETNS (or the agent's /proc/self/fd/N of it)
    mtu: int
    bridge: str = BRIDGE

    @property
    def host_veth(self) -> str:
        return host_veth_name(self.container_id, self.ifname)


@dataclass(frozen=True)
class PodAttachment:
    link: PodLink
    address: ipaddress.IPv4Interface  # pod IP with the subnet's prefix
    gateway: ipaddress.IPv4Address    # the bridge's address


def plan_attachment(link: PodLink, ip: ipaddress.IPv4Address, subnet: ipaddress.IPv4Network) -> PodAttachment:
    return PodAttachment(link=link, address=ipaddress.IPv4Interface(f"{ip}/{subnet.prefixlen}"),
                         gateway=subnet.network_address + 1)
