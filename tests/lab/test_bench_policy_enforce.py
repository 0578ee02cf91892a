"""bench/policy_enforce.py end to end in one round per rendering, so the "apply -f
returned -> enforced on every node" figure cannot rot: both modes measured, the verdict
printed, the JSON written, and the lab it built removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_enforcement_bench_runs_end_to_end_and_leaves_nothing(tmp_path):
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    p = subprocess.Popen(
        [sys.executable, "-m", "bench.policy_enforce", "--rounds", "1", "--out", str(tmp_path)],
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
    [doc] = [json.loads(f.read_text()) for f in tmp_path.glob("policy_enforce-*.json")]
    for mode in ("iptables", "nftables"):
        for verb in ("apply", "delete"):
            fig = doc["summary"][mode][verb]
            # a real measurement: positive, and well inside the bench's own 20 s limit
            assert 0 < fig["median_ms"] < 20_000, (mode, verb, fig)
        assert f"  {mode:9s} apply " in out, out
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    lab_name = f"pe{p.pid % 100000}"  # the bench names its lab after its PID
    assert not {n for n in after - before if n.startswith(lab_name)}, after - before
