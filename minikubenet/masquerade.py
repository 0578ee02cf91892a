"""Masquerade and forward rules for pod traffic: the plan, as ``iptables-restore`` text.

Pods have cluster-private addresses. Traffic between pods keeps them (the other end
must see the real pod IP); traffic from a pod to anything outside the cluster network
is source-NATed to the node's address, or the answer could never come back. The rules
are flannel's (pkg/trafficmngr/iptables/iptables.go, masqRules), in our own chains so
we never touch anyone else's:

    nat    POSTROUTING -> MINIKUBENET-POSTRTG
    filter FORWARD     -> MINIKUBENET-FWD     (accept cluster traffic even when the
                                               FORWARD policy is DROP, as Docker sets it)

``render_masquerade`` is pure; ``linux/iptables.py`` applies the text atomically.
"""

from __future__ import annotations

import ipaddress

POSTROUTING_CHAIN = "MINIKUBENET-POSTRTG"
FORWARD_CHAIN = "MINIKUBENET-FWD"
KUBE_MASQ_MARK = "0x4000/0x4000"  # kube-proxy's masquerade mark: it will NAT those itself

# (table, built-in chain, our chain): the jumps that hook our chains into the kernel's path.
JUMPS = (
    ("nat", "POSTROUTING", POSTROUTING_CHAIN, "minikubenet masq"),
    ("filter", "FORWARD", FORWARD_CHAIN, "minikubenet forward"),
)


def render_masquerade(
    cluster: ipaddress.IPv4Network, pod_subnet: ipaddress.IPv4Network, ipmasq: bool = True, random_fully: bool = True
) -> str:
    c = '-m comment --comment "minikubenet masq"'
    rf = " --random-fully" if random_fully else ""
    lines = ["*nat", f":{POSTROUTING_CHAIN} - [0:0]"]
    if ipmasq:
        lines += [
            # kube-proxy marked it and will masquerade it itself: no double NAT.
            f"-A {POSTROUTING_CHAIN} {c} -m mark --mark {KUBE_MASQ_MARK} -j RETURN",
            # pod to pod, in both directions: keep the real addresses.
            f"-A {POSTROUTING_CHAIN} -s {pod_subnet} -d {cluster} {c} -j RETURN",
            f"-A {POSTROUTING_CHAIN} -s {cluster} -d {pod_subnet} {c} -j RETURN",
            # from outside into our pods (e.g. a NodePort answered locally): leave it.
            f"-A {POSTROUTING_CHAIN} ! -s {cluster} -d {pod_subnet} {c} -j RETURN",
            # pod to the outside world (multicast excepted): the node's address.
            f"-A {POSTROUTING_CHAIN} -s {cluster} ! -d 224.0.0.0/4 {c} -j MASQUERADE{rf}",
            # outside to some other node's pod, through us: NAT so the answer comes back here.
            f"-A {POSTROUTING_CHAIN} ! -s {cluster} -d {cluster} {c} -j MASQUERADE{rf}",
        ]
    lines += [
        "COMMIT",
        "*filter",
        f":{FORWARD_CHAIN} - [0:0]",
        f'-A {FORWARD_CHAIN} -s {cluster} -m comment --comment "minikubenet forward" -j ACCEPT',
        f'-A {FORWARD_CHAIN} -d {cluster} -m comment --comment "minikubenet forward" -j ACCEPT',
        "COMMIT",
        "",
    ]
    return "\n".join(lines)
