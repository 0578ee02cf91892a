"""bench/bgp_attach.py end to end in one short round, so the "bridged vs routed pods"
figure cannot rot: the routed (Calico-style) pods reach each other across nodes, both
ratios are measured, the JSON written, and the lab it built removed."""

from __future__ import annotations

import json

from tests.lab.bench_run import netns_names, run_bench


def test_the_attachment_bench_runs_end_to_end_and_leaves_nothing(tmp_path):
    before = netns_names()
    p, out = run_bench("bgp_attach", "--rounds", "1", "--seconds", "1", "--out", str(tmp_path), timeout=300)
    assert p.returncode == 0, out
    [doc] = [json.loads(f.read_text()) for f in tmp_path.glob("bgp_attach-*.json")]
    for name in ("bridged", "routed"):
        assert 0 < doc["summary"][name]["throughput_ratio"]["median"] < 2, doc["summary"]
    after = netns_names()
    lab_name = f"ba{p.pid % 100000}"  # the bench names its lab after its PID
    assert not {n for n in after - before if n.startswith(lab_name)}, after - before
