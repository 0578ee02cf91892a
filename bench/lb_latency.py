#!/usr/bin/env python3
"""LoadBalancer: TCP connect latency through a service's ingress IP against its ClusterIP
(issue 13 target: ingress <= 1.1 x ClusterIP), in both proxy modes.

A 3-node lab (one pod per node) with the LoadBalancer service of ``lab up --check``
(``default/lb``: externalTrafficPolicy Local, one endpoint on n1, an ingress IP from the
lab's pool, the speakers announcing it). From the pod of n2 - another node, so both
paths are DNATed by n2's own rules and cross to n1 - connect() to the ingress IP and to
the ClusterIP, the two alternating connection by connection
(lab/loadbalancer.connect_latency). Each round gives one ratio of the two medians;
rounds alternate the proxy mode (iptables, nftables), so a slow moment of the machine
hits both modes alike. Per mode: the median ratio with the rounds' min-max, and the
median p50s.

    sudo .venv/bin/python -m bench.lb_latency              # 7 rounds per mode, 100 connections each
    sudo .venv/bin/python -m bench.lb_latency --rounds 3 --connections 40
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile

from bench import record

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TARGET = 1.1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.lb_latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--connections", type=int, default=100, help="per target and round")
    p.add_argument("--modes", default="iptables,nftables")
    p.add_argument("--out", default=RESULTS, help=f"directory for the JSON (default {RESULTS})")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.lb_latency needs root (network namespaces)", file=sys.stderr)
        return 1
    from minikubenet.lab import loadbalancer as LB
    from minikubenet.lab import services as S
    from minikubenet.lab.cluster import Lab
    from minikubenet.lab.topology import build_topology

    def on_term(signum, frame):  # SIGTERM as Ctrl-C: the finally below takes the lab down
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    modes = args.modes.split(",")
    root = tempfile.mkdtemp(prefix="mkn-bench-lb-")
    lab = Lab(build_topology(f"lbl{os.getpid() % 100000}", nodes=3, pods_per_node=1), root=root, say=lambda *a: None)
    got: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    try:
        lab.up()
        lines = LB.check_load_balancer(lab)  # the service, its ingress IP, the speakers
        doc = LB.store_call(lab, "get-service", name=LB.LB_SERVICE)
        targets = {"ingress": doc["status"]["loadBalancer"]["ingress"][0]["ip"], "cluster": doc["spec"]["clusterIP"]}
        src = lab.topo.nodes[1].pods[0]
        print(lines[0], flush=True)
        current = lab.proxy_mode
        for r in range(args.rounds):
            for mode in modes if r % 2 == 0 else list(reversed(modes)):
                if mode != current:
                    S.restart_proxies(lab, mode)  # waits for the new proxies' first sync
                    current = mode
                lat = LB.connect_latency(src.netns, targets, 80, rounds=args.connections)
                if len(lat) != 2:
                    raise SystemExit(f"round {r + 1} {mode}: a target did not answer ({lat})")
                lat["ratio"] = lat["ingress"] / lat["cluster"]
                got[mode].append(lat)
                print(
                    f"round {r + 1} {mode:9s} ingress {lat['ingress']:6.0f} us, ClusterIP {lat['cluster']:6.0f} us, "
                    f"ratio {lat['ratio']:.2f}",
                    flush=True,
                )
    finally:
        lab.down()
    summary = {}
    print(
        f"\nconnect() from {src.name} through the ingress IP / through the ClusterIP of {LB.NAMESPACE}/{LB.LB_SERVICE} "
        f"(median of {args.rounds} rounds, min-max; {args.connections} connections per target and round):"
    )
    for m in modes:
        ratios = [x["ratio"] for x in got[m]]
        summary[m] = {
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "ingress_p50_us": statistics.median(x["ingress"] for x in got[m]),
            "cluster_p50_us": statistics.median(x["cluster"] for x in got[m]),
        }
        s = summary[m]
        verdict = "met" if s["ratio_median"] <= TARGET else "NOT met"
        print(
            f"  {m:9s} ratio {s['ratio_median']:.2f} ({s['ratio_min']:.2f}-{s['ratio_max']:.2f}); ingress "
            f"{s['ingress_p50_us']:.0f} us, ClusterIP {s['cluster_p50_us']:.0f} us  target <= {TARGET}: {verdict}"
        )
    print(f"saved {record.save(args.out, 'lb_latency', {'rounds': got, 'summary': summary})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
