"""LoadBalancer IPs: which service gets which address from the pool, and which node
answers for it. Pure functions; ``controller.py`` applies them through the store and
``minikubenet/linux/lb_announce.py`` makes the chosen node answer ARP.

This is MetalLB's role in a bare-metal cluster (controller + speaker, layer-2 mode):

- **Allocation** (MetalLB controller, internal/allocator): a service of type
  LoadBalancer keeps the ingress IP it has if that IP is still in the pool and nobody
  else holds it; the others get the lowest free address, in service-name order so
  that every run of the controller decides the same. When the pool is exhausted the
  service waits with MetalLB's message (``Failed to allocate IP for "ns/name": no
  available IPs``) and gets an address as soon as one frees. An ingress IP outside
  the pool (written by hand, or left from an older pool) is not kept.
- **Announcement** (MetalLB speaker, layer2 mode): exactly one node answers ARP for
  each IP. Every node computes the same choice without talking to the others: among
  the eligible nodes, the one whose sha256(node + "#" + ip) sorts first (MetalLB
  hashes the same way to spread IPs over nodes). With externalTrafficPolicy Local only
  nodes with a ready local endpoint are eligible, else the traffic would be dropped
  there. When the chosen node leaves, another wins and announces with gratuitous ARP.
- **Announcement over BGP** (MetalLB speaker, BGP mode; with the bgp backend): no
  election - every eligible node announces the IP to its BGP peers, and the routers
  spread the traffic over them (ECMP). Eligible as above: every node, or with
  externalTrafficPolicy Local only those with a ready local endpoint.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from minikubenet.k8s_objects import Endpoint, Service


class PoolError(ValueError):
    pass


def parse_pool(spec: str) -> list[ipaddress.IPv4Address]:
    """ "192.168.56.240/29" or "192.168.56.240-192.168.56.250", comma-separated parts
    (MetalLB's IPAddressPool addresses). A CIDR's network and broadcast addresses are
    kept out for prefixes shorter than /31, as they could not be used on a LAN."""
    out: list[ipaddress.IPv4Address] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        try:
            if "-" in part:
                lo, hi = (ipaddress.IPv4Address(x.strip()) for x in part.split("-", 1))
                if hi < lo:
                    raise PoolError(f"address pool {part!r}: the range ends before it starts")
                out += [ipaddress.IPv4Address(i) for i in range(int(lo), int(hi) + 1)]
            else:
                net = ipaddress.IPv4Network(part, strict=False)
                out += list(net.hosts()) if net.prefixlen < 31 else list(net)
        except (ValueError, ipaddress.AddressValueError) as e:
            if isinstance(e, PoolError):
                raise
            raise PoolError(f"address pool {part!r} is neither a CIDR nor a first-last range") from None
    if not out:
        raise PoolError(f"address pool {spec!r} is empty")
    return sorted(set(out))


@dataclass(frozen=True)
class Assignment:
    ip: ipaddress.IPv4Address | None
    message: str = ""  # why the service waits, or what was corrected


def allocate(services: Mapping[str, Service], pool: Sequence[ipaddress.IPv4Address]) -> dict[str, Assignment]:
    """ "ns/name" -> its LoadBalancer IP (or why it has none) for every LoadBalancer
    service (one IPv4 address each, as a single-stack MetalLB assigns)."""
    in_pool = set(pool)
    lbs = sorted(k for k, s in services.items() if s.type == "LoadBalancer" and s.cluster_ip is not None)
    held: dict[ipaddress.IPv4Address, str] = {}
    out: dict[str, Assignment] = {}
    for key in lbs:  # keep what is valid, first come first kept
        current = services[key].load_balancer_ips
        if current and current[0] in in_pool and current[0] not in held:
            held[current[0]] = key
            out[key] = Assignment(current[0])
    free = iter(ip for ip in pool if ip not in held)
    for key in lbs:
        if key in out:
            continue
        current = services[key].load_balancer_ips
        note = (
            f"ingress IP {current[0]} is not in the address pool; replaced"
            if current and current[0] not in in_pool
            else ""
        )
        ip = next(free, None)
        if ip is None:
            out[key] = Assignment(None, f'Failed to allocate IP for "{key}": no available IPs')
        else:
            held[ip] = key
            out[key] = Assignment(ip, note)
    return out


def _rank(node: str, ip: ipaddress.IPv4Address) -> bytes:
    return hashlib.sha256(f"{node}#{ip}".encode()).digest()


def eligible_nodes(svc: Service, nodes: Iterable[str], endpoints: Mapping[str, Sequence[Endpoint]]) -> list[str]:
    """The nodes that may announce the service's IPs: all, or with eTP=Local those with
    a ready local endpoint (elsewhere the traffic would be dropped)."""
    eligible = sorted(set(nodes))
    if svc.external_policy_local:
        with_local = {e.node_name for eps in endpoints.values() for e in eps if e.ready}
        eligible = [n for n in eligible if n in with_local]
    return eligible


def announcer(
    ip: ipaddress.IPv4Address, svc: Service, nodes: Iterable[str], endpoints: Mapping[str, Sequence[Endpoint]]
) -> str | None:
    """The node that answers ARP for ``ip``; None when no node is eligible (eTP=Local
    and no ready endpoint anywhere: announcing would only attract dropped traffic)."""
    eligible = eligible_nodes(svc, nodes, endpoints)
    if not eligible:
        return None
    return min(eligible, key=lambda n: _rank(n, ip))
