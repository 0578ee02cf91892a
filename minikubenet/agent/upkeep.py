"""What the agent re-checks every sync period: its own iptables rules and the conntrack table.

**The masquerade and forward rules** (masquerade.py) are installed at start-up. Anyone
with root on the node can remove them: ``iptables -t nat -F`` (a careless script, a
firewall reload), ``iptables -F FORWARD``. Without them pod egress is no longer
masqueraded and, under a DROP FORWARD policy, pod traffic is no longer forwarded, and
nothing would bring them back until the agent restarts. flannel re-checks its rules
every few seconds for the same reason (pkg/trafficmngr/iptables: ``ensureIPTables``
every ``--iptables-resync``, 5 s by default).

The check runs every ``--sync-period``, and at once when an nf_tables notification
(linux/nft_monitor.py, the same the proxy follows) says another process deleted a rule
of a built-in chain we jump from or touched one of our chains: with iptables-nft a
flush is repaired in a fraction of a second; with iptables-legacy (no notifications)
within the period. A check costs four ``iptables -S <chain>`` calls (our two chains and the two built-in
chains that jump to them: each dumps only that chain), not a rewrite: after every
install we keep what the kernel listed for our chains, and a later listing that differs
(a chain flushed, deleted, or edited by hand) or a jump that is gone triggers one
atomic restore of our chains and the missing jumps, logged and counted
(``minikubenet_agent_rule_repairs_total``). We compare with the kernel's own listing,
not with the text we wrote, because ``iptables -S`` normalises what it prints
(``-m comment`` placement, masks); comparing with our input would "repair" forever.

**The conntrack table** (linux/conntrack_table.py): above 90 % the agent logs a warning
(when it crosses the line, then every ``repeat_s`` while it stays above, and an info
line once it is back below), and the STATUS answer carries the same sentence.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from minikubenet.linux import conntrack_table, iptables, nft_monitor
from minikubenet.masquerade import JUMPS

log = logging.getLogger(__name__)

DEFAULT_SYNC_PERIOD_S = 10.0


class MasqueradeRules:
    """Our chains (from ``text``, an ``iptables-restore`` document) and the jumps into
    them: installed once, then checked and restored when something is missing."""

    def __init__(self, text: str, jumps=JUMPS, binary: str = "iptables"):
        self.text = text
        self.jumps = tuple(jumps)  # (table, built-in chain, our chain, comment)
        self.binary = binary
        self.restore_bin = f"{binary}-restore"
        self.expected: dict[tuple[str, str], list[str] | None] = {}

    def install(self) -> None:
        """Write our chains (one atomic restore) and insert the missing jumps."""
        iptables.restore(self.text, binary=self.restore_bin)
        for table, chain, target, comment in self.jumps:
            iptables.ensure_jump(table, chain, target, comment, self.binary)
        self.expected = self._listing()

    def _listing(self) -> dict[tuple[str, str], list[str] | None]:
        return {
            (table, target): iptables.list_chain(table, target, self.binary)
            for table, _chain, target, _comment in self.jumps
        }

    def problems(self) -> list[tuple[str, str]]:
        """(table, what is wrong) for everything that is not as we installed it."""
        out = []
        for (table, chain), rules in self._listing().items():
            if rules is None:
                out.append((table, f"chain {chain} is gone"))
            elif rules != self.expected.get((table, chain)):
                out.append(
                    (
                        table,
                        f"chain {chain} was flushed or changed "
                        f"({sum(r.startswith('-A') for r in rules)} rules, expected "
                        f"{sum(r.startswith('-A') for r in self.expected.get((table, chain)) or [])})",
                    )
                )
        for table, chain, target, comment in self.jumps:
            rules = iptables.list_chain(table, chain, self.binary) or []
            if not any(r.startswith(f"-A {chain} ") and r.endswith(f"-j {target}") and comment in r for r in rules):
                out.append((table, f"the jump {chain} -> {target} is gone"))
        return out

    def touched_by(self, change: nft_monitor.ObjectChange) -> bool:
        """Could this nf_tables change have broken our rules? A change in one of our
        chains, one of our jumps deleted from a built-in chain, a table deleted."""
        if change.family != "ip" or change.table not in {t for t, *_ in self.jumps}:
            return False
        if change.kind == "TABLE":
            return change.deletes
        targets = {target for _, _, target, _ in self.jumps}
        if change.name in targets:
            return True
        return change.may_break_jump({chain for _, chain, _, _ in self.jumps}, targets.__contains__)

    def repair(self) -> list[tuple[str, str]]:
        """Check; restore if anything is wrong. Returns what was wrong (empty: nothing)."""
        wrong = self.problems()
        if wrong:
            self.install()
        return wrong


class ConntrackPressure:
    """Reads the conntrack table and says so in the log when it is above ``threshold``."""

    def __init__(
        self,
        read: Callable[[], conntrack_table.ConntrackTable] = conntrack_table.read,
        threshold: float = conntrack_table.WARN_FRACTION,
        repeat_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.read = read
        self.threshold = threshold
        self.repeat_s = repeat_s
        self.clock = clock
        self._warned_at: float | None = None

    def current(self) -> conntrack_table.ConntrackTable | None:
        try:
            return self.read()
        except conntrack_table.ConntrackUnavailable:
            return None

    def warning(self) -> str | None:
        """The warning for the STATUS answer (None: below the threshold, or no conntrack)."""
        table = self.current()
        return table.warning(self.threshold) if table else None

    def check(self) -> conntrack_table.ConntrackTable | None:
        table = self.current()
        if table is None:
            return None
        warning = table.warning(self.threshold)
        now = self.clock()
        if warning:
            if self._warned_at is None or now - self._warned_at >= self.repeat_s:
                log.warning("%s", warning)
                self._warned_at = now
        elif self._warned_at is not None:
            log.info(
                "conntrack table back below %.0f%%: %d of %d entries", self.threshold * 100, table.count, table.max
            )
            self._warned_at = None
        return table


class Upkeep:
    """The agent's loop (a thread): rules, then conntrack, every ``period``, and sooner
    when a notification says our rules may have been touched (at most every
    ``min_interval``, so a burst of notifications costs one check)."""

    def __init__(
        self, rules: MasqueradeRules, conntrack: ConntrackPressure, metrics, period: float, min_interval: float = 0.2
    ):
        self.rules, self.conntrack, self.metrics, self.period = rules, conntrack, metrics, period
        self.min_interval = min_interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._monitor: nft_monitor.NftMonitor | None = None

    def start(self, notifications: bool = True) -> Upkeep:
        if notifications:
            try:
                self._monitor = nft_monitor.NftMonitor(self.on_transaction, self._wake.set).start()
            except nft_monitor.MonitorUnavailable as e:
                log.info("%s: the rules are checked every %.0fs only", e, self.period)
        self._thread = threading.Thread(target=self._run, name="upkeep", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._monitor is not None:
            self._monitor.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def on_transaction(self, tx: nft_monitor.Transaction) -> None:
        """(monitor thread) Check now if another process may have broken our rules.
        Our own restores are recognised (linux/iptables.py runs them through
        nft_monitor.run); a check that finds nothing wrong changes nothing, so even a
        misjudged notification cannot start a loop."""
        if tx.gen is not None and nft_monitor.OWN.made(tx.gen):
            return
        if any(self.rules.touched_by(c) for c in tx.changes):
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.period)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.once()
            self._stop.wait(self.min_interval)

    def once(self) -> None:
        try:
            wrong = self.rules.repair()
            for table in sorted({t for t, _ in wrong}):
                self.metrics.rule_repairs.inc(table=table)
            if wrong:
                log.warning("restored the masquerade/forward rules: %s", "; ".join(f"{t}: {w}" for t, w in wrong))
        except (iptables.IptablesError, OSError) as e:
            log.error("could not check or restore the masquerade/forward rules (next try in %.0fs): %s", self.period, e)
        try:
            self.conntrack.check()
        except Exception:  # a report must never stop the loop that repairs the rules
            log.exception("conntrack check failed")
