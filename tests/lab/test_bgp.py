"""The bgp backend on one L2 segment: BIRD on every node, a full iBGP mesh, plain routes.

One 3-node lab for the module, run in order; the last test stops a node's agent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from minikubenet.lab import probes
from minikubenet.waiting import wait_until
from tests.conftest import running_lab
from tests.faults.conftest import report


@pytest.fixture(scope="module")
def lab(lab_root):
    with running_lab(lab_root, nodes=3, pods_per_node=1, proxy=False, backend="bgp") as lab:
        yield lab


def bird_routes(lab, node: str) -> dict[str, str]:
    out = subprocess.run(
        ["ip", "-n", lab.topo.node(node).netns, "-j", "route", "show", "proto", "bird"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {r["dst"]: r.get("gateway", "") for r in json.loads(out or "[]")}


def bird_pid(lab, node: str) -> int | None:
    agent = lab.agent_record(node).pid
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm == "bird" and int(fields[1]) == agent:
            return int(pid)
    return None


def subnets(lab) -> dict[str, str]:
    return {node: lease["subnet"] for node, lease in lab.leases().items()}


def test_every_node_learns_every_other_subnet_as_a_plain_route(lab):
    nets = subnets(lab)
    for n in lab.topo.nodes:
        routes = bird_routes(lab, n.name)
        want = {nets[o.name]: str(o.ip) for o in lab.topo.nodes if o.name != n.name}
        assert routes == want, (n.name, routes)
    # no encapsulation: the pod MTU is the underlay's, and full-size DF packets cross
    pods = {p.name: p for p in lab.topo.pods()}
    ips = {name: info["ip"] for name, info in lab.pods().items()}
    assert probes.ping(pods["n1-p1"].netns, ips["n3-p1"], size=1500 - 28, dont_fragment=True)
    assert not probes.ping(pods["n1-p1"].netns, ips["n3-p1"], size=1500 - 27, dont_fragment=True)
    assert (
        not subprocess.run(
            ["ip", "-n", lab.topo.node("n1").netns, "link", "show", "flannel.1"], capture_output=True
        ).returncode
        == 0
    )


def test_bird_killed_is_restarted_and_the_routes_stay_meanwhile(lab):
    before = bird_routes(lab, "n1")
    pid = bird_pid(lab, "n1")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert bird_routes(lab, "n1") == before  # kernel protocol "persist"
    pods = {p.name: p for p in lab.topo.pods()}
    ips = {name: info["ip"] for name, info in lab.pods().items()}
    assert probes.ping(pods["n1-p1"].netns, ips["n2-p1"])  # still routed while BIRD is down
    assert wait_until(lambda: (bird_pid(lab, "n1") or pid) != pid, 10), "the agent did not restart BIRD"
    assert wait_until(lambda: bird_routes(lab, "n1") == before, 15)


def test_a_node_that_stops_is_withdrawn_everywhere(lab):
    gone = subnets(lab)["n3"]
    started = time.monotonic()
    lab.stop_agent("n3")  # the agent stops BIRD, which closes its sessions
    assert wait_until(lambda: all(gone not in bird_routes(lab, n) for n in ("n1", "n2")), 10, interval=0.05)
    report("bgp: a node's agent stopped -> its route gone on every node", f"{time.monotonic() - started:.2f}s")
