"""The agent's operating metrics on a live 2-node lab: scraped the way Prometheus would
(from the node's namespace, on the node's address), they move when pods are added and
deleted, when a request is refused, and when the resync repairs an entry removed by
hand. What each metric means: agent/metrics.py; the pure parts:
tests/unit/test_agent_metrics.py.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from minikubenet.cni.runtime import CniCallError
from minikubenet.lab import daemons, probes
from minikubenet.waiting import wait_until
from tests.conftest import running_lab
from tests.faults.conftest import report

ADD_H = 'minikubenet_agent_cni_request_duration_seconds_count{command="ADD"}'
DEL_H = 'minikubenet_agent_cni_request_duration_seconds_count{command="DEL"}'


@pytest.fixture(scope="module")
def lab(lab_root):
    """Name: lab. Scope: module. A 2-node lab, 1 pod per node, no proxy; removed in teardown."""
    with running_lab(lab_root, nodes=2, pods_per_node=1, proxy=False) as lab:
        yield lab


def scrape(lab, node_name: str = "n1") -> dict[str, float]:
    node = lab.topo.node(node_name)
    text = probes.http_get(node.netns, str(node.ip), daemons.AGENT_METRICS_PORT, "/metrics").decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def pod_netns(lab, tag: str) -> str:
    name = f"{lab.topo.name}-{tag}"
    lab._netns(name)  # recorded: lab.down() removes it
    return name


def test_pods_added_and_deleted_move_the_cni_and_ipam_numbers(lab):
    subnet = lab.leases()["n1"]["subnet"]
    before = scrape(lab)
    in_use = f'minikubenet_agent_ipam_addresses_in_use{{subnet="{subnet}"}}'
    assert before[in_use] == 1  # the lab's one pod on n1
    assert before[in_use.replace("in_use", "capacity")] == 253  # a /24 less network, gateway, broadcast

    rt = lab.runtime("n1")
    ns = [pod_netns(lab, f"m{i}") for i in range(3)]
    for i, n in enumerate(ns):
        rt.add(f"metrics-{i}", f"/run/netns/{n}", "eth0")
    rt.delete("metrics-0", f"/run/netns/{ns[0]}", "eth0")
    after = scrape(lab)
    assert after[ADD_H] == before.get(ADD_H, 0) + 3
    assert after[DEL_H] == before.get(DEL_H, 0) + 1
    assert after[in_use] == before[in_use] + 2
    add_sum = after['minikubenet_agent_cni_request_duration_seconds_sum{command="ADD"}'] - before.get(
        'minikubenet_agent_cni_request_duration_seconds_sum{command="ADD"}', 0
    )
    report("agent metrics: mean CNI ADD time seen by the agent", f"{add_sum / 3 * 1000:.1f} ms (3 ADDs)")
    for i in (1, 2):
        rt.delete(f"metrics-{i}", f"/run/netns/{ns[i]}", "eth0")
    assert scrape(lab)[in_use] == before[in_use]


def test_a_refused_request_is_counted_by_its_cni_code(lab):
    key = 'minikubenet_agent_cni_errors_total{code="8",command="ADD"}'
    before = scrape(lab).get(key, 0)
    node_ns = f"/run/netns/{lab.topo.node('n1').netns}"
    with pytest.raises(CniCallError) as e:  # ADD into the node itself: refused
        lab.runtime("n1").add("metrics-bad", node_ns, "eth0")
    assert e.value.code == 8
    assert scrape(lab)[key] == before + 1


def test_overlay_entries_are_counted_and_a_hand_made_break_is_corrected(lab):
    def settled():  # the gauge is set by the periodic resync: on a young lab it may not have run
        m = scrape(lab)
        return m if m.get("minikubenet_agent_overlay_entries") == 3 else None  # neigh + fdb + route for n2

    m = wait_until(settled, 30, 0.5)
    assert m is not None, scrape(lab)
    assert m['minikubenet_agent_overlay_entries_programmed_total{kind="route"}'] >= 1
    assert "minikubenet_agent_lease_renewals_total" in "".join(m)  # exported (renewals: 24 h TTL / 3)
    key = 'minikubenet_agent_overlay_entries_corrected_total{action="restored",kind="route"}'
    before = m.get(key, 0)
    dst = lab.leases()["n2"]["subnet"]
    node = lab.topo.node("n1")
    subprocess.run(["ip", "-n", node.netns, "route", "del", dst], check=True)
    start = time.monotonic()
    while scrape(lab).get(key, 0) <= before:
        assert time.monotonic() - start < 30, "the resync did not restore the route within 30 s"
        time.sleep(0.5)
    report("agent metrics: route deleted by hand -> corrected_total moved", f"{time.monotonic() - start:.1f} s")
