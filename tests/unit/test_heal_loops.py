"""Healing without a kernel: the proxy's loop re-syncs in full when a notification says
someone else touched its rules (and ignores its own changes), checks every chain when
it cannot hear notifications; the agent's masquerade rules are checked and restored."""

from __future__ import annotations

import pytest

from minikubenet.agent import upkeep
from minikubenet.linux import iptables
from minikubenet.linux import nft_monitor as M
from minikubenet.proxy.syncers import IptablesSyncer, NftSyncer, SyncConfig, _rule_counts
from tests.unit.test_proxy_sync import TCP, make_loop, snapshot


def tx(*changes, pid=999999, name="iptables"):
    return M.Transaction(changes=list(changes), gen=M.Generation(7, pid, name))


def test_a_foreign_change_to_our_chains_brings_a_full_sync_at_once():
    loop, state, syncer, clock = make_loop(min_sync_period=1.0, sync_period=30)
    loop.monitored = True
    state.deliver(snapshot([TCP]))
    assert loop.step() and syncer.calls == [None]
    clock.now += 0.5
    loop.on_transaction(tx(M.ObjectChange("DELRULE", "ip", "nat", "KUBE-SVC-ABC")))
    assert loop.wake.is_set()
    assert not loop.step()  # min-sync-period still holds
    assert loop._deadline(clock()) == pytest.approx(0.5)
    clock.now += 0.5
    assert loop.step() and syncer.calls[-1] is None  # full
    assert loop.metrics.rule_repairs.get(trigger="notification") == 1
    clock.now += 5
    assert not loop.step()  # nothing more to do


def test_our_own_changes_and_other_tables_do_not_trigger_a_sync():
    loop, state, syncer, clock = make_loop(min_sync_period=0.0, sync_period=30)
    loop.monitored = True
    state.deliver(snapshot([TCP]))
    loop.step()
    M.OWN.add(4242, "iptables-restore")
    loop.on_transaction(tx(M.ObjectChange("DELRULE", "ip", "nat", "KUBE-SVC-ABC"), pid=4242, name="iptables-restor"))
    loop.on_transaction(tx(M.ObjectChange("NEWRULE", "ip", "nat", "MINIKUBENET-POSTRTG")))
    clock.now += 1
    assert not loop.step() and len(syncer.calls) == 1


def test_a_rule_someone_else_inserts_runs_the_check_at_once():
    """The policy controller's case: a rule inserted into FORWARD may sit above its jump.
    The cheap check runs within --min-sync-period, not a sync period later; it resyncs
    only if the check fails."""
    loop, state, syncer, clock = make_loop(min_sync_period=1.0, sync_period=30)
    loop.monitored = True
    state.deliver(snapshot([TCP]))
    assert loop.step() and syncer.calls == [None]
    clock.now += 2
    loop.on_transaction(tx(M.ObjectChange("NEWRULE", "ip", "filter", "FORWARD")))
    assert loop.wake.is_set() and loop._deadline(clock()) == 0
    checks = syncer.checks
    assert not loop.step() and syncer.checks == checks + 1  # still first: nothing to do
    syncer.is_intact = False  # now it is not
    loop.on_transaction(tx(M.ObjectChange("NEWRULE", "ip", "filter", "FORWARD")))
    assert loop.step() and syncer.calls[-1] is None  # full: moves the jump back up
    assert loop.metrics.rule_repairs.get(trigger="notification") == 1
    assert loop._deadline(clock()) == pytest.approx(28)  # the periodic check keeps its time (t0 + 30 s)
    syncer.is_intact = True
    loop.on_transaction(tx(M.ObjectChange("NEWRULE", "ip", "nat", "POSTROUTING")))  # not a reason
    clock.now += 5
    assert not loop.step() and syncer.checks == checks + 2


def test_which_changes_are_the_policy_controllers():
    from minikubenet.policy.syncers import IptablesPolicySyncer

    ipt = IptablesPolicySyncer("n1")
    C = M.ObjectChange
    assert ipt.touches_ours(C("DELRULE", "ip", "filter", "FORWARD", "MKN-POLICY"))
    assert ipt.touches_ours(C("DELRULE", "ip", "filter", "MKN-PI-ABC"))
    assert not ipt.touches_ours(C("DELRULE", "ip", "filter", "FORWARD", "KUBE-FORWARD"))  # the proxy's
    assert ipt.calls_for_check(C("NEWRULE", "ip", "filter", "FORWARD"))  # above ours?
    assert ipt.calls_for_check(C("NEWRULE", "ip", "filter", "INPUT"))
    assert not ipt.calls_for_check(C("NEWRULE", "ip", "nat", "PREROUTING", "KUBE-SERVICES"))
    assert not ipt.calls_for_check(C("DELRULE", "ip", "filter", "FORWARD", "KUBE-FORWARD"))
    assert not IptablesSyncer(SyncConfig()).calls_for_check(C("NEWRULE", "ip", "filter", "FORWARD"))


def test_without_notifications_the_periodic_check_looks_at_every_chain():
    loop, state, syncer, clock = make_loop(min_sync_period=0.0, sync_period=5)
    state.deliver(snapshot([TCP]))
    loop.step()
    syncer.all_chains = False  # a KUBE-SVC chain flushed by hand
    clock.now += 5
    assert loop.step() and syncer.calls[-1] is None
    assert loop.metrics.rule_repairs.get(trigger="periodic check") == 1


def test_with_notifications_only_an_overflow_makes_the_check_deep():
    loop, state, syncer, clock = make_loop(min_sync_period=0.0, sync_period=5)
    loop.monitored = True
    state.deliver(snapshot([TCP]))
    loop.step()
    syncer.all_chains = False
    clock.now += 5
    assert not loop.step()  # the cheap check passes: notifications cover the rest
    loop.on_overflow()
    assert loop.step() and syncer.calls[-1] is None


def test_which_changes_are_the_proxys():
    ipt = IptablesSyncer(SyncConfig())
    C = M.ObjectChange
    assert ipt.touches_ours(C("DELRULE", "ip", "nat", "KUBE-SEP-X"))
    assert ipt.touches_ours(C("DELCHAIN", "ip", "nat", "KUBE-SVC-X"))
    assert ipt.touches_ours(C("DELRULE", "ip", "nat", "PREROUTING"))  # our jump may be gone (target not said)
    assert ipt.touches_ours(C("DELRULE", "ip", "filter", "FORWARD", "KUBE-FORWARD"))  # our jump is gone
    # the policy controller moving its jump back to the top, the agent repairing its own
    assert not ipt.touches_ours(C("DELRULE", "ip", "filter", "FORWARD", "MKN-POLICY"))
    assert not ipt.touches_ours(C("DELRULE", "ip", "filter", "FORWARD", "MINIKUBENET-FWD"))
    assert not ipt.touches_ours(C("DELRULE", "ip", "filter", "FORWARD", ""))  # a plain ACCEPT rule
    assert ipt.touches_ours(C("DELCHAIN", "ip", "filter", "FORWARD"))
    assert ipt.touches_ours(C("DELTABLE", "ip", "nat", ""))
    assert not ipt.touches_ours(C("NEWRULE", "ip", "nat", "POSTROUTING"))  # someone else's rule
    assert not ipt.touches_ours(C("DELRULE", "ip", "nat", "MINIKUBENET-POSTRTG"))
    assert not ipt.touches_ours(C("DELRULE", "ip6", "nat", "KUBE-SEP-X"))
    nft = NftSyncer(SyncConfig())
    assert nft.touches_ours(C("DELSETELEM", "ip", "minikubenet-proxy", "service-ips"))
    assert nft.touches_ours(C("DELCHAIN", "ip", "minikubenet-proxy", "svc-x"))
    assert not nft.touches_ours(C("DELCHAIN", "ip", "other", "svc-x"))


def test_rule_counts_from_a_save_dump():
    dump = (
        "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-B - [0:0]\n"
        "-A PREROUTING -j KUBE-SERVICES\n-A KUBE-SVC-A -j KUBE-SEP-B\n-A KUBE-SVC-A -j RETURN\nCOMMIT\n"
    )
    assert _rule_counts(dump) == {"PREROUTING": 1, "KUBE-SVC-A": 2, "KUBE-SEP-B": 0}


class FakeIptables:
    """Chains as lists of ``-S`` lines; restore() re-creates ours, ensure_jump() inserts."""

    def __init__(self):
        self.chains = {("nat", "POSTROUTING"): ["-P POSTROUTING ACCEPT"], ("filter", "FORWARD"): ["-P FORWARD ACCEPT"]}
        self.restores = 0

    def list_chain(self, table, chain, binary="iptables"):
        rules = self.chains.get((table, chain))
        return list(rules) if rules is not None else None

    def restore(self, text, binary="iptables-restore", **kw):
        self.restores += 1
        table = None
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                chain = line[1:].split()[0]
                self.chains[(table, chain)] = [f"-N {chain}"]
            elif line.startswith("-A "):
                self.chains[(table, line.split()[1])].append(line)

    def ensure_jump(self, table, chain, target, comment, binary="iptables"):
        rule = f'-A {chain} -m comment --comment "{comment}" -j {target}'
        if rule not in self.chains[(table, chain)]:
            self.chains[(table, chain)].insert(1, rule)


@pytest.fixture
def fake_iptables(monkeypatch):
    f = FakeIptables()
    for name in ("list_chain", "restore", "ensure_jump"):
        monkeypatch.setattr(iptables, name, getattr(f, name))
    return f


def test_the_agent_restores_its_rules_only_when_something_is_missing(fake_iptables):
    import ipaddress

    from minikubenet.masquerade import render_masquerade

    rules = upkeep.MasqueradeRules(
        render_masquerade(ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.244.1.0/24"))
    )
    rules.install()
    assert fake_iptables.restores == 1
    assert rules.repair() == [] and fake_iptables.restores == 1  # intact: a check, no rewrite
    fake_iptables.chains[("nat", "MINIKUBENET-POSTRTG")] = ["-N MINIKUBENET-POSTRTG"]  # iptables -t nat -F
    fake_iptables.chains[("nat", "POSTROUTING")] = ["-P POSTROUTING ACCEPT"]
    wrong = rules.repair()
    assert ("nat", "the jump POSTROUTING -> MINIKUBENET-POSTRTG is gone") in wrong
    assert any("MINIKUBENET-POSTRTG was flushed" in w for _, w in wrong) and fake_iptables.restores == 2
    assert rules.repair() == []
    del fake_iptables.chains[("filter", "MINIKUBENET-FWD")]  # iptables -X
    assert rules.repair() == [("filter", "chain MINIKUBENET-FWD is gone")]


def test_the_upkeep_loop_counts_repairs_and_survives_errors(fake_iptables, caplog):
    import ipaddress

    from minikubenet.agent.metrics import AgentMetrics
    from minikubenet.linux.conntrack_table import ConntrackTable
    from minikubenet.masquerade import render_masquerade

    rules = upkeep.MasqueradeRules(
        render_masquerade(ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.244.1.0/24"))
    )
    rules.install()
    metrics = AgentMetrics(read_conntrack=lambda: ConntrackTable(1, 100))
    loop = upkeep.Upkeep(rules, upkeep.ConntrackPressure(read=lambda: ConntrackTable(1, 100)), metrics, 10)
    fake_iptables.chains[("nat", "POSTROUTING")] = ["-P POSTROUTING ACCEPT"]
    loop.once()
    assert metrics.rule_repairs.get(table="nat") == 1 and metrics.rule_repairs.get(table="filter") == 0

    def broken(*a, **k):
        raise iptables.IptablesError("iptables-restore failed: xtables lock")

    fake_iptables.chains[("nat", "POSTROUTING")] = ["-P POSTROUTING ACCEPT"]
    iptables.restore = broken
    loop.once()  # logged, the loop carries on
    assert "xtables lock" in caplog.text


def test_a_notification_before_the_first_snapshot_does_not_spin_the_loop():
    loop, state, syncer, clock = make_loop(min_sync_period=1.0, sync_period=30)
    loop.monitored = True
    loop.on_transaction(tx(M.ObjectChange("DELRULE", "ip", "nat", "KUBE-SVC-ABC")))
    assert loop._deadline(clock()) > 1  # waits for the snapshot, not a busy loop
    state.deliver(snapshot([TCP]))
    assert loop.step() and syncer.calls == [None]  # the first sync is full anyway
    clock.now += 2
    assert not loop.step() and loop.metrics.rule_repairs.get(trigger="notification") == 0


def test_the_agent_checks_at_once_when_its_chains_or_jumps_may_be_gone():
    import ipaddress

    from minikubenet.masquerade import render_masquerade

    rules = upkeep.MasqueradeRules(
        render_masquerade(ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.244.1.0/24"))
    )
    C = M.ObjectChange
    assert rules.touched_by(C("DELRULE", "ip", "nat", "POSTROUTING"))  # iptables -t nat -F
    assert rules.touched_by(C("DELRULE", "ip", "filter", "FORWARD"))
    assert rules.touched_by(C("DELRULE", "ip", "filter", "FORWARD", "MINIKUBENET-FWD"))
    assert not rules.touched_by(C("DELRULE", "ip", "filter", "FORWARD", "MKN-POLICY"))  # another's jump
    assert not rules.touched_by(C("DELRULE", "ip", "nat", "POSTROUTING", "KUBE-POSTROUTING"))
    assert rules.touched_by(C("DELCHAIN", "ip", "nat", "MINIKUBENET-POSTRTG"))
    assert rules.touched_by(C("DELTABLE", "ip", "filter", ""))
    assert not rules.touched_by(C("NEWRULE", "ip", "nat", "POSTROUTING"))  # someone adding theirs
    assert not rules.touched_by(C("DELRULE", "ip", "nat", "KUBE-SVC-X"))  # the proxy's business
    assert not rules.touched_by(C("DELRULE", "ip6", "nat", "POSTROUTING"))
    loop = upkeep.Upkeep(rules, None, None, period=10)
    loop.on_transaction(tx(C("DELRULE", "ip", "nat", "KUBE-SEP-X")))
    assert not loop._wake.is_set()
    loop.on_transaction(tx(C("DELRULE", "ip", "nat", "POSTROUTING")))
    assert loop._wake.is_set()
