"""bench/lb_latency.py end to end in one round per proxy mode, so the "ingress IP vs
ClusterIP" figure cannot rot: both modes measured, the verdict printed, the JSON
written, and the lab it built removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_lb_latency_bench_runs_end_to_end_and_leaves_nothing(tmp_path):
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    p = subprocess.Popen(
        [sys.executable, "-m", "bench.lb_latency", "--rounds", "1", "--connections", "20", "--out", str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.terminate()  # SIGTERM: the bench's finally takes its lab down
            p.communicate(timeout=60)
    assert p.returncode == 0, out
    [doc] = [json.loads(f.read_text()) for f in tmp_path.glob("lb_latency-*.json")]
    for mode in ("iptables", "nftables"):
        fig = doc["summary"][mode]
        assert fig["ingress_p50_us"] > 0 and fig["cluster_p50_us"] > 0 and fig["ratio_median"] > 0, (mode, fig)
        assert f"  {mode:9s} ratio " in out, out
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    lab_name = f"lbl{p.pid % 100000}"  # the bench names its lab after its PID
    assert not {n for n in after - before if n.startswith(lab_name)}, after - before
