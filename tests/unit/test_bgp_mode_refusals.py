"""The bgp peering options' bad input at the command line: refused with the reason,
before anything is made (no namespace, no etcd needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minikubenet", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["lab", "up", "--name", "mktnone", "--backend", "vxlan", "--bgp-mode", "rr"],
            "--bgp-mode is an option of --backend bgp",
        ),
        (
            ["lab", "up", "--name", "mktnone", "--backend", "bgp", "--bgp-mode", "tor"],
            "--bgp-mode tor needs --racks 2",
        ),
        (["lab", "up", "--name", "mktnone", "--backend", "bgp", "--bgp-mode", "ring"], "invalid choice: 'ring'"),
        (
            ["network", "init", "--network", "10.244.0.0/16", "--backend", "vxlan", "--route-reflector", "10.0.0.1"],
            "--route-reflector are options of --backend bgp",
        ),
        (
            ["network", "init", "--network", "10.244.0.0/16", "--backend", "bgp", "--route-reflector", "10.0.0.x"],
            "Backend.RouteReflectors[0] '10.0.0.x' is not an IPv4 address",
        ),
    ],
)
def test_bad_bgp_peering_options_are_refused_with_the_reason(args, message):
    p = cli(*args)
    assert p.returncode != 0 and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
