"""The lab scales: 20 nodes with 2 pods each come up, pass the full check, and
``minikubenet doctor`` checks them all (path-MTU probes included) in a few seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
        t0 = time.monotonic()
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "minikubenet",
                "doctor",
                "--json",
                "--lab",
                lab.topo.name,
                "--lab-root",
                os.path.dirname(lab.dir),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        doctor = time.monotonic() - t0
        out = json.loads(p.stdout)
        assert p.returncode == 0 and out["findings"] == [] and len(out["nodes"]) == 20, p.stdout + p.stderr
        with capsys.disabled():
            print(
                f"\n20-node lab: up in {up:.1f}s, {len(same) + len(cross)} checks in {check:.1f}s, "
                f"doctor in {doctor:.1f}s ({out['seconds']:.1f}s in the tool, {out['probes']} path-MTU probes; "
                "target <= 5 s)"
            )
    finally:
        lab.down()
