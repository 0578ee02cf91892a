"""bench/backends.py's arithmetic: ratios to the underlay taken round by round, the
verdict against the seed's claims (and "spread crosses the bar" when noise decides), and
the RPS probe's choice (lab/rps_probe.py)."""

from __future__ import annotations

from bench import backends
from minikubenet.lab import rps_probe


def _row(gbps, rtt, calls=3.0, cpu=0.1):
    return {"gbps": gbps, "rr_p50_us": rtt, "rr_p99_us": rtt * 2, "calls_ms": calls, "cpu_s_per_gbit": cpu}


def _spec(name):
    return next(p for p in backends.PATHS if p.name == name)


def test_ratios_are_paired_by_round_so_a_slow_round_cancels_out():
    paths = [_spec("underlay"), _spec("bgp")]
    rounds = [
        {"rps": "off", "paths": {"underlay": _row(20, 50), "bgp": _row(19.6, 52)}},
        {"rps": "off", "paths": {"underlay": _row(10, 100), "bgp": _row(9.8, 104)}},  # a busy moment
    ]
    s = backends.summarise(rounds, paths, ["off"])["off"]["bgp"]
    assert abs(s["throughput_ratio"]["min"] - 0.98) < 1e-9 and abs(s["throughput_ratio"]["max"] - 0.98) < 1e-9
    assert abs(s["latency_ratio"]["median"] - 1.04) < 1e-9
    assert (s["gbps"]["min"], s["gbps"]["max"], s["gbps"]["n"]) == (9.8, 19.6, 2)


def _summary(t_min, t_med, t_max, l_min, l_med, l_max):
    return {
        "throughput_ratio": {"min": t_min, "median": t_med, "max": t_max},
        "latency_ratio": {"min": l_min, "median": l_med, "max": l_max},
    }


def test_verdicts_against_the_seed():
    bgp, vxlan = _spec("bgp"), _spec("vxlan")
    assert backends.verdict(bgp, _summary(0.98, 0.99, 1.0, 1.0, 1.02, 1.05)) == "near metal; seed: agrees"
    assert backends.verdict(bgp, _summary(0.80, 0.85, 0.9, 1.2, 1.3, 1.4)) == "below metal; seed: does NOT agree"
    assert backends.verdict(vxlan, _summary(0.6, 0.7, 0.8, 1.3, 1.5, 1.7)) == "below metal; seed: agrees"
    noisy = backends.verdict(bgp, _summary(0.90, 0.98, 1.02, 1.0, 1.05, 1.2))
    assert noisy == "near metal (spread crosses the bar); seed: agrees"
    assert backends.verdict(_spec("host-gw"), _summary(0.8, 0.85, 0.9, 1.2, 1.3, 1.4)) == "below metal"


def test_the_rps_probe_keeps_the_faster_setting():
    assert rps_probe.choose([10.0, 11.0], [12.0, 12.5]) is True
    assert rps_probe.choose([12.0, 12.5], [10.0, 11.0]) is False
    assert rps_probe.choose([12.0], [12.0]) is False  # a tie keeps the kernel's default
    assert rps_probe.choose([], [1.0]) is False
