"""How fast the overlay converges on a 10-node lab.

    .venv/bin/python bench/convergence.py [--nodes 10] [--repeat 3]

1. **Join**: a new node is added to a running lab. The clock starts when its agent
   process is started and stops when a pod on it is reached (HTTP) from a pod on every
   other node. It includes the agent's start (Python, etcd, the VXLAN device, the
   lease), the pod's CNI ADD and the other nodes' watch reaction.
2. **Leave**: the new node's lease is deleted from etcd. The clock stops when its
   route, neighbour and FDB entry are gone on every other node.

Target (issue "Cross-node pod network"): <= 1 s each on a 10-node lab.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minikubenet.lab import probes  # noqa: E402
from minikubenet.lab.cluster import Lab  # noqa: E402
from minikubenet.lab.topology import POD_PORT, build_topology  # noqa: E402


def reached_by_all(lab: Lab, target_ip: str, sources: list, deadline: float) -> float:
    """Poll from every source pod until each has reached target_ip; returns the time
    the last one first succeeded."""
    done: dict[str, float] = {}

    def poll(src):
        while time.monotonic() < deadline:
            try:
                probes.whoami(src.netns, target_ip, POD_PORT, timeout=0.2)
                done[src.name] = time.monotonic()
                return
            except (probes.ProbeFailed, OSError, ValueError):
                time.sleep(0.005)

    threads = [threading.Thread(target=poll, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(done) != len(sources):
        missing = sorted(s.name for s in sources if s.name not in done)
        raise RuntimeError(f"{missing} never reached {target_ip}")
    return max(done.values())


def entries_gone(lab: Lab, node_netns: str, subnet: str, public_ip: str) -> bool:
    routes = subprocess.run(["ip", "-n", node_netns, "route", "show", subnet], capture_output=True, text=True).stdout
    fdb = subprocess.run(
        ["bridge", "-n", node_netns, "fdb", "show", "dev", "flannel.1"], capture_output=True, text=True
    ).stdout
    neigh = subprocess.run(
        ["ip", "-n", node_netns, "neigh", "show", subnet.split("/")[0], "dev", "flannel.1"],
        capture_output=True,
        text=True,
    ).stdout
    return not routes.strip() and f"dst {public_ip} " not in fdb and not neigh.strip()


def measure(nodes: int, repeat: int, root: str) -> dict:
    lab = Lab(
        build_topology(f"bc{os.getpid() % 100000}", nodes=nodes - 1, pods_per_node=1), root=root, say=lambda *a: None
    )
    lab.proxy_mode = None  # no Service proxies: they would only add noise here
    joins, leaves, agent_ready = [], [], []
    try:
        lab.up()
        departed: set[str] = set()
        for _ in range(repeat):
            sources = [n.pods[0] for n in lab.topo.nodes if n.name not in departed]
            node = lab.add_node(start_agent=False)
            t0 = time.monotonic()
            lab.start_agent(node.name)
            agent_ready.append(time.monotonic() - t0)
            ip = lab.start_pod(node.pods[0])
            joins.append(reached_by_all(lab, ip, sources, t0 + 30) - t0)

            lease = lab.leases()[node.name]
            lab.stop_agent(node.name)
            key = "/coreos.com/network/subnets/" + lease["subnet"].replace("/", "-")
            t0 = time.monotonic()
            lab.etcdctl("del", key)
            departed.add(node.name)
            others = [n for n in lab.topo.nodes if n.name not in departed]
            pending = {n.netns for n in others}
            while pending and time.monotonic() < t0 + 30:
                pending = {ns for ns in pending if not entries_gone(lab, ns, lease["subnet"], lease["PublicIP"])}
                time.sleep(0.005)
            if pending:
                raise RuntimeError(f"entries of {lease['subnet']} still on {sorted(pending)}")
            leaves.append(time.monotonic() - t0)
            # The departed node stays in the topology (stopped, without lease); the next
            # round adds another one, so every round is a genuinely new node.
    finally:
        lab.down()
    return {"join": joins, "leave": leaves, "agent_ready": agent_ready}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=10, help="lab size including the joining node")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="mkn-bench-") as root:
        r = measure(args.nodes, args.repeat, root)
    print(f"machine: {os.cpu_count()} cores, kernel {platform.release()}, Python {platform.python_version()}")
    print(f"convergence on a {args.nodes}-node lab, {args.repeat} rounds (median, max), target <= 1.00 s")
    for key, label in (
        ("join", "new node: agent start -> reached from every node"),
        ("agent_ready", "  of which: agent start -> ready"),
        ("leave", "lease deleted -> entries gone on every node"),
    ):
        v = r[key]
        print(f"  {label:<52} {statistics.median(v):6.3f} s  {max(v):6.3f} s")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
