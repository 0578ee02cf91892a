"""bench/backends.py end to end in its quickest mode, so the seed's comparison cannot rot:
every path measured in both RPS settings, the table printed, JSON and PNG written, and
every lab it built removed."""

from __future__ import annotations

import json
import subprocess

from tests.lab.bench_run import run_bench

PATHS = ("underlay", "host-gw", "bgp", "vxlan", "bgp-nodes")


def test_the_backends_bench_runs_end_to_end_and_leaves_nothing(tmp_path):
    p, out = run_bench("backends", "--quick", "--out", str(tmp_path), timeout=240)
    assert p.returncode == 0, out
    for name in ("host-gw", "bgp", "vxlan"):
        assert any(line.startswith(f"  {name} ") for line in out.splitlines()), out
    assert "seed: " in out
    [doc] = [json.loads(f.read_text()) for f in tmp_path.glob("backends-*.json")]
    assert [f.suffix for f in tmp_path.glob("backends-*.png")] == [".png"]
    assert [r["rps"] for r in doc["rounds"]] == ["off", "on", "on", "off"]  # alternating
    for setting in ("off", "on"):
        for path in PATHS:
            s = doc["summary"][setting][path]
            assert s["gbps"]["median"] > 0.1, (setting, path, s)
            assert 0 < s["rr_p50_us"]["median"] <= s["rr_p99_us"]["median"], (setting, path, s)
            # 20 sequential calls take longer than one round trip, and than 20 of them
            assert s["calls_ms"]["median"] * 1000 > 20 * s["rr_p50_us"]["min"] * 0.5, (setting, path, s)
            assert s["cpu_s_per_gbit"]["median"] > 0, (setting, path, s)
        assert doc["summary"][setting]["underlay"]["throughput_ratio"]["median"] == 1.0
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    tag = str(p.pid % 10000)
    assert not [line for line in left.splitlines() if line.startswith("bb") and tag in line.split()[0]], left
