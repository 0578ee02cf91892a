"""A packet tracer: where would this packet go, given this ``iptables-restore`` text?

It reads rendered rules (or an ``iptables-save`` dump) and walks one *new* connection's
first packet through them the way netfilter would (kube-proxy's tests do the same with
their iptablesTracer, pkg/proxy/iptables/proxier_test.go):

    from outside the node:  nat PREROUTING -> [DNAT] -> filter INPUT   (to a local address)
                                                     -> filter FORWARD -> nat POSTROUTING
    from the node itself:   nat OUTPUT -> [DNAT] -> filter OUTPUT -> nat POSTROUTING
                                                     (-> filter INPUT, to a local address)

Rendered text has no built-in chains (the proxy never rewrites them), so the tracer adds
the jumps the apply layer installs (``iptables_render.JUMP_CHAINS``) on top of them.

Simplifications, stated as kube-proxy's tracer states its own:

- ``-m statistic --mode random``: both outcomes are followed, each with its probability,
  so a trace has one outcome per endpoint it may reach (``Trace.endpoints``) and the
  chance of each (``Trace.probabilities()``).
- ``-m recent --rcheck``: matches only the lists named in ``recent=`` (the client's
  affinity history, which the kernel would remember); ``--seconds``/``--reap`` (time)
  are not modelled. ``--set`` always matches and is reported in ``Outcome.remembered``.
- conntrack state is NEW (plus DNAT once the packet was DNATed): this is the first
  packet; later packets of a flow never traverse the nat table at all.
- ``-m addrtype --src-type/--dst-type LOCAL``: the node's ``local_ips`` and 127.0.0.0/8.
- routing is only "local address or not"; chains of other software are whatever the
  given text contains; an option the tracer does not know is an error, never a guess.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from minikubenet.proxy.iptables_render import JUMP_CHAINS, KUBE_FIREWALL, KUBELET_JUMP_CHAINS, JumpChain
from minikubenet.proxy.naming import is_service_chain

BUILTIN_CHAINS = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}
TERMINAL_TARGETS = ("ACCEPT", "DROP", "REJECT")
BUILTIN_TARGETS = TERMINAL_TARGETS + ("RETURN", "DNAT", "SNAT", "MASQUERADE", "MARK", "LOG")
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


class TracerError(ValueError):
    pass


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Match:
    kind: str  # src dst proto dport src-type dst-type mark ctstate rcheck
    value: Any  # a network, a protocol, a port, (value, mask), a set of states, a name
    negated: bool = False


@dataclass(frozen=True)
class Rule:
    table: str
    chain: str
    text: str  # the "-A ..." line as written
    matches: tuple[Match, ...] = ()
    probability: float | None = None  # -m statistic --mode random
    remember: str | None = None  # -m recent --set: the list name
    target: str = ""  # "" when the rule has no -j (a counter)
    target_args: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Ruleset:
    """Parsed restore text: table -> chain -> rules, plus the chains each table declares
    and the ``-X`` deletions it asks for."""

    rules: dict[str, dict[str, list[Rule]]] = field(default_factory=dict)
    declared: dict[str, list[str]] = field(default_factory=dict)
    deleted: dict[str, list[str]] = field(default_factory=dict)

    def chain(self, table: str, chain: str) -> list[Rule]:
        return self.rules.get(table, {}).get(chain, [])

    def with_jumps(self, jumps: Sequence[JumpChain]) -> Ruleset:
        """A copy with the jumps from the built-in chains added, each prepended in
        order, as ``iptables -I`` would leave them (so the last one ends up first)."""
        rs = Ruleset(
            {t: {c: list(r) for c, r in chains.items()} for t, chains in self.rules.items()},
            {t: list(c) for t, c in self.declared.items()},
            dict(self.deleted),
        )
        for jump in jumps:
            line = "-A " + jump.src + " " + shlex.join(jump.rule_args())
            chain = rs.rules.setdefault(jump.table, {}).setdefault(jump.src, [])
            chain.insert(0, parse_rule(jump.table, line))
        return rs


def parse_restore(text: str) -> Ruleset:
    """Parse ``iptables-restore`` input or ``iptables-save`` output."""
    rs, table = Ruleset(), None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = line[1:]
            rs.rules.setdefault(table, {})
            rs.declared.setdefault(table, [])
        elif table is None:
            raise TracerError(f"line {n}: {line!r} comes before any *table line")
        elif line.startswith(":"):
            rs.declared[table].append(line[1:].split()[0])
            rs.rules[table].setdefault(line[1:].split()[0], [])
        elif line.startswith("-X "):
            rs.deleted.setdefault(table, []).append(line.split()[1])
        elif line.startswith("-I "):
            # "-I CHAIN 1 rule...": how the policy controller writes its FORWARD jump
            _, chain, _pos, rest = line.split(" ", 3)
            rs.rules[table].setdefault(chain, []).insert(0, parse_rule(table, f"-A {chain} {rest}"))
        else:
            rule = parse_rule(table, line)
            rs.rules[table].setdefault(rule.chain, []).append(rule)
    return rs


def parse_rule(table: str, line: str) -> Rule:
    words = shlex.split(line)
    if len(words) < 2 or words[0] != "-A":
        raise TracerError(f"not an -A rule: {line!r}")
    fields: dict = {"matches": [], "target_args": {}}
    negate, i = False, 2
    while i < len(words):
        word = words[i]
        if word == "!":
            negate = True
            i += 1
            continue
        i = _parse_option(words, i, negate, fields, line)
        negate = False
    if "recent" in fields:
        # -m recent: its --name may come before (restore input) or after (iptables-save)
        # its --set/--rcheck, so it is resolved once the whole rule is read.
        op, negated = fields["recent"]
        name = fields.get("recent_name", "DEFAULT")
        if op == "--set":
            fields["remember"] = name
        else:
            fields["matches"].append(Match("rcheck", name, negated))
    return Rule(
        table=table,
        chain=words[1],
        text=line,
        matches=tuple(fields["matches"]),
        probability=fields.get("probability"),
        remember=fields.get("remember"),
        target=fields.get("target", ""),
        target_args=fields["target_args"],
    )


# option -> (match kind, how to parse its value); all of these take one argument.
_MATCH_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "-s": ("src", ipaddress.IPv4Network),
    "--source": ("src", ipaddress.IPv4Network),
    "-d": ("dst", ipaddress.IPv4Network),
    "--destination": ("dst", ipaddress.IPv4Network),
    "-p": ("proto", str.lower),
    "--dport": ("dport", lambda v: tuple(int(x) for x in (v.split(":") * 2)[:2])),
    "--src-type": ("src-type", str),
    "--dst-type": ("dst-type", str),
    "--mark": ("mark", lambda v: tuple(int(x, 0) for x in (v.split("/") + [hex(0xFFFFFFFF)])[:2])),
    "--ctstate": ("ctstate", lambda v: frozenset(v.split(","))),
}
# iptables-save spells "--or-mark X" as "--set-xmark X/X" and "--xor-mark X" as "X/0x0".
_TARGET_OPTIONS = ("--to-destination", "--or-mark", "--xor-mark", "--set-xmark")
_IGNORED_WITH_VALUE = ("-m", "--comment", "--mode", "--seconds", "--mask", "--reject-with")
_IGNORED_FLAGS = ("--reap", "--random-fully", "--rsource")


def _parse_option(words: list[str], i: int, negate: bool, fields: dict, line: str) -> int:
    word = words[i]
    value = words[i + 1] if i + 1 < len(words) else ""
    if word in _MATCH_OPTIONS:
        kind, conv = _MATCH_OPTIONS[word]
        fields["matches"].append(Match(kind, conv(value), negate))
        return i + 2
    if word == "--probability":
        fields["probability"] = float(value)
        return i + 2
    if word in ("--set", "--rcheck"):
        fields["recent"] = (word, negate)
        return i + 1
    if word == "--name":
        fields["recent_name"] = value
        return i + 2
    if word == "-j":
        fields["target"] = value
        return i + 2
    if word in _TARGET_OPTIONS:
        fields["target_args"][word] = value
        return i + 2
    if word in _IGNORED_WITH_VALUE:
        return i + 2
    if word in _IGNORED_FLAGS:
        return i + 1
    raise TracerError(f"the tracer does not understand {word!r} in: {line}")


# --------------------------------------------------------------------------- walking


@dataclass(frozen=True)
class _Packet:
    src: ipaddress.IPv4Address
    dst: ipaddress.IPv4Address
    dport: int
    proto: str
    mark: int = 0
    dnat: bool = False
    masquerade: bool = False
    probability: float = 1.0
    path: tuple[str, ...] = ()
    remembered: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Context:
    rules: Ruleset
    local: frozenset
    recent: frozenset

    def is_local(self, ip: ipaddress.IPv4Address) -> bool:
        return ip in self.local or ip in _LOOPBACK


def _match(m: Match, p: _Packet, ctx: _Context) -> bool:
    if m.kind == "src":
        hit = p.src in m.value
    elif m.kind == "dst":
        hit = p.dst in m.value
    elif m.kind == "proto":
        hit = p.proto == m.value
    elif m.kind == "dport":
        lo, hi = m.value
        hit = lo <= p.dport <= hi
    elif m.kind in ("src-type", "dst-type"):
        ip = p.src if m.kind == "src-type" else p.dst
        hit = ("LOCAL" if ctx.is_local(ip) else "UNICAST") == m.value
    elif m.kind == "mark":
        value, mask = m.value
        hit = p.mark & mask == value
    elif m.kind == "ctstate":
        hit = bool(m.value & ({"NEW", "DNAT"} if p.dnat else {"NEW"}))
    elif m.kind == "rcheck":
        hit = m.value in ctx.recent
    else:
        raise TracerError(f"unknown match {m.kind}")
    return hit != m.negated


def _run(ctx: _Context, table: str, chain: str, p: _Packet, start: int = 0) -> list[tuple[_Packet, str | None]]:
    """Run ``p`` through ``chain`` from rule ``start``. Returns every way it can end:
    (packet, verdict), where verdict None means "fell off the end / RETURNed"."""
    rules = ctx.rules.chain(table, chain)
    for i in range(start, len(rules)):
        rule = rules[i]
        if not all(_match(m, p, ctx) for m in rule.matches):
            continue
        if rule.probability is None:
            return _take(ctx, rule, p, i)
        # A random match: the packet takes this rule with probability q, or goes on.
        q = rule.probability
        return _take(ctx, rule, replace(p, probability=p.probability * q), i) + _run(
            ctx, table, chain, replace(p, probability=p.probability * (1 - q)), i + 1
        )
    return [(p, None)]


def _take(ctx: _Context, rule: Rule, p: _Packet, i: int) -> list[tuple[_Packet, str | None]]:
    """The packet matched ``rule`` (the i-th of its chain): do what its target says."""
    p = replace(p, path=p.path + (f"{rule.table}: {rule.text}",))
    if rule.remember:
        p = replace(p, remembered=p.remembered + (rule.remember,))
    target, args = rule.target, rule.target_args
    if target in ("", "MARK"):  # no target (a counter) or a non-terminating MARK
        if "--or-mark" in args:
            p = replace(p, mark=p.mark | int(args["--or-mark"], 0))
        if "--xor-mark" in args:
            p = replace(p, mark=p.mark ^ int(args["--xor-mark"], 0))
        if "--set-xmark" in args:  # zero the bits in mask, then xor in value
            value, _, mask = args["--set-xmark"].partition("/")
            p = replace(p, mark=(p.mark & ~int(mask or "0xffffffff", 0)) ^ int(value, 0))
        return _run(ctx, rule.table, rule.chain, p, i + 1)
    if target == "RETURN":
        return [(p, None)]
    if target == "DNAT":
        ip, _, port = args["--to-destination"].partition(":")
        p = replace(p, dst=ipaddress.IPv4Address(ip), dport=int(port or p.dport), dnat=True)
        return [(p, "ACCEPT")]
    if target == "MASQUERADE":
        return [(replace(p, masquerade=True), "ACCEPT")]
    if target in TERMINAL_TARGETS:
        return [(p, target)]
    if target in BUILTIN_TARGETS:
        raise TracerError(f"the tracer does not model target {target}: {rule.text}")
    out: list[tuple[_Packet, str | None]] = []
    for q, verdict in _run(ctx, rule.table, target, p):  # a jump to a user chain
        out += [(q, verdict)] if verdict else _run(ctx, rule.table, rule.chain, q, i + 1)
    return out


def _builtin(ctx: _Context, table: str, chain: str, p: _Packet) -> list[tuple[_Packet, str]]:
    """A built-in chain: falling off its end means its policy, ACCEPT here."""
    return [(q, verdict or "ACCEPT") for q, verdict in _run(ctx, table, chain, p)]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Outcome:
    verdict: str  # ACCEPT, REJECT or DROP
    destination: str  # "ip:port" the packet is addressed to in the end
    dnat: bool
    masquerade: bool  # SNATed to the node's address in POSTROUTING
    probability: float
    rules: tuple[str, ...]  # every rule that matched, in order
    remembered: tuple[str, ...]  # affinity lists the source IP was added to

    @property
    def summary(self) -> str:
        return self.destination if self.dnat and self.verdict == "ACCEPT" else self.verdict


@dataclass(frozen=True)
class Trace:
    outcomes: tuple[Outcome, ...]

    @property
    def output(self) -> str:
        """kube-proxy's tracer format: "10.0.1.1:80, 10.0.1.2:80", or "REJECT"."""
        return ", ".join(sorted({o.summary for o in self.outcomes}))

    @property
    def endpoints(self) -> frozenset[str]:
        return frozenset(o.destination for o in self.outcomes if o.dnat and o.verdict == "ACCEPT")

    @property
    def masquerade(self) -> bool:
        """True if any accepted outcome is masqueraded (kube-proxy's tracer reports the
        same); ``masquerade_by_endpoint`` tells them apart, e.g. for hairpin traffic."""
        return any(o.masquerade for o in self.outcomes if o.verdict == "ACCEPT")

    def masquerade_by_endpoint(self) -> dict[str, bool]:
        return {o.destination: o.masquerade for o in self.outcomes if o.dnat}

    def probabilities(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for o in self.outcomes:
            out[o.summary] = out.get(o.summary, 0.0) + o.probability
        return out

    def dropped_by(self) -> list[str]:
        """For outcomes that were dropped or rejected: the comment of the rule that did it
        (the policy controller's DROP rules name the pod and the policies isolating it,
        policy/iptables_render.py), else the rule itself."""
        out = []
        for o in self.outcomes:
            if o.verdict in ("DROP", "REJECT") and o.rules:
                words = shlex.split(o.rules[-1].split(": ", 1)[1])
                out.append(words[words.index("--comment") + 1] if "--comment" in words else o.rules[-1])
        return out

    def explain(self) -> str:
        parts = []
        for o in self.outcomes:
            head = f"{o.summary} (p={o.probability:.4f}{', masqueraded' if o.masquerade else ''})"
            parts.append("\n".join([head] + [f"    {r}" for r in o.rules]))
        return "\n".join(parts)


def trace_packet(
    rules: str | Ruleset,
    src: str,
    dst: str,
    dport: int,
    protocol: str = "tcp",
    *,
    local_ips: Iterable[str] = (),
    recent: Iterable[str] = (),
    jumps: Sequence[JumpChain] | None = None,
) -> Trace:
    """Trace the first packet of a connection ``src -> dst:dport``.

    local_ips  the node's own addresses (127.0.0.0/8 always counts as local)
    recent     the ``-m recent`` lists that already hold ``src`` (ClientIP affinity history)
    jumps      the built-in chain jumps to add; default kube-proxy's, plus the KUBE-FIREWALL
               ones when the rules define that chain
    """
    rs = parse_restore(rules) if isinstance(rules, str) else rules
    if jumps is None:
        jumps = JUMP_CHAINS + (KUBELET_JUMP_CHAINS if KUBE_FIREWALL in rs.declared.get("filter", []) else ())
    ctx = _Context(rs.with_jumps(jumps), frozenset(ipaddress.IPv4Address(ip) for ip in local_ips), frozenset(recent))
    p = _Packet(ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst), dport, protocol.lower())
    from_node = ctx.is_local(p.src)
    outcomes = []
    for q, _ in _builtin(ctx, "nat", "OUTPUT" if from_node else "PREROUTING", p):
        outcomes += _after_nat(ctx, q, from_node)
    return Trace(tuple(outcomes))


def _after_nat(ctx: _Context, p: _Packet, from_node: bool) -> list[Outcome]:
    """Routing happened (after DNAT): run the filter hooks and POSTROUTING."""
    to_node = ctx.is_local(p.dst)
    if from_node:
        hooks = [("filter", "OUTPUT"), ("nat", "POSTROUTING")] + ([("filter", "INPUT")] if to_node else [])
    elif to_node:
        hooks = [("filter", "INPUT")]  # delivered locally: no POSTROUTING
    else:
        hooks = [("filter", "FORWARD"), ("nat", "POSTROUTING")]
    results = [(p, "ACCEPT")]
    for table, chain in hooks:  # a packet dropped or rejected goes no further
        after = []
        for q, verdict in results:
            after += _builtin(ctx, table, chain, q) if verdict == "ACCEPT" else [(q, verdict)]
        results = after
    return [
        Outcome(v, f"{q.dst}:{q.dport}", q.dnat, q.masquerade, q.probability, q.path, q.remembered) for q, v in results
    ]


# --------------------------------------------------------------------------- consistency


def check_ruleset(text: str, jumps: Sequence[JumpChain] = JUMP_CHAINS + KUBELET_JUMP_CHAINS) -> list[str]:
    """Problems kube-proxy's checkIPTablesRuleJumps looks for, in a *full* ruleset: rules
    in undeclared chains, jumps to chains that are not defined, per-service chains that
    nothing jumps to, and ``-X`` of a chain that is still jumped to."""
    rs = parse_restore(text)
    problems = []
    entry = {(j.table, j.dst) for j in jumps}
    for table, chains in rs.rules.items():
        declared = set(rs.declared.get(table, [])) | set(BUILTIN_CHAINS.get(table, ()))
        targets = {r.target for rules in chains.values() for r in rules}
        for chain, rules in chains.items():
            if chain not in declared:
                problems.append(f"{table}: rules in undeclared chain {chain}")
            for r in rules:
                if r.target and r.target not in BUILTIN_TARGETS and r.target not in declared:
                    problems.append(f"{table}: jump to undefined chain {r.target}: {r.text}")
        for chain in rs.declared.get(table, []):
            # Only per-service chains: a fixed one (KUBE-MARK-MASQ with no service yet)
            # may legitimately wait, empty of callers, for the next sync.
            if (
                is_service_chain(chain)
                and chain not in targets
                and (table, chain) not in entry
                and chain not in rs.deleted.get(table, [])
            ):
                problems.append(f"{table}: chain {chain} is never jumped to")
        for chain in rs.deleted.get(table, []):
            if chain in targets:
                problems.append(f"{table}: -X {chain} but rules still jump to it")
    return problems
