"""What the bgp backend costs per node as the cluster grows: BIRD's memory and the agent's CPU.

    .venv/bin/python bench/bgp_scale.py [--nodes 20] [--window 10] [--modes mesh]

One lab of ``--nodes`` nodes (no pods: only the control plane is measured). Once BGP has
converged, for every node:

- BIRD's resident memory (VmRSS of the ``bird`` process, /proc/<pid>/status) and BIRD's
  own account of it (``birdc show memory``, "Total");
- the agent's CPU over ``--window`` seconds of steady state: utime+stime from
  /proc/<pid>/stat, before and after, in % of one core; BIRD's the same way.

In a full mesh every node has nodes-1 sessions and learns nodes-1 routes, so BIRD's
memory grows with the cluster on every node. ``--modes mesh,rr,tor`` adds the route-reflector
layouts: ``rr``, Calico's in-cluster reflector (``--bgp-mode rr`` on one segment: n1
reflects, every other node peers with it only; n1 is reported apart), and ``tor``, the
same nodes on 2 racks with ``--bgp-mode tor`` (lab/router.py), every node peering with
the router only; the reflector's BIRD is measured too.
Prints median and [min - max] over the nodes; saves bench/results/bgp_scale.json.
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
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minikubenet.lab.cluster import Lab  # noqa: E402
from minikubenet.lab.topology import build_topology  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (proc(5): fields 14 and 15)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def bird_child(agent_pid: int) -> int:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if comm == "bird" and ppid == agent_pid:
            return int(pid)
    raise RuntimeError(f"no bird process under agent {agent_pid}")


def bird_memory_total(lab: Lab, node: str) -> str:
    """The "Total" line of ``birdc show memory`` (effective and overhead, BIRD's units)."""
    sock = os.path.join(lab.run_dir(node), "bird", "bird.ctl")
    out = subprocess.run(
        ["ip", "netns", "exec", lab.topo.node(node).netns, "birdc", "-s", sock, "show", "memory"],
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        if line.strip().startswith("Total:"):
            return " ".join(line.split()[1:])
    return "?"


def router_bird(lab: Lab) -> int | None:
    """The router's BIRD (a process the lab recorded as "router BIRD")."""
    with open(lab.state_file) as f:
        state = json.load(f)
    return next((r["pid"] for r in state.get("processes", []) if r.get("what") == "router BIRD"), None)


def measure(nodes: int, window: float, root: str, mode: str) -> dict:
    lab = Lab(
        build_topology(
            f"bs{os.getpid() % 10000}", nodes=nodes, pods_per_node=0, backend="bgp", racks=2 if mode == "tor" else 1
        ),
        root=root,
        say=lambda *a: None,
    )
    lab.proxy_mode = None
    lab.bgp_mode = mode
    reflector: dict = {}
    try:
        lab.up()  # waits for every node to have every other node's route
        records = {n.name: lab.agent_record(n.name) for n in lab.topo.nodes}
        agents = {n: rec.pid for n, rec in records.items() if rec is not None}
        birds = {n: bird_child(pid) for n, pid in agents.items()}
        before = {n: (cpu_ticks(agents[n]), cpu_ticks(birds[n])) for n in agents}
        t0 = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - t0
        after = {n: (cpu_ticks(agents[n]), cpu_ticks(birds[n])) for n in agents}
        per_node = {
            n: {
                "bird_rss_kib": rss_kib(birds[n]),
                "bird_memory_total": bird_memory_total(lab, n),
                "agent_cpu_pct": 100.0 * (after[n][0] - before[n][0]) / TICK / elapsed,
                "bird_cpu_pct": 100.0 * (after[n][1] - before[n][1]) / TICK / elapsed,
                "agent_rss_kib": rss_kib(agents[n]),
            }
            for n in agents
        }
        if mode == "rr":  # the reflector is a node: reported apart from its clients
            reflector = per_node.pop(lab.route_reflectors()[0].name)
        rr = router_bird(lab) if mode == "tor" else None
        if rr is not None:
            reflector = {"bird_rss_kib": rss_kib(rr)}
    finally:
        lab.down()
    return {"mode": mode, "nodes": nodes, "window_s": window, "per_node": per_node, "route_reflector": reflector}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--window", type=float, default=10.0, help="seconds of steady state for the CPU figures")
    p.add_argument(
        "--modes", default="mesh,rr", help="mesh, rr (one node reflects), tor (the router reflects: 2 racks)"
    )
    p.add_argument("--json", default=os.path.join(RESULTS, "bgp_scale.json"))
    args = p.parse_args()
    runs = []
    for mode in args.modes.split(","):
        if mode not in ("mesh", "rr", "tor"):
            raise SystemExit(f"--modes {mode}: mesh, rr or tor")
        with tempfile.TemporaryDirectory(prefix="mkn-bench-") as root:
            runs.append(measure(args.nodes, args.window, root, mode))
    machine = f"{os.cpu_count()} cores, kernel {platform.release()}, Python {platform.python_version()}"
    print(f"machine: {machine}")
    for run in runs:
        print(
            f"bgp {run['mode']}, {run['nodes']} nodes, CPU over {run['window_s']:.0f} s idle: median [min - max] per node"
        )
        for key, label in (
            ("bird_rss_kib", "BIRD RSS (KiB)"),
            ("agent_rss_kib", "agent RSS (KiB)"),
            ("agent_cpu_pct", "agent CPU (% of a core)"),
            ("bird_cpu_pct", "BIRD CPU (% of a core)"),
        ):
            v = [x[key] for x in run["per_node"].values()]
            print(f"  {label:<26} {statistics.median(v):9.1f} [{min(v):.1f} - {max(v):.1f}]")
        rr = run["route_reflector"]
        if rr:
            print(f"  the route reflector's BIRD RSS (KiB) {rr['bird_rss_kib']:9.1f}")
        if "agent_cpu_pct" in rr:
            print(
                f"  the route reflector's agent CPU (% of a core) {rr['agent_cpu_pct']:.1f}, BIRD CPU {rr['bird_cpu_pct']:.1f}"
            )
            print(f"  the route reflector's birdc show memory, Total: {rr['bird_memory_total']}")
        totals = sorted({x["bird_memory_total"] for x in run["per_node"].values()})
        print(f"  birdc show memory, Total: {', '.join(totals[:3])}{' ...' if len(totals) > 3 else ''}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": machine, "runs": runs}, f, indent=1)
    print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
