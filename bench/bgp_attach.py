#!/usr/bin/env python3
"""How much of bgp's pod -> pod gap to the underlay is the cni0 bridge? An experiment for
issue 11's "bgp >= 0.97 x underlay throughput", not a feature.

One 2-node bgp lab (no Service proxy). Besides the lab's own pods (a veth on the node's
cni0 bridge, as our CNI plugin attaches them) each node gets one "routed" pod attached
as Calico attaches pods: a veth whose node end is on no bridge and has no address, a
/32 route to the pod's address through it on the node, and in the pod a default route
via the link-local gateway 169.254.1.1, a permanent neighbour entry for it (Calico
answers with proxy ARP) and the address as a /32. Its address is taken from the top of
the node's own subnet, so BGP already carries it: the /24 that BIRD announces reaches
the node, the /32 there picks the veth.

Three paths, measured in every round, the order alternating (u b r / r b u): underlay
(node -> node), bridged (pod -> pod, the lab's pods), routed (pod -> pod, the routed
pods). Per path: TCP throughput (iperf3, one stream) and system+softirq CPU per gigabit
(lab/iperf.py). Ratios to the underlay per round; median (min-max). The lab and every
namespace it made are removed in ``finally`` (also on SIGTERM).

    sudo .venv/bin/python -m bench.bgp_attach --rounds 5 --seconds 3
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile

from bench import record
from minikubenet.lab import iperf
from minikubenet.lab.cluster import Lab
from minikubenet.lab.topology import build_topology

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
GATEWAY = "169.254.1.1"  # Calico's fixed link-local next hop in every pod


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def routed_pod(lab: Lab, node, subnet: ipaddress.IPv4Network) -> tuple[str, str]:
    """A pod attached without a bridge (see the module's doc); returns (netns, address)."""
    netns = f"{node.netns}-r1"
    ip = str(subnet.broadcast_address - 5)
    lab._netns(netns)  # recorded first: lab.down removes it whatever happens next
    host = "rpod0"  # inside the node's namespace, which is ours
    sh("ip", "-n", node.netns, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", netns)
    sh("ip", "-n", node.netns, "link", "set", host, "up")
    sh("ip", "netns", "exec", node.netns, "sysctl", "-qw", f"net.ipv4.conf.{host}.proxy_arp=1")
    sh("ip", "-n", node.netns, "route", "add", f"{ip}/32", "dev", host, "scope", "link")
    mac = json.loads(sh("ip", "-n", node.netns, "-j", "link", "show", host))[0]["address"]
    sh("ip", "-n", netns, "link", "set", "lo", "up")
    sh("ip", "-n", netns, "addr", "add", f"{ip}/32", "dev", "eth0")
    sh("ip", "-n", netns, "link", "set", "eth0", "up")
    sh("ip", "-n", netns, "neigh", "add", GATEWAY, "lladdr", mac, "dev", "eth0", "nud", "permanent")
    sh("ip", "-n", netns, "route", "add", GATEWAY, "dev", "eth0", "scope", "link")
    sh("ip", "-n", netns, "route", "add", "default", "via", GATEWAY, "dev", "eth0")
    return netns, ip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.bgp_attach", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.bgp_attach needs root (network namespaces)", file=sys.stderr)
        return 1

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    root = tempfile.mkdtemp(prefix="mkn-bench-attach-")
    lab = Lab(
        build_topology(f"ba{os.getpid() % 100000}", nodes=2, pods_per_node=1, backend="bgp"),
        root=root,
        say=lambda *a: None,
    )
    lab.proxy_mode = None
    got: dict[str, list[dict]] = {"underlay": [], "bridged": [], "routed": []}
    try:
        lab.up()
        n1, n2 = lab.topo.nodes
        leases = lab.leases()
        r1 = routed_pod(lab, n1, ipaddress.IPv4Network(leases[n1.name]["subnet"]))
        r2 = routed_pod(lab, n2, ipaddress.IPv4Network(leases[n2.name]["subnet"]))
        ips = lab.pods()
        paths = {
            "underlay": (n1.netns, n2.netns, str(n2.ip)),
            "bridged": (n1.pods[0].netns, n2.pods[0].netns, ips[n2.pods[0].name]["ip"]),
            "routed": (r1[0], r2[0], r2[1]),
        }
        subprocess.run(["ip", "netns", "exec", r1[0], "ping", "-c", "1", "-W", "2", r2[1]], check=True)
        log = os.path.join(lab.dir, "logs", "iperf3.log")
        for r in range(args.rounds):
            for name in list(paths) if r % 2 == 0 else list(reversed(paths)):
                client, server, ip = paths[name]
                got[name].append(iperf.stream(lab._start, server, ip, client, args.seconds, log))
            print(
                f"round {r + 1}: "
                + ", ".join(f"{n} {got[n][-1]['gbps']:.1f} Gbit/s" for n in paths)
                + f"; bridged/underlay {got['bridged'][-1]['gbps'] / got['underlay'][-1]['gbps']:.2f}, "
                f"routed/underlay {got['routed'][-1]['gbps'] / got['underlay'][-1]['gbps']:.2f}",
                flush=True,
            )
    finally:
        lab.down()
    summary = {}
    for name in ("bridged", "routed"):
        ratios = [a["gbps"] / u["gbps"] for a, u in zip(got[name], got["underlay"])]
        cpu = [a["cpu_s_per_gbit"] / u["cpu_s_per_gbit"] for a, u in zip(got[name], got["underlay"])]
        summary[name] = {
            "throughput_ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
            "cpu_per_gbit_ratio": {"median": statistics.median(cpu), "min": min(cpu), "max": max(cpu)},
            "gbps_median": statistics.median(x["gbps"] for x in got[name]),
        }
    print(f"\nunderlay {statistics.median(x['gbps'] for x in got['underlay']):.1f} Gbit/s (median of {args.rounds})")
    for name, s in summary.items():
        t, c = s["throughput_ratio"], s["cpu_per_gbit_ratio"]
        print(
            f"{name:8s} {s['gbps_median']:.1f} Gbit/s: {t['median']:.2f}x underlay ({t['min']:.2f}-{t['max']:.2f}), "
            f"kernel CPU per Gbit {c['median']:.2f}x ({c['min']:.2f}-{c['max']:.2f})"
        )
    print(f"saved {record.save(args.out, 'bgp_attach', {'rounds': got, 'summary': summary})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
