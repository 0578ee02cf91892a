#!/usr/bin/env python3
"""The seed's proxy claim, measured: "In Kubernetes 1.0/1.1 we had a userspace proxy that
was painfully slow; the iptables mode is much faster."

One 2-node lab (vxlan, the lab's RPS), a client pod on n1 and the service's pods on n2,
so every path crosses the overlay. Four ways from the client to a pod on n2, measured
in the same run:

    direct      the pod's own IP (no service): the 1.0 of the table
    userspace   proxy/userspace.py on n1 (Kubernetes 1.0's mechanism: accept on the
                ClusterIP, pick a random endpoint, copy both ways in a process)
    iptables    minikubenet-proxy --mode iptables: DNAT in the kernel (KUBE-SVC/KUBE-SEP)
    nftables    minikubenet-proxy --mode nftables: DNAT through a verdict map

For each path: **throughput** (iperf3 TCP for ``--seconds`` from the client pod to
iperf3 in n2-p1; the "bulk" service has that one endpoint, so iperf3's control and data
connections meet the same server) and **latency** over ``--connections`` sequential
connections to the "web" service (both pods of n2, the lab's HTTP pod server): the
time of ``connect()`` alone, and of a whole small request (connect, GET /, read the
answer, close). A userspace proxy's ``connect()`` completes when *its* kernel accepts,
before it has dialled the endpoint, so the request time is the fair comparison.

``--rounds`` rounds; each measures every path, the order reversed every other round
(d u i n / n i u d ...), so a slow moment of the machine hits every path alike and the
proxy mode is switched once per round (``restart_proxies``: the new mode removes the
other's rules). Printed: the median over rounds and the spread (min-max); saved:
``bench/results/proxy_modes-<time>.json`` and ``.png`` (git-ignored).

    sudo .venv/bin/python -m bench.proxy_modes                       # 5 rounds, 3 s iperf3
    sudo .venv/bin/python -m bench.proxy_modes --rounds 1 --seconds 1 --connections 50
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minikubenet.lab import processes, userspace_proxy  # noqa: E402
from minikubenet.lab import services as lab_services  # noqa: E402
from minikubenet.lab.cluster import Lab  # noqa: E402
from minikubenet.lab.topology import POD_PORT, build_topology  # noqa: E402
from minikubenet.linux.netns import path_of, socket_in  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
IPERF_PORT = 5201
PATHS = ("direct", "userspace", "iptables", "nftables")


def say(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- measurements


def iperf(client_ns: str, ip: str, port: int, seconds: int) -> float:
    """Gbit/s received in one iperf3 TCP run from ``client_ns``."""
    out = subprocess.run(
        ["ip", "netns", "exec", client_ns, "iperf3", "-c", ip, "-p", str(port), "-t", str(seconds), "-J"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    doc = json.loads(out.stdout or "{}")
    if "error" in doc or "end" not in doc:
        raise RuntimeError(f"iperf3 to {ip}:{port}: {doc.get('error') or out.stderr.strip()}")
    return doc["end"]["sum_received"]["bits_per_second"] / 1e9


def latencies(client_ns: str, ip: str, port: int, n: int) -> tuple[float, float]:
    """p50 of ``connect()`` and of a whole small HTTP request, in µs, over ``n``
    sequential connections."""
    connects, requests = [], []
    request = f"GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode()
    ns = path_of(client_ns)
    for _ in range(n):
        s = socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            t0 = time.perf_counter()
            s.connect((ip, port))
            t1 = time.perf_counter()
            s.sendall(request)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            t2 = time.perf_counter()
        finally:
            s.close()
        if b" 200 " not in data.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"{ip}:{port}: bad answer {data[:60]!r}")
        connects.append((t1 - t0) * 1e6)
        requests.append((t2 - t0) * 1e6)
    return statistics.median(connects), statistics.median(requests)


# --------------------------------------------------------------------------- the lab


class Setup:
    """The lab, its two services, iperf3 in n2-p1 and the userspace proxy on n1."""

    def __init__(self, root: str):
        self.lab = Lab(
            build_topology(f"pm{os.getpid() % 100000}", nodes=2, pods_per_node=2), root=root, say=lambda *a: None
        )
        self.mode = "iptables"
        self.lab.proxy_mode = self.mode

    def up(self) -> None:
        lab = self.lab
        lab.up()
        n1, n2 = lab.topo.nodes
        self.client = n1.pods[0].netns
        server = n2.pods[0]
        server_ip = lab.pod_ips[server.name]
        web = lab_services.create_service(
            lab, "pmweb", {"node": n2.name}, [{"name": "http", "port": 80, "targetPort": POD_PORT, "protocol": "TCP"}]
        )
        bulk = lab_services.create_service(
            lab,
            "pmbulk",
            {"node": n2.name, "slot": "p1"},
            [{"name": "iperf", "port": IPERF_PORT, "targetPort": IPERF_PORT, "protocol": "TCP"}],
        )
        vip_web, vip_bulk = (str(v) for v in userspace_proxy.USERSPACE_VIPS[:2])
        web_eps = [(lab.pod_ips[p.name], POD_PORT) for p in n2.pods]
        self.userspace = userspace_proxy.start(
            lab, n1.name, {(vip_web, 80): web_eps, (vip_bulk, IPERF_PORT): [(server_ip, IPERF_PORT)]}
        )
        self.iperf = lab._start(
            server.netns,
            ["iperf3", "-s", "-p", str(IPERF_PORT)],
            os.path.join(lab.dir, "logs", "iperf3-server.log"),
            "iperf3 server",
        )
        userspace_proxy.wait_listening(
            server.netns,
            [("0.0.0.0", IPERF_PORT)],
            self.iperf,
            os.path.join(lab.dir, "logs", "iperf3-server.log"),
            what="iperf3",
        )
        # path -> (web ip, web port), (bulk ip, bulk port)
        self.targets = {
            "direct": ((server_ip, POD_PORT), (server_ip, IPERF_PORT)),
            "userspace": ((vip_web, 80), (vip_bulk, IPERF_PORT)),
            "iptables": ((web["clusterIP"], 80), (bulk["clusterIP"], IPERF_PORT)),
            "nftables": ((web["clusterIP"], 80), (bulk["clusterIP"], IPERF_PORT)),
        }

    def use_mode(self, mode: str) -> None:
        if mode != self.mode:
            lab_services.restart_proxies(self.lab, mode)
            self.mode = mode

    def measure(self, path: str, seconds: int, connections: int) -> dict:
        if path in ("iptables", "nftables"):
            self.use_mode(path)
        (wip, wport), (bip, bport) = self.targets[path]
        connect_us, request_us = latencies(self.client, wip, wport, connections)
        gbit = iperf(self.client, bip, bport, seconds)
        return {"gbit_s": gbit, "connect_us": connect_us, "request_us": request_us}

    def down(self) -> None:
        self.lab.down()


# --------------------------------------------------------------------------- report


def summarize(rounds: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for path in PATHS:
        out[path] = {}
        for metric in ("gbit_s", "connect_us", "request_us"):
            values = [r[path][metric] for r in rounds]
            out[path][metric] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "rounds": values,
            }
    return out


def table(summary: dict) -> str:
    d = summary["direct"]
    lines = [
        f"{'path':<11} {'Gbit/s':>7} {'(min-max)':>13} {'x direct':>8}   {'connect µs':>10} {'(min-max)':>13}"
        f"   {'request µs':>10} {'(min-max)':>13} {'x direct':>8}"
    ]
    for path in PATHS:
        s = summary[path]
        g, c, r = s["gbit_s"], s["connect_us"], s["request_us"]
        lines.append(
            f"{path:<11} {g['median']:7.2f} {g['min']:6.2f}-{g['max']:<6.2f} {g['median'] / d['gbit_s']['median']:8.2f}"
            f"   {c['median']:10.0f} {c['min']:6.0f}-{c['max']:<6.0f}"
            f"   {r['median']:10.0f} {r['min']:6.0f}-{r['max']:<6.0f} {r['median'] / d['request_us']['median']:8.2f}"
        )
    return "\n".join(lines)


def plot(summary: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors = ["#888888", "#c44e52", "#4c72b0", "#55a868"]
    for ax, metric, label in (
        (axes[0], "gbit_s", "throughput, Gbit/s (iperf3)"),
        (axes[1], "request_us", "small HTTP request, µs (p50)"),
    ):
        med = [summary[p][metric]["median"] for p in PATHS]
        err = [
            [m - summary[p][metric]["min"] for p, m in zip(PATHS, med)],
            [summary[p][metric]["max"] - m for p, m in zip(PATHS, med)],
        ]
        bars = ax.bar(PATHS, med, yerr=err, capsize=4, color=colors)
        for b, v in zip(bars, med):
            ax.text(
                b.get_x() + b.get_width() / 2,
                v / 2,
                f"{v:.1f}" if metric == "gbit_s" else f"{v:.0f}",
                ha="center",
                va="center",
                color="white",
                fontweight="bold",
            )
        ax.set_title(label, fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=3, help="iperf3 time per measurement")
    p.add_argument("--connections", type=int, default=200, help="sequential connections per latency measurement")
    p.add_argument("--out", default=None, help="results file stem (default bench/results/proxy_modes-<time>)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("error: needs root (it builds a lab of network namespaces)", file=sys.stderr)
        return 2
    stem = args.out or os.path.join(RESULTS_DIR, "proxy_modes-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mkn-bench-") as root:
        setup = Setup(root)
        try:
            say("building a 2-node lab ...")
            setup.up()
            for i in range(args.rounds):
                order = PATHS if i % 2 == 0 else tuple(reversed(PATHS))
                r = {path: setup.measure(path, args.seconds, args.connections) for path in order}
                rounds.append(r)
                say(
                    f"round {i + 1}/{args.rounds}: "
                    + ", ".join(f"{k} {v['gbit_s']:.2f} Gbit/s {v['request_us']:.0f} µs" for k, v in r.items())
                )
        finally:
            processes.stop(
                [
                    rec.pid
                    for rec in (getattr(setup, "userspace", None), getattr(setup, "iperf", None))
                    if rec is not None
                ]
            )
            setup.down()
    summary = summarize(rounds)
    machine = (
        f"{os.cpu_count()} cores, kernel {platform.release()}, Python {platform.python_version()}; "
        f"{args.rounds} rounds, iperf3 {args.seconds} s, {args.connections} connections per latency figure"
    )
    print(f"machine: {machine}")
    print(table(summary))
    with open(stem + ".json", "w") as f:
        json.dump({"machine": machine, "args": vars(args), "summary": summary, "rounds": rounds}, f, indent=1)
    try:
        plot(summary, stem + ".png", "client pod (n1) -> pod on n2 across VXLAN: direct vs service proxy modes")
        print(f"saved: {stem}.json, {stem}.png")
    except ImportError:
        print(f"saved: {stem}.json (no plot: pip install matplotlib, or ./setup.sh installs the bench extra)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
