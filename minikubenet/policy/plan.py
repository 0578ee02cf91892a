"""One node's policy plan: the model compiled to what a packet filter can test.

A node enforces the policies of ITS pods only: egress where a local pod sends, ingress
where a local pod receives (the other end's node judges the other direction). So the
plan holds:

- for every local pod isolated in a direction, the policies isolating it;
- for every policy that isolates at least one local pod, its rules compiled to
  ``Atom``s: (peer network, protocol, port range, target). A rule allows a packet iff
  one of its atoms matches. Peers become addresses (a pod selector: the IPs of the pods
  it selects, cluster-wide; an ipBlock: ``cidr`` minus its ``except``s, as networks);
  named ports are resolved per destination pod: for ingress the local pod the policy
  selects (the atom then carries it as ``target``), for egress each peer pod (the atom's
  peer is that pod's address).

``atoms_allow`` evaluates atoms the way the kernel will; tests/unit check that it agrees
with model.verdict, so a rendering that prints atoms faithfully enforces the model.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

from minikubenet.policy.model import EGRESS, INGRESS, Address, Cluster, Pod, Policy, Rule, _peer_matches

DIRECTIONS = (INGRESS, EGRESS)


@dataclass(frozen=True, order=True)
class Atom:
    peer: str | None = None  # CIDR of the other end (ingress: source; egress: destination); None = any
    protocol: str | None = None  # None = any protocol, any port
    ports: tuple[int, int] | None = None
    target: str | None = None  # ingress named port: only towards this local pod IP
    named: bool = False  # made from a named port (the nftables rendering groups these)

    def matches(self, other_ip: str, port: int, protocol: str, local_ip: str | None = None) -> bool:
        if self.peer is not None and ipaddress.IPv4Address(other_ip) not in ipaddress.IPv4Network(self.peer):
            return False
        if self.protocol is not None and (
            protocol != self.protocol or not (self.ports is None or self.ports[0] <= port <= self.ports[1])
        ):
            return False
        return self.target is None or self.target == local_ip


@dataclass(frozen=True)
class CompiledRule:
    index: int
    atoms: tuple[Atom, ...]


@dataclass(frozen=True)
class PolicyPlan:
    policy: Policy
    direction: str
    targets: tuple[Pod, ...]  # local pods it selects
    rules: tuple[CompiledRule, ...]

    @property
    def key(self) -> str:
        return self.policy.key


@dataclass
class NodePlan:
    node: str
    isolated: dict[str, dict[Pod, list[str]]] = field(default_factory=dict)  # dir -> pod -> policy keys
    policies: list[PolicyPlan] = field(default_factory=list)

    def policy_plans(self, direction: str) -> list[PolicyPlan]:
        return [p for p in self.policies if p.direction == direction]


@functools.lru_cache(maxsize=1 << 16)
def net_order(text: str) -> tuple[int, int]:
    """The sort key of a network "a.b.c.d/n" - ipaddress.IPv4Network's own order (address,
    then prefix length) - cached: parsing with ipaddress was most of a plan's time, and the
    same peers are sorted once per rule that names them."""
    n = ipaddress.IPv4Network(text)
    return int(n.network_address), n.prefixlen


def _peer_nets(cluster: Cluster, policy: Policy, rule: Rule) -> list[str | None]:
    if not rule.peers:
        return [None]
    nets: set[str] = set()
    for peer in rule.peers:
        if peer.ip_block is not None:
            nets.update(str(n) for n in peer.ip_block.networks())
        else:
            nets.update(f"{p.ip}/32" for p in cluster.peer_pods(peer, policy))
    return sorted(nets, key=net_order)


def compile_rule(
    cluster: Cluster, policy: Policy, direction: str, rule: Rule, targets: tuple[Pod, ...]
) -> tuple[Atom, ...]:
    nets = _peer_nets(cluster, policy, rule)
    if not rule.ports:
        return tuple(Atom(n) for n in nets)
    atoms: set[Atom] = set()
    for spec in rule.ports:
        if not isinstance(spec.port, str):
            r = spec.range_for(None)
            atoms.update(Atom(n, spec.protocol, r) for n in nets)
        elif direction == INGRESS:
            for t in targets:
                port = t.named_port(spec.port, spec.protocol)
                if port is not None:
                    atoms.update(Atom(n, spec.protocol, (port, port), t.ip, True) for n in nets)
        else:  # egress: each destination pod's own number for the name
            for pod in cluster.pods:
                port = pod.named_port(spec.port, spec.protocol) if pod.ip else None
                if port is None:
                    continue
                if rule.peers and not any(
                    _peer_matches(cluster, peer, policy, Address(pod.ip or "", pod)) for peer in rule.peers
                ):
                    continue
                atoms.add(Atom(f"{pod.ip}/32", spec.protocol, (port, port), None, True))
    return tuple(
        sorted(
            atoms,
            key=lambda a: (
                a.protocol or "",
                a.ports or (0, 0),
                a.target or "",
                net_order(a.peer) if a.peer else (0, 0),
            ),
        )
    )


def plan_node(cluster: Cluster, node: str) -> NodePlan:
    """The plan for the pods of ``node`` (pods with an IP only)."""
    local = sorted((p for p in cluster.pods if p.node == node and p.ip), key=lambda p: p.key)
    plan = NodePlan(node, {d: {} for d in DIRECTIONS})
    active = cluster.active_policies()  # sorted by ns/name once, not per pod
    local_keys = {p.key for p in local}
    for direction in DIRECTIONS:
        for policy in active:
            if direction not in policy.types:
                continue
            targets = tuple(sorted((p for p in policy.selected(cluster, local_keys) if p.ip), key=lambda p: p.key))
            if not targets:
                continue
            for pod in targets:
                plan.isolated[direction].setdefault(pod, []).append(policy.key)
            rules = tuple(
                CompiledRule(i, compile_rule(cluster, policy, direction, r, targets))
                for i, r in enumerate(policy.rules(direction))
            )
            plan.policies.append(PolicyPlan(policy, direction, targets, rules))
    return plan


def plan_allows(plan: NodePlan, local: Pod, direction: str, other_ip: str, port: int, protocol: str) -> bool:
    """What the plan (so the kernel) decides for ``local``'s side of a new connection."""
    keys = plan.isolated[direction].get(local)
    if not keys:
        return True
    for pp in plan.policy_plans(direction):
        if pp.key in keys and any(
            a.matches(other_ip, port, protocol, local.ip if direction == INGRESS else None)
            for r in pp.rules
            for a in r.atoms
        ):
            return True
    return False
