"""Applying the rendered rules: one sync = one atomic kernel transaction.

A syncer turns "these services, these endpoints, these changed since last time" into
exactly one ``iptables-restore --noflush`` (filter and nat together) or one ``nft -f``,
the way kube-proxy's syncProxyRules does:

    full sync      every service re-planned, the whole ruleset written; stale chains
                   found by listing the kernel and deleted. At start-up, after any
                   failure, when the rules were flushed behind our back, and every
                   ``full_sync_period`` (kube-proxy: 1 hour) to repair drift.
    partial sync   only the services that changed are re-planned (the others' rules are
                   kept from the last sync, like kube-proxy's change trackers) and only
                   their chains written (KEP-3453), plus the fixed chains that changed;
                   chains of deleted services are removed by name from our own record,
                   never by listing the kernel (``iptables-save`` costs over a second
                   at 10 000 services on the nf_tables backend).

A failed transaction changes nothing in the kernel (both tools are all-or-nothing): the
error, with the offending lines, is raised as ``SyncError``, the syncer forgets what it
thought was applied, and the next attempt is a full sync.

After every successful sync, UDP conntrack entries that point at removed endpoints are
deleted (linux/conntrack.py explains why), computed by ``udp_flows_to_clear``.

Noticing changes made by someone else, two ways:

- ``touches_ours(change)``: the proxy follows nf_tables notifications
  (linux/nft_monitor.py) and asks the syncer whether a foreign transaction touched its
  rules (a KUBE-* chain or rule, one of the built-in chains holding our jumps, our
  nftables table); if so the next sync is a full one, at once (within
  ``--min-sync-period``).
  ``calls_for_check(change)``: a change that is not ours but may have made ``intact()``
  false (the policy controller's: a rule inserted above its jump) runs that check at
  once instead of at the next sync period.
- ``intact()``, every sync period: kube-proxy watches a canary chain; we also look
  at our jumps in the built-in chains and at one rule of our own, so that ``iptables
  -F``, ``iptables -t nat -F PREROUTING`` and ``nft flush ruleset`` are all noticed.
  ``all_chains_intact()`` (when no notifications can be had: iptables-legacy, or
  notifications were lost) compares every chain of ours and its rule count with the last plan, so a
  deleted or flushed KUBE-SVC/KUBE-SEP chain is noticed too. ``iptables-legacy-save``
  is cheap; on the nf_tables backend the listing costs over a second at 10 000
  services, which is why it is the fallback and not the rule.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from minikubenet.k8s_objects import Endpoint, Service
from minikubenet.linux import conntrack, iptables, nft, nft_monitor
from minikubenet.proxy import iptables_render, nft_render
from minikubenet.proxy.iptables_render import (
    KUBE_MARK_MASQ,
    SyncState,
    chains_from_save,
    jump_chains,
    plan_from_rules,
    service_rules,
)
from minikubenet.proxy.model import RenderOptions, is_large_cluster
from minikubenet.proxy.naming import is_service_chain
from minikubenet.proxy.nft_render import (
    NftState,
    plan_nft_from_ports,
    render_nft_cleanup,
    render_nft_delete_chains,
    service_ports,
)

log = logging.getLogger(__name__)

CANARY = "KUBE-PROXY-CANARY"  # kube-proxy's flush canary: an empty chain in each table
RESTORE_WAIT = ("-w", "5", "-W", "100000")  # xtables lock: wait 5 s, retry every 100 ms
NFT_DELETE_DELAY = 1.0  # flushed stale nft chains are deleted >= 1 s later
STALE_CLEANUP_PERIOD = 30.0  # large clusters: stale iptables chains deleted at most this often


class SyncError(Exception):
    """The kernel refused a transaction; the previous rules are still in place."""


@dataclass(frozen=True)
class SyncConfig:
    """What does not change between syncs: the node's view of the cluster."""

    cluster_cidr: str | None = None  # pod network: ClusterIP traffic from outside is SNATed
    service_cidr: str | None = None  # nftables: drop traffic to unallocated ClusterIPs
    node_ips: tuple[str, ...] = ()  # NodePort addresses; () = every local address
    options: RenderOptions = RenderOptions()
    iptables: str = "iptables"  # or iptables-legacy / iptables-nft
    nft_table: str = nft_render.TABLE
    conntrack_cleanup: bool = True


@dataclass
class SyncResult:
    full: bool
    written_rules: dict[str, int] = field(default_factory=dict)  # per table, in this sync
    total_rules: dict[str, int] = field(default_factory=dict)  # per table, owned now
    text_bytes: int = 0
    conntrack_deleted: int = 0


# --------------------------------------------------------------------------- conntrack


def udp_flows_to_clear(
    before_services: Mapping[str, Service],
    before: Mapping[str, Sequence[Endpoint]],
    after_services: Mapping[str, Service],
    after: Mapping[str, Sequence[Endpoint]],
    keys: Iterable[str] | None = None,
) -> list[conntrack.UdpFlowFilter]:
    """The conntrack entries that would keep UDP clients on an endpoint that is gone
    (pure: the filters, not the deletion). Arguments are "ns/name" -> Service and
    "ns/name:port" -> endpoints, before and after a sync.

    kube-proxy's event-based cleanup (pkg/proxy endpoints.go detectStaleConntrackEntries,
    conntrack/cleanup.go deleteStaleEndpointConntrackEntries / deleteStaleService...):

    - an endpoint that was *serving* and is no longer (gone, or no longer serving): its
      entries, by every frontend of the old service port - ClusterIP:port, each external
      IP and LB ingress IP with the port (ClearEntriesForNAT) and the NodePort
      (ClearEntriesForPortNAT) -, also when the service has no endpoints left
      (kubernetes#139628). Serving, not ready: an endpoint that turns terminating but
      still serves keeps its flows, because the rules may still send traffic to it (the
      fallback to serving-terminating endpoints when no endpoint is ready), and one that
      was never serving got no traffic to clear;
    - a UDP service port that had no serving endpoint and now has one: every entry to
      its frontends, because those were made while the rules REJECTed and were never
      DNATed (kube-proxy's NewlyActiveUDPServices).

    ``keys``: only these services ("ns/name") changed; None: look at all of them."""
    out: list[conntrack.UdpFlowFilter] = []
    if keys is not None:
        keys = set(keys)
        before_services = {k: v for k, v in before_services.items() if k in keys}
        after_services = {k: v for k, v in after_services.items() if k in keys}
    for key, svc in sorted(before_services.items()):
        for port in svc.ports:
            if port.protocol != "UDP" or svc.cluster_ip is None:
                continue
            pk = svc.port_key(port)
            new_svc = after_services.get(key)
            same_port = new_svc is not None and new_svc.cluster_ip == svc.cluster_ip and port in new_svc.ports
            still = _serving(after.get(pk, ())) if same_port else {}
            old = _serving(before.get(pk, ()))
            for ip in sorted({ip for name, ip in old.items() if name not in still}, key=ipaddress.ip_address):
                out += [conntrack.UdpFlowFilter(port.port, dst, ip) for dst in _frontends(svc)]
                if port.node_port:
                    out.append(conntrack.UdpFlowFilter(port.node_port, None, ip))
    for key, svc in sorted(after_services.items()):
        for port in svc.ports:
            if port.protocol != "UDP" or svc.cluster_ip is None:
                continue
            pk = svc.port_key(port)
            old_svc = before_services.get(key)
            had = bool(_serving(before.get(pk, ()))) and old_svc is not None and port in old_svc.ports
            if _serving(after.get(pk, ())) and not had:
                out += [conntrack.UdpFlowFilter(port.port, dst) for dst in _frontends(svc)]
                if port.node_port:
                    out.append(conntrack.UdpFlowFilter(port.node_port))
    return out


def _serving(endpoints: Sequence[Endpoint]) -> dict[str, str]:
    """The serving endpoints' IPs by kube-proxy's endpoint string ("IP:port")."""
    return {str(e): str(e.ip) for e in endpoints if e.is_serving}


def _frontends(svc: Service) -> list[str]:
    """The addresses a client reaches the service port at (besides the NodePort)."""
    assert svc.cluster_ip is not None
    return [str(svc.cluster_ip), *(str(ip) for ip in svc.external_ips), *(str(ip) for ip in svc.load_balancer_ips)]


# --------------------------------------------------------------------------- the base


class Syncer:
    """Shared bookkeeping: the per-service plan cache and what was last applied."""

    mode = ""

    def __init__(self, config: SyncConfig):
        self.config = config
        self.options = config.options  # with large_cluster as the endpoint count says
        self._cache: dict[str, list] = {}  # "ns/name" -> its planned service ports
        self._applied_services: dict[str, Service] = {}
        self._applied_endpoints: dict[str, Mapping[str, Sequence[Endpoint]]] = {}  # "ns/name" -> by port

    def _plan_services(
        self,
        services: Mapping[str, Service],
        endpoints: Mapping[str, Mapping[str, Sequence[Endpoint]]],
        changed: Iterable[str] | None,
    ) -> list:
        """Re-plan the ``changed`` services (all when None); return every service's
        planned ports in kube-proxy's order (services sorted by "ns/name")."""
        large = is_large_cluster(
            services.values(), {pk: eps for by_port in endpoints.values() for pk, eps in by_port.items()}
        )
        if large != self.options.large_cluster:
            # Every service's endpoint comments change with the mode: re-plan them all.
            self.options = dataclasses.replace(self.options, large_cluster=large)
            changed = None
        if changed is None:
            self._cache.clear()
            changed = services.keys()
        for key in changed:
            svc = services.get(key)
            if svc is None or svc.cluster_ip is None:
                self._cache.pop(key, None)
            else:
                self._cache[key] = self._plan_one(svc, endpoints.get(key, {}))
        return [p for key in sorted(self._cache) for p in self._cache[key]]

    def _plan_one(self, svc: Service, endpoints: Mapping[str, Sequence[Endpoint]]) -> list:
        raise NotImplementedError

    def _clear_conntrack(
        self,
        services: Mapping[str, Service],
        endpoints: Mapping[str, Mapping[str, Sequence[Endpoint]]],
        changed: Iterable[str] | None,
    ) -> int:
        """Delete the UDP entries this sync made stale (looking only at the services
        that changed), then remember what is applied now."""
        keys = set(services) | set(self._applied_services) if changed is None else set(changed)
        before = {pk: eps for k in keys for pk, eps in self._applied_endpoints.get(k, {}).items()}
        after = {pk: eps for k in keys for pk, eps in endpoints.get(k, {}).items()}
        deleted = 0
        if self.config.conntrack_cleanup:
            for f in udp_flows_to_clear(self._applied_services, before, services, after, keys):
                try:
                    n = conntrack.delete(f)
                except (conntrack.ConntrackError, FileNotFoundError) as e:
                    log.warning("conntrack cleanup failed: %s", e)
                    continue
                if n:
                    log.info("deleted %d UDP conntrack entries (%s)", n, " ".join(f.argv()[2:]))
                deleted += n
        self._applied_services = dict(services)
        for k in keys:
            if k in endpoints:
                self._applied_endpoints[k] = endpoints[k]
            else:
                self._applied_endpoints.pop(k, None)
        return deleted

    def forget(self) -> None:
        """After a failure: we no longer know what the kernel holds."""
        self._cache.clear()

    def pending_work_at(self) -> float | None:
        """A monotonic time at which the syncer wants another sync (or None)."""
        return None

    def calls_for_check(self, change: nft_monitor.ObjectChange) -> bool:
        """Should this foreign change (not ours) run ``intact()`` at once? The proxy's
        jumps only have to be there, wherever they are: no."""
        return False

    # What each mode implements (IptablesSyncer, NftSyncer):

    def render_full(self, services, endpoints) -> str:
        raise NotImplementedError

    def sync(
        self,
        services: Mapping[str, Service],
        endpoints: Mapping[str, Mapping[str, Sequence[Endpoint]]],
        changed: Iterable[str] | None = None,
    ) -> SyncResult:
        raise NotImplementedError

    def touches_ours(self, change: nft_monitor.ObjectChange) -> bool:
        raise NotImplementedError

    def all_chains_intact(self) -> bool:
        raise NotImplementedError

    def intact(self) -> bool:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- iptables


class IptablesSyncer(Syncer):
    """kube-proxy's iptables mode: KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-*."""

    mode = "iptables"

    def __init__(self, config: SyncConfig):
        super().__init__(config)
        self.state: SyncState | None = None
        self._plan = None  # the last plan applied (for the deep check)
        self._last_cleanup = 0.0  # monotonic time of the last stale-chain deletion
        b = config.iptables
        self.restore_bin, self.save_bin = f"{b}-restore", f"{b}-save"

    def _plan_one(self, svc, endpoints):
        return service_rules(svc, endpoints, self.config.cluster_cidr, self.options)

    def plan(self, services, endpoints, changed=None):
        ports = self._plan_services(services, endpoints, changed)
        return plan_from_rules(ports, self.config.node_ips, self.config.options)

    def render_full(self, services, endpoints) -> str:
        """The text a full sync would apply (for --dry-run), with the jumps it would
        ensure, as comments."""
        plan = self.plan(services, endpoints)
        jumps = [
            f"# -t {j.table} -I {j.src} 1 {' '.join(_quote(a) for a in j.rule_args())}"
            for j in jump_chains(self.config.options)
        ]
        return (
            "# jumps from the built-in chains; a full sync adds the missing ones to its restore,\n"
            "# and a canary chain KUBE-PROXY-CANARY in each table:\n" + "\n".join(jumps) + "\n" + plan.render()
        )

    def sync(
        self,
        services: Mapping[str, Service],
        endpoints: Mapping[str, Mapping[str, Sequence[Endpoint]]],
        changed: Iterable[str] | None = None,
    ) -> SyncResult:
        """``changed`` None or no previous state: a full sync."""
        full = changed is None or self.state is None
        plan = self.plan(services, endpoints, None if full else changed)
        deferred: list[str] = []
        try:
            if full:
                text = self._full_text(plan)
            else:
                assert self.state is not None
                stale = plan.stale_since(self.state)
                # kube-proxy in large clusters: stale chains are deleted at most once per
                # sync period (a partial restore stays small during endpoint churn);
                # unreferenced, they do no harm meanwhile.
                if (
                    stale
                    and self.options.large_cluster
                    and time.monotonic() - self._last_cleanup < STALE_CLEANUP_PERIOD
                ):
                    deferred, stale = stale, []
                text = plan.render_partial(self.state, skip_unchanged_fixed=True, stale=stale)
            iptables.restore(text, binary=self.restore_bin, wait=RESTORE_WAIT)
        except (iptables.IptablesError, FileNotFoundError) as e:
            self.state = None
            self.forget()
            raise SyncError(str(e)) from None
        if not deferred:
            self._last_cleanup = time.monotonic()
        self.state = dataclasses.replace(plan.state, pending_stale=tuple(deferred))
        self._plan = plan
        result = SyncResult(full=full, text_bytes=len(text))
        result.written_rules = _count_rules(text)
        result.total_rules = plan.rule_counts()
        result.conntrack_deleted = self._clear_conntrack(services, endpoints, None if full else changed)
        return result

    def _full_text(self, plan) -> str:
        """The full ruleset, plus the canary chains and the jumps from the built-in
        chains that are missing, all in the same restore.

        kube-proxy ensures each jump with ``iptables -C`` then ``-I`` (about 20 process
        runs per full sync). Here one ``iptables-save`` per table (which the stale-chain
        cleanup needs anyway) shows which jumps exist, and the missing ones become ``-I``
        lines: with ``--noflush`` a built-in chain that is not declared keeps its rules,
        and ``-I <chain> 1`` inserts at the top, atomically with everything else."""
        dumps = {}
        for table in ("filter", "nat"):
            try:
                dumps[table] = iptables.save(table, self.save_bin)
            except (iptables.IptablesError, FileNotFoundError) as e:
                log.warning("cannot list table %s (stale chains stay, jumps are re-checked next time): %s", table, e)
                dumps[table] = ""
        text = plan.render(chains_from_save(dumps["nat"]))
        extra: dict[str, list[str]] = {"filter": [], "nat": []}
        for table in extra:
            extra[table] += [f":{CANARY} - [0:0]", f"-A {CANARY} -j RETURN"]
        for j in jump_chains(self.config.options):
            if not _has_jump(dumps[j.table], j):
                extra[j.table].append(f"-I {j.src} 1 " + " ".join(_quote(a) for a in j.rule_args()))
                log.info("inserting jump: -t %s %s -> %s", j.table, j.src, j.dst)
        return _add_to_tables(text, extra)

    def touches_ours(self, change: nft_monitor.ObjectChange) -> bool:
        """Did this nf_tables change (an iptables-nft command) hit our rules? Any change
        in a KUBE-* chain; one of our jumps deleted from a built-in chain (not another
        controller's rule there); the nat or filter table deleted."""
        if change.family != "ip" or change.table not in ("nat", "filter"):
            return False
        if change.kind == "TABLE":
            return change.deletes
        if change.name.startswith("KUBE-"):
            return True
        return change.may_break_jump(self._jump_sources(), lambda target: target.startswith("KUBE-"))

    def _jump_sources(self) -> frozenset[str]:
        return frozenset(j.src for j in jump_chains(self.config.options))

    def expected_rule_counts(self) -> dict[tuple[str, str], int]:
        """(table, chain) -> rules, for every chain of ours the last plan holds."""
        if self._plan is None:
            return {}
        filter_chains, nat = self._plan._fixed
        out = {("filter", c): len(r) for c, r in filter_chains.items() if c.startswith("KUBE-")}
        out.update({("nat", c): len(r) for c, r in nat.items() if c.startswith("KUBE-")})
        for p in self._plan.service_ports:
            out.update({("nat", c): len(r) for c, r in p.nat_chains.items()})
        return out

    def all_chains_intact(self) -> bool:
        """Every chain of ours the last plan holds is there with its number of rules,
        from one ``iptables-save`` per table (the deep check)."""
        expected = self.expected_rule_counts()
        for table in ("filter", "nat"):
            try:
                found = _rule_counts(iptables.save(table, self.save_bin))
            except (iptables.IptablesError, FileNotFoundError) as e:
                log.warning("cannot list table %s for the check: %s", table, e)
                continue
            for (t, chain), n in sorted(expected.items()):
                if t == table and found.get(chain) != n:
                    log.warning(
                        "chain %s in %s has %s rules, expected %d: it was changed by hand",
                        chain,
                        table,
                        "no chain and no" if chain not in found else found[chain],
                        n,
                    )
                    return False
        return True

    def intact(self) -> bool:
        """Our jumps, the canaries' rules and KUBE-MARK-MASQ's rule are all there.
        Reads only small chains (never the 10 000-rule ones)."""
        b = self.config.iptables
        for table in ("filter", "nat"):
            canary = iptables.list_chain(table, CANARY, b)
            if not canary or not any(line.startswith("-A") for line in canary):
                log.warning("canary chain %s in %s is gone or empty: rules were flushed", CANARY, table)
                return False
        mark = iptables.list_chain("nat", KUBE_MARK_MASQ, b)
        if not mark or not any(line.startswith("-A") for line in mark):
            log.warning("%s is gone or empty: rules were flushed", KUBE_MARK_MASQ)
            return False
        listed: dict[tuple[str, str], list[str]] = {}
        for j in jump_chains(self.config.options):
            rules = listed.setdefault((j.table, j.src), iptables.list_chain(j.table, j.src, b) or [])
            if not any(f"-j {j.dst}" in r for r in rules):
                log.warning("jump %s -> %s in table %s is gone", j.src, j.dst, j.table)
                return False
        return True

    def cleanup(self) -> None:
        """Remove everything this mode installs (kube-proxy CleanupLeftovers)."""
        b = self.config.iptables
        for j in jump_chains(RenderOptions(localhost_nodeports=True)):
            iptables.delete_rule(j.table, j.src, j.rule_args(), b)
        lines = []
        for table in ("filter", "nat"):
            try:
                present = chains_from_save(iptables.save(table, self.save_bin))
            except (iptables.IptablesError, FileNotFoundError):
                continue
            ours = sorted(c for c in present if c in _FIXED_CHAINS or is_service_chain(c) or c == CANARY)
            if ours:
                lines += [f"*{table}"] + [f":{c} - [0:0]" for c in ours] + [f"-X {c}" for c in ours] + ["COMMIT"]
        if lines:
            iptables.restore("\n".join(lines) + "\n", binary=self.restore_bin, wait=RESTORE_WAIT)
        self.state = None
        self.forget()


_FIXED_CHAINS = set(iptables_render.FILTER_CHAINS) | set(iptables_render.NAT_CHAINS) | {iptables_render.KUBE_FIREWALL}


def _has_jump(save_text: str, j) -> bool:
    """Is jump ``j`` in an ``iptables-save`` dump? (Its source chain, comment and target.)"""
    comment = f'--comment "{j.comment}"' if " " in j.comment else f"--comment {j.comment}"
    return any(
        line.startswith(f"-A {j.src} ") and line.endswith(f"-j {j.dst}") and (not j.comment or comment in line)
        for line in save_text.splitlines()
    )


def _rule_counts(save_text: str) -> dict[str, int]:
    """chain -> its number of rules, for every chain in an ``iptables-save`` dump."""
    counts: dict[str, int] = {}
    for line in save_text.splitlines():
        if line.startswith(":"):
            counts.setdefault(line[1:].split(" ", 1)[0], 0)
        elif line.startswith("-A "):
            chain = line.split(" ", 2)[1]
            counts[chain] = counts.get(chain, 0) + 1
    return counts


def _add_to_tables(text: str, extra: Mapping[str, list[str]]) -> str:
    """Insert lines at the end of each table's section (before its COMMIT)."""
    out, table = [], ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        if line == "COMMIT":
            out += extra.get(table, [])
        out.append(line)
    return "\n".join(out) + "\n"


def _count_rules(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            counts.setdefault(table, 0)
        elif line.startswith(("-A ", "-I ")):
            counts[table] += 1
    return counts


def _quote(arg: str) -> str:
    return f'"{arg}"' if " " in arg else arg


# --------------------------------------------------------------------------- nftables


class NftSyncer(Syncer):
    """kube-proxy's nftables mode: one table of our own, verdict maps, numgen."""

    mode = "nftables"

    def __init__(self, config: SyncConfig):
        super().__init__(config)
        self.state: NftState | None = None
        self._to_delete: list[tuple[float, str]] = []  # (flushed at, chain)

    def _plan_one(self, svc, endpoints):
        return service_ports(svc, endpoints, self.config.cluster_cidr, self.options)

    def plan(self, services, endpoints, changed=None):
        ports = self._plan_services(services, endpoints, changed)
        return plan_nft_from_ports(
            ports, self.config.node_ips, self.config.options, self.config.service_cidr, self.config.nft_table
        )

    def render_full(self, services, endpoints) -> str:
        return self.plan(services, endpoints).render()

    def sync(self, services, endpoints, changed=None) -> SyncResult:
        full = changed is None or self.state is None
        plan = self.plan(services, endpoints, None if full else changed)
        now = time.monotonic()
        active = plan.service_chains() if self._to_delete else frozenset()
        due = [c for t, c in self._to_delete if now - t >= NFT_DELETE_DELAY and c not in active]
        if full:
            chains, sets = self._existing_names()
            # one transaction, or several for a large cluster (NftPlan.render_staged)
            stages = plan.render_staged(chains, sets, self.state)
            stale = plan.stale_chains(chains)
            # a chain waiting for deletion that is gone (the table was deleted or flushed
            # by someone) is not deleted again: nft would refuse the whole transaction
            self._to_delete = [(t, c) for t, c in self._to_delete if c in chains]
            due = [c for c in due if c in chains]
        else:
            text, stale = plan.render_partial(self.state)
            stages = [text]
        # Deleting chains flushed by an earlier sync rides along in the (last) transaction.
        stages[-1] += render_nft_delete_chains([c for c in due if c not in stale], self.config.nft_table)
        try:
            for stage in stages:
                nft_apply(stage)
        except SyncError:
            self.state = None
            self.forget()
            raise
        text = "".join(stages)
        self._to_delete = [(t, c) for t, c in self._to_delete if c not in due and c not in active]
        self._to_delete += [(now, c) for c in stale if c not in {x for _, x in self._to_delete}]
        self.state = state = plan.state
        total = plan.rule_count(state)
        result = SyncResult(
            full=full,
            text_bytes=len(text),
            written_rules={
                "nftables": sum(1 for line in text.splitlines() if line.startswith(("add rule", "add element")))
            },
            total_rules={"nftables": total},
        )
        result.conntrack_deleted = self._clear_conntrack(services, endpoints, None if full else changed)
        return result

    def pending_work_at(self) -> float | None:
        return min(t for t, _ in self._to_delete) + NFT_DELETE_DELAY if self._to_delete else None

    def _existing_names(self) -> tuple[set[str], set[str]]:
        listing = nft.list_table(nft_render.FAMILY, self.config.nft_table)
        if listing is None:
            return set(), set()  # no table yet
        return nft_render.names_from_listing(listing)

    def touches_ours(self, change: nft_monitor.ObjectChange) -> bool:
        """Anything in our table: a set, map, chain, rule or element, or the table."""
        return change.family == nft_render.FAMILY and change.table == self.config.nft_table

    def all_chains_intact(self) -> bool:
        """Every service chain of the last sync still exists (the deep check)."""
        if self.state is not None:
            chains, _sets = self._existing_names()
            missing = sorted({c for cs in self.state.chains.values() for c in cs} - chains)
            if missing:
                log.warning(
                    "chains %s of table %s are gone: deleted by hand", ", ".join(missing[:5]), self.config.nft_table
                )
                return False
        return True

    def intact(self) -> bool:
        """Our table exists and its hooks still jump into our chains (``nft flush
        ruleset``, ``nft delete table`` and ``nft flush table`` all break that)."""
        t = self.config.nft_table
        listing = nft.list_chain(nft_render.FAMILY, t, "nat-prerouting")
        if listing is None or f"jump {nft_render.SERVICES}" not in listing:
            log.warning("table %s %s or its nat-prerouting jump is gone: rules were flushed", nft_render.FAMILY, t)
            return False
        return True

    def cleanup(self) -> None:
        try:
            nft_apply(render_nft_cleanup(self.config.nft_table))
        except (SyncError, FileNotFoundError) as e:
            log.warning("nft cleanup failed: %s", e)
        self.state = None
        self._to_delete.clear()
        self.forget()


def nft_apply(text: str) -> None:
    """One ``nft -f -`` transaction (linux/nft.py); nft names the offending line itself."""
    try:
        nft.apply(text)
    except nft.NftError as e:
        raise SyncError(str(e)) from None


def nft_table_exists(table: str = nft_render.TABLE) -> bool:
    return nft.table_exists(nft_render.FAMILY, table)


def make_syncer(mode: str, config: SyncConfig) -> Syncer:
    if mode == "iptables":
        return IptablesSyncer(config)
    if mode == "nftables":
        return NftSyncer(config)
    raise ValueError(f"unknown proxy mode {mode!r} (iptables or nftables)")


def other_mode_leftovers(mode: str, config: SyncConfig) -> Syncer | None:
    """The syncer of the *other* mode if it left rules behind (kube-proxy cleans up
    when switching between iptables and nftables, KEP-3866)."""
    if mode == "iptables":
        return NftSyncer(config) if nft_table_exists(config.nft_table) else None
    probe = iptables.list_chain("nat", iptables_render.KUBE_SERVICES, config.iptables)
    return IptablesSyncer(config) if probe is not None else None


def parse_node_ips(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(str(ipaddress.IPv4Address(v)) for v in values)
