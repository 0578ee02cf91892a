"""bench/policy_enforce.py end to end in one round per rendering, so the "apply -f
returned -> enforced on every node" figure cannot rot: both modes measured, the verdict
printed, the JSON written, and the lab it built removed."""

from __future__ import annotations

import json

from tests.lab.bench_run import netns_names, run_bench


def test_the_enforcement_bench_runs_end_to_end_and_leaves_nothing(tmp_path):
    before = netns_names()
    p, out = run_bench("policy_enforce", "--rounds", "1", "--out", str(tmp_path), timeout=300)
    assert p.returncode == 0, out
    [doc] = [json.loads(f.read_text()) for f in tmp_path.glob("policy_enforce-*.json")]
    for mode in ("iptables", "nftables"):
        for verb in ("apply", "delete"):
            fig = doc["summary"][mode][verb]
            # a real measurement: positive, and well inside the bench's own 20 s limit
            assert 0 < fig["median_ms"] < 20_000, (mode, verb, fig)
        assert f"  {mode:9s} apply " in out, out
    after = netns_names()
    lab_name = f"pe{p.pid % 100000}"  # the bench names its lab after its PID
    assert not {n for n in after - before if n.startswith(lab_name)}, after - before
