"""Conntrack visible: the agent exports the table's size, its limit and the kernel's drop
counters on its metrics endpoint (the lab binds it on the node's address), read from
the node's own network namespace, and the numbers move with the traffic.

What this lab cannot show: a table above 90 % or full. ``nf_conntrack_max`` is global
and read-only inside a network namespace (writing it would change the host); the
warning and the STATUS answer at 90 % and 100 % are unit-tested
(tests/unit/test_conntrack_table.py).
"""

from __future__ import annotations

import socket

import pytest

from minikubenet.lab import daemons, probes
from minikubenet.linux.netns import path_of, socket_in
from tests.conftest import running_lab
from tests.faults.conftest import report

CONNECTIONS = 40


@pytest.fixture(scope="module")
def lab(lab_root):
    """Name: lab. Scope: module. A 1-node lab with 1 pod, no proxy; removed in teardown."""
    with running_lab(lab_root, nodes=1, pods_per_node=1, proxy=False) as lab:
        yield lab


def scrape(lab) -> dict[str, float]:
    """The agent's /metrics, scraped from inside the node's namespace on the node's address."""
    node = lab.topo.node("n1")
    text = probes.http_get(node.netns, str(node.ip), daemons.AGENT_METRICS_PORT, "/metrics").decode()
    return {
        line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def read_proc(netns: str, path: str) -> int:
    import subprocess

    return int(
        subprocess.run(["ip", "netns", "exec", netns, "cat", path], capture_output=True, text=True, check=True).stdout
    )


def test_conntrack_metrics_are_exported_and_move_with_connections(lab):
    node = lab.topo.node("n1")
    m = scrape(lab)
    for name in (
        "minikubenet_conntrack_entries",
        "minikubenet_conntrack_entries_limit",
        "minikubenet_conntrack_drop_total",
        "minikubenet_conntrack_early_drop_total",
        "minikubenet_conntrack_insert_failed_total",
    ):
        assert name in m, name
    assert m["minikubenet_conntrack_entries_limit"] == read_proc(node.netns, "/proc/sys/net/netfilter/nf_conntrack_max")
    before = m["minikubenet_conntrack_entries"]

    # 40 connections from the pod, masqueraded by the node to etcd: 40 entries in n1's table
    pod = lab.topo.pods()[0]
    sockets = []
    try:
        for _ in range(CONNECTIONS):
            s = socket_in(path_of(pod.netns), socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(3)
            s.connect((str(lab.topo.etcd_ip), 2379))
            sockets.append(s)
        during = scrape(lab)["minikubenet_conntrack_entries"]
        kernel = read_proc(node.netns, "/proc/sys/net/netfilter/nf_conntrack_count")
    finally:
        for s in sockets:
            s.close()
    report(
        "conntrack entries on the node (agent metric)",
        f"{before:.0f} idle, {during:.0f} with {CONNECTIONS} pod connections open "
        f"(kernel: {kernel}; limit {m['minikubenet_conntrack_entries_limit']:.0f})",
    )
    assert during >= before + CONNECTIONS
    assert abs(during - kernel) <= 5  # the same table, read a moment apart
    assert scrape(lab)["minikubenet_conntrack_drop_total"] == 0


def test_status_succeeds_and_the_log_is_quiet_with_a_nearly_empty_table(lab):
    from minikubenet.cni import shim

    node = lab.topo.node("n1")
    answer = shim.ask_agent(
        f"{lab.run_dir(node.name)}/agent.sock",
        {
            "command": "STATUS",
            "mode": "main",
            "env": {"CNI_COMMAND": "STATUS"},
            "config": {"cniVersion": "1.1.0", "name": "mkn", "type": "minikubenet"},
            "netnsFd": False,
        },
    )
    assert "error" not in answer and not answer.get("warnings")
    assert "conntrack table" not in open(f"{lab.dir}/logs/agent-n1.log").read()
