#!/usr/bin/env python3
"""NetworkPolicy benchmark: connect latency through the policy rules, and the policy
controller's full sync against the bare restore of the same text, in the same run.

1. connect latency: a client pod and a server pod on one node (same subnet: the SYN
   crosses the bridge and, through br_netfilter, FORWARD). TCP connect()+close p50 with
   no policy, and with N policies (default 1 000) each selecting one of N local pods
   (the server's last in order), each allowing ingress from the client on port 80, in
   both renderings. Rounds alternate the three setups; the ratio against no policy is
   the median of the rounds' paired ratios. Target nftables <= 1.1 x no policy. The
   node tracks connections in every setup (the agent's masquerade rule), as a real node
   does. One round's p50 moves by +-20 % on a shared machine, more than the rules cost
   (a few set lookups per new connection); hence 11 rounds by default, and the spread
   printed beside the median.
2. full sync at 1 000 and 5 000 policies: ``PolicySyncer.sync()`` (plan, render, list,
   one restore) in a worker inside a fresh namespace, against ``iptables-restore
   --noflush`` / ``nft -f`` of the exact text it applied, in another fresh namespace;
   ``--repeat`` rounds alternating which goes first; medians. Target <= 1.3.

Everything runs in throwaway namespaces ``mknpolbench<pid>-…`` removed in ``finally``;
the host's own rules are never touched. Needs root.

    sudo .venv/bin/python -m bench.policy
    sudo .venv/bin/python -m bench.policy --sizes 500 --policies 200 --connections 100 --rounds 2 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from minikubenet.policy.model import Cluster, Pod, policy_from_k8s

TAG = f"mknpolbench{os.getpid()}"
SERVER = r"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 80)); s.listen(512)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""
CLIENT = r"""
import json, socket, sys, time
ip, n = sys.argv[1], int(sys.argv[2]); out = []
for _ in range(n):
    s = socket.socket(); t = time.perf_counter(); s.connect((ip, 80)); out.append(time.perf_counter() - t); s.close()
print(json.dumps(out))
"""


def sh(*argv: str, input: str | None = None) -> str:
    p = subprocess.run(argv, input=input, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}...: {p.stderr.strip()[-500:]}")
    return p.stdout


def cluster(n_policies: int) -> Cluster:
    """N policies, policy i selecting local pod i (the server is the last), each allowing
    ingress on TCP 80 from the client."""
    pods = [
        Pod("bench", "client", "10.244.1.2", "n1", {"role": "client"}),
        Pod("bench", "zz-server", "10.244.1.3", "n1", {"id": str(n_policies - 1)}),
    ]
    for i in range(n_policies - 1):
        pods.append(Pod("bench", f"p{i:05d}", f"10.244.{2 + i // 250}.{1 + i % 250}", "n1", {"id": str(i)}))
    policies = [
        policy_from_k8s(
            {
                "metadata": {"namespace": "bench", "name": f"np{i:05d}"},
                "spec": {
                    "podSelector": {"matchLabels": {"id": str(i)}},
                    "ingress": [
                        {
                            "from": [
                                {"podSelector": {"matchLabels": {"role": "client"}}},
                                {"ipBlock": {"cidr": f"192.168.{i % 250}.0/24"}},
                            ],
                            "ports": [{"port": 80}],
                        }
                    ],
                },
            }
        )
        for i in range(n_policies)
    ]
    return Cluster(policies, pods, {"bench": {"kubernetes.io/metadata.name": "bench"}})


# --------------------------------------------------------------------------- latency


def build_pods() -> tuple[str, str, str, subprocess.Popen]:
    node, client, server = f"{TAG}-node", f"{TAG}-c", f"{TAG}-s"
    for ns in (node, client, server):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", node, "link", "add", "cni0", "type", "bridge")
    sh("ip", "-n", node, "addr", "add", "10.244.1.1/24", "dev", "cni0")
    sh("ip", "-n", node, "link", "set", "cni0", "up")
    sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1")
    # A node as every node is: the agent's masquerade rule (and the proxy's NAT) make the
    # kernel track connections whatever the policies. Without it the "no policy" setup
    # would run without conntrack, and the policy setups' `ct state` would be charged
    # with conntrack's whole per-packet cost (measured: about +10 % on its own).
    sh(
        "ip",
        "netns",
        "exec",
        node,
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.244.0.0/16",
        "!",
        "-d",
        "10.244.0.0/16",
        "-j",
        "MASQUERADE",
    )
    for i, (ns, ip) in enumerate(((client, "10.244.1.2"), (server, "10.244.1.3"))):
        sh(
            "ip",
            "-n",
            node,
            "link",
            "add",
            f"pb{os.getpid() % 10000}{i}",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        )
        sh("ip", "-n", node, "link", "set", f"pb{os.getpid() % 10000}{i}", "master", "cni0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
    # Many short connections from one client: a wider port range, so its sockets in
    # TIME_WAIT never run it out of ports over a long run (per-namespace sysctl).
    sh("ip", "netns", "exec", client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000")
    srv = subprocess.Popen(
        ["ip", "netns", "exec", server, sys.executable, "-I", "-S", "-c", SERVER], stdout=subprocess.PIPE, text=True
    )
    assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
    return node, client, server, srv


def load(node: str, setup: str, texts: dict[str, str]) -> None:
    from minikubenet.policy import iptables_render, nft_render

    sh("ip", "netns", "exec", node, "nft", "-f", "-", input=nft_render.render_cleanup())
    sh("ip", "netns", "exec", node, "iptables", "-F", "FORWARD")
    sh("ip", "netns", "exec", node, "iptables", "-F", "INPUT")  # (both jump to MKN-POLICY)
    present = {
        line[1:].split()[0]
        for line in sh("ip", "netns", "exec", node, "iptables-save", "-t", "filter").splitlines()
        if line.startswith(":")
    }
    cleanup = iptables_render.render_cleanup(present)
    if cleanup:
        sh("ip", "netns", "exec", node, "iptables-restore", "--noflush", input=cleanup)
    if setup == "iptables":
        sh("ip", "netns", "exec", node, "iptables-restore", "--noflush", input=texts["iptables"])
    elif setup == "nftables":
        sh("ip", "netns", "exec", node, "nft", "-f", "-", input=texts["nftables"])


def latency(args) -> dict:
    from minikubenet.policy import iptables_render, nft_render
    from minikubenet.policy.plan import plan_node

    plan = plan_node(cluster(args.policies), "n1")
    texts = {
        "iptables": iptables_render.render(iptables_render.chains(plan), jump=True),
        "nftables": nft_render.render_full(nft_render.ruleset(plan)),
    }
    node, client, _server, srv = build_pods()
    p50s: dict[str, list[float]] = {"none": [], "nftables": [], "iptables": []}
    try:
        for r in range(args.rounds):
            order = list(p50s) if r % 2 == 0 else list(reversed(p50s))
            for setup in order:
                load(node, setup, texts)
                out = json.loads(
                    sh(
                        "ip",
                        "netns",
                        "exec",
                        client,
                        sys.executable,
                        "-I",
                        "-S",
                        "-c",
                        CLIENT,
                        "10.244.1.3",
                        str(args.connections),
                    )
                )
                p50s[setup].append(statistics.median(out) * 1e6)
    finally:
        srv.kill()
        srv.wait()
    ratios = {m: statistics.median(a / b for a, b in zip(p50s[m], p50s["none"])) for m in ("nftables", "iptables")}
    return {
        "p50_us": {k: statistics.median(v) for k, v in p50s.items()},
        "spread_us": {k: (min(v), max(v)) for k, v in p50s.items()},
        "ratio": ratios,
        "policies": args.policies,
        "rules": {"iptables": texts["iptables"].count("\n-A "), "nftables": texts["nftables"].count("\nadd rule")},
    }


# --------------------------------------------------------------------------- full sync


def worker(mode: str, size: int, what: str, text_file: str) -> float:
    """Inside a fresh namespace: time one full sync by the daemon's syncer (what=daemon,
    the text it applied is written to text_file) or the bare apply of that text."""
    from minikubenet.linux import iptables, nft
    from minikubenet.policy.syncers import make_syncer

    c = cluster(size)
    if what == "daemon":
        syncer = make_syncer(mode, "n1")
        captured: list[str] = []
        real = iptables.restore if mode == "iptables" else nft.apply

        def capture(text, *a, **kw):
            captured.append(text)
            return real(text, *a, **kw)

        if mode == "iptables":
            iptables.restore = capture
        else:
            nft.apply = capture
        t = time.perf_counter()
        syncer.sync(c)  # type: ignore[attr-defined]
        elapsed = time.perf_counter() - t
        with open(text_file, "w") as f:
            f.write(captured[0])
        return elapsed
    with open(text_file) as f:
        text = f.read()
    t = time.perf_counter()
    if mode == "iptables":
        subprocess.run(["iptables-restore", "--noflush"], input=text, text=True, check=True)
    else:
        subprocess.run(["nft", "-f", "-"], input=text, text=True, check=True)
    return time.perf_counter() - t


def in_fresh_ns(mode: str, size: int, what: str, text_file: str) -> float:
    ns = f"{TAG}-w"
    sh("ip", "netns", "add", ns)
    try:
        out = sh(
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-m",
            "bench.policy",
            "--worker",
            mode,
            str(size),
            what,
            text_file,
        )
        return float(out.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def full_sync(args) -> list[dict]:
    rows = []
    text_file = f"/tmp/{TAG}.txt"
    try:
        for size in args.sizes:
            for mode in ("iptables", "nftables"):
                daemon: list[float] = []
                bare: list[float] = []
                in_fresh_ns(mode, size, "daemon", text_file)  # warm up, and the text for "bare"
                for r in range(args.repeat):
                    order = ("daemon", "bare") if r % 2 == 0 else ("bare", "daemon")
                    for what in order:
                        (daemon if what == "daemon" else bare).append(in_fresh_ns(mode, size, what, text_file))
                rows.append(
                    {
                        "mode": mode,
                        "policies": size,
                        "daemon_ms": statistics.median(daemon) * 1000,
                        "bare_ms": statistics.median(bare) * 1000,
                        "ratio": statistics.median(daemon) / statistics.median(bare),
                        "daemon_spread_ms": (min(daemon) * 1000, max(daemon) * 1000),
                    }
                )
    finally:
        if os.path.exists(text_file):
            os.unlink(text_file)
    return rows


def cleanup_namespaces() -> None:
    for line in sh("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(TAG):
            subprocess.run(["ip", "netns", "del", name], check=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.policy", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,5000", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--policies", type=int, default=1000, help="policies (and pods) for the latency part")
    p.add_argument("--connections", type=int, default=500)
    p.add_argument("--rounds", type=int, default=11, help="latency rounds (each: the three setups, alternating)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        mode, size, what, text_file = args.worker
        print(worker(mode, int(size), what, text_file))
        return 0
    if os.geteuid() != 0:
        print("bench.policy needs root (network namespaces)", file=sys.stderr)
        return 1
    try:
        lat = latency(args)
        print(
            f"connect latency p50, {lat['policies']} policies selecting {lat['policies']} pods "
            f"(iptables {lat['rules']['iptables']} rules, nftables {lat['rules']['nftables']} rules):"
        )
        for k, v in lat["p50_us"].items():
            lo, hi = lat["spread_us"][k]
            ratio = f"  x{lat['ratio'][k]:.2f} vs no policy" if k in lat["ratio"] else ""
            print(f"  {k:9s} {v:7.1f} us  (rounds {lo:.1f}-{hi:.1f}){ratio}")
        print("full sync (daemon's syncer) vs bare restore of the same text:")
        for row in full_sync(args):
            print(
                f"  {row['mode']:9s} {row['policies']:5d} policies: daemon {row['daemon_ms']:7.1f} ms, "
                f"bare {row['bare_ms']:7.1f} ms, x{row['ratio']:.2f}"
            )
    finally:
        cleanup_namespaces()
    return 0


if __name__ == "__main__":
    sys.exit(main())
