#!/usr/bin/env python3
"""Service proxy benchmark: minikubenet-proxy's sync path in both modes, against the bare
``iptables-restore`` / ``nft -f`` of the very same text, and connection latency through
the rules, measured in the same run.

For each mode (iptables, nftables) and each size N (default 1 000 / 5 000 / 10 000
services with 2 endpoints each):

1. full sync: the daemon's own ``Syncer.sync()`` (plan every service, render, one
   restore, ensure the jump rules) into a fresh network namespace, against the bare
   ``iptables-restore --noflush`` (``nft -f``) of the exact text the syncer applied, into
   another fresh namespace. ``--repeat`` rounds, alternating which goes first; medians.
   Target: daemon / bare <= 1.3.
2. partial sync at the largest N: one service's endpoints change (and, separately, one
   new service appears); the time of ``Syncer.sync(changed={that service})``. Target:
   <= 100 ms. For iptables also the bare restore of what kube-proxy would write (it
   rewrites KUBE-SERVICES on every partial sync, KEP-3453), for comparison.
3. connection latency: TCP connect() to the *last* service (the last rule of
   KUBE-SERVICES), p50 and p99 of ``--connections`` connections, at 1 / 5 000 / 10 000
   services. The workers of these sizes keep their namespaces and rules after their
   full sync, and the connections are made in 10 rounds that alternate between the
   sizes, so a slow moment of the machine hits every size alike; the growth against 1
   service is the median of the rounds' paired p50 ratios. Target for nftables: at
   10 000 <= 1.15 x its 1-service figure (a verdict map is a hash lookup); iptables grows
   with N (a linear rule list), the table shows how much.

Every measurement runs in a worker process *inside* a throwaway namespace
(``mknbench<pid>-…``, removed in ``finally``, also on Ctrl-C or SIGTERM): the host's own
rules are never touched. In each namespace a veth carries the endpoints' addresses and a
route for the service network; a stdlib TCP server accepts and closes; the client runs in
the worker. Results: ``bench/results/services-<time>.{json,txt,png}`` (git-ignored).

    sudo .venv/bin/python -m bench.services
    sudo .venv/bin/python -m bench.services --sizes 1000,2000 --latency-sizes 1,2000 --repeat 1
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
SERVICE_NET = ipaddress.IPv4Network("10.96.0.0/12")
CLUSTER_CIDR = "10.244.0.0/16"
LOCAL_ENDPOINTS = ("10.244.255.1", "10.244.255.2")  # the last service's, on the veth
TARGETS = {"full_ratio": 1.3, "partial_ms": 100.0, "nft_latency_growth": 1.15}


def say(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the cluster

BENCH_NODE = "bench-node"
SHAPES = ("clusterip", "lb", "local")


def cluster(n: int, shape: str = "clusterip"):
    """N services ns "bench", named s00000.. so "sorted by name" is creation order, each
    with 2 endpoints; the last one's endpoints are local addresses in the namespace.

    shape "lb": type LoadBalancer with an ingress IP (and a NodePort) each; "local": the
    same with externalTrafficPolicy Local and a health-check port, one of the two
    endpoints on this node (KUBE-SVL / local- chains and the EXT short-circuits)."""
    import dataclasses

    from minikubenet.k8s_objects import Endpoint, Service, ServicePort

    services, endpoints = {}, {}
    base_ep = int(ipaddress.IPv4Address("10.244.0.0"))
    lb_base = int(ipaddress.IPv4Address("172.20.0.1"))
    for i in range(n):
        svc = Service(
            "bench", f"s{i:05d}", SERVICE_NET.network_address + 1 + i, (ServicePort("http", "TCP", 80, 8080),)
        )
        if shape != "clusterip":
            # A NodePort range holds 2 768 ports: beyond that, LoadBalancers without
            # NodePorts (allocateLoadBalancerNodePorts: false), as a large cluster must.
            node_port = 30000 + i if i < 2000 else None
            svc = dataclasses.replace(
                svc,
                type="LoadBalancer",
                ports=(ServicePort("http", "TCP", 80, 8080, node_port),),
                load_balancer_ips=(ipaddress.IPv4Address(lb_base + i),),
                allocate_load_balancer_node_ports=node_port is not None,
            )
        if shape == "local":
            svc = dataclasses.replace(
                svc, external_traffic_policy="Local", health_check_node_port=32100 + i if i < 600 else None
            )
        ips = (
            LOCAL_ENDPOINTS
            if i == n - 1
            else (ipaddress.IPv4Address(base_ep + 2 * i + 1), ipaddress.IPv4Address(base_ep + 2 * i + 2))
        )
        services[svc.key] = svc
        endpoints[svc.key] = {
            svc.port_key(svc.ports[0]): [
                Endpoint(ipaddress.IPv4Address(ip), 8080, node_name=BENCH_NODE if j == 0 else "other")
                for j, ip in enumerate(ips)
            ]
        }
    return services, endpoints


# --------------------------------------------------------------------------- worker (in a netns)


# Between the transactions of one sync in a saved text (nftables mode, a large full sync:
# NftPlan.render_staged); the bare apply applies them in the same order.
TX_SEPARATOR = "\n# ---- next transaction ----\n"


class Recorder:
    """Wraps the syncer's kernel calls to keep the texts and durations of its last sync
    (one call; several for a large nftables full sync)."""

    def __init__(self):
        self.texts: list[str] = []
        self.times: list[float] = []

    @property
    def text(self) -> str:
        return TX_SEPARATOR.join(self.texts)

    @property
    def seconds(self) -> float:
        return sum(self.times)

    def wrap(self, fn):
        def timed(text, *a, **kw):
            t = time.perf_counter()
            try:
                return fn(text, *a, **kw)
            finally:
                self.times.append(time.perf_counter() - t)
                self.texts.append(text)

        return timed

    def wrap_sync(self, sync):
        def one_sync(*a, **kw):
            self.texts, self.times = [], []
            return sync(*a, **kw)

        return one_sync


def make_syncer(mode: str, iptables_binary: str):
    from minikubenet.proxy import syncers
    from minikubenet.proxy.model import RenderOptions

    config = syncers.SyncConfig(
        cluster_cidr=CLUSTER_CIDR,
        service_cidr=str(SERVICE_NET),
        iptables=iptables_binary,
        conntrack_cleanup=False,
        options=RenderOptions(node_name=BENCH_NODE),
    )
    rec = Recorder()
    if mode == "iptables":
        syncers.iptables.restore = rec.wrap(syncers.iptables.restore)
    else:
        syncers.nft_apply = rec.wrap(syncers.nft_apply)
    syncer = syncers.make_syncer(mode, config)
    syncer.sync = rec.wrap_sync(syncer.sync)  # type: ignore[method-assign]
    return syncer, rec


def bare_apply(mode: str, text: str, iptables_binary: str) -> float:
    """The restore of the text alone (its transactions in order, if it has several)."""
    argv = [f"{iptables_binary}-restore", "-w", "--noflush"] if mode == "iptables" else ["nft", "-f", "-"]
    elapsed = 0.0
    for part in text.split(TX_SEPARATOR):
        t = time.perf_counter()
        p = subprocess.run(argv, input=part, capture_output=True, text=True)
        elapsed += time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {p.stderr[:2000]}")
    return elapsed


def worker_full(spec: dict) -> dict | None:
    mode, n = spec["mode"], spec["n"]
    if spec.get("nft_stage_above") is not None:
        from minikubenet.proxy import nft_render

        nft_render.STAGE_ABOVE = spec["nft_stage_above"]
    services, endpoints = cluster(n, spec.get("shape", "clusterip"))
    syncer, rec = make_syncer(mode, spec["iptables"])
    t = time.perf_counter()
    result = syncer.sync(services, endpoints, None)
    full = time.perf_counter() - t
    with open(spec["text_file"], "w") as f:
        f.write(rec.text)
    out = {"full_s": full, "apply_s": rec.seconds, "text_bytes": sum(map(len, rec.texts)), "rules": result.total_rules}
    if spec.get("partial"):
        out["partial"] = partials(mode, syncer, rec, services, endpoints, spec)
    if spec.get("latency"):
        print(json.dumps(out), flush=True)  # the sync figures first, then serve
        serve_latency(services)
        return None
    return out


def partials(mode, syncer, rec, services, endpoints, spec) -> dict:
    """One service's endpoints change (2 -> 1 -> 2 ...), then one new service appears."""
    from minikubenet.k8s_objects import Endpoint, Service, ServicePort

    keys = sorted(services)
    key = keys[len(keys) // 2]
    full_eps = endpoints[key]
    one = {pk: eps[:1] for pk, eps in full_eps.items()}
    times, sizes, applies = [], [], []
    for i in range(spec["partial_repeat"]):
        endpoints[key] = one if i % 2 == 0 else full_eps
        t = time.perf_counter()
        syncer.sync(services, endpoints, {key})
        times.append(time.perf_counter() - t)
        sizes.append(len(rec.text))
        applies.append(rec.seconds * 1000)
    out = {
        "endpoint_change_ms": [x * 1000 for x in times],
        "endpoint_change_bytes": sizes[0],
        "endpoint_change_apply_ms": applies,
    }
    new_times = []
    for i in range(spec["partial_repeat"]):
        svc = Service(
            "bench", f"new{i}", SERVICE_NET.broadcast_address - 1 - i, (ServicePort("http", "TCP", 80, 8080),)
        )
        services[svc.key] = svc
        endpoints[svc.key] = {
            svc.port_key(svc.ports[0]): [
                Endpoint(ipaddress.IPv4Address(f"10.245.0.{2 * i + 1}"), 8080),
                Endpoint(ipaddress.IPv4Address(f"10.245.0.{2 * i + 2}"), 8080),
            ]
        }
        t = time.perf_counter()
        syncer.sync(services, endpoints, {svc.key})
        new_times.append(time.perf_counter() - t)
    out["new_service_ms"] = [x * 1000 for x in new_times]
    out["new_service_bytes"] = len(rec.text)
    if mode == "iptables":
        # What kube-proxy writes for the same endpoint change: every fixed chain too.
        plan = syncer.plan(services, endpoints, set())
        previous = plan.state
        endpoints[key] = one if endpoints[key] is full_eps else full_eps
        plan = syncer.plan(services, endpoints, {key})
        text = plan.render_partial(previous)
        out["kube_proxy_style_bytes"] = len(text)
        out["kube_proxy_style_bare_ms"] = [
            bare_apply(mode, text, spec["iptables"]) * 1000 for _ in range(min(3, spec["partial_repeat"]))
        ]
        syncer.state = plan.state
    return out


SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(512)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""


def plumb() -> None:
    """A veth (this kernel may have no dummy driver) carrying the local endpoints, and a
    route for the service network, so a connect() to a ClusterIP leaves through OUTPUT."""
    for argv in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "add", "mkb0", "type", "veth", "peer", "name", "mkb1"],
        ["ip", "link", "set", "mkb1", "up"],
        ["ip", "link", "set", "mkb0", "up"],
        *[["ip", "addr", "add", f"{ip}/32", "dev", "mkb0"] for ip in LOCAL_ENDPOINTS],
        ["ip", "route", "add", str(SERVICE_NET), "dev", "mkb0", "src", LOCAL_ENDPOINTS[0]],
    ):
        subprocess.run(argv, check=True, capture_output=True)


class LatencyProbe:
    """A server on the last service's endpoints and a client that connect()s to its
    ClusterIP: TCP handshakes through OUTPUT's rules, timed one by one."""

    def __init__(self, services):
        plumb()
        self.ip = str(services[sorted(services)[-1]].cluster_ip)
        self.server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
        self.server.stdout.readline()

    def measure(self, connections: int) -> list[float]:
        linger = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT pile-up
        samples = []
        for _ in range(connections):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.settimeout(2)
            t = time.perf_counter_ns()
            s.connect((self.ip, 80))
            dt = time.perf_counter_ns() - t
            s.close()
            samples.append(dt / 1000)
        return samples

    def close(self) -> None:
        self.server.kill()
        self.server.wait()


def serve_latency(services) -> None:
    """Stay up with the rules loaded and answer ``measure K`` lines on stdin with a JSON
    list of K connect() times (microseconds); end at EOF. The orchestrator alternates
    between the sizes this way, so a slow moment of the machine hits all of them."""
    probe = LatencyProbe(services)
    try:
        probe.measure(200)  # the first ones warm caches
        print("ready", flush=True)
        for line in sys.stdin:
            if line.startswith("measure "):
                print(json.dumps(probe.measure(int(line.split()[1]))), flush=True)
    finally:
        probe.close()


def worker(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    if spec["task"] == "bare":
        with open(spec["text_file"]) as f:
            text = f.read()
        out: dict | None = {"bare_s": bare_apply(spec["mode"], text, spec["iptables"])}
    else:
        out = worker_full(spec)
    if out is not None:
        print(json.dumps(out))
    return 0


# --------------------------------------------------------------------------- orchestration


class Namespaces:
    """Throwaway namespaces ``<prefix>-<k>``; every one is deleted by ``close``, at the
    end: the kernel tears a deleted namespace's tables down in the background, which
    with thousands of chains takes seconds of CPU that would land in the next
    measurement."""

    def __init__(self):
        self.prefix = f"mknbench{os.getpid() % 100000}"
        self.made: list[str] = []

    def fresh(self) -> str:
        name = f"{self.prefix}-{len(self.made)}"
        self.made.append(name)
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    def drop(self, name: str) -> None:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def close(self) -> list[str]:
        for name in self.made:
            self.drop(name)
        return (
            [n for n in os.listdir("/run/netns") if n.startswith(self.prefix + "-")]
            if os.path.isdir("/run/netns")
            else []
        )


def run_worker(ns: str, spec: dict, tmp: str) -> dict:
    argv = worker_argv(ns, spec, tmp)
    p = subprocess.run(
        argv, capture_output=True, text=True, timeout=3600, env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)}
    )
    if p.returncode != 0:
        raise RuntimeError(f"worker {spec['task']} {spec['mode']} N={spec['n']} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout)


def worker_argv(ns: str, spec: dict, tmp: str) -> list[str]:
    path = os.path.join(tmp, f"spec-{secrets.token_hex(4)}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    return ["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), "--_worker", path]


class LatencyWorker:
    """A full-sync worker that stays up afterwards to measure connect() latency."""

    def __init__(self, ns: str, spec: dict, tmp: str):
        self.what = f"{spec['mode']} N={spec['n']}"
        self.proc = subprocess.Popen(
            worker_argv(ns, spec, tmp),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)},
        )
        self.sync = json.loads(self._line())
        if self._line() != "ready":
            raise RuntimeError(f"latency worker {self.what} did not get ready")

    def _pipe(self, name: str):
        """stdin/stdout/stderr of the worker (all three are pipes: Popen(..., PIPE))."""
        pipe = getattr(self.proc, name)
        assert pipe is not None
        return pipe

    def _line(self) -> str:
        line = self._pipe("stdout").readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"latency worker {self.what} failed:\n{self._pipe('stderr').read()[-3000:]}")
        return line.strip()

    def measure(self, connections: int) -> list[float]:
        self._pipe("stdin").write(f"measure {connections}\n")
        self._pipe("stdin").flush()
        return json.loads(self._line())

    def close(self) -> None:
        try:
            self._pipe("stdin").close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


LATENCY_ROUNDS = 10


def interleaved_latency(workers: dict[int, LatencyWorker], connections: int) -> dict:
    """``LATENCY_ROUNDS`` rounds; in each, every size measures connections/rounds
    connects, in an order that rotates round by round. A size's growth is the median
    over rounds of (its p50 / the smallest size's p50 in the same round): paired
    ratios cancel whatever the machine did between rounds."""
    sizes = sorted(workers)
    per_round = max(1, connections // LATENCY_ROUNDS)
    samples: dict[int, list[float]] = {n: [] for n in sizes}
    round_p50: dict[int, list[float]] = {n: [] for n in sizes}
    for r in range(LATENCY_ROUNDS):
        for n in sizes[r % len(sizes) :] + sizes[: r % len(sizes)]:
            got = workers[n].measure(per_round)
            samples[n] += got
            round_p50[n].append(statistics.median(got))
    out = {}
    for n in sizes:
        xs = sorted(samples[n])
        out[n] = {
            "p50_us": xs[len(xs) // 2],
            "p99_us": xs[int(len(xs) * 0.99)],
            "mean_us": statistics.fmean(xs),
            "n": len(xs),
            "round_p50_us": round_p50[n],
            "growth": statistics.median(a / b for a, b in zip(round_p50[n], round_p50[sizes[0]])),
        }
    return out


def measure(args, nss: Namespaces, tmp: str) -> dict:
    res: dict = {"full": {}, "partial": {}, "latency": {}}
    for mode in args.modes:
        res["full"][mode], res["latency"][mode] = {}, {}
        latency_workers: dict[int, LatencyWorker] = {}
        try:
            measure_mode(args, nss, tmp, res, mode, latency_workers)
            if latency_workers:
                say(
                    f"  {mode:8} connect latency: {LATENCY_ROUNDS} rounds alternating N="
                    f"{', '.join(str(n) for n in sorted(latency_workers))} ..."
                )
                res["latency"][mode] = interleaved_latency(latency_workers, args.connections)
        finally:
            for w in latency_workers.values():
                w.close()
    return res


def measure_mode(args, nss: Namespaces, tmp: str, res: dict, mode: str, latency_workers: dict) -> None:
    """Full syncs (and the partial syncs at the largest size) of one mode; the workers of
    the latency sizes stay up in ``latency_workers``."""
    biggest = max(args.sizes)
    for n in sorted(set(args.sizes) | set(args.latency_sizes)):
        rounds = []
        repeat = args.repeat if n in args.sizes else 1
        for r in range(repeat):
            text_file = os.path.join(tmp, f"text-{mode}-{n}.txt")
            spec = {
                "task": "full",
                "mode": mode,
                "n": n,
                "iptables": args.iptables,
                "text_file": text_file,
                "shape": args.shape,
                "partial": n == biggest and r == 0,
                "partial_repeat": args.partial_repeat,
                "latency": n in args.latency_sizes and r == 0,
                "connections": args.connections,
                "nft_stage_above": args.nft_stage_above,
            }
            order = ["full", "bare"] if r % 2 == 0 else ["bare", "full"]
            got: dict = {}
            if order[0] == "bare" and not os.path.exists(text_file):
                order = ["full", "bare"]
            for task in order:
                ns = nss.fresh()
                if task == "full" and spec["latency"]:
                    latency_workers[n] = LatencyWorker(ns, dict(spec, task=task), tmp)
                    got.update(latency_workers[n].sync)
                else:
                    got.update(run_worker(ns, dict(spec, task=task), tmp))
            rounds.append(got)
            say(
                f"  {mode:8} N={n:<6} round {r + 1}: sync {got['full_s'] * 1000:8.1f} ms "
                f"(kernel call {got['apply_s'] * 1000:.1f}), bare {got['bare_s'] * 1000:8.1f} ms"
            )
            if "partial" in got:
                res["partial"][mode] = got["partial"]
        if n in args.sizes:
            res["full"][mode][n] = {
                "sync_s": statistics.median(g["full_s"] for g in rounds),
                "apply_s": statistics.median(g["apply_s"] for g in rounds),
                "bare_s": statistics.median(g["bare_s"] for g in rounds),
                "text_bytes": rounds[0]["text_bytes"],
                "rules": rounds[0]["rules"],
                "rounds": rounds,
            }


# --------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(res: dict, args) -> str:
    lines = [
        f"minikubenet-proxy sync and connection benchmark ({args.shape} services), {res['started']}",
        f"machine: {res['machine']['cpu']} x{res['machine']['cores']}, kernel {res['machine']['kernel']}, "
        f"load {res['machine']['loadavg_start'][0]:.1f} -> {res['machine']['loadavg_end'][0]:.1f}; "
        f"iptables binary `{args.iptables}` ({res['machine']['iptables']}), {res['machine']['nft']}",
        "",
        "FULL SYNC (median of rounds; daemon = plan + render + one restore + jumps; bare = the same text alone)",
        f"{'mode':9} {'services':>8} {'rules':>8} {'daemon':>10} {'bare':>10} {'ratio':>6}  target <= {TARGETS['full_ratio']}",
    ]
    for mode, by_n in res["full"].items():
        for n, r in sorted(by_n.items(), key=lambda kv: int(kv[0])):
            ratio = r["sync_s"] / r["bare_s"]
            rules = sum(r["rules"].values())
            lines.append(
                f"{mode:9} {int(n):>8} {rules:>8} {r['sync_s'] * 1000:>8.0f}ms {r['bare_s'] * 1000:>8.0f}ms "
                f"{ratio:>6.2f}  {verdict(ratio <= TARGETS['full_ratio'])}"
            )
    if {"iptables", "nftables"} <= set(res["full"]):
        lines += ["", "NFTABLES / IPTABLES full sync (daemon, median; issue 13 target <= 1.0)"]
        for n in sorted(set(res["full"]["iptables"]) & set(res["full"]["nftables"]), key=int):
            ratio = res["full"]["nftables"][n]["sync_s"] / res["full"]["iptables"][n]["sync_s"]
            lines.append(f"{'nft/ipt':9} {int(n):>8} services: {ratio:.2f}  {verdict(ratio <= 1.0)}")
    lines += ["", f"PARTIAL SYNC at {max(args.sizes)} services (median; target <= {TARGETS['partial_ms']:.0f} ms)"]
    for mode, p in res["partial"].items():
        ec, ns = statistics.median(p["endpoint_change_ms"]), statistics.median(p["new_service_ms"])
        lines.append(
            f"{mode:9} one service's endpoints change: {ec:7.1f} ms ({p['endpoint_change_bytes']} bytes; "
            f"of it the {'iptables-restore' if mode == 'iptables' else 'nft -f'} call "
            f"{statistics.median(p['endpoint_change_apply_ms']):.1f} ms)  {verdict(ec <= TARGETS['partial_ms'])}"
        )
        lines.append(
            f"{mode:9} one new service:                {ns:7.1f} ms ({p['new_service_bytes']} bytes)  "
            f"{verdict(ns <= TARGETS['partial_ms'])}"
        )
        if "kube_proxy_style_bare_ms" in p:
            lines.append(
                f"{mode:9} (kube-proxy style, KUBE-SERVICES rewritten too: bare restore alone "
                f"{statistics.median(p['kube_proxy_style_bare_ms']):.1f} ms, {p['kube_proxy_style_bytes']} bytes)"
            )
    lines += [
        "",
        f"CONNECT LATENCY to the last service ({args.connections} connections per point in "
        f"{LATENCY_ROUNDS} alternating rounds, microseconds; 'vs 1' = median of the rounds' paired p50 ratios)",
        f"{'mode':9} {'services':>8} {'p50':>8} {'p99':>8} {'p50 vs 1':>9}",
    ]
    for mode, by_n in res["latency"].items():
        items = sorted(by_n.items(), key=lambda kv: int(kv[0]))
        for n, r in items:
            growth = r["growth"]
            note = ""
            if mode == "nftables" and int(n) == max(int(k) for k in by_n) and int(items[0][0]) == 1:
                note = (
                    f"  target <= {TARGETS['nft_latency_growth']}: {verdict(growth <= TARGETS['nft_latency_growth'])}"
                )
            lines.append(f"{mode:9} {int(n):>8} {r['p50_us']:>8.1f} {r['p99_us']:>8.1f} {growth:>8.2f}x{note}")
    return "\n".join(lines)


def plot(res: dict, args, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    for mode, by_n in res["full"].items():
        ns = sorted(int(n) for n in by_n)
        ax.plot(ns, [by_n[n if n in by_n else str(n)]["sync_s"] for n in ns], "o-", label=f"{mode}: daemon sync")
        ax.plot(ns, [by_n[n if n in by_n else str(n)]["bare_s"] for n in ns], "x--", label=f"{mode}: bare apply")
    ax.set(title="full sync", xlabel="services (2 endpoints each)", ylabel="seconds", yscale="log")
    ax.legend(fontsize=8)
    ax = axes[1]
    labels: list[str] = []
    values: list[float] = []
    colors: list[str] = []
    for mode, p in res["partial"].items():
        labels += [f"{mode}\nendpoints", f"{mode}\nnew service"]
        values += [statistics.median(p["endpoint_change_ms"]), statistics.median(p["new_service_ms"])]
        if "kube_proxy_style_bare_ms" in p:
            labels.append(f"{mode}\nkube-proxy style\n(bare restore)")
            values.append(statistics.median(p["kube_proxy_style_bare_ms"]))
        colors += ["tab:blue" if mode == "iptables" else "tab:green"] * (len(labels) - len(colors))
    ax.bar(labels, values, color=colors)
    ax.axhline(TARGETS["partial_ms"], color="red", linestyle=":", label="target 100 ms")
    ax.set(title=f"partial sync at {max(args.sizes)} services", ylabel="ms")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=8)
    ax = axes[2]
    for mode, by_n in res["latency"].items():
        ns = sorted(int(n) for n in by_n)
        get = lambda n, k, by_n=by_n: by_n[n if n in by_n else str(n)][k]  # noqa: E731
        ax.plot(ns, [get(n, "p50_us") for n in ns], "o-", label=f"{mode} p50")
        ax.plot(ns, [get(n, "p99_us") for n in ns], "x--", label=f"{mode} p99")
    ax.set(title="connect() to the last service", xlabel="services", ylabel="microseconds", yscale="log")
    ax.legend(fontsize=8)
    fig.suptitle(f"minikubenet-proxy, {res['started']} ({res['machine']['cores']} cores, {res['machine']['kernel']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine() -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    version = lambda argv: subprocess.run(argv, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
        "iptables": version(["iptables", "--version"]),
        "nft": version(["nft", "--version"]),
    }


def build_parser() -> argparse.ArgumentParser:
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", type=lambda s: s.split(","), default=["iptables", "nftables"])
    p.add_argument("--sizes", type=ints, default=[1000, 5000, 10000], help="services for the full-sync table")
    p.add_argument("--latency-sizes", type=ints, default=[1, 5000, 10000])
    p.add_argument("--repeat", type=int, default=3, help="full-sync rounds per size (medians)")
    p.add_argument("--partial-repeat", type=int, default=7)
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--iptables", default="iptables", help="iptables, iptables-nft or iptables-legacy")
    p.add_argument(
        "--shape",
        choices=SHAPES,
        default="clusterip",
        help="services: ClusterIP, LoadBalancer with an ingress IP, or LoadBalancer with externalTrafficPolicy Local",
    )
    p.add_argument(
        "--nft-stage-above",
        type=int,
        default=None,
        help="nftables: stage full syncs above this many service ports (default the syncer's, "
        "nft_render.STAGE_ABOVE; a huge number = one transaction, as kube-proxy)",
    )
    p.add_argument("--results-dir", default=RESULTS_DIR)
    p.add_argument("--no-save", dest="save", action="store_false")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args._worker:
        return worker(args._worker)
    if os.geteuid() != 0:
        say("this benchmark needs root (network namespaces)")
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)

    res: dict = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
    }
    nss = Namespaces()
    tmp = tempfile.mkdtemp(prefix="minikubenet-bench-svc-")
    code = 0
    try:
        say(f"namespaces {nss.prefix}-*; modes {args.modes}; sizes {args.sizes}; latency at {args.latency_sizes}")
        res.update(measure(args, nss, tmp))
    except KeyboardInterrupt as e:
        say(f"interrupted ({e or 'Ctrl-C'})")
        code = 130
    except RuntimeError as e:
        say(f"FAILED: {e}")
        code = 1
    finally:
        left = nss.close()
        subprocess.run(["rm", "-rf", tmp])
        say(f"{len(nss.made)} namespaces removed" + (f"; LEFT BEHIND: {left}" if left else ""))
    if code:
        return code
    res["machine"]["loadavg_end"] = os.getloadavg()
    text = report(res, args)
    print(text)
    if args.save:
        os.makedirs(args.results_dir, exist_ok=True)
        base = os.path.join(args.results_dir, f"services-{res['started'].replace(':', '')}")
        with open(base + ".json", "w") as f:
            json.dump(res, f, indent=1, default=str)
        with open(base + ".txt", "w") as f:
            f.write(text + "\n")
        plot(res, args, base + ".png")
        say(f"results: {base}.json, .txt, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
