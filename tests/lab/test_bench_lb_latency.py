"""bench/lb_latency.py end to end in one round per proxy mode, so the "ingress IP vs
ClusterIP" figure cannot rot: both modes measured, the verdict printed, the JSON
written, and the lab it built removed."""

from __future__ import annotations

import json

from tests.lab.bench_run import netns_names, run_bench


def test_the_lb_latency_bench_runs_end_to_end_and_leaves_nothing(tmp_path):
    before = netns_names()
    p, out = run_bench("lb_latency", "--rounds", "1", "--connections", "20", "--out", str(tmp_path), timeout=300)
    assert p.returncode == 0, out
    [doc] = [json.loads(f.read_text()) for f in tmp_path.glob("lb_latency-*.json")]
    for mode in ("iptables", "nftables"):
        fig = doc["summary"][mode]
        assert fig["ingress_p50_us"] > 0 and fig["cluster_p50_us"] > 0 and fig["ratio_median"] > 0, (mode, fig)
        assert f"  {mode:9s} ratio " in out, out
    after = netns_names()
    lab_name = f"lbl{p.pid % 100000}"  # the bench names its lab after its PID
    assert not {n for n in after - before if n.startswith(lab_name)}, after - before
