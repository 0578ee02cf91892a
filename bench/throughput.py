"""What the overlay costs: iperf3 pod -> pod across nodes, over VXLAN and over host-gw,
against node -> node on the underlay, all measured in the same run.

    .venv/bin/python bench/throughput.py [--seconds 5] [--repeat 3] [--plot bench/results/throughput.png]

For each backend a 2-node lab is built, iperf3 runs between the first pods of the two
nodes and between the two nodes themselves (the underlay, the 1.0 of each lab's ratios),
then the lab is removed. The figure printed is the median of ``--repeat`` runs.
Targets (issue "Cross-node pod network"): host-gw >= 0.95 x underlay, vxlan >= 0.75 x.

Each backend is measured twice, in separate labs: with receive packet steering on the
nodes' devices (``lab up --rps on``, linux/rps.py: the
sending CPU sends, another receives, as between two machines), and with the kernel's
default (no RPS: every hop of the pod path runs on the sending CPU). The underlay gets
the same treatment as the pod path in each lab. The iperf3 client runs on the first
usable CPU and the server on the others in every measurement: the same placement for all.
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

from minikubenet.lab import processes  # noqa: E402
from minikubenet.lab.cluster import Lab  # noqa: E402
from minikubenet.lab.topology import build_topology  # noqa: E402
from minikubenet.linux import rps  # noqa: E402

PORT = 5201
# The sender on the first usable CPU, the receiver on the others (where the lab's RPS sends receive
# processing), in every measurement: the same placement for the underlay and the pods.
_CPUS = rps.usable_cpus()
CLIENT_CPU = ["taskset", "-c", str(_CPUS[0])]
SERVER_CPUS = ["taskset", "-c", ",".join(str(c) for c in _CPUS[1:])] if len(_CPUS) > 1 else []


def iperf(lab: Lab, server_ns: str, server_ip: str, client_ns: str, seconds: int) -> float:
    """One iperf3 TCP run; returns Gbit/s received."""
    rec = lab._start(
        server_ns,
        [*SERVER_CPUS, "iperf3", "-s", "-p", str(PORT)],
        os.path.join(lab.dir, "logs", "iperf3-server.log"),
        "iperf3 server",
    )
    try:
        # Wait for the listening socket without connecting to it: iperf3 would take a
        # probe connection for a client and reset the real one.
        deadline = time.monotonic() + 10
        while (
            f":{PORT} "
            not in subprocess.run(
                ["ip", "netns", "exec", server_ns, "ss", "-Hltn"], capture_output=True, text=True
            ).stdout
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 does not listen in {server_ns}")
            time.sleep(0.05)
        out = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                client_ns,
                *CLIENT_CPU,
                "iperf3",
                "-c",
                server_ip,
                "-p",
                str(PORT),
                "-t",
                str(seconds),
                "-J",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        )
        doc = json.loads(out.stdout)
        if "error" in doc:
            raise RuntimeError(f"iperf3: {doc['error']}")
        return doc["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        processes.stop([rec.pid])


def measure_backend(backend: str, seconds: int, repeat: int, root: str, rps_cpus: str | None) -> dict:
    tag = "r" if rps_cpus else "k"
    lab = Lab(
        build_topology(f"bt{backend[:1]}{tag}{os.getpid() % 10000}", nodes=2, pods_per_node=1, backend=backend),
        root=root,
        say=lambda *a: None,
    )
    lab.proxy_mode = None  # no Service proxies: they would only add noise here
    lab.rps_cpus = rps_cpus
    try:
        lab.up()
        n1, n2 = lab.topo.nodes
        pod_ip = lab.pods()[n2.pods[0].name]["ip"]
        underlay, pods = [], []
        for _ in range(repeat):
            underlay.append(iperf(lab, n2.netns, str(n2.ip), n1.netns, seconds))
            pods.append(iperf(lab, n2.pods[0].netns, pod_ip, n1.pods[0].netns, seconds))
        return {
            "underlay": statistics.median(underlay),
            "pods": statistics.median(pods),
            "underlay_runs": underlay,
            "pod_runs": pods,
        }
    finally:
        lab.down()


TARGETS = {"host-gw": 0.95, "vxlan": 0.75}
CONFIGS = [("rps", "RPS on node devices (lab up --rps on)"), ("kernel", "kernel default: no RPS (lab's default)")]


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (config, title) in zip(axes, [c for c in CONFIGS if c[0] in results]):
        r = results[config]
        u = r["underlay"]
        labels = ["underlay\nnode -> node", "host-gw\npod -> pod", "vxlan\npod -> pod"]
        values = [u, r["host-gw"]["pods"], r["vxlan"]["pods"]]
        bars = ax.bar(labels, values, color=["#888888", "#4c72b0", "#dd8452"])
        for b, v in zip(bars, values):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}\n({v / u:.2f}x)", ha="center", va="bottom")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, max(values) * 1.3)
    axes[0].set_ylabel("Gbit/s (iperf3, TCP, median)")
    fig.suptitle("What the overlay costs (same machine, same run)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--plot", default="bench/results/throughput.png")
    p.add_argument("--rps-only", action="store_true", help="skip the kernel-default labs")
    args = p.parse_args()
    rps_mask = rps.all_but_first_cpu()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="mkn-bench-") as root:
        for config, _title in CONFIGS:
            if config == "kernel" and args.rps_only:
                continue
            if config == "rps" and not rps_mask:
                print("one CPU: nothing to steer, the RPS labs are skipped")
                continue
            mask = rps_mask if config == "rps" else None
            r = {b: measure_backend(b, args.seconds, args.repeat, root, mask) for b in ("host-gw", "vxlan")}
            # Both labs of a config measure the same kind of underlay; their median is its 1.0.
            r["underlay"] = statistics.median([r["host-gw"]["underlay"], r["vxlan"]["underlay"]])
            results[config] = r
    print(
        f"machine: {os.cpu_count()} cores, kernel {platform.release()}, Python {platform.python_version()}; "
        f"iperf3 client on CPU {CLIENT_CPU[-1]}, server on {' '.join(SERVER_CPUS[2:]) or 'any CPU'}, RPS mask {rps_mask}"
    )
    print(f"{'path':<28} {'config':<10} {'Gbit/s':>8} {'x underlay':>11}  target")
    for config, _title in CONFIGS:
        if config not in results:
            continue
        r = results[config]
        u = r["underlay"]
        print(f"{'underlay node -> node':<28} {config:<10} {u:8.2f} {1.0:11.2f}")
        for backend, label in (("host-gw", "host-gw pod -> pod"), ("vxlan", "vxlan pod -> pod (1450)")):
            v = r[backend]["pods"]
            target = TARGETS[backend]
            verdict = ("ok" if v / u >= target else "MISSED") if config == "rps" else "(for comparison)"
            print(f"{label:<28} {config:<10} {v:8.2f} {v / u:11.2f}  >= {target} {verdict}")
    try:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    except ImportError:
        print("plot: skipped (pip install matplotlib, or ./setup.sh installs the bench extra)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
