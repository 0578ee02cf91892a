"""Services and endpoints -> the ``nft -f`` text of kube-proxy's nftables mode.

Why a second backend: iptables looks a service up by trying KUBE-SERVICES rules one by
one, so the first packet to the last of 10 000 services pays for 10 000 rule checks. An
nftables *verdict map* is a hash table from (address, protocol, port) to a verdict, so
every service costs the same (DESIGN.md measured 20-31 us up to 10 000 services):

    nat-prerouting / nat-output -> services
       ip daddr . meta l4proto . th dport vmap @service-ips          ClusterIPs
       fib daddr type local ... meta l4proto . th dport vmap @service-nodeports
         -> goto service-HASH-ns/svc/tcp/port
              ip daddr <clusterIP> ip saddr != <clusterCIDR> jump mark-for-masquerade
              numgen random mod 3 vmap { 0 : goto endpoint-..., 1 : ..., 2 : ... }
         -> goto endpoint-HASH-ns/svc/tcp/port__IP/port
              ip saddr <podIP> jump mark-for-masquerade      (hairpin)
              meta l4proto tcp dnat to <podIP:port>
    nat-postrouting -> masquerading: marked 0x4000? clear it, masquerade

One ``numgen random mod N`` picks among N endpoints in one step, where iptables needs a
cascade of N-1 ``statistic`` rules. ClientIP affinity is a set per endpoint that
remembers client addresses with a timeout (``update @affinity-... { ip saddr }`` in the
endpoint chain, ``ip saddr @affinity-... goto endpoint-...`` in the service chain).
Services without endpoints are rejected from the filter hooks through two more vmaps
(@no-endpoint-services, @no-endpoint-nodeports -> goto reject-chain).

Everything lives in one table of our own (``ip minikubenet-proxy``, kube-proxy's is
``ip kube-proxy``) with its own base chains, so no other software's rules are touched
and no global lock is shared. The text is a transaction of ``add``/``flush`` commands,
as kube-proxy's knftables writes it: ``nft -f`` applies it atomically, and ``add`` of an
existing object is not an error, so the same text can be applied again and again.
Affinity sets are added but never flushed, so stickiness survives a resync. A full sync
of more than STAGE_ABOVE service ports is the same text cut into several transactions
(``NftPlan.render_staged``: the kernel's cost of one big transaction grows with its
square), ordered so that what traffic sees changes in the last one alone.

Partial syncs (``NftPlan.render_partial(previous_state)``) write only the chains of
service ports that changed and the map/set elements added or removed since the last
sync, never flushing a map, so a sync's size follows what changed, not the cluster.

Stale per-service chains are only *flushed* here: with kernels before 6.2, a chain that
a just-deleted map element pointed to still counts as referenced for a short while, so
kube-proxy deletes them in a later transaction, at least a second later
(``render_nft_delete_chains``). Layout and names follow pkg/proxy/nftables/proxier.go,
including the Local traffic policies (``local-`` chains), external IPs and LB IPs (more
elements of @service-ips) and loadBalancerSourceRanges (@firewall-ips -> ``firewall-``
chains, checked before DNAT).
nft 1.0.6 needs a ``;`` before a closing ``}`` of a one-line block: written everywhere.
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
    NFT_AFFINITY_PREFIX,
    NFT_ENDPOINT_PREFIX,
    NFT_EXTERNAL_PREFIX,
    NFT_FIREWALL_PREFIX,
    NFT_LOCAL_PREFIX,
    NFT_SERVICE_PREFIX,
    nft_endpoint_base,
    nft_is_affinity_set,
    nft_is_service_chain,
    nft_service_base,
)

TABLE = "minikubenet-proxy"
FAMILY = "ip"

SERVICES = "services"
MARK_MASQ = "mark-for-masquerade"
MASQUERADING = "masquerading"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
CLUSTER_IPS_CHECK = "cluster-ips-check"
REJECT_CHAIN = "reject-chain"

FIREWALL_CHECK = "firewall-check"

# name, type, hook, priority. Filter chains run at priority 0, after DNAT (-100) on the
# output hook, so they see where a packet really goes; no-endpoint services are never
# DNATed and still carry their ClusterIP there. The loadBalancerSourceRanges firewall
# must see the LB IP, so it runs before DNAT (-110, kube-proxy's "pre-dnat" chains).
BASE_CHAINS = (
    ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
    ("filter-output-pre-dnat", "filter", "output", -110),
    ("filter-input", "filter", "input", 0),
    ("filter-forward", "filter", "forward", 0),
    ("filter-output", "filter", "output", 0),
    ("nat-prerouting", "nat", "prerouting", -100),  # dstnat
    ("nat-output", "nat", "output", -100),  # dstnat
    ("nat-postrouting", "nat", "postrouting", 100),  # srcnat
)

# (our chain, from base chain, match): kube-proxy's nftablesJumpChains. REJECT is only
# valid in input/forward/output hooks on kernels before 5.9, hence no prerouting jumps.
JUMPS = (
    (NODEPORT_ENDPOINTS_CHECK, "filter-input", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-input", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-forward", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-output", "ct state new"),
    (SERVICES, "nat-output", ""),
    (SERVICES, "nat-prerouting", ""),
    (MASQUERADING, "nat-postrouting", ""),
    (CLUSTER_IPS_CHECK, "filter-forward", "ct state new"),
    (CLUSTER_IPS_CHECK, "filter-output", "ct state new"),
    (FIREWALL_CHECK, "filter-prerouting-pre-dnat", "ct state new"),
    (FIREWALL_CHECK, "filter-output-pre-dnat", "ct state new"),
)

# name, kind, type, comment
CONTAINERS = (
    ("cluster-ips", "set", "ipv4_addr", "Active ClusterIPs"),
    (
        "firewall-ips",
        "map",
        "ipv4_addr . inet_proto . inet_service : verdict",
        "destinations that are subject to LoadBalancerSourceRanges",
    ),
    ("nodeport-ips", "set", "ipv4_addr", "IPs that accept NodePort traffic"),
    (
        "no-endpoint-services",
        "map",
        "ipv4_addr . inet_proto . inet_service : verdict",
        "vmap to drop or reject packets to services with no endpoints",
    ),
    (
        "no-endpoint-nodeports",
        "map",
        "inet_proto . inet_service : verdict",
        "vmap to drop or reject packets to service nodeports with no endpoints",
    ),
    (
        "service-ips",
        "map",
        "ipv4_addr . inet_proto . inet_service : verdict",
        "ClusterIP, ExternalIP and LoadBalancer IP traffic",
    ),
    ("service-nodeports", "map", "inet_proto . inet_service : verdict", "NodePort traffic"),
)

_DISPATCH = "meta l4proto . th dport"


# --------------------------------------------------------------------------- per service port


@dataclass
class NftServicePort:
    """One service port's objects: its chains with their rules, affinity sets, and the
    elements it puts into the shared maps."""

    key: str
    chains: dict[str, list[str]] = field(default_factory=dict)
    affinity_sets: dict[str, int] = field(default_factory=dict)  # name -> timeout seconds
    elements: list[tuple[str, str]] = field(default_factory=list)  # (map or set, element)

    @functools.cached_property
    def rule_total(self) -> int:
        return sum(len(rules) for rules in self.chains.values())

    @functools.cached_property
    def digest(self) -> str:
        """Changes exactly when this port's chains or affinity sets would be written
        differently (its map elements are diffed one by one instead). Computed once."""
        text = repr((sorted(self.chains.items()), sorted(self.affinity_sets.items())))
        return hashlib.sha256(text.encode()).hexdigest()


def _service_port(
    svc: Service,
    port: ServicePort,
    endpoints: Sequence[Endpoint],
    cluster_cidr: ipaddress.IPv4Network | None,
    options: RenderOptions,
) -> NftServicePort:
    """kube-proxy nftables syncProxyRules' per-service-port block, decision for decision
    the same as the iptables renderer's; where iptables needs a rule per destination,
    this mode adds a map element."""
    r = NftServicePort(svc.port_key(port))
    proto = port.protocol.lower()
    cat = categorize_endpoints(svc, endpoints, options.node_name)
    base = nft_service_base(svc.namespace, svc.name, proto, port.name)
    cluster_chain, local_chain = NFT_SERVICE_PREFIX + base, NFT_LOCAL_PREFIX + base
    ext_chain, fw_chain = NFT_EXTERNAL_PREFIX + base, NFT_FIREWALL_PREFIX + base
    has_endpoints = cat.has_any
    internal_chain, has_internal = cluster_chain, has_endpoints
    if svc.internal_policy_local:
        internal_chain, has_internal = local_chain, has_endpoints and bool(cat.local)
    external_policy_chain, has_external = cluster_chain, has_endpoints
    if svc.external_policy_local:
        external_policy_chain, has_external = local_chain, has_endpoints and bool(cat.local)
    uses_fw = has_endpoints and bool(svc.load_balancer_ips) and bool(svc.load_balancer_source_ranges)
    # No endpoints anywhere: reject; none for this policy here: drop (what the external
    # chain did not short-circuit came from outside).
    verdict = f"goto {REJECT_CHAIN}" if not has_endpoints else "drop"
    no_ep = f'comment "{r.key}" : {verdict}'

    def dest(ip) -> str:
        return f"{ip} . {proto} . {port.port}"

    r.elements.append(("cluster-ips", str(svc.cluster_ip)))
    if has_internal:
        r.elements.append(("service-ips", f"{dest(svc.cluster_ip)} : goto {internal_chain}"))
    else:
        r.elements.append(("no-endpoint-services", f"{dest(svc.cluster_ip)} {no_ep}"))
    for ip in svc.external_ips:
        if has_endpoints:
            r.elements.append(("service-ips", f"{dest(ip)} : goto {ext_chain}"))
        if not has_external:
            r.elements.append(("no-endpoint-services", f"{dest(ip)} {no_ep}"))
    for ip in svc.load_balancer_ips:
        if has_endpoints:
            r.elements.append(("service-ips", f"{dest(ip)} : goto {ext_chain}"))
        if uses_fw:
            r.elements.append(("firewall-ips", f"{dest(ip)} : goto {fw_chain}"))
        if not has_external:
            r.elements.append(("no-endpoint-services", f"{dest(ip)} {no_ep}"))
    if port.node_port:
        if has_endpoints:
            r.elements.append(("service-nodeports", f"{proto} . {port.node_port} : goto {ext_chain}"))
        if not has_external:
            r.elements.append(("no-endpoint-nodeports", f"{proto} . {port.node_port} {no_ep}"))

    eps = {
        str(ep): nft_endpoint_base(svc.namespace, svc.name, proto, port.name, str(ep.ip), ep.port)
        for ep in cat.reachable
    }
    if has_internal:
        r.chains.setdefault(internal_chain, []).extend(_internal_masquerade(svc, cluster_cidr, options))
    if has_endpoints and svc.externally_accessible:
        r.chains[ext_chain] = _external_chain_rules(
            svc, cluster_chain, external_policy_chain if has_external else None, cluster_cidr
        )
    if uses_fw:
        r.chains[fw_chain] = [_firewall_rule(svc, options)]
    if cat.cluster and svc.uses_cluster_endpoints:
        r.chains.setdefault(cluster_chain, []).extend(
            _service_chain_rules(svc, [(ep, eps[str(ep)]) for ep in cat.cluster])
        )
    if cat.local and svc.uses_local_endpoints:
        r.chains.setdefault(local_chain, []).extend(_service_chain_rules(svc, [(ep, eps[str(ep)]) for ep in cat.local]))
    for ep in cat.reachable:
        ep_base = eps[str(ep)]
        r.chains[NFT_ENDPOINT_PREFIX + ep_base] = _endpoint_chain_rules(svc, proto, ep, ep_base)
        if svc.session_affinity == "ClientIP":
            r.affinity_sets[NFT_AFFINITY_PREFIX + ep_base] = svc.affinity_timeout
    return r


def _internal_masquerade(svc: Service, cluster_cidr: ipaddress.IPv4Network | None, options: RenderOptions) -> list[str]:
    if options.masquerade_all:
        return [f"ip daddr {svc.cluster_ip} jump {MARK_MASQ}"]
    if cluster_cidr is not None:
        # Off-cluster clients of a ClusterIP are SNATed, as in iptables mode.
        return [f"ip daddr {svc.cluster_ip} ip saddr != {cluster_cidr} jump {MARK_MASQ}"]
    return []


def _external_chain_rules(
    svc: Service, cluster_chain: str, policy_chain: str | None, cluster_cidr: ipaddress.IPv4Network | None
) -> list[str]:
    """NodePort, LB-IP and external-IP traffic: masquerade for the Cluster policy; for
    Local keep the client's address, except for pods and the node itself, which take
    the Cluster path (as if they had gone out to the load balancer and back)."""
    if not svc.external_policy_local:
        rules = [f"jump {MARK_MASQ}"]
    else:
        rules = (
            [f'ip saddr {cluster_cidr} goto {cluster_chain} comment "short-circuit pod traffic"']
            if cluster_cidr is not None
            else []
        )
        rules += [
            f'fib saddr type local jump {MARK_MASQ} comment "masquerade local traffic"',
            f'fib saddr type local goto {cluster_chain} comment "short-circuit local traffic"',
        ]
    if policy_chain:
        rules.append(f"goto {policy_chain}")
    return rules


def _firewall_rule(svc: Service, options: RenderOptions) -> str:
    """loadBalancerSourceRanges: anything else to the LB IP is dropped before DNAT. The
    node's own requests to a local VIP arrive from the VIP, allowed when the node's IP
    is in a range (kube-proxy's allowFromNode)."""
    sources = [str(n) for n in svc.load_balancer_source_ranges]
    node_ip = ipaddress.IPv4Address(options.node_ip) if options.node_ip else None
    if node_ip is not None and any(node_ip in n for n in svc.load_balancer_source_ranges):
        sources += [str(ip) for ip in svc.load_balancer_ips]
    return f"ip saddr != {{ {', '.join(sources)} }} drop"


def _service_chain_rules(svc: Service, eps: Sequence[tuple[Endpoint, str]]) -> list[str]:
    rules = []
    if svc.session_affinity == "ClientIP":
        # A client in an endpoint's affinity set goes straight back to that endpoint.
        rules += [f"ip saddr @{NFT_AFFINITY_PREFIX}{b} goto {NFT_ENDPOINT_PREFIX}{b}" for _, b in eps]
    choices = " , ".join(f"{i} : goto {NFT_ENDPOINT_PREFIX}{b}" for i, (_, b) in enumerate(eps))
    rules.append(f"numgen random mod {len(eps)} vmap {{ {choices} }}")
    return rules


def _endpoint_chain_rules(svc: Service, proto: str, ep: Endpoint, ep_base: str) -> list[str]:
    rules = [f"ip saddr {ep.ip} jump {MARK_MASQ}"]  # hairpin: a pod reaching itself
    if svc.session_affinity == "ClientIP":
        rules.append(f"update @{NFT_AFFINITY_PREFIX}{ep_base} {{ ip saddr }}")
    rules.append(f"meta l4proto {proto} dnat to {ep}")
    return rules


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class NftState:
    """What a successful transaction left in our table: per service port the digest
    of its chains and their names, every map/set element, affinity sets. Feed it to the
    next ``render_partial``; after a failed transaction drop it and render in full."""

    digests: dict = field(default_factory=dict)  # port key -> digest
    chains: dict = field(default_factory=dict)  # port key -> chain names
    elements: frozenset = frozenset()  # (container, element)
    affinity_sets: frozenset = frozenset()
    static: tuple = ()  # the table, maps and fixed chains as written


# A full sync of more service ports than STAGE_ABOVE goes to the kernel in stages of
# STAGE_PORTS ports (NftPlan.render_staged; bench/nft_sync_order.py measured the sizes).
# One transaction is faster below about 1 700 ports (bench/nft_sync_order.py, one vs staged:
# 1 500 ports 0.63 vs 0.73 s, 2 000 ports 1.03 vs 0.80 s).
STAGE_ABOVE = 1500
STAGE_PORTS = 500


@dataclass(frozen=True)
class NftPlan:
    table: str
    static: tuple[str, ...]  # table, sets, maps, fixed chains and rules
    service_ports: tuple[NftServicePort, ...]

    @functools.cached_property
    def state(self) -> NftState:
        return NftState(
            digests={p.key: p.digest for p in self.service_ports},
            chains={p.key: tuple(p.chains) for p in self.service_ports},
            elements=frozenset(e for p in self.service_ports for e in p.elements),
            affinity_sets=self.affinity_sets(),
            static=self.static,
        )

    def render_partial(self, previous: NftState) -> tuple[str, list[str]]:
        """Only what changed since ``previous``: the chains of changed service ports,
        element by element changes of the maps and sets (kube-proxy keeps the same
        in-memory copy, nftElementStorage, so a sync never has to list the table), and
        the table, maps and fixed chains only if they changed (they depend on the node's
        options alone). Returns the transaction and the stale chains it flushed, to
        delete in a later one (``render_nft_delete_chains``)."""
        t = f"{FAMILY} {self.table}"
        # The static part without its "flush map/set": the maps keep their elements.
        lines = (
            []
            if previous.static == self.static
            else [line for line in self.static if not line.startswith(("flush map", "flush set"))]
        )
        new = self.state
        # Deleted first, then added: an element whose verdict changed (same key) is both.
        lines += [
            f"delete element {t} {c} {{ {_element_key(e)} }}" for c, e in sorted(previous.elements - new.elements)
        ]
        for p in self.service_ports:
            if previous.digests.get(p.key) != p.digest:
                lines += [""] + [line for line in _render_service_port(t, p) if not line.startswith("add element")]
        lines += [f"add element {t} {c} {{ {e} }}" for c, e in sorted(new.elements - previous.elements)]
        # A chain's name hashes its service port, so it can only go stale within its port.
        now = {p.key: p.chains for p in self.service_ports}
        stale = sorted(
            c
            for key, chains in previous.chains.items()
            if tuple(now.get(key, ())) != chains
            for c in chains
            if c not in now.get(key, ())
        )
        stale_sets = sorted(previous.affinity_sets - self.affinity_sets())
        lines += [f"flush chain {t} {c}" for c in stale]
        lines += [f"delete set {t} {s}" for s in stale_sets]
        return "\n".join(lines) + "\n", stale

    def rule_count(self, state: NftState | None = None) -> int:
        """Rules plus map/set elements: what one sync asks the kernel to hold."""
        return (
            sum(1 for line in self.static if line.startswith("add rule"))
            + sum(p.rule_total for p in self.service_ports)
            + len((state or self.state).elements)
        )

    def service_chains(self) -> frozenset[str]:
        return frozenset(c for p in self.service_ports for c in p.chains)

    def affinity_sets(self) -> frozenset[str]:
        return frozenset(s for p in self.service_ports for s in p.affinity_sets)

    def stale_chains(self, existing_chains: Iterable[str]) -> list[str]:
        active = self.service_chains()
        return sorted(c for c in set(existing_chains) if nft_is_service_chain(c) and c not in active)

    def render(self, existing_chains: Iterable[str] = (), existing_sets: Iterable[str] = ()) -> str:
        """The full transaction. ``existing_chains``/``existing_sets``: names in our table
        now (``nft list chains/sets``, or remembered); our stale ones are flushed
        (chains; delete them later) or deleted (affinity sets)."""
        t = f"{FAMILY} {self.table}"
        lines = list(self.static)
        for p in self.service_ports:
            lines += [""] + _render_service_port(t, p)
        lines += self._stale_lines(existing_chains, existing_sets)
        return "\n".join(lines) + "\n"

    def _stale_lines(self, existing_chains: Iterable[str], existing_sets: Iterable[str]) -> list[str]:
        t = f"{FAMILY} {self.table}"
        stale = self.stale_chains(existing_chains)
        affinity = self.affinity_sets()
        stale_sets = sorted(s for s in set(existing_sets) if nft_is_affinity_set(s) and s not in affinity)
        if not stale and not stale_sets:
            return []
        return (
            ["", "# stale: flushed now, deleted by a later transaction"]
            + [f"flush chain {t} {c}" for c in stale]
            + [f"delete set {t} {s}" for s in stale_sets]
        )

    def render_staged(
        self,
        existing_chains: Iterable[str] = (),
        existing_sets: Iterable[str] = (),
        previous: NftState | None = None,
        stage_above: int | None = None,
        stage_ports: int | None = None,
    ) -> list[str]:
        """The full sync as transactions to apply in order: ``[render()]`` up to
        ``stage_above`` service ports (kube-proxy's one transaction), else

        1. the table, its sets, maps and fixed chains created if missing (no flush, no
           rule: on a table that exists this changes nothing);
        2. the chains of the service ports that traffic cannot reach yet or that do not
           change: every chain new (not in ``existing_chains``), or the port's chains
           written exactly as in ``previous`` (the state of the last sync: same digest),
           ``stage_ports`` ports per transaction, each chain flushed and refilled in the
           same transaction;
        3. the fixed part as in ``render`` (its maps and sets flushed), the chains of every
           other port (existing ones that change: they switch together with the map
           elements that lead to them), every element, and the stale chains.

        Why: binding each port's anonymous ``numgen`` vmap to its rule makes the kernel
        walk the whole pending transaction (``__nft_set_trans_bind``, a reverse walk of
        the commit list with no early exit), so one transaction of n ports costs O(n^2)
        there alone: 39 % of the kernel's time at 5 000 ports, 28 s against 10 s staged
        at 10 000 (perf, docs/loadbalancer.md). What traffic sees stays that of one
        transaction: a chain written early is either unreachable until step 3 adds its
        map element or rewritten with what it already holds, and everything that changes
        behaviour switches in step 3. If a stage fails, the ones before it changed no
        behaviour; the syncer starts over with a full sync. (Without ``previous`` - a
        restart onto an existing table - only new chains go early.)"""
        stage_above = STAGE_ABOVE if stage_above is None else stage_above
        stage_ports = STAGE_PORTS if stage_ports is None else stage_ports
        if len(self.service_ports) <= stage_above:
            return [self.render(existing_chains, existing_sets)]
        t = f"{FAMILY} {self.table}"
        existing = set(existing_chains)

        def early(p: NftServicePort) -> bool:
            if not p.chains:
                return False  # elements only: nothing to write ahead
            if not any(c in existing for c in p.chains):
                return True
            return previous is not None and previous.digests.get(p.key) == p.digest

        ahead = [p for p in self.service_ports if early(p)]
        create = [line for line in self.static if line.startswith(("add table", "add set", "add map", "add chain"))]
        stages = ["\n".join(create) + "\n"]
        for i in range(0, len(ahead), stage_ports):
            lines: list[str] = []
            for p in ahead[i : i + stage_ports]:
                lines += [""] + [line for line in _render_service_port(t, p) if not line.startswith("add element")]
            stages.append("\n".join(lines) + "\n")
        final = list(self.static)
        for p in self.service_ports:
            if not early(p):
                final += [""] + [line for line in _render_service_port(t, p) if not line.startswith("add element")]
        final.append("")
        for p in self.service_ports:
            final += [f"add element {t} {name} {{ {elem} }}" for name, elem in p.elements]
        final += self._stale_lines(existing_chains, existing_sets)
        stages.append("\n".join(final) + "\n")
        return stages


def _render_service_port(t: str, p: NftServicePort) -> list[str]:
    # Chains and sets first: a rule may only jump to a chain (or use a set) that exists.
    lines = [f"# {p.key}"]
    for c in p.chains:
        lines += [f"add chain {t} {c}", f"flush chain {t} {c}"]
    lines += [
        f"add set {t} {s} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {secs}s ; }}"
        for s, secs in p.affinity_sets.items()
    ]
    lines += [f"add rule {t} {c} {rule}" for c, rules in p.chains.items() for rule in rules]
    lines += [f"add element {t} {name} {{ {elem} }}" for name, elem in p.elements]
    return lines


def _static(
    table: str,
    node_ips: Sequence[ipaddress.IPv4Address],
    service_cidr: ipaddress.IPv4Network | None,
    options: RenderOptions,
) -> list[str]:
    """kube-proxy's setupNFTables: the table, its sets and maps (flushed: every full sync
    refills them), its fixed chains and their rules."""
    t = f"{FAMILY} {table}"
    lines = [f'add table {t} {{ comment "rules for {table}" ; }}']
    for name, kind, type_, comment in CONTAINERS:
        lines += [f'add {kind} {t} {name} {{ type {type_} ; comment "{comment}" ; }}', f"flush {kind} {t} {name}"]
    for c in (
        SERVICES,
        MARK_MASQ,
        MASQUERADING,
        SERVICE_ENDPOINTS_CHECK,
        NODEPORT_ENDPOINTS_CHECK,
        CLUSTER_IPS_CHECK,
        FIREWALL_CHECK,
    ):
        lines += [f"add chain {t} {c}", f"flush chain {t} {c}"]
    lines += [
        f'add chain {t} {REJECT_CHAIN} {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}',
        f"flush chain {t} {REJECT_CHAIN}",
    ]
    for name, type_, hook, prio in BASE_CHAINS:
        lines += [f"add chain {t} {name} {{ type {type_} hook {hook} priority {prio} ; }}", f"flush chain {t} {name}"]
    lines += [f"add rule {t} {src} {(match + ' ') if match else ''}jump {dst}" for dst, src, match in JUMPS]
    lines += [f"add rule {t} {chain} {rule}" for chain, rule in _fixed_rules(node_ips, service_cidr, options)]
    lines += [f"add element {t} nodeport-ips {{ {ip} }}" for ip in node_ips]
    return lines


def _fixed_rules(
    node_ips: Sequence[ipaddress.IPv4Address], service_cidr: ipaddress.IPv4Network | None, options: RenderOptions
) -> list[tuple[str, str]]:
    mark = options.masquerade_mark
    # NodePorts on every local address but 127.0.0.0/8 (nftables mode has no localhost
    # NodePorts), or only on the given node IPs.
    to_node = "ip daddr @nodeport-ips" if node_ips else "ip daddr != 127.0.0.0/8"
    rules = [
        (MARK_MASQ, f"mark set mark or {mark}"),
        (MASQUERADING, f"mark and {mark} == 0 return"),
        # Clear the mark, so a packet that re-traverses the stack is not NATed twice.
        (MASQUERADING, f"mark set mark xor {mark}"),
        (MASQUERADING, "masquerade" + (" fully-random" if options.random_fully else "")),
        # After DNAT nothing should still go to a ClusterIP: a port the service lacks.
        (CLUSTER_IPS_CHECK, 'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"'),
    ]
    if service_cidr is not None:
        rules.append(
            (CLUSTER_IPS_CHECK, f'ip daddr {{ {service_cidr} }} drop comment "Drop traffic to unallocated ClusterIPs"')
        )
    rules += [
        (REJECT_CHAIN, "reject"),
        (FIREWALL_CHECK, f"ip daddr . {_DISPATCH} vmap @firewall-ips"),
        (SERVICE_ENDPOINTS_CHECK, f"ip daddr . {_DISPATCH} vmap @no-endpoint-services"),
        (NODEPORT_ENDPOINTS_CHECK, f"{to_node} {_DISPATCH} vmap @no-endpoint-nodeports"),
        (SERVICES, f"ip daddr . {_DISPATCH} vmap @service-ips"),
        (SERVICES, f"{'' if node_ips else 'fib daddr type local '}{to_node} {_DISPATCH} vmap @service-nodeports"),
    ]
    return rules


def plan_nft(
    services: Iterable[Service],
    endpoints_by_service: Mapping[str, Sequence[Endpoint]],
    node_ips: Sequence[str | ipaddress.IPv4Address] = (),
    cluster_cidr: str | ipaddress.IPv4Network | None = None,
    options: RenderOptions = RenderOptions(),
    service_cidr: str | ipaddress.IPv4Network | None = None,
    table: str = TABLE,
) -> NftPlan:
    """Arguments as ``iptables_render.plan_iptables``; ``service_cidr`` (optional) makes
    packets to unallocated ClusterIPs drop at once, as kube-proxy's nftables mode does."""
    services = proxied(services)
    if not options.large_cluster and is_large_cluster(services, endpoints_by_service):
        options = dataclasses.replace(options, large_cluster=True)
    ports = [p for svc in services for p in service_ports(svc, endpoints_by_service, cluster_cidr, options)]
    return plan_nft_from_ports(ports, node_ips, options, service_cidr, table)


def service_ports(
    svc: Service,
    endpoints_by_service: Mapping[str, Sequence[Endpoint]],
    cluster_cidr: str | ipaddress.IPv4Network | None = None,
    options: RenderOptions = RenderOptions(),
) -> list[NftServicePort]:
    """The objects of every port of one (proxied) service; a sync loop keeps these per
    service and rebuilds only the changed ones (``plan_nft_from_ports``)."""
    cidr = ipaddress.IPv4Network(cluster_cidr) if cluster_cidr is not None else None
    return [
        _service_port(svc, port, endpoints_by_service.get(svc.port_key(port), ()), cidr, options) for port in svc.ports
    ]


def plan_nft_from_ports(
    ports: Sequence[NftServicePort],
    node_ips: Sequence[str | ipaddress.IPv4Address] = (),
    options: RenderOptions = RenderOptions(),
    service_cidr: str | ipaddress.IPv4Network | None = None,
    table: str = TABLE,
) -> NftPlan:
    scidr = ipaddress.IPv4Network(service_cidr) if service_cidr is not None else None
    ips = [ip for ip in (ipaddress.IPv4Address(x) for x in node_ips) if not ip.is_loopback]
    return NftPlan(table=table, static=tuple(_static(table, ips, scidr, options)), service_ports=tuple(ports))


def render_nft(
    services: Iterable[Service],
    endpoints_by_service: Mapping[str, Sequence[Endpoint]],
    node_ips: Sequence[str | ipaddress.IPv4Address] = (),
    cluster_cidr: str | ipaddress.IPv4Network | None = None,
    options: RenderOptions = RenderOptions(),
    *,
    service_cidr: str | ipaddress.IPv4Network | None = None,
    existing_chains: Iterable[str] = (),
    existing_sets: Iterable[str] = (),
    table: str = TABLE,
) -> str:
    """The full ``nft -f`` transaction for this node's services."""
    plan = plan_nft(services, endpoints_by_service, node_ips, cluster_cidr, options, service_cidr, table)
    return plan.render(existing_chains, existing_sets)


def _element_key(elem: str) -> str:
    """The key part of a map element ("10.96.0.1 . tcp . 80 : goto x" -> "10.96.0.1 . tcp . 80"),
    which is all ``delete element`` takes. Set elements are their own key."""
    return elem.split(" comment ")[0].split(" : ")[0]


def names_from_listing(listing: str) -> tuple[set[str], set[str]]:
    """(chains, sets) named in ``nft list table ip <table>`` output: what ``render``
    needs as ``existing_chains``/``existing_sets`` after a restart."""
    chains: set[str] = set()
    sets: set[str] = set()
    for line in listing.splitlines():
        words = line.split()
        if len(words) >= 3 and words[2] == "{" and words[0] in ("chain", "set"):
            (chains if words[0] == "chain" else sets).add(words[1])
    return chains, sets


def render_nft_delete_chains(chains: Iterable[str], table: str = TABLE) -> str:
    """The later transaction that deletes chains an earlier sync flushed as stale."""
    return "".join(f"delete chain {FAMILY} {table} {c}\n" for c in sorted(chains))


def render_nft_cleanup(table: str = TABLE) -> str:
    """Remove everything the proxy made. (``add`` first: deleting a missing table fails.)"""
    return f"add table {FAMILY} {table}\ndelete table {FAMILY} {table}\n"
