"""What the proxy's renderers add to the Kubernetes objects (minikubenet/k8s_objects.py):
the node-level options kube-proxy takes as flags, and the orders in which kube-proxy
writes services and endpoints, which the golden tests compare rule for rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from minikubenet.k8s_objects import Endpoint, Service

# kube-proxy's largeClusterEndpointsThreshold: above this many endpoints in total the
# per-endpoint comments go ("can reduce size of iptables ... even by 40%+") and stale
# chains are deleted at most once per sync period.
LARGE_CLUSTER_ENDPOINTS = 1000


@dataclass(frozen=True)
class RenderOptions:
    """Node-level knobs shared by both renderers, with kube-proxy's flag in brackets.

    masquerade_all       SNAT every packet to a ClusterIP [--masquerade-all]
    masquerade_bit       the fwmark bit meaning "SNAT me": 14 -> 0x4000 [--iptables-masquerade-bit]
    localhost_nodeports  NodePorts also on 127.0.0.1 (needs route_localnet=1, CVE-2020-8558,
                         kubernetes#90259) [--iptables-localhost-nodeports; kube-proxy's default
                         is on, ours off, like kube-proxy's nftables mode]
    random_fully         MASQUERADE --random-fully (iptables >= 1.6.2; avoids the SNAT port race)
    drop_invalid         drop conntrack-INVALID forwarded packets (kube-proxy skips the rule
                         when nf_conntrack_tcp_be_liberal=1; kubernetes#74839)
    """

    masquerade_all: bool = False
    masquerade_bit: int = 14
    localhost_nodeports: bool = False
    random_fully: bool = True
    drop_invalid: bool = True
    node_name: str = ""  # endpoints with this nodeName are local [--hostname-override]
    node_ip: str = ""  # the node's primary IP: allowFromNode in KUBE-FW chains
    large_cluster: bool = False  # set by the planner from the endpoint count

    @property
    def masquerade_mark(self) -> str:
        # "0x4000" for bit 14, as in kube-proxy's tests and in every iptables-save dump.
        # (kube-proxy formats it with Go's "%#08x"; the kernel stores a number either way.)
        return f"{1 << self.masquerade_bit:#x}"


def ready_endpoints(endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    """The endpoints a proxy may send new connections to, in kube-proxy's order: sorted by
    the "IP:port" string, as a string ("10.0.0.10:80" < "10.0.0.2:80"; pkg/proxy
    endpointslicecache.go: "Ensure endpoints are always returned in the same order to
    simplify diffing"), duplicates dropped."""
    unique = {str(e): e for e in endpoints if e.ready}
    return [unique[k] for k in sorted(unique)]


def proxied(services: Iterable[Service]) -> list[Service]:
    """The services that get rules, in a stable order: sorted by "ns/name" as a string,
    which is how kube-proxy's own tests order KUBE-SERVICES (sortIPTablesRules)."""
    return sorted((s for s in services if s.cluster_ip is not None), key=lambda s: s.key)


@dataclass(frozen=True)
class Categorized:
    """kube-proxy's CategorizeEndpoints result (pkg/proxy/topology.go) for one service port:
    the endpoints for Cluster policy, for Local policy, the union (which gets endpoint
    chains) and whether any usable endpoint exists anywhere."""

    cluster: tuple[Endpoint, ...]
    local: tuple[Endpoint, ...]
    reachable: tuple[Endpoint, ...]
    has_any: bool


def _sorted_unique(endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    unique = {str(e): e for e in endpoints}
    return tuple(unique[k] for k in sorted(unique))


def categorize_endpoints(svc: Service, endpoints: Sequence[Endpoint], node_name: str) -> Categorized:
    """Ready endpoints first; with no ready endpoint at all for a policy, the serving
    terminating ones instead, so that connections are not dropped while a rollout ends
    (KEP-1669). Cluster falls back when no ready endpoint exists anywhere; Local when no
    ready endpoint exists on this node. Topology hints are not modelled."""

    def terminating_serving(e: Endpoint) -> bool:
        return e.is_serving and e.terminating

    cluster: tuple[Endpoint, ...] = ()
    has_any = False
    if svc.uses_cluster_endpoints:
        cluster = _sorted_unique(e for e in endpoints if e.ready) or _sorted_unique(
            e for e in endpoints if terminating_serving(e)
        )
        has_any = bool(cluster)
    if not svc.uses_local_endpoints:
        return Categorized(cluster, (), cluster, has_any)
    has_any = has_any or any(e.ready or terminating_serving(e) for e in endpoints)
    mine = [e for e in endpoints if node_name and e.node_name == node_name]
    local = _sorted_unique(e for e in mine if e.ready) or _sorted_unique(e for e in mine if terminating_serving(e))
    if not svc.uses_cluster_endpoints:
        return Categorized((), local, local, has_any)
    return Categorized(cluster, local, _sorted_unique(cluster + local), has_any)


def is_large_cluster(services: Iterable[Service], endpoints_by_service: Mapping[str, Sequence[Endpoint]]) -> bool:
    """kube-proxy counts every endpoint of every known service port."""
    total = sum(len(endpoints_by_service.get(k, ())) for s in services for k in s.port_keys())
    return total > LARGE_CLUSTER_ENDPOINTS
