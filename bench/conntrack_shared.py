#!/usr/bin/env python3
"""The seed's conntrack claim, netns half: on one shared kernel (the lab's nodes, like
containers), what of the conntrack table do the nodes share?

"If the conntrack table fills up, your cluster stops accepting new connections", and
the seed blames shared-kernel virtualization. This experiment looks at the table the
way an operator would, through the agent's metrics (agent/metrics.py, scraped from each
node), and beside them at what the host sees, **without filling anything**: a
3-node lab, ``--connections`` TCP connections opened from a pod of every node at once
(masqueraded by its node to etcd, so each holds one entry in its node's table), held,
then closed.

What it shows (kernel 6.x; nf_conntrack_core.c ``__nf_conntrack_alloc``):

- **one limit**: every node's ``minikubenet_conntrack_entries_limit`` is the host's
  ``nf_conntrack_max``, and inside a node the sysctl is read-only (mode 0444): a node
  cannot have a table size of its own;
- **one hash table and one memory pool**: ``nf_conntrack_buckets`` is global, and the
  host's ``nf_conntrack`` slab (``/proc/slabinfo``) grows by what *all* nodes' entries
  add up to; the host's own ``nf_conntrack_count`` does not see them at all;
- **per-node counting**: each node's ``minikubenet_conntrack_entries`` rises by its own
  connections only; the kernel checks each namespace's count against the one limit.
  So on Linux since namespaced conntrack, one noisy node fills *its* count up to the
  host's limit (and the memory every node shares), rather than one common count.

Reading /proc/slabinfo and the sysctls changes nothing; ``nf_conntrack_max`` is never
written. The VM half (each VM its own kernel, a table really filled) is
tests/vm/test_conntrack_full.py.

    sudo .venv/bin/python -m bench.conntrack_shared [--nodes 3] [--connections 300]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minikubenet.lab import daemons, probes  # noqa: E402
from minikubenet.lab.cluster import Lab  # noqa: E402
from minikubenet.lab.topology import build_topology  # noqa: E402
from minikubenet.linux.netns import path_of, socket_in  # noqa: E402

SYSCTL = "/proc/sys/net/netfilter"


def say(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def node_metrics(lab: Lab, node) -> dict[str, float]:
    text = probes.http_get(node.netns, str(node.ip), daemons.AGENT_METRICS_PORT, "/metrics").decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("minikubenet_conntrack_")
    }


def in_netns(netns: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=True
    ).stdout.strip()


def slab_objects() -> int | None:
    """Active objects of the host's nf_conntrack slab cache (every namespace's entries)."""
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                if line.startswith("nf_conntrack "):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def host_count() -> int:
    with open(os.path.join(SYSCTL, "nf_conntrack_count")) as f:
        return int(f.read())


def snapshot(lab: Lab) -> dict:
    return {
        "nodes": {n.name: node_metrics(lab, n) for n in lab.topo.nodes},
        "host_count": host_count(),
        "slab": slab_objects(),
    }


def run(lab: Lab, connections: int) -> dict:
    """Open ``connections`` from the first pod of every node at once, snapshot, close."""
    nodes = lab.topo.nodes
    facts = {
        n.name: {
            "max_mode": in_netns(n.netns, "stat", "-c", "%a", f"{SYSCTL}/nf_conntrack_max"),
            "buckets": int(in_netns(n.netns, "cat", f"{SYSCTL}/nf_conntrack_buckets")),
        }
        for n in nodes
    }
    with open(os.path.join(SYSCTL, "nf_conntrack_max")) as f:
        host_max = int(f.read())
    before = snapshot(lab)
    sockets: list[socket.socket] = []
    try:
        for n in nodes:
            ns = path_of(n.pods[0].netns)
            for _ in range(connections):
                s = socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(s)
                s.settimeout(5)
                s.connect((str(lab.topo.etcd_ip), 2379))
        time.sleep(0.2)
        during = snapshot(lab)
    finally:
        for s in sockets:
            s.close()
    return {"host_max": host_max, "facts": facts, "before": before, "during": during, "connections": connections}


def report(r: dict) -> tuple[str, list[str]]:
    """The table and the findings (each a sentence with its numbers); pure."""
    key_n, key_max = "minikubenet_conntrack_entries", "minikubenet_conntrack_entries_limit"
    lines = [
        f"{'node':<6} {'entries idle':>12} {'with conns':>10} {'rise':>6} {'limit (metric)':>15} "
        f"{'nf_conntrack_max mode':>22} {'buckets':>8}"
    ]
    rises = {}
    for name, m in r["during"]["nodes"].items():
        b = r["before"]["nodes"][name]
        rises[name] = m[key_n] - b[key_n]
        f = r["facts"][name]
        lines.append(
            f"{name:<6} {b[key_n]:12.0f} {m[key_n]:10.0f} {rises[name]:6.0f} {m[key_max]:15.0f} "
            f"{f['max_mode']:>22} {f['buckets']:8d}"
        )
    sb, sd = r["before"]["slab"], r["during"]["slab"]
    hb, hd = r["before"]["host_count"], r["during"]["host_count"]
    lines.append(f"{'host':<6} {hb:12d} {hd:10d} {hd - hb:6d} {r['host_max']:15d} {'(rw)':>22}")
    lines.append(
        f"host nf_conntrack slab objects: {sb} idle, {sd} with connections "
        f"(rise {sd - sb if sb is not None and sd is not None else '?'}; all nodes' rises add up to "
        f"{sum(rises.values()):.0f})"
    )
    findings = []
    limits = {m[key_max] for m in r["during"]["nodes"].values()}
    if limits == {r["host_max"]}:
        findings.append(f"one limit: every node's limit metric is the host's nf_conntrack_max ({r['host_max']})")
    modes = {f["max_mode"] for f in r["facts"].values()}
    if modes == {"444"}:
        findings.append("no node can change it: nf_conntrack_max is read-only (0444) inside every node")
    buckets = {f["buckets"] for f in r["facts"].values()}
    if len(buckets) == 1:
        findings.append(f"one hash table: {buckets.pop()} buckets, the same on every node (global)")
    if all(v >= r["connections"] for v in rises.values()):
        findings.append(
            f"every node's entries rose together, each by its own {r['connections']} connections "
            f"({', '.join(f'{k} +{v:.0f}' for k, v in rises.items())})"
        )
    if sb is not None and sd is not None and sd - sb >= 0.8 * sum(rises.values()):
        findings.append(
            f"one memory pool: the host's nf_conntrack slab rose by {sd - sb}, what all nodes together "
            f"added ({sum(rises.values()):.0f}), while the host's own count moved by {hd - hb}"
        )
    return "\n".join(lines), findings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--connections", type=int, default=300, help="per node (default 300)")
    p.add_argument("--json", help="also write the raw numbers here")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("error: needs root (it builds a lab of network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mkn-ct-") as root:
        lab = Lab(
            build_topology(f"ct{os.getpid() % 100000}", nodes=args.nodes, pods_per_node=1),
            root=root,
            say=lambda *a: None,
        )
        lab.proxy_mode = None
        try:
            say(f"building a {args.nodes}-node lab ...")
            lab.up()
            say(f"opening {args.connections} connections from a pod of every node ...")
            r = run(lab, args.connections)
        finally:
            lab.down()
    text, findings = report(r)
    print(text)
    print()
    for finding in findings:
        print(f"- {finding}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(r, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
