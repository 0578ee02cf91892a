"""Services and endpoints -> the ``iptables-restore`` text of kube-proxy's iptables mode.

How a packet to a Service finds a pod (nat table; the first packet of a connection only,
conntrack replays the decision for the rest of the flow, both ways):

    PREROUTING / OUTPUT
      -> KUBE-SERVICES            one rule per service port: -d <clusterIP> --dport <port>
      |    -> KUBE-SVC-<hash>     "! -s <clusterCIDR> -j KUBE-MARK-MASQ" (traffic from outside
      |         |                 the pod network gets SNATed, or the reply would bypass us),
      |         |                 then one rule per endpoint, picked at random:
      |         |                   -m statistic --mode random --probability 1/3 -> SEP 1
      |         |                   -m statistic --mode random --probability 1/2 -> SEP 2
      |         |                   (unconditional)                             -> SEP 3
      |         -> KUBE-SEP-<hash>  "-s <podIP> -j KUBE-MARK-MASQ" (hairpin: a pod reaching
      |                             itself through its service must not see its own address
      |                             as the source), then DNAT --to-destination <podIP:port>
      -> (last rule) dst is a local address -> KUBE-NODEPORTS
                                    --dport <nodePort> -> KUBE-EXT-<hash> -> MARK-MASQ, SVC
    POSTROUTING -> KUBE-POSTROUTING  marked 0x4000? clear the mark and MASQUERADE

The probabilities cascade: the i-th of n rules (from 0) fires with 1/(n-i) of what is
left, so each endpoint gets exactly 1/n. A service port without ready endpoints gets no
nat rules at all, only a filter-table REJECT, so clients fail fast instead of timing out.

The text has kube-proxy's chains, comments and number formats, and its chains come in
the order kube-proxy's own golden tests use (sortIPTablesRules: KUBE-NODEPORTS,
KUBE-SERVICES, then the other chains alphabetically; KUBE-SERVICES rules by service name,
the nodeports jump last), so a rendering can be diffed line by line against kube-proxy's.

It names only chains the proxy owns. The jumps from the built-in chains (PREROUTING ->
KUBE-SERVICES, ...) cannot be part of a ``--noflush`` restore without rewriting the
built-in chain, so they are data (``JUMP_CHAINS``) that the apply layer ensures with
``iptables -C`` / ``-I``, as kube-proxy does on full syncs.

Partial syncs (KEP-3453): ``IptablesPlan.render_partial(previous)`` rewrites the fixed
chains and KUBE-SERVICES/KUBE-NODEPORTS, but only the per-service chains whose rules
changed since ``previous``, and deletes (``-X``) chains that no longer exist. Unlike
kube-proxy, which reads ``iptables-save -t nat`` on every sync to find stale chains,
we remember what we wrote (``SyncState``): on the nft backend that read costs over a
second at 10 000 services (DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from minikubenet.k8s_objects import Endpoint, Service, ServicePort
from minikubenet.proxy.model import RenderOptions, categorize_endpoints, is_large_cluster, proxied
from minikubenet.proxy.naming import (
    endpoint_chain,
    external_chain,
    firewall_chain,
    is_service_chain,
    local_chain,
    service_chain,
)

# Fixed chains (kube-proxy's const block).
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"  # loadBalancerSourceRanges: always empty here
KUBE_FIREWALL = "KUBE-FIREWALL"  # kubelet's anti-martian rule, localhost NodePorts only

FILTER_CHAINS = (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL)
NAT_CHAINS = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)

NODEPORTS_COMMENT = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"


@dataclass(frozen=True)
class JumpChain:
    """A jump from a built-in chain into ours, inserted at the top of the built-in chain
    so that an earlier ACCEPT or DROP from other software cannot shadow it."""

    table: str
    src: str  # the built-in chain
    dst: str  # our chain
    comment: str
    extra: tuple[str, ...] = ()

    def rule_args(self) -> list[str]:
        """argv for ``iptables -t <table> -C/-I <src> ...`` (kube-proxy's argument order)."""
        args = list(self.extra)
        if self.comment:
            args += ["-m", "comment", "--comment", self.comment]
        return args + ["-j", self.dst]


_NEW = ("-m", "conntrack", "--ctstate", "NEW")

# kube-proxy's iptablesJumpChains, in its order. Each is *prepended*, so in the kernel the
# last one ends up first.
JUMP_CHAINS: tuple[JumpChain, ...] = (
    JumpChain("filter", "INPUT", KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _NEW),
    JumpChain("filter", "FORWARD", KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _NEW),
    JumpChain("filter", "INPUT", KUBE_NODEPORTS, "kubernetes health check service ports"),
    JumpChain("filter", "FORWARD", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpChain("filter", "OUTPUT", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpChain("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    JumpChain("filter", "INPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpChain("filter", "OUTPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpChain("filter", "FORWARD", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpChain("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    JumpChain("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    JumpChain("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
)

# iptablesKubeletJumpChains: only needed with localhost NodePorts (the KUBE-FIREWALL
# rule blocks martian 127.0.0.0/8 traffic that route_localnet=1 would otherwise let in).
KUBELET_JUMP_CHAINS: tuple[JumpChain, ...] = (
    JumpChain("filter", "INPUT", KUBE_FIREWALL, ""),
    JumpChain("filter", "OUTPUT", KUBE_FIREWALL, ""),
)


def jump_chains(options: RenderOptions = RenderOptions()) -> tuple[JumpChain, ...]:
    return JUMP_CHAINS + (KUBELET_JUMP_CHAINS if options.localhost_nodeports else ())


# --------------------------------------------------------------------------- rule text


def _comment(text: str) -> str:
    # kube-proxy quotes exactly the comments that contain spaces ("ns1/svc1 cluster IP"
    # is quoted, the bare service name ns1/svc1 is not); iptables-restore needs the quotes.
    quoted = f'"{text}"' if " " in text else text
    return f"-m comment --comment {quoted}"


def probability(n: int) -> str:
    """kube-proxy's computeProbability: ``%0.10f`` of 1/n. (The kernel stores it as a
    u32 fraction of 2^31, so ``iptables-save`` prints e.g. 0.33333333349 instead.)"""
    return f"{1.0 / n:0.10f}"


@dataclass
class ServicePortRules:
    """Everything one service port contributes: rules in the shared fixed chains, and
    chains of its own (SVC, EXT, SEP...) that a partial sync may skip when unchanged."""

    key: str  # "ns/name:port"
    filter: dict[str, list[str]] = field(default_factory=dict)  # REJECTs
    nat_entry: dict[str, list[str]] = field(default_factory=dict)  # KUBE-SERVICES, KUBE-NODEPORTS
    nat_chains: dict[str, list[str]] = field(default_factory=dict)  # its own chains

    def add(self, part: dict[str, list[str]], chain: str, *words) -> None:
        part.setdefault(chain, []).append(" ".join(str(w) for w in words if w != ""))

    def own_chain(self, chain: str) -> None:
        self.nat_chains.setdefault(chain, [])

    @functools.cached_property
    def nat_rule_total(self) -> int:
        return sum(len(rules) for rules in self.nat_chains.values())

    @functools.cached_property
    def digest(self) -> str:
        """Changes exactly when this port's own chains would be written differently.
        (Computed once: the rules are complete when anyone asks.)"""
        text = "\n".join(f":{c}\n" + "\n".join(rules) for c, rules in sorted(self.nat_chains.items()))
        return hashlib.sha256(text.encode()).hexdigest()


def _service_port_rules(
    svc: Service,
    port: ServicePort,
    endpoints: Sequence[Endpoint],
    cluster_cidr: ipaddress.IPv4Network | None,
    options: RenderOptions,
) -> ServicePortRules:
    """kube-proxy's per-service-port block of syncProxyRules, decision for decision."""
    r = ServicePortRules(svc.port_key(port))
    proto, spn = port.protocol.lower(), r.key
    cat = categorize_endpoints(svc, endpoints, options.node_name)
    cluster_chain, local_chain_ = service_chain(spn, proto), local_chain(spn, proto)
    ext_chain, fw_chain = external_chain(spn, proto), firewall_chain(spn, proto)
    has_endpoints = cat.has_any
    # Which chain each kind of traffic enters, and whether it has anywhere to go.
    internal_chain, has_internal = cluster_chain, has_endpoints
    if svc.internal_policy_local:
        internal_chain, has_internal = local_chain_, has_endpoints and bool(cat.local)
    external_policy_chain, has_external = cluster_chain, has_endpoints
    if svc.external_policy_local:
        external_policy_chain, has_external = local_chain_, has_endpoints and bool(cat.local)
    uses_fw = has_endpoints and bool(svc.load_balancer_ips) and bool(svc.load_balancer_source_ranges)
    lb_chain = fw_chain if uses_fw else ext_chain

    # Without endpoints the filter table answers: REJECT (nothing anywhere, fail fast)
    # or DROP (endpoints elsewhere but none here for a Local policy; the EXT chain has
    # already short-circuited pod and host traffic, what is left came from outside).
    if not has_endpoints:
        int_target = ext_target = "REJECT"
        int_why = ext_why = _comment(f"{spn} has no endpoints")
    else:
        int_target = ext_target = "DROP"
        int_why = ext_why = _comment(f"{spn} has no local endpoints")
    match = ("-m", proto, "-p", proto)

    if has_internal:
        r.add(
            r.nat_entry,
            KUBE_SERVICES,
            _comment(f"{spn} cluster IP"),
            *match,
            "-d",
            svc.cluster_ip,
            "--dport",
            port.port,
            "-j",
            internal_chain,
        )
    else:
        r.add(r.filter, KUBE_SERVICES, int_why, *match, "-d", svc.cluster_ip, "--dport", port.port, "-j", int_target)
    for ip in svc.external_ips:
        if has_endpoints:
            r.add(
                r.nat_entry,
                KUBE_SERVICES,
                _comment(f"{spn} external IP"),
                *match,
                "-d",
                ip,
                "--dport",
                port.port,
                "-j",
                ext_chain,
            )
        if not has_external:
            r.add(r.filter, KUBE_EXTERNAL_SERVICES, ext_why, *match, "-d", ip, "--dport", port.port, "-j", ext_target)
    for ip in svc.load_balancer_ips:
        if has_endpoints:
            r.add(
                r.nat_entry,
                KUBE_SERVICES,
                _comment(f"{spn} loadbalancer IP"),
                *match,
                "-d",
                ip,
                "--dport",
                port.port,
                "-j",
                lb_chain,
            )
        if uses_fw:
            r.add(
                r.filter,
                KUBE_PROXY_FIREWALL,
                _comment(f"{spn} traffic not accepted by {fw_chain}"),
                *match,
                "-d",
                ip,
                "--dport",
                port.port,
                "-j",
                "DROP",
            )
    if not has_external:
        for ip in svc.load_balancer_ips:
            r.add(r.filter, KUBE_EXTERNAL_SERVICES, ext_why, *match, "-d", ip, "--dport", port.port, "-j", ext_target)
    if port.node_port:
        if has_endpoints:
            # NodePorts are not subject to loadBalancerSourceRanges (kube-proxy: "we
            # can't change that").
            r.add(r.nat_entry, KUBE_NODEPORTS, _comment(spn), *match, "--dport", port.node_port, "-j", ext_chain)
        if not has_external:
            r.add(
                r.filter,
                KUBE_EXTERNAL_SERVICES,
                ext_why,
                "-m addrtype --dst-type LOCAL",
                *match,
                "--dport",
                port.node_port,
                "-j",
                ext_target,
            )
    if svc.health_check_node_port:
        # Open whether or not this node has local endpoints: the load balancer must
        # be able to ask, and hear 503.
        r.add(
            r.filter,
            KUBE_NODEPORTS,
            _comment(f"{spn} health check node port"),
            "-m tcp -p tcp --dport",
            svc.health_check_node_port,
            "-j ACCEPT",
        )

    if has_internal:
        r.own_chain(internal_chain)
        _write_cluster_ip_masquerade(r, svc, port, internal_chain, cluster_cidr, options)
    if has_endpoints and svc.externally_accessible:
        _write_external_chain(
            r, svc, spn, ext_chain, cluster_chain, external_policy_chain if has_external else None, cluster_cidr
        )
    if uses_fw:
        _write_firewall_chain(r, svc, spn, fw_chain, ext_chain, options)
    if cat.cluster and svc.uses_cluster_endpoints:
        r.own_chain(cluster_chain)
        _write_service_to_endpoints(r, svc, spn, proto, cluster_chain, cat.cluster, options)
    if cat.local and svc.uses_local_endpoints:
        r.own_chain(local_chain_)
        _write_service_to_endpoints(r, svc, spn, proto, local_chain_, cat.local, options)
    for ep in cat.reachable:
        _write_endpoint_chain(r, svc, spn, proto, ep, options)
    return r


def _write_external_chain(
    r: ServicePortRules,
    svc: Service,
    spn: str,
    ext: str,
    cluster_chain: str,
    policy_chain: str | None,
    cluster_cidr: ipaddress.IPv4Network | None,
) -> None:
    """KUBE-EXT: every external destination (NodePort, LB IP, external IP) enters here."""
    r.own_chain(ext)
    if not svc.external_policy_local:
        # Cluster policy: the endpoint may be on another node, and its reply must come
        # back through this one to be un-DNATed, so the client address is replaced by ours.
        r.add(r.nat_chains, ext, _comment(f"masquerade traffic for {spn} external destinations"), "-j", KUBE_MARK_MASQ)
    else:
        # Local policy: the client's address is kept. Pod traffic to an external
        # destination is exempt from the policy ("simulates going up-and-out to an
        # external load-balancer and coming back in"); the node's own traffic needs
        # SNAT, since the LB IP is local and would be its source.
        if cluster_cidr is not None:
            r.add(
                r.nat_chains,
                ext,
                _comment(f"pod traffic for {spn} external destinations"),
                "-s",
                cluster_cidr,
                "-j",
                cluster_chain,
            )
        r.add(
            r.nat_chains,
            ext,
            _comment(f"masquerade LOCAL traffic for {spn} external destinations"),
            "-m addrtype --src-type LOCAL -j",
            KUBE_MARK_MASQ,
        )
        r.add(
            r.nat_chains,
            ext,
            _comment(f"route LOCAL traffic for {spn} external destinations"),
            "-m addrtype --src-type LOCAL -j",
            cluster_chain,
        )
    if policy_chain:
        r.add(r.nat_chains, ext, "-j", policy_chain)


def _write_firewall_chain(
    r: ServicePortRules, svc: Service, spn: str, fw: str, ext: str, options: RenderOptions
) -> None:
    """KUBE-FW: loadBalancerSourceRanges. What falls off the end is not DNATed and meets
    the DROP in filter KUBE-PROXY-FIREWALL."""
    r.own_chain(fw)
    why = _comment(f"{spn} loadbalancer IP")
    node_ip = ipaddress.IPv4Address(options.node_ip) if options.node_ip else None
    for cidr in svc.load_balancer_source_ranges:
        r.add(r.nat_chains, fw, why, "-s", cidr, "-j", ext)
    if node_ip is not None and any(node_ip in c for c in svc.load_balancer_source_ranges):
        # A VIP-like LB IP is often local: the node's own request to it loops back
        # with the VIP as source, which must be allowed too.
        for ip in svc.load_balancer_ips:
            r.add(r.nat_chains, fw, why, "-s", ip, "-j", ext)
    r.add(r.nat_chains, fw, _comment(f"other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL"))


def _write_cluster_ip_masquerade(
    r: ServicePortRules,
    svc: Service,
    port: ServicePort,
    svc_chain: str,
    cluster_cidr: ipaddress.IPv4Network | None,
    options: RenderOptions,
) -> None:
    match = (
        _comment(f"{r.key} cluster IP"),
        "-m",
        port.protocol.lower(),
        "-p",
        port.protocol.lower(),
        "-d",
        svc.cluster_ip,
        "--dport",
        port.port,
    )
    if options.masquerade_all:
        r.add(r.nat_chains, svc_chain, *match, "-j", KUBE_MARK_MASQ)
    elif cluster_cidr is not None:
        # "This masquerades off-cluster traffic to a service VIP. The idea is that you can
        # establish a static route for your Service range, routing to any node, and that
        # node will bridge into the Service for you." (kube-proxy, LocalTrafficDetector)
        r.add(r.nat_chains, svc_chain, *match, "!", "-s", cluster_cidr, "-j", KUBE_MARK_MASQ)


def _endpoint_comment(text: str, options: RenderOptions) -> str:
    # appendServiceCommentLocked: no per-endpoint comments in large clusters.
    return "" if options.large_cluster else _comment(text)


def _write_service_to_endpoints(
    r: ServicePortRules,
    svc: Service,
    spn: str,
    proto: str,
    svc_chain: str,
    endpoints: Sequence[Endpoint],
    options: RenderOptions = RenderOptions(),
) -> None:
    """kube-proxy's writeServiceToEndpointRules: affinity first, then the random cascade."""
    seps = [(ep, endpoint_chain(spn, proto, str(ep))) for ep in endpoints]
    if svc.session_affinity == "ClientIP":
        # A client seen recently (its source IP is in the SEP's "recent" list, written by
        # --set in the SEP chain) goes back to the same endpoint; --reap forgets old ones.
        for ep, sep in seps:
            r.add(
                r.nat_chains,
                svc_chain,
                _endpoint_comment(f"{spn} -> {ep}", options),
                "-m recent --name",
                sep,
                "--rcheck --seconds",
                svc.affinity_timeout,
                "--reap -j",
                sep,
            )
    n = len(seps)
    for i, (ep, sep) in enumerate(seps):
        # Each rule is a probabilistic match; the final (or only) rule is a guaranteed match.
        chance = f"-m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
        r.add(r.nat_chains, svc_chain, _endpoint_comment(f"{spn} -> {ep}", options), chance, "-j", sep)


def _write_endpoint_chain(
    r: ServicePortRules, svc: Service, spn: str, proto: str, ep: Endpoint, options: RenderOptions = RenderOptions()
) -> None:
    sep = endpoint_chain(spn, proto, str(ep))
    r.own_chain(sep)
    why = _endpoint_comment(spn, options)
    r.add(r.nat_chains, sep, why, "-s", ep.ip, "-j", KUBE_MARK_MASQ)
    remember = f"-m recent --name {sep} --set" if svc.session_affinity == "ClientIP" else ""
    r.add(r.nat_chains, sep, why, remember, "-m", proto, "-p", proto, "-j DNAT --to-destination", ep)


# --------------------------------------------------------------------------- fixed chains


def _filter_fixed(options: RenderOptions) -> dict[str, list[str]]:
    chains: dict[str, list[str]] = {c: [] for c in FILTER_CHAINS}
    if options.localhost_nodeports:
        # route_localnet=1 lets 127.0.0.0/8 arrive from outside; only DNATed (NodePort)
        # connections may use it (CVE-2020-8558, https://issues.k8s.io/90259).
        chains[KUBE_FIREWALL] = [
            '-m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 '
            "! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        ]
    mark = f"{options.masquerade_mark}/{options.masquerade_mark}"
    forward = chains[KUBE_FORWARD]
    if options.drop_invalid:
        # Out-of-window packets are INVALID, skip reverse NAT and would make the host
        # answer with RST (kubernetes#74839).
        forward.append("-m conntrack --ctstate INVALID -j DROP")
    # NodePort traffic forwarded to another node's pod is accepted even when the FORWARD
    # policy is DROP (as Docker sets it), and so are its replies.
    forward.append(f'-m comment --comment "kubernetes forwarding rules" -m mark --mark {mark} -j ACCEPT')
    forward.append(
        '-m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )
    return chains


def _nat_fixed(options: RenderOptions) -> dict[str, list[str]]:
    mark = options.masquerade_mark
    masquerade = '-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
    return {
        KUBE_SERVICES: [],
        KUBE_NODEPORTS: [],
        KUBE_POSTROUTING: [
            f"-m mark ! --mark {mark}/{mark} -j RETURN",
            # Clear the mark to avoid re-masquerading if the packet re-traverses the stack.
            f"-j MARK --xor-mark {mark}",
            masquerade + (" --random-fully" if options.random_fully else ""),
        ],
        KUBE_MARK_MASQ: [f"-j MARK --or-mark {mark}"],
    }


def _nodeports_jumps(node_ips: Sequence[ipaddress.IPv4Address], options: RenderOptions) -> list[str]:
    """The last rule of nat KUBE-SERVICES: anything addressed to this node goes on to
    KUBE-NODEPORTS. Last, so that a ClusterIP rule always wins."""
    c = _comment(NODEPORTS_COMMENT)
    if not node_ips:
        # Every local address (kube-proxy's default). 127.0.0.0/8 only when localhost
        # NodePorts are on: otherwise such packets would be martians after DNAT.
        no_lo = "" if options.localhost_nodeports else " ! -d 127.0.0.0/8"
        return [f"{c} -m addrtype --dst-type LOCAL{no_lo} -j {KUBE_NODEPORTS}"]
    return [f"{c} -d {ip} -j {KUBE_NODEPORTS}" for ip in node_ips if options.localhost_nodeports or not ip.is_loopback]


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class SyncState:
    """What a successful restore left in the nat table, per service port: the digest of
    its own chains and their names. Keep it after each successful apply; feed it to the
    next ``render_partial``. After a failed apply, drop it and do a full sync."""

    digests: Mapping[str, str] = field(default_factory=dict)
    chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    fixed: Mapping[str, str] = field(default_factory=dict)  # "table/chain" -> digest of its rules
    # Large clusters: stale chains whose deletion was put off (kube-proxy deletes them
    # at most once per sync period then); still in the kernel, referenced by nothing.
    pending_stale: tuple[str, ...] = ()

    def nat_chains(self) -> frozenset[str]:
        return frozenset(c for cs in self.chains.values() for c in cs)


@dataclass(frozen=True)
class IptablesPlan:
    filter: Mapping[str, list[str]]  # every filter chain, complete
    nat_fixed: Mapping[str, list[str]]  # KUBE-SERVICES, KUBE-NODEPORTS, POSTROUTING, MARK-MASQ
    nodeports_tail: tuple[str, ...]  # the last rule(s) of nat KUBE-SERVICES
    service_ports: tuple[ServicePortRules, ...]

    @functools.cached_property
    def state(self) -> SyncState:
        filter_chains, nat = self._fixed
        fixed = {
            f"{table}/{c}": _digest(rules)
            for table, chains in (("filter", filter_chains), ("nat", nat))
            for c, rules in chains.items()
        }
        return SyncState(
            digests={p.key: p.digest for p in self.service_ports},
            chains={p.key: tuple(p.nat_chains) for p in self.service_ports},
            fixed=fixed,
        )

    def nat_service_chains(self) -> frozenset[str]:
        return frozenset(c for p in self.service_ports for c in p.nat_chains)

    def owned_chains(self) -> dict[str, frozenset[str]]:
        """Every chain this ruleset writes, per table (what ``cleanup`` would remove)."""
        return {"filter": frozenset(self.filter), "nat": frozenset(self.nat_fixed) | self.nat_service_chains()}

    def rule_counts(self) -> dict[str, int]:
        """Rules this ruleset holds per table (kube-proxy's sync_proxy_rules_iptables_total)."""
        filter_chains, nat = self._fixed
        return {
            "filter": sum(map(len, filter_chains.values())),
            "nat": sum(map(len, nat.values())) + sum(p.nat_rule_total for p in self.service_ports),
        }

    def render(self, existing_chains: Iterable[str] = ()) -> str:
        """The full restore text. ``existing_chains``: nat chain names currently in the
        kernel (``chains_from_save(iptables-save -t nat)``); our stale ones are deleted."""
        stale = stale_chains(existing_chains, self.nat_service_chains())
        return self._render(self.service_ports, stale)

    def render_partial(
        self, previous: SyncState, skip_unchanged_fixed: bool = False, stale: Sequence[str] | None = None
    ) -> str:
        """Only the service ports whose own chains changed since ``previous``, plus all
        fixed chains, plus the deletion of chains that no longer exist. Apply with
        ``--noflush``: chains not named in the text keep their rules.

        ``skip_unchanged_fixed``: also leave out the fixed chains (KUBE-SERVICES, the
        filter chains...) whose rules are the same as in ``previous``. kube-proxy always
        rewrites them (KEP-3453); at 10 000 services that is a 10 000-rule KUBE-SERVICES
        per sync, most of a partial restore's time, although an endpoint change never
        alters it. Safe for the same reason partial syncs are: the text names exactly
        what changed, and a periodic full sync repairs anything changed behind our back."""
        changed = [p for p in self.service_ports if previous.digests.get(p.key) != p.digest]
        if stale is None:
            stale = self.stale_since(previous)
        return self._render(changed, stale, previous.fixed if skip_unchanged_fixed else None)

    def stale_since(self, previous: SyncState) -> list[str]:
        """Our nat chains that ``previous`` had and this plan does not, plus the ones
        whose deletion was put off and that this plan does not bring back."""
        # A chain's name hashes its service port, so it can only go stale within its port.
        now = {p.key: p.nat_chains for p in self.service_ports}
        stale = {
            c
            for key, chains in previous.chains.items()
            if tuple(now.get(key, ())) != chains
            for c in chains
            if c not in now.get(key, ())
        }
        active = self.nat_service_chains()
        return sorted(stale | {c for c in previous.pending_stale if c not in active})

    def _fixed_chains(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """A copy of ``_fixed``, to change."""
        filter_chains, nat = self._fixed
        return {c: list(r) for c, r in filter_chains.items()}, {c: list(r) for c, r in nat.items()}

    @functools.cached_property
    def _fixed(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """The fixed chains of both tables with every service's entry rules in them
        (computed once per plan: a sync needs them for the text, the state and the counts)."""
        filter_chains = {c: list(rules) for c, rules in self.filter.items()}
        nat = {c: list(rules) for c, rules in self.nat_fixed.items()}
        for p in self.service_ports:
            for part, into in ((p.filter, filter_chains), (p.nat_entry, nat)):
                for chain, rules in part.items():
                    into[chain].extend(rules)
        nat[KUBE_SERVICES].extend(self.nodeports_tail)
        return filter_chains, nat

    def _render(
        self,
        written: Sequence[ServicePortRules],
        stale: Sequence[str],
        unchanged_fixed: Mapping[str, str] | None = None,
    ) -> str:
        filter_chains, nat = self._fixed_chains()  # every service's entry rules, always
        if unchanged_fixed:
            filter_chains = {c: r for c, r in filter_chains.items() if unchanged_fixed.get(f"filter/{c}") != _digest(r)}
            nat = {c: r for c, r in nat.items() if unchanged_fixed.get(f"nat/{c}") != _digest(r)}
        for p in written:  # own chains only where they changed
            nat.update({c: list(rules) for c, rules in p.nat_chains.items()})
        return "\n".join(_table("filter", filter_chains) + _table("nat", nat, stale)) + "\n"


def _digest(rules: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(rules).encode()).hexdigest()


def _chain_order(name: str) -> tuple:
    # sortIPTablesRules: KUBE-NODEPORTS, KUBE-SERVICES, then KUBE-* alphabetically.
    return (name != KUBE_NODEPORTS, name != KUBE_SERVICES, not name.startswith("KUBE-"), name)


def _table(name: str, chains: Mapping[str, list[str]], stale: Sequence[str] = ()) -> list[str]:
    order = sorted(chains, key=_chain_order)
    lines = [f"*{name}"] + [f":{c} - [0:0]" for c in order]
    # A chain line for a stale chain flushes it (and so drops its jumps to other stale
    # chains); the -X lines at the end then delete them, in the same atomic restore.
    lines += [f":{c} - [0:0]" for c in stale]
    lines += [f"-A {c} {rule}" for c in order for rule in chains[c]]
    lines += [f"-X {c}" for c in stale]
    return lines + ["COMMIT"]


def stale_chains(existing: Iterable[str], active: Iterable[str]) -> list[str]:
    """Existing per-service chains (by prefix: never anyone else's) that are not active."""
    return sorted(set(c for c in existing if is_service_chain(c)) - set(active))


def chains_from_save(save_text: str) -> set[str]:
    """Chain names in ``iptables-save`` output (its ``:CHAIN POLICY [p:b]`` lines)."""
    return {line[1:].split()[0] for line in save_text.splitlines() if line.startswith(":")}


def plan_iptables(
    services: Iterable[Service],
    endpoints_by_service: Mapping[str, Sequence[Endpoint]],
    node_ips: Sequence[str | ipaddress.IPv4Address] = (),
    cluster_cidr: str | ipaddress.IPv4Network | None = None,
    options: RenderOptions = RenderOptions(),
) -> IptablesPlan:
    """Build the ruleset for this node.

    services              every Service (headless ones are skipped)
    endpoints_by_service  {"ns/name:port": [Endpoint]}; only ready endpoints are used
    node_ips              the addresses NodePorts answer on (kube-proxy's
                          --nodeport-addresses); empty means every local address
    cluster_cidr          the pod network: ClusterIP traffic from outside it is SNATed
                          (kube-proxy's --cluster-cidr local-traffic detector); None: never
    """
    services = proxied(services)
    if not options.large_cluster and is_large_cluster(services, endpoints_by_service):
        options = dataclasses.replace(options, large_cluster=True)
    ports = [p for svc in services for p in service_rules(svc, endpoints_by_service, cluster_cidr, options)]
    return plan_from_rules(ports, node_ips, options)


def service_rules(
    svc: Service,
    endpoints_by_service: Mapping[str, Sequence[Endpoint]],
    cluster_cidr: str | ipaddress.IPv4Network | None = None,
    options: RenderOptions = RenderOptions(),
) -> list[ServicePortRules]:
    """The rules of every port of one (proxied) service. A sync loop can keep these per
    service and rebuild only the services that changed (``plan_from_rules``), as
    kube-proxy's change trackers do, instead of re-planning 10 000 services per sync."""
    cidr = ipaddress.IPv4Network(cluster_cidr) if cluster_cidr is not None else None
    return [
        _service_port_rules(svc, port, endpoints_by_service.get(svc.port_key(port), ()), cidr, options)
        for port in svc.ports
    ]


def plan_from_rules(
    service_ports: Sequence[ServicePortRules],
    node_ips: Sequence[str | ipaddress.IPv4Address] = (),
    options: RenderOptions = RenderOptions(),
) -> IptablesPlan:
    """The plan for service port rules built by ``service_rules``, given in the order of
    ``model.proxied`` (services sorted by "ns/name")."""
    ips = [ipaddress.IPv4Address(ip) for ip in node_ips]
    return IptablesPlan(
        filter=_filter_fixed(options),
        nat_fixed=_nat_fixed(options),
        nodeports_tail=tuple(_nodeports_jumps(ips, options)),
        service_ports=tuple(service_ports),
    )


def render_iptables(
    services: Iterable[Service],
    endpoints_by_service: Mapping[str, Sequence[Endpoint]],
    node_ips: Sequence[str | ipaddress.IPv4Address] = (),
    cluster_cidr: str | ipaddress.IPv4Network | None = None,
    options: RenderOptions = RenderOptions(),
    existing_chains: Iterable[str] = (),
) -> str:
    """The full ``iptables-restore --noflush`` text for the filter and nat tables."""
    return plan_iptables(services, endpoints_by_service, node_ips, cluster_cidr, options).render(existing_chains)
