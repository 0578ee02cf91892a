"""NetworkPolicy semantics, pure: parsed objects and ``verdict(src, dst, port, proto)``.

This module is the reference: both renderings (iptables_render.py, nft_render.py) are
tested against ``verdict``, in unit tests and against the kernel (tests/netns). The
rules, from the networking.k8s.io/v1 API documentation and
kubernetes/pkg/apis/networking/types.go:

- A policy selects pods of ITS namespace with ``spec.podSelector`` (``{}``: all of them).
- ``policyTypes``: the directions the policy isolates. When absent: Ingress always, and
  Egress only if ``spec.egress`` has at least one rule (the API server's defaulting,
  pkg/apis/networking/v1/defaults.go).
- Isolation is per direction: a pod is isolated for ingress iff some policy with Ingress
  selects it; likewise egress. A pod not isolated in a direction allows everything in
  that direction.
- An isolated pod allows a connection iff SOME rule of SOME policy selecting it (in that
  direction) matches: policies are a union, never an intersection, and order is meaningless.
- A rule matches when one of its peers matches (``from``/``to``; empty or absent: every
  peer) AND one of its ports matches (``ports``; empty or absent: every port). Isolated
  by a policy whose ``ingress`` is absent or ``[]``: nothing is allowed.
- A peer: ``podSelector`` alone = those pods of the policy's namespace;
  ``namespaceSelector`` alone = every pod of those namespaces; both in ONE peer = those
  pods in those namespaces (AND); ``ipBlock`` = addresses in ``cidr`` but not in any
  ``except``.
- A port: ``protocol`` (TCP by default; UDP, SCTP), ``port`` a number or a name, absent =
  every port of the protocol; ``endPort`` makes a range. A NAME is looked up in the
  destination pod's container ports (ingress: the selected pod; egress: the peer pod);
  a destination that is not a pod or has no port of that name and protocol never matches.
- A connection needs both: the source's egress allows it and the destination's ingress
  allows it. Replies of an allowed connection always pass (conntrack), and traffic from
  a pod's own node to it always passes (kubelet probes), as in Kubernetes.

``verdict`` also says why: which policy and rule allowed the connection, or which
direction denied it and which policies isolate that pod.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from minikubenet.policy.selectors import Selector, SelectorError, parse_selector

PROTOCOLS = ("TCP", "UDP", "SCTP")
INGRESS, EGRESS = "Ingress", "Egress"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
ALWAYS_NAMESPACES = frozenset({"default"})  # exists in every Kubernetes cluster


class PolicyError(ValueError):
    """A malformed object; the message names the field path."""


# --------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class NamedPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    ip: str | None
    node: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[NamedPort, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def named_port(self, name: str, protocol: str) -> int | None:
        for p in self.ports:
            if p.name == name and p.protocol == protocol:
                return p.port
        return None

    def __hash__(self) -> int:
        return hash(self.key)


@dataclass(frozen=True)
class IPBlock:
    cidr: ipaddress.IPv4Network
    excepts: tuple[ipaddress.IPv4Network, ...] = ()

    def contains(self, ip: str) -> bool:
        a = ipaddress.IPv4Address(ip)
        return a in self.cidr and not any(a in e for e in self.excepts)

    def networks(self) -> list[ipaddress.IPv4Network]:
        """``cidr`` minus every ``except``, as a list of networks (for the renderings)."""
        nets = [self.cidr]
        for e in self.excepts:
            out = []
            for n in nets:
                if n.overlaps(e):
                    out += [] if n.subnet_of(e) else list(n.address_exclude(e))
                else:
                    out.append(n)
            nets = out
        return sorted(nets)


@dataclass(frozen=True)
class Peer:
    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PortSpec:
    protocol: str = "TCP"
    port: int | str | None = None  # None: every port of the protocol
    end_port: int | None = None

    def range_for(self, dst: Pod | None) -> tuple[int, int] | None:
        """The port range this spec means for destination ``dst`` (named ports resolved);
        None when it means nothing there (a name ``dst`` does not have)."""
        if self.port is None:
            return (1, 65535)
        if isinstance(self.port, str):
            n = dst.named_port(self.port, self.protocol) if dst is not None else None
            return (n, n) if n is not None else None
        return (self.port, self.end_port or self.port)

    def matches(self, port: int, protocol: str, dst: Pod | None) -> bool:
        if protocol != self.protocol:
            return False
        r = self.range_for(dst)
        return r is not None and r[0] <= port <= r[1]


@dataclass(frozen=True)
class Rule:
    peers: tuple[Peer, ...] = ()  # () = every peer
    ports: tuple[PortSpec, ...] = ()  # () = every port and protocol


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    pod_selector: Selector
    types: frozenset[str]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == INGRESS else self.egress

    def selected(self, cluster: Cluster, among: set[str]) -> list[Pod]:
        """The pods of ``cluster`` this policy selects whose key is in ``among`` (found
        through the cluster's label index)."""
        return [p for p in cluster.candidates(self.pod_selector) if p.key in among and self.selects(p)]

    def selects(self, pod: Pod) -> bool:
        return pod.namespace == self.namespace and self.pod_selector.matches(pod.labels)


# --------------------------------------------------------------------------- parsing


def _ip_block(doc: Any, path: str) -> IPBlock:
    if not isinstance(doc, dict) or "cidr" not in doc:
        raise PolicyError(f"{path}.cidr: Required value")
    try:
        # the API server accepts host bits set ("10.0.0.1/24"), as the upstream tests write them
        cidr = ipaddress.IPv4Network(doc["cidr"], strict=False)
    except (ValueError, TypeError):
        raise PolicyError(f"{path}.cidr: Invalid value: {doc['cidr']!r}: must be a valid CIDR") from None
    excepts = []
    for i, e in enumerate(doc.get("except") or []):
        try:
            net = ipaddress.IPv4Network(e, strict=False)
        except (ValueError, TypeError):
            raise PolicyError(f"{path}.except[{i}]: Invalid value: {e!r}: must be a valid CIDR") from None
        if not net.subnet_of(cidr) or net == cidr:
            raise PolicyError(f"{path}.except[{i}]: Invalid value: {e!r}: must be a strict subset of `cidr`")
        excepts.append(net)
    return IPBlock(cidr, tuple(excepts))


def _peer(doc: Any, path: str) -> Peer:
    if not isinstance(doc, dict):
        raise PolicyError(f"{path}: must be an object")
    try:
        pods = parse_selector(doc["podSelector"], f"{path}.podSelector") if "podSelector" in doc else None
        nss = (
            parse_selector(doc["namespaceSelector"], f"{path}.namespaceSelector")
            if "namespaceSelector" in doc
            else None
        )
    except SelectorError as e:
        raise PolicyError(str(e)) from None
    block = _ip_block(doc["ipBlock"], f"{path}.ipBlock") if "ipBlock" in doc else None
    if block is None and pods is None and nss is None:
        raise PolicyError(f"{path}: Required value: must specify a peer")
    if block is not None and (pods is not None or nss is not None):
        raise PolicyError(f"{path}: Forbidden: may not specify more than 1 peer type")
    return Peer(pods, nss, block)


def _port(doc: Any, path: str) -> PortSpec:
    if not isinstance(doc, dict):
        raise PolicyError(f"{path}: must be an object")
    proto = doc.get("protocol", "TCP")
    if proto not in PROTOCOLS:
        raise PolicyError(f'{path}.protocol: Unsupported value: {proto!r}: supported values: "TCP", "UDP", "SCTP"')
    port, end = doc.get("port"), doc.get("endPort")
    if isinstance(port, bool) or not (port is None or isinstance(port, (int, str))):
        raise PolicyError(f"{path}.port: must be a number or a name")
    if isinstance(port, int) and not 1 <= port <= 65535:
        raise PolicyError(f"{path}.port: Invalid value: {port}: must be between 1 and 65535, inclusive")
    if isinstance(port, str) and not 1 <= len(port) <= 15:
        raise PolicyError(f"{path}.port: Invalid value: {port!r}: must be no more than 15 characters")
    if end is not None:
        if not isinstance(port, int):
            raise PolicyError(
                f"{path}.endPort: Invalid value: {end!r}: may not be specified when `port` is non-numeric"
                if port is not None
                else f"{path}.endPort: Required value: may not be specified when `port` is not specified"
            )
        if not isinstance(end, int) or isinstance(end, bool) or not port <= end <= 65535:
            raise PolicyError(f"{path}.endPort: Invalid value: {end!r}: must be greater than or equal to `port`")
    return PortSpec(proto, port, end)


def _rules(doc: Any, path: str, peers_field: str) -> tuple[Rule, ...]:
    if doc is None:
        return ()
    if not isinstance(doc, list):
        raise PolicyError(f"{path}: must be a list")
    out = []
    for i, r in enumerate(doc):
        where = f"{path}[{i}]"
        if not isinstance(r, dict):
            raise PolicyError(f"{where}: must be an object")
        peers = r.get(peers_field) or []
        ports = r.get("ports") or []
        if not isinstance(peers, list) or not isinstance(ports, list):
            raise PolicyError(f"{where}: `{peers_field}` and `ports` must be lists")
        out.append(
            Rule(
                tuple(_peer(p, f"{where}.{peers_field}[{j}]") for j, p in enumerate(peers)),
                tuple(_port(p, f"{where}.ports[{j}]") for j, p in enumerate(ports)),
            )
        )
    return tuple(out)


def policy_from_k8s(doc: Mapping) -> Policy:
    """A NetworkPolicy document (as applied) -> Policy; PolicyError names the field."""
    if not isinstance(doc, Mapping):
        raise PolicyError("NetworkPolicy: must be an object")
    meta = doc.get("metadata") or {}
    spec = doc.get("spec")
    ns, name = meta.get("namespace") or "default", meta.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyError("metadata.name: Required value")
    if not isinstance(spec, dict):
        raise PolicyError("spec: Required value")
    try:
        selector = parse_selector(spec.get("podSelector"), "spec.podSelector")
    except SelectorError as e:
        raise PolicyError(str(e)) from None
    types = spec.get("policyTypes")
    egress_rules = spec.get("egress")
    if types is None:
        types = [INGRESS] + ([EGRESS] if egress_rules else [])
    if not isinstance(types, list) or not all(t in (INGRESS, EGRESS) for t in types):
        raise PolicyError(f'spec.policyTypes: Unsupported value: {types!r}: supported values: "Ingress", "Egress"')
    return Policy(
        ns,
        name,
        selector,
        frozenset(types),
        _rules(spec.get("ingress"), "spec.ingress", "from"),
        _rules(egress_rules, "spec.egress", "to"),
    )


def pod_from_k8s(doc: Mapping) -> Pod:
    """A Pod document (proxy/model.py ``pod_doc``) -> Pod, with its named container ports."""
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    ports = []
    for c in spec.get("containers") or []:
        for p in (c or {}).get("ports") or []:
            if isinstance(p, dict) and p.get("name") and isinstance(p.get("containerPort"), int):
                ports.append(NamedPort(p["name"], p["containerPort"], p.get("protocol", "TCP")))
    if not meta.get("name"):
        raise PolicyError("metadata.name: Required value")
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        raise PolicyError("metadata.labels: must be an object")
    return Pod(
        meta.get("namespace") or "default",
        meta["name"],
        (doc.get("status") or {}).get("podIP"),
        spec.get("nodeName") or "",
        dict(labels),
        tuple(ports),
    )


def namespace_labels(doc: Mapping) -> dict[str, str]:
    """A Namespace document -> its labels, ``kubernetes.io/metadata.name`` always set."""
    meta = doc.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyError("metadata.name: Required value")
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        raise PolicyError("metadata.labels: must be an object")
    return {**labels, NAMESPACE_NAME_LABEL: name}


# --------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    """Everything the semantics depend on: policies, pods, namespace labels."""

    policies: Sequence[Policy] = ()
    pods: Sequence[Pod] = ()
    namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # name -> labels

    def namespace_exists(self, ns: str) -> bool:
        return ns in self.namespaces or ns in ALWAYS_NAMESPACES

    def labels_of_namespace(self, ns: str) -> Mapping[str, str]:
        return self.namespaces.get(ns) or {NAMESPACE_NAME_LABEL: ns}

    def active_policies(self) -> list[Policy]:
        """Policies in force: a policy whose namespace does not exist yet is stored but
        enforced only once the namespace appears."""
        return sorted((p for p in self.policies if self.namespace_exists(p.namespace)), key=lambda p: p.key)

    def isolating(self, pod: Pod, direction: str) -> list[Policy]:
        """The policies that isolate ``pod`` in ``direction`` (sorted by ns/name)."""
        return [p for p in self.active_policies() if direction in p.types and p.selects(pod)]

    def peer_matches_pod(self, peer: Peer, policy: Policy, pod: Pod) -> bool:
        if peer.ip_block is not None:
            return pod.ip is not None and peer.ip_block.contains(pod.ip)
        if peer.namespace_selector is None:
            in_ns = pod.namespace == policy.namespace
        else:
            in_ns = peer.namespace_selector.matches(self.labels_of_namespace(pod.namespace))
        return in_ns and (peer.pod_selector is None or peer.pod_selector.matches(pod.labels))

    def peer_pods(self, peer: Peer, policy: Policy) -> list[Pod]:
        """The pods (with an IP) a pod/namespace selector peer stands for."""
        candidates = self.candidates(peer.pod_selector) if peer.pod_selector is not None else self.pods
        return [p for p in candidates if p.ip and self.peer_matches_pod(peer, policy, p)]

    def candidates(self, selector: Selector) -> Sequence[Pod]:
        """The pods that may match ``selector``: narrowed through an index of labels
        ("key=value" -> pods) by its In requirements (matchLabels are In), every pod when
        it has none. Without it a node's plan costs policies x pods selector checks
        (2 million, over a second, at 1 000 x 1 000); the caller still checks each one."""
        if getattr(self, "_indexed", None) is not self.pods:
            index: dict[tuple[str, str], list[Pod]] = {}
            for p in self.pods:
                for kv in p.labels.items():
                    index.setdefault(kv, []).append(p)
            self._index, self._indexed = index, self.pods
        best: Sequence[Pod] | None = None
        for r in selector.requirements:
            if r.operator == "In":
                found = [p for v in sorted(r.values) for p in self._index.get((r.key, v), ())]
                if best is None or len(found) < len(best):
                    best = found
        return self.pods if best is None else best

    def pod_by_ip(self, ip: str) -> Pod | None:
        for p in self.pods:
            if p.ip == ip:
                return p
        return None


@dataclass(frozen=True)
class Address:
    """One end of a connection: a pod, or an address that is not a pod (``pod`` None;
    ``node`` set when it is a node's own address)."""

    ip: str
    pod: Pod | None = None
    node: str | None = None


def _peer_matches(cluster: Cluster, peer: Peer, policy: Policy, other: Address) -> bool:
    if peer.ip_block is not None:
        return peer.ip_block.contains(other.ip)
    return other.pod is not None and cluster.peer_matches_pod(peer, policy, other.pod)


def rule_matches(
    cluster: Cluster, policy: Policy, rule: Rule, other: Address, port: int, protocol: str, port_owner: Pod | None
) -> bool:
    """Does ``rule`` of ``policy`` let traffic to/from ``other`` on port/protocol pass?
    ``port_owner`` is the destination pod, whose named ports are meant."""
    if rule.peers and not any(_peer_matches(cluster, peer, policy, other) for peer in rule.peers):
        return False
    return not rule.ports or any(p.matches(port, protocol, port_owner) for p in rule.ports)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    direction: str | None = None  # the direction that decided (denied: the one that denied)
    policy: str | None = None  # allowed by: "ns/name"
    rule: int | None = None  # its index in spec.ingress / spec.egress
    isolating: tuple[str, ...] = ()  # denied: the policies isolating the pod

    def __bool__(self) -> bool:
        return self.allowed


def _direction(
    cluster: Cluster, pod: Pod, direction: str, other: Address, port: int, protocol: str, port_owner: Pod | None
) -> Verdict:
    policies = cluster.isolating(pod, direction)
    if not policies:
        return Verdict(True, f"{pod.key} is not isolated for {direction.lower()}", direction)
    for p in policies:
        for i, rule in enumerate(p.rules(direction)):
            if rule_matches(cluster, p, rule, other, port, protocol, port_owner):
                return Verdict(
                    True, f"{direction.lower()} of {pod.key} allowed by {p.key} rule {i}", direction, p.key, i
                )
    names = tuple(p.key for p in policies)
    return Verdict(
        False,
        f"{direction.lower()} of {pod.key} denied: isolated by {', '.join(names)} and no rule of them allows it",
        direction,
        isolating=names,
    )


def verdict(cluster: Cluster, src: Address, dst: Address, port: int, protocol: str = "TCP") -> Verdict:
    """May ``src`` open a connection to ``dst``:``port``/``protocol``? (The first packet;
    replies of an allowed connection always pass.)"""
    why = []
    if src.pod is not None:
        v = _direction(cluster, src.pod, EGRESS, dst, port, protocol, dst.pod)
        if not v.allowed:
            return v
        why.append(v)
    if dst.pod is not None:
        if src.pod is None and src.node is not None and src.node == dst.pod.node:
            return Verdict(True, f"from {dst.pod.key}'s own node: always allowed", INGRESS)
        v = _direction(cluster, dst.pod, INGRESS, src, port, protocol, dst.pod)
        if not v.allowed:
            return v
        why.append(v)
    decided = [v for v in why if v.policy] or why
    if not decided:
        return Verdict(True, "neither end is a pod")
    last = decided[-1]
    return Verdict(True, "; ".join(v.reason for v in why), last.direction, last.policy, last.rule)


def pods_from(docs: Iterable[Mapping]) -> list[Pod]:
    return [pod_from_k8s(d) for d in docs]
