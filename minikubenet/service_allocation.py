"""Choosing a Service's ClusterIP and NodePorts: the pure half of the allocation.

store/services.py makes a choice binding in one etcd transaction (the IP's and the
NodePorts' keys must not exist yet); this module only picks candidates from what is
known to be taken. kube-apiserver picks at random too (pkg/registry/core/service/
ipallocator and portallocator), so that two API servers rarely race for the same value.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable


def allocatable(service_cidr: ipaddress.IPv4Network) -> tuple[int, int]:
    """The [first, last] integer range of ClusterIPs: the network and broadcast
    addresses are never handed out (as in kube-apiserver's allocator)."""
    first, last = int(service_cidr.network_address) + 1, int(service_cidr.broadcast_address) - 1
    if first > last:
        raise ValueError(f"service network {service_cidr} has no usable addresses")
    return first, last


def pick_cluster_ip(
    service_cidr: ipaddress.IPv4Network,
    taken: Iterable[ipaddress.IPv4Address],
    rng: random.Random = random.SystemRandom(),
) -> ipaddress.IPv4Address | None:
    """A free address, starting the scan at a random offset (kube-apiserver picks at
    random too, so that two API servers rarely race for the same IP), or None when the
    range is full."""
    first, last = allocatable(service_cidr)
    used = {int(ip) for ip in taken}
    size = last - first + 1
    start = rng.randrange(size)
    for i in range(size):
        candidate = first + (start + i) % size
        if candidate not in used:
            return ipaddress.IPv4Address(candidate)
    return None


def pick_node_port(
    protocol: str,
    taken: set[tuple[str, int]],
    node_port_range: tuple[int, int],
    rng: random.Random = random.SystemRandom(),
) -> int | None:
    lo, hi = node_port_range
    start = rng.randrange(hi - lo + 1)
    for i in range(hi - lo + 1):
        port = lo + (start + i) % (hi - lo + 1)
        if (protocol.lower(), port) not in taken:
            return port
    return None
