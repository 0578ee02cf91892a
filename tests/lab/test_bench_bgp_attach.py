"""bench/bgp_attach.py end to end in one short round, so the "bridged vs routed pods"
figure cannot rot: the routed (Calico-style) pods reach each other across nodes, both
ratios are measured, the JSON written, and the lab it built removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_attachment_bench_runs_end_to_end_and_leaves_nothing(tmp_path):
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    p = subprocess.Popen(
        [sys.executable, "-m", "bench.bgp_attach", "--rounds", "1", "--seconds", "1", "--out", str(tmp_path)],
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
    [doc] = [json.loads(f.read_text()) for f in tmp_path.glob("bgp_attach-*.json")]
    for name in ("bridged", "routed"):
        assert 0 < doc["summary"][name]["throughput_ratio"]["median"] < 2, doc["summary"]
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    lab_name = f"ba{p.pid % 100000}"  # the bench names its lab after its PID
    assert not {n for n in after - before if n.startswith(lab_name)}, after - before
