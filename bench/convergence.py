"""How fast the overlay converges on a 10-node lab.

    .venv/bin/python bench/convergence.py [--nodes 10] [--repeat 5] [--backends vxlan,bgp]

1. **Join**: a new node is added to a running lab. The clock starts when its agent
   process is started and stops when a pod on it is reached (HTTP) from a pod on every
   other node. It includes the agent's start (Python, etcd, the VXLAN device, the
   lease), the pod's CNI ADD and the other nodes' watch reaction.
2. **Leave**: the new node's lease is deleted from etcd (its agent still running). The
   clock stops when its route, neighbour and FDB entry (bgp: its BIRD route) are gone on
   every other node.

One lab per backend, up at the same time; the rounds alternate between them. Figures
are saved in bench/results/convergence.json.

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

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


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


def one_round(lab: Lab, departed: set[str]) -> dict[str, float]:
    """A new node joins (agent start -> reached from a pod on every other node), then its
    lease is deleted while its agent still runs (-> its entries gone on every other
    node); its agent is stopped after."""
    sources = [n.pods[0] for n in lab.topo.nodes if n.name not in departed]
    node = lab.add_node(start_agent=False)
    t0 = time.monotonic()
    lab.start_agent(node.name)
    ready = time.monotonic() - t0
    ip = lab.start_pod(node.pods[0])
    join = reached_by_all(lab, ip, sources, t0 + 30) - t0

    lease = lab.leases()[node.name]
    key = "/coreos.com/network/subnets/" + lease["subnet"].replace("/", "-")
    others = [n for n in lab.topo.nodes if n.name not in departed and n.name != node.name]
    # The lease goes while the agent still runs: with bgp, stopping the agent first would
    # close its BGP sessions and withdraw the route by itself (that case is
    # tests/lab/test_bgp.py's); here only the etcd watch of the others acts.
    t0 = time.monotonic()
    lab.etcdctl("del", key)
    pending = {n.netns for n in others}
    while pending and time.monotonic() < t0 + 30:
        pending = {ns for ns in pending if not entries_gone(lab, ns, lease["subnet"], lease["PublicIP"])}
        time.sleep(0.005)
    if pending:
        raise RuntimeError(f"entries of {lease['subnet']} still on {sorted(pending)}")
    leave = time.monotonic() - t0
    lab.stop_agent(node.name)
    departed.add(node.name)
    # The departed node stays in the topology (stopped, without lease); the next round
    # adds another one, so every round is a genuinely new node.
    return {"join": join, "leave": leave, "agent_ready": ready}


def measure(nodes: int, repeat: int, root: str, backends: list[str]) -> dict:
    """One lab per backend, all up at once; the rounds alternate between them (the
    order flips every round), so a slow moment of the machine hits both."""
    labs = {}
    results: dict[str, dict[str, list[float]]] = {b: {"join": [], "leave": [], "agent_ready": []} for b in backends}
    try:
        for i, backend in enumerate(backends):
            lab = Lab(
                build_topology(f"bc{os.getpid() % 10000}{i}", nodes=nodes - 1, pods_per_node=1, backend=backend),
                root=root,
                say=lambda *a: None,
            )
            lab.proxy_mode = None  # no Service proxies: they would only add noise here
            labs[backend] = lab
            lab.up()
        departed: dict[str, set[str]] = {b: set() for b in backends}
        for r in range(repeat):
            for backend in backends if r % 2 == 0 else list(reversed(backends)):
                for k, v in one_round(labs[backend], departed[backend]).items():
                    results[backend][k].append(v)
    finally:
        for lab in labs.values():
            lab.down()
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=10, help="lab size including the joining node")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--backends", default="vxlan,bgp", help="comma-separated: vxlan, host-gw, bgp")
    p.add_argument("--json", default=os.path.join(RESULTS, "convergence.json"), help="where to save the figures")
    args = p.parse_args()
    backends = args.backends.split(",")
    with tempfile.TemporaryDirectory(prefix="mkn-bench-") as root:
        r = measure(args.nodes, args.repeat, root, backends)
    machine = f"{os.cpu_count()} cores, kernel {platform.release()}, Python {platform.python_version()}"
    print(f"machine: {machine}")
    print(
        f"convergence on a {args.nodes}-node lab, {args.repeat} alternating rounds: median [min - max], target <= 1.00 s"
    )
    print(f"  {'':<52} " + "  ".join(f"{b:>22}" for b in backends))
    for key, label in (
        ("join", "new node: agent start -> reached from every node"),
        ("agent_ready", "  of which: agent start -> ready"),
        ("leave", "lease deleted -> entries gone on every node"),
    ):
        cells = [f"{statistics.median(r[b][key]):6.3f} [{min(r[b][key]):.3f}-{max(r[b][key]):.3f}]" for b in backends]
        print(f"  {label:<52} " + "  ".join(f"{c:>22}" for c in cells))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": machine, "nodes": args.nodes, "rounds": args.repeat, "seconds": r}, f, indent=1)
    print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
