"""The seed's comparison as one command: the underlay, host-gw, bgp and vxlan measured
side by side, in one run, on the same CPUs with the same tools.

    sudo .venv/bin/python -m bench.backends                 # 5 rounds, RPS off and on
    sudo .venv/bin/python -m bench.backends --quick         # 2 short rounds: does it still work?

The seed: "Flannel (VXLAN): encapsulation, medium performance" against "Calico (BGP):
layer-3 routing, near metal speed". One 3-node lab per path (named ``bb<x><pid>``,
removed in ``finally``, also on Ctrl-C/SIGTERM):

- underlay: node -> node on the bare underlay: the switch and the nodes' namespaces and
  their veths, no etcd, no agent, no pod network, no iptables rule (the 1.0 of every ratio);
- host-gw, bgp, vxlan: ``Lab.up`` with that backend, no Service proxy; pod -> pod between
  pods on different nodes.

Per path, in every round: TCP throughput n1 -> n2 (iperf3, one stream) with the kernel's
system+softirq CPU time over the transfer (/proc/stat, lab/iperf.py) per gigabit; the
round-trip time of 64-byte messages over one connection, p50 and p99
(lab/tcpecho.py ``rr``); and the seed's "one user request spawns 20 internal RPC calls":
20 sequential calls from n1, alternating between n2 and n3, each a new TCP connection,
as the total per user request (``calls``). Client on the first usable CPU, servers on the
others, for every path.

Rounds alternate the order of the paths (u h b v / v b h u) and, inside each round, the
receive packet steering setting (RPS, linux/rps.py), which is written live to every node
device of every lab (lab/rps_probe.py), so a busy moment of the shared machine hits every
path alike. Ratios to the underlay are taken per round (same round, same setting) and
summarised as median (min-max). Prints the seed's table; writes
``bench/results/backends-<time>.{json,png}``.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minikubenet.lab import iperf, probes, rps_probe, tcpecho  # noqa: E402
from minikubenet.lab.cluster import Lab  # noqa: E402
from minikubenet.lab.topology import build_topology  # noqa: E402
from minikubenet.linux import rps  # noqa: E402

ECHO_PORT = 7007
MSG_SIZE = 64
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# The bar for "near metal" (issue 11, "How well"): throughput >= 0.97 x the
# underlay and round-trip latency <= 1.1 x.
NEAR_METAL_THROUGHPUT = 0.97
NEAR_METAL_LATENCY = 1.1


@dataclass(frozen=True)
class PathSpec:
    key: str  # one letter: the lab it runs in (part of the lab's name)
    name: str  # "underlay", "host-gw", "bgp", "vxlan"
    backend: str | None  # None: the bare underlay
    what: str
    seed: str  # the seed's claim
    node_to_node: bool = False  # between the nodes' namespaces, not pods
    racks: int = 1  # > 1: client and servers on different racks (lab up --racks)
    reference: str = "underlay"  # the path whose figures are this one's 1.0

    @property
    def is_reference(self) -> bool:
        return self.name == self.reference


PATHS = (
    PathSpec("u", "underlay", None, "node -> node, no pod network", "(metal)", node_to_node=True),
    PathSpec("h", "host-gw", "host-gw", "pod -> pod, routes via the other node", "(not in the seed)"),
    PathSpec("b", "bgp", "bgp", "pod -> pod, BIRD-learned routes", "near metal"),
    PathSpec("v", "vxlan", "vxlan", "pod -> pod, VXLAN, MTU 1450", "medium"),
    # Not a mechanism but the why: node -> node inside the bgp lab differs from the bare
    # underlay only by what the agent put into the nodes' namespaces (its iptables rules,
    # so conntrack sees every packet), not by the pods' extra veth and bridge hops.
    PathSpec("b", "bgp-nodes", "bgp", "node -> node in the bgp lab (agent's rules, conntrack)", "-", True),
)
# Across racks (``lab up --racks 2``: two L2 segments joined by a router namespace), in
# 4-node labs so that two servers sit on the other rack. Their 1.0 is node -> node across
# the racks inside the bgp lab: through the router, as the pods' packets go.
RACK_PATHS = (
    PathSpec("x", "underlay-racks", "bgp", "node -> node across racks", "(metal)", True, 2, "underlay-racks"),
    PathSpec("x", "bgp-racks", "bgp", "pod -> pod across racks, routed", "near metal", False, 2, "underlay-racks"),
    PathSpec("y", "vxlan-racks", "vxlan", "pod -> pod across racks, VXLAN", "medium", False, 2, "underlay-racks"),
)
LABELS = {
    "underlay": "underlay (node → node)",
    "bgp-nodes": "bgp lab, node → node",
    "underlay-racks": "underlay across racks (node → node via the router)",
}


def racks_supported() -> bool:
    """Whether this tree's lab can place nodes on racks (``lab up --racks``)."""
    return "racks" in inspect.signature(build_topology).parameters


@dataclass
class Endpoints:
    """Where a path's client runs and what it talks to (namespace, address)."""

    lab: Lab
    client_ns: str
    servers: list[tuple[str, str]]  # [(netns, ip)] on n2, n3


def lab_name(key: str) -> str:
    return f"bb{key}{os.getpid() % 10000}"


def build_lab(key: str, backend: str | None, racks: int, root: str) -> Lab:
    kw: dict[str, Any] = {"racks": racks} if racks > 1 else {}
    topo = build_topology(
        lab_name(key),
        nodes=4 if racks > 1 else 3,
        pods_per_node=0 if backend is None else 1,
        backend=backend or "vxlan",
        **kw,
    )
    lab = Lab(topo, root=root, say=lambda *a: None)
    lab.proxy_mode = None  # no Service proxy: only the pod network is measured
    lab.rps_cpus = None  # the bench sets RPS itself, live, per round
    if backend is None:
        # The bare underlay, with the lab's own building steps (so lab.down() removes it):
        # the switch, the nodes' namespaces and ports; no etcd, agents or pods.
        lab._record()
        lab._build_underlay()
        for node in topo.nodes:
            lab._prepare_node(node)
    else:
        lab.up()
    return lab


def endpoints(spec: PathSpec, lab: Lab) -> Endpoints:
    """The path's client and servers in ``lab``, with an echo server started on each server."""
    n1, *others = lab.topo.nodes
    if spec.racks > 1:
        # the nodes n1 reaches through a gateway are on another rack (whatever the lab's placement)
        others = [n for n in others if "gateway" in _route_get(n1.netns, str(n.ip))]
        if len(others) < 2:
            raise RuntimeError(f"{lab.topo.name}: fewer than two nodes on another rack than n1")
    n2, n3 = others[:2]
    if spec.node_to_node:
        ep = Endpoints(lab, n1.netns, [(n.netns, str(n.ip)) for n in (n2, n3)])
    else:
        ips = lab.pods()
        ep = Endpoints(lab, n1.pods[0].netns, [(n.pods[0].netns, ips[n.pods[0].name]["ip"]) for n in (n2, n3)])
    _, server_cpus = iperf.cpu_placement()
    for netns, ip in ep.servers:
        argv = [*server_cpus, sys.executable, "-I", "-S", tcpecho.__file__, "serve", str(ECHO_PORT)]
        lab._start(netns, argv, os.path.join(lab.dir, "logs", f"tcpecho-{netns}.log"), "tcpecho")
        probes.wait_listening(netns, ip, ECHO_PORT)
    return ep


def _route_get(netns: str, ip: str) -> dict:
    out = subprocess.run(["ip", "-n", netns, "-j", "route", "get", ip], capture_output=True, text=True).stdout
    return (json.loads(out or "[{}]") or [{}])[0]


def echo_client(ep: Endpoints, *args: str) -> list[float]:
    client_cpu, _ = iperf.cpu_placement()
    argv = ["ip", "netns", "exec", ep.client_ns, *client_cpu, sys.executable, "-I", "-S", tcpecho.__file__, *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"tcpecho {args[0]} in {ep.client_ns}: {out.stderr.strip()[-300:]}")
    return json.loads(out.stdout)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def measure(ep: Endpoints, args) -> dict:
    (s_ns, s_ip), (_, s2_ip) = ep.servers
    log = os.path.join(ep.lab.dir, "logs", "iperf3.log")
    stream = iperf.stream(ep.lab._start, s_ns, s_ip, ep.client_ns, args.seconds, log)
    rtts = echo_client(ep, "rr", s_ip, str(ECHO_PORT), str(args.rr_count), str(MSG_SIZE))
    calls = echo_client(ep, "calls", str(ECHO_PORT), str(args.hops), str(args.calls), str(MSG_SIZE), s_ip, s2_ip)
    return {
        **stream,
        "rr_p50_us": percentile(rtts, 50),
        "rr_p99_us": percentile(rtts, 99),
        "calls_ms": statistics.median(calls) / 1000,
        "calls_p99_ms": percentile(calls, 99) / 1000,
    }


# -- summary -------------------------------------------------------------------------------------


def med_spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(rounds: list[dict], paths: list[PathSpec], settings: list[str]) -> dict:
    """Per setting and path: every figure as median (min-max) over the rounds, and the
    ratios to the underlay taken round by round (same round, same setting)."""
    out: dict = {}
    for setting in settings:
        out[setting] = {}
        for spec in paths:
            rows = [r["paths"][spec.name] for r in rounds if r["rps"] == setting]
            under = [r["paths"][spec.reference] for r in rounds if r["rps"] == setting]
            s = {k: med_spread([row[k] for row in rows]) for k in rows[0] if isinstance(rows[0][k], (int, float))}
            s["throughput_ratio"] = med_spread([a["gbps"] / u["gbps"] for a, u in zip(rows, under)])
            s["latency_ratio"] = med_spread([a["rr_p50_us"] / u["rr_p50_us"] for a, u in zip(rows, under)])
            s["latency_p99_ratio"] = med_spread([a["rr_p99_us"] / u["rr_p99_us"] for a, u in zip(rows, under)])
            s["calls_ratio"] = med_spread([a["calls_ms"] / u["calls_ms"] for a, u in zip(rows, under)])
            s["cpu_ratio"] = med_spread([a["cpu_s_per_gbit"] / u["cpu_s_per_gbit"] for a, u in zip(rows, under)])
            out[setting][spec.name] = s
    return out


def verdict(spec: PathSpec, s: dict) -> str:
    """Near metal (the issue's bar) or not, and whether the seed's claim agrees. When the
    rounds' spread crosses the bar the answer is "undecided": the noise is larger than the
    difference."""
    if spec.is_reference:
        return ""
    t, lat = s["throughput_ratio"], s["latency_ratio"]
    near = t["median"] >= NEAR_METAL_THROUGHPUT and lat["median"] <= NEAR_METAL_LATENCY
    surely_near = t["min"] >= NEAR_METAL_THROUGHPUT and lat["max"] <= NEAR_METAL_LATENCY
    surely_not = t["max"] < NEAR_METAL_THROUGHPUT or lat["min"] > NEAR_METAL_LATENCY
    measured = "near metal" if near else "below metal"
    if not (surely_near or surely_not):
        measured += " (spread crosses the bar)"
    if spec.seed == "near metal":
        agrees = "agrees" if near else "does NOT agree"
    elif spec.seed == "medium":
        agrees = "agrees" if not near else "does NOT agree (as fast as metal)"
    else:
        return measured
    return f"{measured}; seed: {agrees}"


def fmt(m: dict, digits: int = 2, dash: str = "-") -> str:
    return f"{m['median']:.{digits}f} ({m['min']:.{digits}f}{dash}{m['max']:.{digits}f})"


def table(summary: dict, paths: list[PathSpec]) -> str:
    lines = []
    for setting, by_path in summary.items():
        u = by_path.get("underlay") or by_path[next(iter(by_path))]
        lines.append(
            f"RPS {setting}: underlay {fmt(u['gbps'], 1)} Gbit/s, RTT p50 {fmt(u['rr_p50_us'], 0)} us, "
            f"p99 {fmt(u['rr_p99_us'], 0)} us, 20 calls {fmt(u['calls_ms'], 1)} ms, "
            f"CPU {fmt(u['cpu_s_per_gbit'], 3)} s/Gbit"
        )
        lines.append(
            f"  {'mechanism':<10} {'seed says':<18} {'Gbit/s':<18} {'x underlay':<18} {'RTT p50 x':<18} "
            f"{'RTT p99 x':<18} {'20 calls x':<18} {'CPU s/Gbit':<22} verdict (near metal: >= "
            f"{NEAR_METAL_THROUGHPUT} x throughput, <= {NEAR_METAL_LATENCY} x latency)"
        )
        for spec in paths:
            s = by_path[spec.name]
            if spec.is_reference:
                if spec.name != "underlay":
                    lines.append(f"  {spec.name:<10} reference of the rows below it: {fmt(s['gbps'], 1)} Gbit/s")
                continue
            lines.append(
                f"  {spec.name:<10} {spec.seed:<18} {fmt(s['gbps'], 1):<18} {fmt(s['throughput_ratio']):<18} "
                f"{fmt(s['latency_ratio']):<18} {fmt(s['latency_p99_ratio']):<18} {fmt(s['calls_ratio']):<18} "
                f"{fmt(s['cpu_s_per_gbit'], 3):<22} {verdict(spec, s)}"
            )
        lines.append("")
    return "\n".join(lines)


def markdown(summary: dict, paths: list[PathSpec]) -> str:
    """The seed's table for a README: one row per mechanism and RPS setting."""
    lines = [
        "| mechanism | seed says | RPS | Gbit/s | throughput × underlay | RTT p50 × | RTT p99 × "
        "| 20 calls × | kernel CPU s/Gbit (× underlay) | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for spec in paths:
        for setting, by_path in summary.items():
            s = by_path[spec.name]
            if spec.is_reference:
                lines.append(
                    f"| {LABELS[spec.name]} | metal | {setting} | {fmt(s['gbps'], 1, '–')} | 1 "
                    f"| {s['rr_p50_us']['median']:.0f} µs | {s['rr_p99_us']['median']:.0f} µs "
                    f"| {s['calls_ms']['median']:.1f} ms | {s['cpu_s_per_gbit']['median']:.3f} | |"
                )
                continue
            label = LABELS.get(spec.name, spec.name)

            def f(m, digits=2):
                return fmt(m, digits, "–")

            lines.append(
                f"| {label} | {spec.seed} | {setting} | {f(s['gbps'], 1)} | {f(s['throughput_ratio'])} "
                f"| {f(s['latency_ratio'])} | {f(s['latency_p99_ratio'])} | {f(s['calls_ratio'])} "
                f"| {s['cpu_s_per_gbit']['median']:.3f} ({s['cpu_ratio']['median']:.2f}) | {verdict(spec, s)} |"
            )
    return "\n".join(lines)


def plot(summary: dict, paths: list[PathSpec], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("gbps", "TCP throughput, Gbit/s", 1),
        ("rr_p50_us", "round trip p50, us (64 B, one connection)", 1),
        ("rr_p99_us", "round trip p99, us", 1),
        ("calls_ms", "20 sequential calls, ms (median)", 1),
        ("cpu_s_per_gbit", "kernel CPU s per Gbit (sys+softirq)", 1),
    ]
    settings = list(summary)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
    width = 0.8 / len(settings)
    colors = {"off": "#4c72b0", "on": "#dd8452"}
    for ax, (key, label, _) in zip(axes, panels):
        for i, setting in enumerate(settings):
            meds = [summary[setting][p.name][key]["median"] for p in paths]
            lows = [m - summary[setting][p.name][key]["min"] for m, p in zip(meds, paths)]
            highs = [summary[setting][p.name][key]["max"] - m for m, p in zip(meds, paths)]
            xs = [j + (i - (len(settings) - 1) / 2) * width for j in range(len(paths))]
            ax.bar(xs, meds, width, yerr=[lows, highs], capsize=3, label=f"RPS {setting}", color=colors.get(setting))
        ax.set_xticks(range(len(paths)))
        ax.set_xticklabels([p.name for p in paths])
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(title + "  (bars: median; whiskers: min-max of the rounds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# -- main -----------------------------------------------------------------------------------------


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return {
        "cpus": os.cpu_count(),
        "usable_cpus": rps.usable_cpus(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds, each measuring every path (default 5)")
    p.add_argument("--seconds", type=int, default=3, help="iperf3 seconds per path and round (default 3)")
    p.add_argument("--rr-count", type=int, default=2000, help="round trips per path and round (default 2000)")
    p.add_argument("--calls", type=int, default=30, help="user requests of --hops calls per path and round")
    p.add_argument("--hops", type=int, default=20, help="calls per user request (the seed's 20)")
    p.add_argument("--rps", choices=["both", "off", "on"], default="both", help="RPS settings to measure")
    p.add_argument(
        "--paths",
        default=None,
        help="comma-separated subset of " + ",".join(p.name for p in PATHS + RACK_PATHS) + " (default: all; "
        "the rack paths when this tree's lab has --racks; a path's reference is always added)",
    )
    p.add_argument("--quick", action="store_true", help="2 short rounds (1 s, 200 round trips, 3 user requests)")
    p.add_argument("--out", default=RESULTS, help="directory for the JSON and PNG (default bench/results)")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.rr_count, args.calls = 2, 1, 200, 3
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    known = PATHS + RACK_PATHS
    if args.paths is None:
        wanted = {p.name for p in (known if racks_supported() else PATHS)}
    else:
        wanted = set(args.paths.split(","))
    unknown = wanted - {p.name for p in known}
    if unknown:
        print(f"unknown path(s): {', '.join(sorted(unknown))}; known: {', '.join(p.name for p in known)}")
        return 2
    if any(p.racks > 1 and p.name in wanted for p in known) and not racks_supported():
        print("the rack paths need `lab up --racks`, which this tree's lab does not have yet")
        return 2
    wanted |= {p.reference for p in known if p.name in wanted}
    paths = [p for p in known if p.name in wanted]
    if not racks_supported():
        print("across racks: not measured (this tree's lab has no --racks yet)")
    mask = rps.all_but_first_cpu()
    settings = ["off", "on"] if args.rps == "both" else [args.rps]
    if mask is None and "on" in settings:
        print("one CPU: nothing to steer, RPS on is left out")
        settings = ["off"]
    # SIGTERM ends like Ctrl-C, so the finally below removes the labs
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    info = machine()
    started = time.monotonic()
    rounds: list[dict] = []
    labs: dict[str, Lab] = {}
    eps: dict[str, Endpoints] = {}
    with tempfile.TemporaryDirectory(prefix="mkn-bench-") as root:
        wanted_labs = {spec.key: (spec.backend, spec.racks) for spec in paths}
        try:
            with ThreadPoolExecutor(max_workers=len(wanted_labs)) as pool:
                futures = {key: pool.submit(build_lab, key, *what, root) for key, what in wanted_labs.items()}
                errors = []
                for key, fut in futures.items():
                    try:
                        labs[key] = fut.result()
                    except Exception as e:  # every lab that was built is still removed below
                        errors.append(f"{wanted_labs[key][0] or 'underlay'}: {e}")
                if errors:
                    raise RuntimeError("building the labs failed: " + "; ".join(errors))
            eps = {spec.name: endpoints(spec, labs[spec.key]) for spec in paths}
            print(f"labs up in {time.monotonic() - started:.0f}s: {', '.join(lab.topo.name for lab in labs.values())}")
            for r in range(args.rounds):
                order = paths if r % 2 == 0 else paths[::-1]
                for setting in settings if r % 2 == 0 else settings[::-1]:
                    for lab in labs.values():
                        rps_probe.apply_to_lab(lab, mask if setting == "on" else None)
                    measured = {spec.name: measure(eps[spec.name], args) for spec in order}
                    rounds.append({"round": r + 1, "rps": setting, "order": list(measured), "paths": measured})
                    brief = ", ".join(f"{n} {m['gbps']:.1f}" for n, m in measured.items())
                    print(f"round {r + 1}/{args.rounds} RPS {setting}: Gbit/s {brief}", flush=True)
        finally:
            for key in wanted_labs:
                # also a lab whose build failed half-way: down() removes what its state names
                (labs.get(key) or Lab(build_topology(lab_name(key), nodes=3), root=root)).down()
    info["loadavg_end"] = os.getloadavg()
    summary = summarise(rounds, paths, settings)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    header = (
        f"machine: {info['cpus']} CPUs ({info['cpu_model']}), kernel {info['kernel']}, load average "
        f"{info['loadavg_start'][0]:.1f} at start, {info['loadavg_end'][0]:.1f} at end; {args.rounds} rounds, "
        f"iperf3 {args.seconds} s, {args.rr_count} round trips of {MSG_SIZE} B, {args.calls} x {args.hops} calls; "
        f"RPS mask {mask}; {time.monotonic() - started:.0f} s in all"
    )
    print()
    print(header)
    print("figures: median (min-max) over the rounds; ratios to the underlay taken per round")
    print(table(summary, paths))
    md = markdown(summary, paths)
    print(md)
    if not args.no_save:
        os.makedirs(args.out, exist_ok=True)
        base = os.path.join(args.out, f"backends-{stamp}")
        with open(base + ".md", "w") as f:
            f.write(f"{header}\n\n{md}\n")
        with open(base + ".json", "w") as f:
            json.dump({"args": vars(args), "machine": info, "rounds": rounds, "summary": summary}, f, indent=1)
        print(f"json: {base}.json")
        try:
            plot(summary, paths, base + ".png", f"pod network backends against the underlay ({info['cpus']} CPUs)")
            print(f"plot: {base}.png")
        except ImportError:
            print("plot: skipped (matplotlib missing: ./setup.sh installs the bench extra)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
