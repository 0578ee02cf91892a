"""A node's policy plan as ``nft -f`` text: one table of our own, sets and verdict maps.

    table ip minikubenet-policy
      set egress-isolated, ingress-isolated     local pods isolated in that direction
      map egress-pods, ingress-pods             pod IP -> jump <dir>-pods-<hash>: the chain
                                                of the policies isolating that pod
      set peers-<h>-<ns/name/dir/rule>          a rule's peer networks (interval set)
      set named-<h>-...                         ip . proto . port for named ports
      chain egress   hook forward priority -6   \\ two base chains: "accept" ends only its
      chain ingress  hook forward priority -5   /  own chain, so egress then ingress decide
      chain egress-input  hook input priority -6   egress's rules again, for a pod's
                                                   packets to its own node (INPUT)
          ct state established,related accept
          ip daddr != @ingress-isolated accept
          ip daddr vmap @ingress-pods          one hash lookup, whatever the number of pods
          counter drop                         no policy of the pod allowed it
      chain ingress-pods-<hash>                pods isolated by the same policies share it
          jump policy-<h>-ns/a/ingress
          jump policy-<h>-ns/b/ingress
      chain policy-<h>-ns/name/ingress
          ip saddr @peers-... meta l4proto tcp th dport 80-81 accept comment "ns/name ingress rule 0"

So the ruleset's size grows with policies, rules, peers and pods (one map element
each), not with pods x policies: pods isolated by the same policies (the common case:
a policy selecting a whole namespace) share one chain of jumps. The hook runs after
nat prerouting's DNAT (forward comes after prerouting), so traffic through a Service is
judged on its real endpoint; the node's own traffic to a pod uses output and never
meets these chains. A pod's packets to its own node's addresses take the input hook,
not forward: ``egress-input`` judges them by the same egress rules (Calico applies
workload egress policy before the host, too). Priority -5/-6 places them before iptables' filter table (0); a
drop here is final, an accept only ends our chain.

Full sync: the table is deleted and re-added in the same transaction (atomic; stale
chains and sets go with it; conntrack is untouched). Partial sync: only the chains,
sets and maps whose content changed are flushed and refilled, removed ones deleted.
nft 1.0.6 needs ``;`` before a closing ``}`` on one line: written where it is needed.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from minikubenet.policy import naming
from minikubenet.policy.plan import Atom, NodePlan, net_order

FAMILY, TABLE = "ip", "minikubenet-policy"
BASE = {"Egress": ("egress", -6), "Ingress": ("ingress", -5)}
EGRESS_INPUT = "egress-input"
# base chain -> its declaration (hook, priority)
BASE_CHAINS = {"egress": ("forward", -6), "ingress": ("forward", -5), EGRESS_INPUT: ("input", -6)}
ISOLATED = {"Egress": "egress-isolated", "Ingress": "ingress-isolated"}
MAPS = {"Egress": "egress-pods", "Ingress": "ingress-pods"}


@dataclass(frozen=True)
class NftSet:
    type: str
    interval: bool
    elements: tuple[str, ...]
    kind: str = "set"  # or "map" (a verdict map)

    def declaration(self) -> str:
        return f"{{ type {self.type} ;{' flags interval ;' if self.interval else ''} }}"


@dataclass
class NftRuleset:
    chains: dict[str, list[str]]  # name -> rules (without the "add rule" prefix)
    sets: dict[str, NftSet]


def _q(text: str) -> str:
    """A quoted comment; nftables keeps at most 128 bytes of a rule's comment."""
    text = text.replace('"', "'")
    return '"' + (text if len(text) <= 127 else text[:124] + "...") + '"'


def ruleset(plan: NodePlan) -> NftRuleset:
    chains: dict[str, list[str]] = {}
    sets: dict[str, NftSet] = {}
    for direction, (base, _prio) in BASE.items():
        addr = "saddr" if direction == "Egress" else "daddr"
        other = "daddr" if direction == "Egress" else "saddr"
        iso = ISOLATED[direction]
        sets[iso] = NftSet("ipv4_addr", False, tuple(sorted(p.ip for p in plan.isolated[direction] if p.ip)))
        # One verdict-map lookup per packet: pod -> the chain of ITS policies. Pods that the
        # same policies isolate share that chain, so a policy selecting every pod is one jump.
        groups: dict[tuple[str, ...], str] = {}
        elements = []
        for pod, keys in sorted(plan.isolated[direction].items(), key=lambda kv: kv[0].key):
            chain = groups.setdefault(tuple(keys), naming.nft_group_chain(direction, keys))
            elements.append(f"{pod.ip} : jump {chain}")
        vmap = MAPS[direction]
        sets[vmap] = NftSet("ipv4_addr : verdict", False, tuple(elements), "map")
        for policy_keys, chain in groups.items():
            chains[chain] = [f"jump {naming.nft_policy_chain(k, direction)}" for k in policy_keys]
        rules = ["ct state established,related accept", f"ip {addr} != @{iso} accept", f"ip {addr} vmap @{vmap}"]
        for pp in plan.policy_plans(direction):
            pchain = naming.nft_policy_chain(pp.key, direction)
            prules = []
            for rule in pp.rules:
                comment = _q(f"{pp.key} {direction.lower()} rule {rule.index}")
                plain = [a for a in rule.atoms if not a.named]
                named = [a for a in rule.atoms if a not in plain]
                peers = _collapsed(a.peer for a in plain if a.peer is not None)
                pset = naming.nft_peers_set(pp.key, direction, rule.index)
                if peers:
                    sets[pset] = NftSet("ipv4_addr", True, tuple(peers))
                for match in sorted({_port_match(a) for a in plain}):
                    any_peer = any(a.peer is None and _port_match(a) == match for a in plain)
                    peer_m = "" if any_peer else f"ip {other} @{pset} "
                    prules.append(f"{peer_m}{match + ' ' if match else ''}accept comment {comment}")
                if named:
                    nset = naming.nft_named_set(pp.key, direction, rule.index)
                    if direction == "Ingress":
                        # (target pod . proto . port), from the rule's peers
                        npeers = _collapsed(a.peer for a in named if a.peer is not None)
                        elems = sorted(
                            {
                                f"{a.target} . {a.protocol.lower()} . {a.ports[0]}"
                                for a in named
                                if a.target and a.protocol and a.ports
                            }
                        )
                        sets[nset] = NftSet("ipv4_addr . inet_proto . inet_service", False, tuple(elems))
                        if any(a.peer is None for a in named) or not npeers:
                            peer_m = ""
                        else:
                            sets[pset + "-n"] = NftSet("ipv4_addr", True, tuple(npeers))
                            peer_m = f"ip saddr @{pset}-n "
                        prules.append(f"{peer_m}ip daddr . meta l4proto . th dport @{nset} accept comment {comment}")
                    else:
                        elems = sorted(
                            {
                                f"{a.peer[:-3]} . {a.protocol.lower()} . {a.ports[0]}"
                                for a in named
                                if a.peer and a.protocol and a.ports
                            }
                        )
                        sets[nset] = NftSet("ipv4_addr . inet_proto . inet_service", False, tuple(elems))
                        prules.append(f"ip daddr . meta l4proto . th dport @{nset} accept comment {comment}")
            chains[pchain] = prules
        keys = sorted({k for ks in plan.isolated[direction].values() for k in ks})
        rules.append(
            f"counter drop comment {_q(direction.lower() + ' isolated: no rule of ' + ','.join(keys))}"
            if keys
            else "counter drop"
        )
        chains[base] = rules
        if direction == "Egress":
            chains[EGRESS_INPUT] = list(rules)
    return NftRuleset(chains, sets)


def _add_chain(t: str, name: str) -> str:
    if name in BASE_CHAINS:
        hook, prio = BASE_CHAINS[name]
        return f"add chain {t} {name} {{ type filter hook {hook} priority {prio} ; policy accept ; }}"
    return f"add chain {t} {name}"


def _collapsed(nets) -> list[str]:
    """An interval set refuses overlapping elements ("conflicting intervals"): a pod IP
    inside an ipBlock of the same rule is merged into it."""
    return list(_collapsed_set(frozenset(nets)))


@functools.lru_cache(maxsize=1 << 14)
def _collapsed_set(nets: frozenset[str]) -> tuple[str, ...]:
    # cached: rules naming the same peers (a namespace's pods, say) are common
    if len(nets) <= 1 or all(x.endswith("/32") for x in nets):  # distinct addresses never overlap
        return tuple(sorted(nets, key=net_order))
    # Two CIDRs either nest or are disjoint, so dropping every network inside another
    # leaves no overlap. That is done on integers (ipaddress objects cost ~20 us a rule,
    # most of a 1 000-policy sync's render); only when two kept networks touch, which
    # collapse_addresses would merge into their supernet, is the library asked.
    spans = sorted((_span(x) for x in nets), key=lambda s: (s[0], -s[1]))
    kept: list[tuple[int, int, str]] = []
    for start, end, text in spans:
        if kept and end <= kept[-1][1]:
            continue  # inside the last kept network
        if kept and start == kept[-1][1] + 1:
            return tuple(str(n) for n in ipaddress.collapse_addresses(ipaddress.IPv4Network(x) for x in nets))
        kept.append((start, end, text))
    return tuple(text for _, _, text in kept)


def _span(net: str) -> tuple[int, int, str]:
    """ "10.0.1.0/24" -> (first address, last address, the network as text)."""
    addr, _, length = net.partition("/")
    a, b, c, d = (int(x) for x in addr.split("."))
    start, size = (a << 24) | (b << 16) | (c << 8) | d, 1 << (32 - int(length or 32))
    return start, start + size - 1, net


def _port_match(a: Atom) -> str:
    if a.protocol is None:
        return ""
    proto = a.protocol.lower()
    if a.ports is None or a.ports == (1, 65535):
        return f"meta l4proto {proto}"
    lo, hi = a.ports
    return f"meta l4proto {proto} th dport {lo}" + (f"-{hi}" if hi != lo else "")


def _elements(s: NftSet) -> str:
    return ", ".join(s.elements)


def render_full(rs: NftRuleset, table: str = TABLE) -> str:
    """The whole table, replacing whatever is there, in one transaction."""
    t = f"{FAMILY} {table}"
    lines = [f"add table {t}", f"delete table {t}", f'add table {t} {{ comment "minikubenet network policy" ; }}']
    for name, s in sorted(rs.sets.items()):
        lines.append(f"add {s.kind} {t} {name} {s.declaration()}")
    lines += [_add_chain(t, name) for name in rs.chains]
    for name, s in sorted(rs.sets.items()):  # (map elements name chains: after them)
        if s.elements:
            lines.append(f"add element {t} {name} {{ {_elements(s)} }}")
    for name, rules in rs.chains.items():
        lines += [f"add rule {t} {name} {r}" for r in rules]
    return "\n".join(lines) + "\n"


def render_partial(old: NftRuleset, new: NftRuleset, table: str = TABLE) -> str:
    """Only what changed: flush and refill changed chains and sets, delete removed ones."""
    t = f"{FAMILY} {table}"
    changed = [n for n, r in new.chains.items() if old.chains.get(n) != r]
    lines = [_add_chain(t, n) for n in changed if n not in old.chains]  # before elements name them
    for name, s in sorted(new.sets.items()):
        was = old.sets.get(name)
        if was == s:
            continue
        if was is None or (was.type, was.interval, was.kind) != (s.type, s.interval, s.kind):
            if was is not None:
                lines.append(f"delete {was.kind} {t} {name}")  # (its referencing rules are rewritten below)
            lines.append(f"add {s.kind} {t} {name} {s.declaration()}")
        else:
            lines.append(f"flush {s.kind} {t} {name}")
        if s.elements:
            lines.append(f"add element {t} {name} {{ {_elements(s)} }}")
    lines += [f"flush chain {t} {n}" for n in changed if n in old.chains]
    for name in changed:
        lines += [f"add rule {t} {name} {r}" for r in new.chains[name]]
    lines += [f"flush chain {t} {n}" for n in old.chains if n not in new.chains]
    lines += [f"delete chain {t} {n}" for n in old.chains if n not in new.chains]
    lines += [f"delete {old.sets[n].kind} {t} {n}" for n in sorted(old.sets) if n not in new.sets]
    return "\n".join(lines) + "\n" if lines else ""


def render_cleanup(table: str = TABLE) -> str:
    return f"add table {FAMILY} {table}\ndelete table {FAMILY} {table}\n"
