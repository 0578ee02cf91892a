"""Shared fixtures for every tier.

Tiers live in directories: ``unit`` (pure, no root), ``netns`` (root, one node, a real
kernel and a real etcd), ``lab`` (several nodes), ``faults`` (crashes, outages, hostile
calls), ``runtimes`` and ``vm``. Root-only
tests carry the ``root`` marker and are skipped, with the reason, when not run as root;
CI runs as root and so runs them all. Tests of the ``lab`` and ``faults`` tiers also carry
the ``lab`` marker (`pytest -m "not lab"` runs the quick tiers only).

Everything a test creates is a lab (minikubenet.lab.cluster.Lab) with a unique short
name such as ``t3f9a1``: every namespace it makes starts with that name, and the
fixture's teardown removes exactly those, also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile

import pytest

ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs root (network namespaces, a real kernel)")
    for item in items:
        tier = item.path.parent.name
        if tier in ("netns", "lab", "faults", "runtimes", "vm"):
            item.add_marker(pytest.mark.root)
            if not ROOT:
                item.add_marker(skip)
        if tier in ("lab", "faults"):
            item.add_marker(pytest.mark.lab)  # `pytest -m "not lab"` leaves the multi-node tiers out


def unique_lab_name(prefix: str = "t") -> str:
    return prefix + secrets.token_hex(3)[: 7 - len(prefix) + 1]


@pytest.fixture(scope="session")
def lab_root():
    with tempfile.TemporaryDirectory(prefix="minikubenet-test-") as d:
        yield d


def make_lab(lab_root, nodes, pods_per_node, backend="vxlan", **kw):
    from minikubenet.lab.cluster import Lab
    from minikubenet.lab.topology import build_topology

    topo = build_topology(unique_lab_name(), nodes=nodes, pods_per_node=pods_per_node, backend=backend, **kw)
    return Lab(topo, root=lab_root, say=lambda *a: None)


def lab_cli(lab, *args: str) -> subprocess.CompletedProcess:
    """``minikubenet ARGS --lab <its name>`` against a running lab, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "minikubenet", *args, "--lab", lab.topo.name, "--lab-root", os.path.dirname(lab.dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextlib.contextmanager
def running_lab(
    lab_root,
    nodes,
    pods_per_node,
    proxy: bool = True,
    rps: str = "off",
    bgp_mode: str = "mesh",
    direct_routing: bool = False,
    **kw,
):
    """A lab that is up for the ``with`` block and removed after it, also when the block
    fails (``proxy=False``: no service proxy, for tests of the agent alone; ``rps``: as
    ``lab up --rps``, off by default; ``bgp_mode``, ``direct_routing``: as ``lab up``'s)."""
    lab = make_lab(lab_root, nodes=nodes, pods_per_node=pods_per_node, **kw)
    lab.bgp_mode, lab.direct_routing = bgp_mode, direct_routing
    if not proxy:
        lab.proxy_mode = None
    if rps == "on":
        from minikubenet.linux import rps as linux_rps

        lab.rps_cpus = linux_rps.all_but_first_cpu()
    lab.rps_auto = rps == "auto"
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def one_node(lab_root):
    """Name: one_node. Scope: module. A lab with one node (etcd + agent), no pods:
    tests create their own pod namespaces through ``lab.runtime("n1")``."""
    with running_lab(lab_root, nodes=1, pods_per_node=0) as lab:
        yield lab


@pytest.fixture(scope="module")
def three_nodes(lab_root):
    """Name: three_nodes. Scope: module. A 3-node lab with 2 pods per node, receive
    packet steering on (so the agent's --rps-cpus wiring is tested)."""
    with running_lab(lab_root, nodes=3, pods_per_node=2, rps="on") as lab:
        yield lab
