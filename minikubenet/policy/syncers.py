"""Applying a node's policy plan: one sync = one atomic kernel transaction.

The same contract as the proxy's syncers (proxy/syncers.py), so the proxy's SyncLoop
drives these too (the controller's daemon.py): ``sync(cluster, _, changed)`` applies
the plan in ONE ``iptables-restore --noflush`` or ONE ``nft -f``;

    full sync      everything written; stale chains of ours found in the kernel and
                   deleted in the same transaction (nftables: the table is deleted and
                   re-added in the same transaction); the FORWARD jump inserted if missing
    partial sync   only the chains (and nftables sets) whose content differs from the
                   last applied ruleset, and the removed ones deleted by name from our
                   own record (never by listing the kernel)

``intact`` / ``all_chains_intact`` / ``touches_ours`` let the loop notice drift (a
flushed FORWARD, a deleted chain, ``nft flush ruleset``) and repair it with a full sync.
A refused transaction raises SyncError; the previous rules stay, the next sync is full.
"""

from __future__ import annotations

import logging

from minikubenet.linux import iptables, nft, nft_monitor
from minikubenet.policy import iptables_render, naming, nft_render
from minikubenet.policy.model import Cluster
from minikubenet.policy.plan import NodePlan, plan_node
from minikubenet.proxy.iptables_render import chains_from_save
from minikubenet.proxy.syncers import RESTORE_WAIT, SyncError, SyncResult, _rule_counts

log = logging.getLogger(__name__)


class PolicySyncer:
    mode = ""

    def __init__(self, node: str):
        self.node = node
        self.last_plan: NodePlan | None = None

    def plan(self, cluster: Cluster) -> NodePlan:
        return plan_node(cluster, self.node)

    def pending_work_at(self) -> float | None:
        return None

    def calls_for_check(self, change: nft_monitor.ObjectChange) -> bool:
        return False


class IptablesPolicySyncer(PolicySyncer):
    mode = "iptables"

    def __init__(self, node: str, iptables_bin: str = "iptables"):
        super().__init__(node)
        self.bin = iptables_bin
        self.applied: dict[str, list[str]] | None = None

    def render_full(self, cluster: Cluster) -> str:
        return iptables_render.render(iptables_render.chains(self.plan(cluster)), jump=True)

    def sync(self, cluster: Cluster, _unused=None, changed=None) -> SyncResult:
        plan = self.plan(cluster)
        table = iptables_render.chains(plan)
        full = changed is None or self.applied is None
        if full:
            try:
                dump = iptables.save("filter", f"{self.bin}-save")
            except (iptables.IptablesError, FileNotFoundError) as e:
                log.warning("cannot list the filter table (stale chains stay): %s", e)
                dump = ""
            stale = tuple(sorted(c for c in chains_from_save(dump) if naming.is_ours(c) and c not in table))
            missing: list[str] = []
            lower: list[str] = []
            for hook in iptables_render.HOOKS:
                rules = [line for line in dump.splitlines() if line.startswith(f"-A {hook} ")]
                ours = [i for i, line in enumerate(rules) if line.endswith(f"-j {naming.POLICY_CHAIN}")]
                (lower if ours and ours[0] != 0 else missing if not ours else []).append(hook)
            text = iptables_render.render(table, None, stale, jump=tuple(missing), move_jump=tuple(lower))
        else:
            assert self.applied is not None
            write = {c for c, rules in table.items() if self.applied.get(c) != rules}
            delete = tuple(c for c in self.applied if c not in table)
            text = iptables_render.render(table, write, delete) if write or delete else ""
        if text:
            try:
                iptables.restore(text, binary=f"{self.bin}-restore", wait=RESTORE_WAIT)
            except (iptables.IptablesError, FileNotFoundError) as e:
                self.applied = None
                raise SyncError(str(e)) from None
        self.applied, self.last_plan = table, plan
        return SyncResult(
            full=full,
            text_bytes=len(text),
            written_rules={"filter": sum(1 for x in text.splitlines() if x.startswith(("-A", "-I")))},
            total_rules={"filter": sum(len(r) for r in table.values())},
        )

    def touches_ours(self, change: nft_monitor.ObjectChange) -> bool:
        if change.family != "ip" or change.table != "filter":
            return False
        if change.kind == "TABLE":
            return change.deletes
        return naming.is_ours(change.name) or change.may_break_jump(iptables_render.HOOKS, naming.is_ours)

    def calls_for_check(self, change: nft_monitor.ObjectChange) -> bool:
        """A rule added to FORWARD or INPUT by someone else may sit above our jump (the
        proxy inserts its jumps at the top when it starts; its KUBE-FORWARD accepts
        marked and established traffic): check at once, not a sync period later, and
        move our jump back to the top if it is no longer first."""
        added = change.op == "NEWRULE" and change.family == "ip" and change.table == "filter"
        return added and change.name in iptables_render.HOOKS

    def intact(self) -> bool:
        entry = iptables.list_chain("filter", naming.POLICY_CHAIN, self.bin) or []
        for hook in iptables_render.HOOKS:
            rules = [r for r in iptables.list_chain("filter", hook, self.bin) or [] if r.startswith("-A")]
            if not rules or f"-j {naming.POLICY_CHAIN}" not in rules[0] or not any(x.startswith("-A") for x in entry):
                log.warning(
                    "the %s jump to %s is gone or no longer first: rules were flushed or someone inserted above it",
                    hook,
                    naming.POLICY_CHAIN,
                )
                return False
        return True

    def all_chains_intact(self) -> bool:
        if self.applied is None:
            return True
        try:
            found = _rule_counts(iptables.save("filter", f"{self.bin}-save"))
        except (iptables.IptablesError, FileNotFoundError):
            return True
        for chain, rules in self.applied.items():
            if found.get(chain) != len(rules):
                log.warning("chain %s was changed by hand", chain)
                return False
        return True

    def cleanup(self) -> None:
        for hook in iptables_render.HOOKS:
            iptables.delete_rule("filter", hook, iptables_render.JUMP_ARGS, self.bin)
        try:
            text = iptables_render.render_cleanup(chains_from_save(iptables.save("filter", f"{self.bin}-save")))
        except (iptables.IptablesError, FileNotFoundError):
            text = ""
        if text:
            iptables.restore(text, binary=f"{self.bin}-restore", wait=RESTORE_WAIT)
        self.applied = None


class NftPolicySyncer(PolicySyncer):
    mode = "nftables"

    def __init__(self, node: str, table: str = nft_render.TABLE):
        super().__init__(node)
        self.table = table
        self.applied: nft_render.NftRuleset | None = None

    def render_full(self, cluster: Cluster) -> str:
        return nft_render.render_full(nft_render.ruleset(self.plan(cluster)), self.table)

    def sync(self, cluster: Cluster, _unused=None, changed=None) -> SyncResult:
        plan = self.plan(cluster)
        rs = nft_render.ruleset(plan)
        full = changed is None or self.applied is None
        text = (
            nft_render.render_full(rs, self.table)
            if full or self.applied is None
            else nft_render.render_partial(self.applied, rs, self.table)
        )
        if text:
            try:
                nft.apply(text)
            except (nft.NftError, FileNotFoundError) as e:
                self.applied = None
                raise SyncError(str(e)) from None
        self.applied, self.last_plan = rs, plan
        return SyncResult(
            full=full,
            text_bytes=len(text),
            written_rules={"nftables": sum(1 for x in text.splitlines() if x.startswith(("add rule", "add element")))},
            total_rules={"nftables": sum(len(r) for r in rs.chains.values())},
        )

    def touches_ours(self, change: nft_monitor.ObjectChange) -> bool:
        return change.family == nft_render.FAMILY and change.table == self.table

    def intact(self) -> bool:
        for chain, hook in (("ingress", "hook forward"), (nft_render.EGRESS_INPUT, "hook input")):
            listing = nft.list_chain(nft_render.FAMILY, self.table, chain)
            if listing is None or hook not in listing:
                log.warning("table %s or its %s chain is gone: rules were flushed", self.table, chain)
                return False
        return True

    def all_chains_intact(self) -> bool:
        if self.applied is None:
            return True
        listing = nft.list_table(nft_render.FAMILY, self.table) or ""
        missing = [c for c in self.applied.chains if f"chain {c} " not in listing]
        if missing:
            log.warning("chains %s of table %s are gone", ", ".join(missing[:3]), self.table)
        return not missing

    def cleanup(self) -> None:
        try:
            nft.apply(nft_render.render_cleanup(self.table))
        except (nft.NftError, FileNotFoundError) as e:
            log.warning("nft cleanup failed: %s", e)
        self.applied = None


def make_syncer(mode: str, node: str, iptables_bin: str = "iptables") -> PolicySyncer:
    if mode == "iptables":
        return IptablesPolicySyncer(node, iptables_bin)
    if mode == "nftables":
        return NftPolicySyncer(node)
    raise ValueError(f"unknown mode {mode!r} (iptables or nftables)")
