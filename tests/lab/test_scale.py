"""The lab scales: 20 nodes with 2 pods each come up and pass the full check."""

from __future__ import annotations

import time

from tests.conftest import make_lab


def test_twenty_nodes_with_two_pods_each(lab_root, capsys):
    lab = make_lab(lab_root, nodes=20, pods_per_node=2)
    try:
        t0 = time.monotonic()
        lab.up()
        up = time.monotonic() - t0
        t0 = time.monotonic()
        same = lab.check_same_node()
        cross = lab.check_cross_node()
        check = time.monotonic() - t0
        assert len(cross) >= 40 * 40
        with capsys.disabled():
            print(f"\n20-node lab: up in {up:.1f}s, {len(same) + len(cross)} checks in {check:.1f}s")
    finally:
        lab.down()
