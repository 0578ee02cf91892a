"""The conntrack table's fill level and counters (linux/conntrack_table.py), the agent's
warning (agent/upkeep.py ConntrackPressure), its metrics and its STATUS answer."""

from __future__ import annotations

import logging

import pytest

from minikubenet.agent.metrics import AgentMetrics
from minikubenet.agent.upkeep import ConntrackPressure
from minikubenet.linux import conntrack_table as CT
from tests.unit.test_shim import agent, conf, invoke, short_dir  # noqa: F401 (fixtures)

# Linux 6.18, two CPUs
STAT_6_18 = """\
entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00000010  00000000 00000002 00000000 00000005 00000000 00000000 00000000 00000000 00000001 00000003 0000000a 00000000  00000000 00000000 00000000 00000000
00000010  00000000 00000001 00000000 00000002 00000000 00000000 00000000 00000000 00000002 00000004 00000001 00000000  00000000 00000000 00000000 00000000
"""
# an older kernel (4.x): "searched" instead of "clashres", no chainlength, other order after it
STAT_4_19 = """\
entries  searched found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
0000002a  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000007 00000000 00000000 00000000  00000000 00000000 00000000 00000000
"""


def test_counters_are_summed_over_cpus_and_entries_taken_once():
    s = CT.parse_stat(STAT_6_18)
    assert s["entries"] == 16 and s["drop"] == 7 and s["early_drop"] == 11 and s["insert_failed"] == 3
    assert s["invalid"] == 7 and s["found"] == 3


def test_columns_are_found_by_name_not_position():
    s = CT.parse_stat(STAT_4_19)
    assert s["entries"] == 42 and s["insert_failed"] == 7 and s["drop"] == 0 and "clashres" not in s


def test_garbage_and_empty_stat_files_give_what_they_can():
    assert CT.parse_stat("") == {}
    assert CT.parse_stat("entries drop\nzz 00000002\n") == {"drop": 2}


def fake_proc(tmp_path, count, limit, stat=STAT_6_18):
    (tmp_path / "sys/net/netfilter").mkdir(parents=True)
    (tmp_path / "net/stat").mkdir(parents=True)
    (tmp_path / "sys/net/netfilter/nf_conntrack_count").write_text(f"{count}\n")
    (tmp_path / "sys/net/netfilter/nf_conntrack_max").write_text(f"{limit}\n")
    (tmp_path / "net/stat/nf_conntrack").write_text(stat)
    return str(tmp_path)


def test_read_from_proc(tmp_path):
    t = CT.read(fake_proc(tmp_path, 900, 1000))
    assert (t.count, t.max, t.stat("drop")) == (900, 1000, 7) and t.fill == 0.9 and not t.full


def test_no_conntrack_module_is_a_clear_error(tmp_path):
    with pytest.raises(CT.ConntrackUnavailable, match="not loaded"):
        CT.read(str(tmp_path))


def test_the_warning_starts_above_90_percent_and_says_what_to_do():
    assert CT.ConntrackTable(900, 1000).warning() is None
    w = CT.ConntrackTable(901, 1000, {"drop": 3}).warning()
    assert "90% full" in w and "901 of 1000" in w and "drop 3" in w and "nf_conntrack_max" in w
    assert "are being dropped" in CT.ConntrackTable(1000, 1000).warning() and CT.ConntrackTable(1000, 1000).full
    assert CT.ConntrackTable(5, 0).warning() is None and not CT.ConntrackTable(5, 0).full  # no limit


def test_the_log_warns_on_crossing_then_every_repeat_and_says_when_it_is_back(caplog):
    table = [CT.ConntrackTable(950, 1000)]
    now = [0.0]
    p = ConntrackPressure(read=lambda: table[0], repeat_s=300, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="minikubenet.agent.upkeep"):
        for _ in range(5):
            p.check()
            now[0] += 10
        assert sum("conntrack table 95% full" in r.message for r in caplog.records) == 1
        now[0] += 300
        p.check()
        assert sum("95% full" in r.message for r in caplog.records) == 2
        table[0] = CT.ConntrackTable(100, 1000)
        p.check()
        p.check()
        assert sum("back below" in r.message for r in caplog.records) == 1


def test_metrics_are_read_at_each_scrape():
    table = [CT.ConntrackTable(5, 100, {"drop": 1, "early_drop": 2, "insert_failed": 3})]
    m = AgentMetrics(read_conntrack=lambda: table[0])
    text = m.render()
    assert "minikubenet_conntrack_entries 5" in text and "minikubenet_conntrack_entries_limit 100" in text
    assert "# TYPE minikubenet_conntrack_drop_total counter" in text and "minikubenet_conntrack_drop_total 1" in text
    assert "minikubenet_conntrack_early_drop_total 2" in text and "minikubenet_conntrack_insert_failed_total 3" in text
    table[0] = CT.ConntrackTable(7, 100, {"drop": 4})
    assert "minikubenet_conntrack_entries 7" in m.render()


def test_status_fails_only_when_the_table_is_full_and_warns_above_90_percent():
    from minikubenet.agent.cni_handler import CniHandler, NodeState
    from minikubenet.cni.shim import ERR_NOT_AVAILABLE_DEGRADED, CniError

    table = [CT.ConntrackTable(10, 1000)]
    node = NodeState(
        node_name="n1",
        subnet=None,
        mtu=1450,
        allocator=None,
        lease_healthy=lambda: True,
        store_ping=lambda: None,
        conntrack=lambda: table[0],
    )
    h = CniHandler.__new__(CniHandler)  # STATUS needs only the node state
    h.node = node
    h.status()
    assert h.status_warnings() == []
    table[0] = CT.ConntrackTable(950, 1000)
    h.status()  # still ready: existing and new pods work
    assert "95% full" in h.status_warnings()[0]
    table[0] = CT.ConntrackTable(1000, 1000)
    with pytest.raises(CniError) as e:
        h.status()
    assert e.value.code == ERR_NOT_AVAILABLE_DEGRADED and "conntrack table is full" in e.value.msg


def test_the_shim_prints_status_warnings_on_stderr_and_nothing_on_stdout(capsys, agent):  # noqa: F811
    agent.reply({"result": None, "warnings": ["conntrack table 95% full (950 of 1000 entries)"]})
    code, out = invoke({"CNI_COMMAND": "STATUS", "CNI_PATH": "/opt/cni/bin"}, conf(agent.path, "1.1.0"))
    assert code == 0 and out == ""
    assert "minikubenet: warning: conntrack table 95% full" in capsys.readouterr().err
