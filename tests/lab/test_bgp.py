"""The bgp backend on one L2 segment: BIRD on every node, a full iBGP mesh, plain routes.

One 3-node lab for the module, run in order: a silent peer flagged, a lease deleted and
one expired (each put back after), and last n3's agent stopped.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time

import pytest

from minikubenet.cni import shim
from minikubenet.lab import daemons, probes
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


def status_answer(lab, node: str) -> dict:
    """The agent's answer to a CNI STATUS (what the runtime's shim would print)."""
    return shim.ask_agent(
        f"{lab.run_dir(node)}/agent.sock",
        {
            "command": "STATUS",
            "mode": "main",
            "env": {"CNI_COMMAND": "STATUS"},
            "config": {"cniVersion": "1.1.0", "name": "mkn", "type": "minikubenet"},
            "netnsFd": False,
        },
    )


def bgp_peer_metric(lab, node: str, state: str) -> float:
    n = lab.topo.node(node)
    text = probes.http_get(n.netns, str(n.ip), daemons.AGENT_METRICS_PORT, "/metrics").decode()
    want = f'minikubenet_agent_bgp_peers{{state="{state}"}} '
    return float(next(line for line in text.splitlines() if line.startswith(want)).rsplit(" ", 1)[1])


def lease_key(subnet: str) -> str:
    return "/coreos.com/network/subnets/" + subnet.replace("/", "-")


def test_a_peer_that_cannot_be_reached_is_flagged_in_status_metrics_and_lab_status(lab):
    # a lease whose PublicIP is on the underlay but answers nobody (.200 is the client
    # network's BIRD, lab/bgp_client.py)
    silent = str(ipaddress.IPv4Network(str(lab.topo.underlay)).network_address + 199)
    taken = {lease["subnet"] for lease in lab.leases().values()}
    config = json.loads(dict(lab.etcd_dump("/coreos.com/network/config"))["/coreos.com/network/config"])
    subnet = next(
        str(s)
        for s in ipaddress.IPv4Network(config["Network"]).subnets(new_prefix=config.get("SubnetLen", 24))
        if str(s) not in taken
    )
    key = lease_key(subnet)
    lab.etcdctl("put", key, json.dumps({"PublicIP": silent, "BackendType": "bgp", "BackendData": {"AS": 64512}}))
    try:
        name = "node_" + silent.replace(".", "_")

        def flagged() -> bool:
            return any(name in w for w in status_answer(lab, "n1").get("warnings", []))

        assert wait_until(flagged, 20, interval=0.5), status_answer(lab, "n1")
        answer = status_answer(lab, "n1")
        assert "error" not in answer  # the node itself works: a warning, not a failure
        assert bgp_peer_metric(lab, "n1", "not_established") == 1
        assert bgp_peer_metric(lab, "n1", "established") == 3  # n2, n3 and the client network
        report_lines = lab.overlay_report().splitlines()
        assert any(name in line and "NOT ESTABLISHED" in line for line in report_lines), report_lines
        assert not any("NOT ESTABLISHED" in line for line in report_lines if name not in line)
    finally:
        lab.etcdctl("del", key)
    # the lease gone, the peer is gone from BIRD's config and from STATUS
    assert wait_until(lambda: not status_answer(lab, "n1").get("warnings"), 10, interval=0.2)
    assert "NOT ESTABLISHED" not in lab.overlay_report()


def test_a_lease_deleted_is_withdrawn_everywhere(lab):
    """n3's agent and BIRD keep running and announcing; the others drop it as a peer."""
    gone = subnets(lab)["n3"]
    key = lease_key(gone)
    value = dict(lab.etcd_dump(key))[key]
    assert all(gone in bird_routes(lab, n) for n in ("n1", "n2"))
    started = time.monotonic()
    lab.etcdctl("del", key)
    assert wait_until(lambda: all(gone not in bird_routes(lab, n) for n in ("n1", "n2")), 10, interval=0.05)
    report("bgp: a lease deleted -> its route gone on every node", f"{time.monotonic() - started:.2f}s")
    lab.etcdctl("put", key, value)
    lab.wait_bgp_converged(timeout=20)


def test_a_lease_that_expires_is_withdrawn_everywhere(lab):
    """n2's agent and BIRD keep running; only its lease's TTL runs out (its key is moved
    onto a 1 s etcd lease, as if the renewals had stopped)."""
    gone = subnets(lab)["n2"]
    key = lease_key(gone)
    value = dict(lab.etcd_dump(key))[key]
    granted = lab.etcdctl("lease", "grant", "1")  # "lease 694d... granted with TTL(1s)"
    lease_id = granted.split()[1]
    lab.etcdctl("put", key, value, f"--lease={lease_id}")
    started = time.monotonic()
    assert wait_until(lambda: all(gone not in bird_routes(lab, n) for n in ("n1", "n3")), 15, interval=0.05)
    report(
        "bgp: a lease expired (TTL 1 s) -> its route gone on every node",
        f"{time.monotonic() - started:.2f}s after the put",
    )
    lab.etcdctl("put", key, value)  # back, for the next test: the mesh takes n2 in again
    lab.wait_bgp_converged(timeout=20)


def test_a_node_whose_agent_stops_keeps_its_routes_for_the_restart_window_then_is_withdrawn(lab):
    """The agent stops BIRD with BGP graceful restart: the peers keep the node's subnet
    as stale (a restart inside the window loses nothing: bench/agent_restart.py), and
    withdraw it when the window runs out without the node coming back. (A node that
    leaves for good deletes its lease: withdrawn at once, the tests above.)"""
    from minikubenet.overlay.bird_config import GRACEFUL_RESTART_S

    gone = subnets(lab)["n3"]
    started = time.monotonic()
    lab.stop_agent("n3")  # birdc graceful restart
    time.sleep(2)
    assert all(gone in bird_routes(lab, n) for n in ("n1", "n2"))  # stale, still routed
    assert wait_until(
        lambda: all(gone not in bird_routes(lab, n) for n in ("n1", "n2")), GRACEFUL_RESTART_S + 10, interval=0.1
    )
    report(
        f"bgp: a node's agent stopped -> its route gone on every node (graceful-restart window {GRACEFUL_RESTART_S}s)",
        f"{time.monotonic() - started:.2f}s",
    )
