"""The lab itself: a full network is a clear error, a failed or crashed ``up`` is
cleaned up by ``down``, and ``down`` removes only what the lab made."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from minikubenet.lab.cluster import LabError
from minikubenet.linux import named_netns
from minikubenet.waiting import wait_until
from tests.conftest import make_lab, unique_lab_name


def test_full_network_names_the_network_and_the_count(lab_root):
    # a /23 holds two /24s, and flannel never leases the first: room for one node only
    lab = make_lab(lab_root, nodes=2, pods_per_node=0, pod_network="10.244.0.0/23")
    try:
        with pytest.raises(LabError) as e:
            lab.up()
        assert "10.244.0.0/23 is full" in str(e.value)
        assert "all 1 /24 subnets are taken" in str(e.value)
    finally:
        lab.down()
    assert named_netns.list_names(f"{lab.topo.name}-") == []


def test_down_after_a_crashed_up_removes_everything(lab_root, tmp_path):
    name = unique_lab_name("k")
    p = subprocess.Popen(
        [sys.executable, "-m", "minikubenet", "lab", "up", "--name", name, "--nodes", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: len(named_netns.list_names(f"{name}-")) >= 3, 30)
        os.kill(p.pid, signal.SIGKILL)  # a crash in the middle of `up`
        p.wait()
        assert named_netns.list_names(f"{name}-"), "the crash happened before anything was built"
    finally:
        out = subprocess.run(
            [sys.executable, "-m", "minikubenet", "lab", "down", "--name", name], capture_output=True, text=True
        )
    assert out.returncode == 0, out.stderr
    assert named_netns.list_names(f"{name}-") == []
    assert named_netns.pids_in([f"{name}-etcd", f"{name}-n1"]) == []
    assert not os.path.exists(f"/run/minikubenet-lab/{name}")


def test_down_leaves_other_namespaces_alone(lab_root):
    bystander = unique_lab_name("b") + "-bystander"
    named_netns.add(bystander)
    lab = make_lab(lab_root, nodes=1, pods_per_node=1)
    try:
        lab.up()
    finally:
        lab.down()
        assert named_netns.exists(bystander)
        named_netns.delete(bystander)


def test_a_second_up_refuses_and_leaves_the_running_lab_alone(lab_root):
    lab = make_lab(lab_root, nodes=1, pods_per_node=1)
    try:
        lab.up()
        before = named_netns.list_names(f"{lab.topo.name}-")
        out = subprocess.run(
            [sys.executable, "-m", "minikubenet", "lab", "up", "--name", lab.topo.name], capture_output=True, text=True
        )
        assert out.returncode == 1 and "already exists" in out.stderr
        assert "Traceback" not in out.stderr
        assert named_netns.list_names(f"{lab.topo.name}-") == before
    finally:
        lab.down()
