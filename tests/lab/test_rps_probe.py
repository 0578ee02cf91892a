"""`lab up --rps auto`: a short probe measures pod -> pod with receive packet steering off
and on and leaves the faster setting on every device of every node (lab/rps_probe.py)."""

from __future__ import annotations

import subprocess

import pytest

from minikubenet.lab.cluster import Lab
from minikubenet.linux import rps
from tests.conftest import running_lab


def _masks(netns: str) -> list[int]:
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "sh",
            "-c",
            "for q in /sys/class/net/*/queues/rx-*/rps_cpus; do case $q in */lo/*) ;; *) cat $q;; esac; done",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [int(m.replace(",", ""), 16) for m in out]


def test_auto_measures_both_settings_and_leaves_the_faster_one_on_every_node_device(lab_root):
    if rps.all_but_first_cpu() is None:
        pytest.skip("one CPU: nothing to steer, the probe does not run")
    with running_lab(lab_root, nodes=2, pods_per_node=1, proxy=False, rps="auto") as lab:
        note = lab.rps_note
        assert "Gbit/s without" in note and " with " in note, note
        expected = 0 if lab.rps_cpus is None else int(rps.all_but_first_cpu() or "0", 16)
        assert note.startswith("RPS off" if expected == 0 else "RPS on"), note
        for node in lab.topo.nodes:
            masks = _masks(node.netns)
            # eth0, cni0, the pod's host-side veth (host-gw or vxlan: flannel.1 too)
            assert len(masks) >= 3 and set(masks) == {expected}, (node.name, masks)
        assert "lab up's probe: RPS" in lab.report()
        # recorded: `lab pod add` and later agent starts use the probe's choice
        assert Lab.existing(lab.topo.name, root=lab_root).rps_cpus == lab.rps_cpus
