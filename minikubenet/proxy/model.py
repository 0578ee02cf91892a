"""What the proxy's renderers add to the Kubernetes objects (minikubenet/k8s_objects.py):
the node-level options kube-proxy takes as flags, and the orders in which kube-proxy
writes services and endpoints, which the golden tests compare rule for rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from minikubenet.k8s_objects import Endpoint, Service


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
