"""Address arithmetic for a node's pod subnet: which IPs may be handed to pods.

For a node subnet such as 10.244.1.0/24 (same rules as the reference ``host-local``
plugin, plugins/ipam/host-local/backend/allocator/range.go):

- the network address (.0) and the broadcast address (.255) are never handed out;
- the gateway is the first host address (.1); it lives on the node's bridge ``cni0``;
- pods get .2 .. .254, allocated round-robin from the last one handed out, so that a
  crash-looping pod does not get the same IP back at once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator


def gateway(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return subnet.network_address + 1


def pod_range(subnet: ipaddress.IPv4Network) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """First and last assignable pod address (inclusive)."""
    if subnet.prefixlen > 30:
        raise ValueError(f"subnet {subnet} is too small to allocate from")
    return subnet.network_address + 2, subnet.broadcast_address - 1


def pod_capacity(subnet: ipaddress.IPv4Network) -> int:
    first, last = pod_range(subnet)
    return int(last) - int(first) + 1


def candidates(
    subnet: ipaddress.IPv4Network, after: ipaddress.IPv4Address | None = None
) -> Iterator[ipaddress.IPv4Address]:
    """Every assignable address once, starting after ``after`` and wrapping around."""
    first, last = pod_range(subnet)
    size = int(last) - int(first) + 1
    start = 0
    if after is not None and first <= after <= last:
        start = (int(after) - int(first) + 1) % size
    for i in range(size):
        yield ipaddress.IPv4Address(int(first) + (start + i) % size)
