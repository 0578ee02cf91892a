"""Fixtures of the netns tier (one node, a real kernel)."""

from __future__ import annotations

import secrets
import subprocess

import pytest


@pytest.fixture
def netns():
    """Name: netns. Scope: one test. A fresh network namespace ``mkntest-prx-<hex>`` with
    lo up; teardown ``ip netns del`` (which also drops its iptables and nftables)."""
    name = "mkntest-prx-" + secrets.token_hex(4)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
