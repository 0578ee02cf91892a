#!/usr/bin/env python3
"""NetworkPolicy: from ``minikubenet apply -f`` returning to the policy enforced on every
node, and from ``delete -f`` returning to traffic flowing again (issue target: <= 1 s on a
3-node lab).

A 3-node lab (one pod per node, the lab's policy daemon ``minikubenet-policy`` on every
node). Each pod has a watcher process in its own namespace that opens a new TCP
connection to the pod of the next node every 10 ms (n1 -> n2 -> n3 -> n1, 100 ms
connect timeout) and reports the monotonic time it first sees the state it waits for:
"blocked" after apply, "open" after delete. The policy denies ingress to every pod of
the namespace, so each watcher's target is enforced by a different node: the last
watcher to see it is the moment the policy holds on every node. CLOCK_MONOTONIC is
one clock for every namespace, so the watchers' times and the CLI's return compare.

The CLI runs as a user runs it (``lab exec etcd -- minikubenet apply -f FILE``, the
admin certificate). Rounds alternate the policy daemons' mode (iptables, nftables);
per mode the median and min-max of the rounds. A "blocked" is observed as a connect
timeout, so the figure has a resolution of about 100 ms + 10 ms (it is an upper
bound); "open" has the resolution of the 10 ms loop.

    sudo .venv/bin/python -m bench.policy_enforce            # 5 rounds per mode
    sudo .venv/bin/python -m bench.policy_enforce --rounds 2
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from bench import record

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TARGET_S = 1.0
DENY_ALL = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bench-deny-ingress, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""

# Runs in a pod's namespace: says "ready", waits for "go", then probes until it sees ``want``.
WATCHER = r"""
import socket, sys, time
ip, port, want, deadline = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
def is_open():
    s = socket.socket(); s.settimeout(0.1)
    try:
        s.connect((ip, port)); return True
    except OSError:
        return False
    finally:
        s.close()
print("ready", flush=True)
sys.stdin.readline()  # "go": the CLI is about to run
while time.monotonic() < deadline:
    if is_open() == (want == "open"):
        print(time.monotonic(), flush=True); break
    time.sleep(0.01)
else:
    print("timeout", flush=True)
"""


def watchers(lab, want: str, timeout: float = 20.0) -> list[subprocess.Popen]:
    from minikubenet.lab.topology import POD_PORT

    pods = list(lab.topo.pods())
    ips = lab.pods()
    procs = []
    for i, src in enumerate(pods):
        dst = pods[(i + 1) % len(pods)]
        procs.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    src.netns,
                    sys.executable,
                    "-I",
                    "-S",
                    "-c",
                    WATCHER,
                    ips[dst.name]["ip"],
                    str(POD_PORT),
                    want,
                    str(time.monotonic() + timeout),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return procs


def cli(lab, *args: str) -> None:
    argv = ["ip", "netns", "exec", lab.topo.etcd_netns, sys.executable, "-m", "minikubenet", *args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**os.environ, **lab.admin_env()})
    if p.returncode != 0:
        raise RuntimeError(f"minikubenet {' '.join(args)}: {p.stderr.strip()}")


def one(lab, verb: str, path: str) -> float:
    """Seconds from ``verb -f path`` returning to every watcher seeing its effect."""
    procs = watchers(lab, "blocked" if verb == "apply" else "open")
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    cli(lab, verb, "-f", path)
    returned = time.monotonic()
    seen = []
    for p in procs:
        out, _ = p.communicate(timeout=30)
        line = out.strip().splitlines()[-1] if out.strip() else "timeout"
        if line == "timeout":
            raise RuntimeError(f"{verb}: not enforced on every node within 20 s")
        seen.append(float(line))
    return max(seen) - returned


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.policy_enforce", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--modes", default="iptables,nftables")
    p.add_argument("--out", default=RESULTS, help=f"directory for the JSON (default {RESULTS})")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.policy_enforce needs root (network namespaces)", file=sys.stderr)
        return 1
    from minikubenet.lab import services as S
    from minikubenet.lab.cluster import Lab
    from minikubenet.lab.topology import build_topology

    def on_term(signum, frame):  # SIGTERM as Ctrl-C: the finally below takes the lab down
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    modes = args.modes.split(",")
    root = tempfile.mkdtemp(prefix="mkn-bench-enforce-")
    lab = Lab(build_topology(f"pe{os.getpid() % 100000}", nodes=3, pods_per_node=1), root=root, say=lambda *a: None)
    fd, path = tempfile.mkstemp(suffix=".yaml")
    os.write(fd, DENY_ALL.encode())
    os.close(fd)
    got: dict[str, dict[str, list[float]]] = {m: {"apply": [], "delete": []} for m in modes}
    try:
        lab.up()
        current = lab.proxy_mode
        for r in range(args.rounds):
            for mode in modes if r % 2 == 0 else list(reversed(modes)):
                if mode != current:
                    S.restart_proxies(lab, mode)  # the policy daemons follow (and waits for their first sync)
                    current = mode
                for verb in ("apply", "delete"):
                    got[mode][verb].append(one(lab, verb, path))
                print(
                    f"round {r + 1} {mode:9s} apply {got[mode]['apply'][-1] * 1000:6.0f} ms, "
                    f"delete {got[mode]['delete'][-1] * 1000:6.0f} ms",
                    flush=True,
                )
    finally:
        lab.down()
        os.unlink(path)
    summary = {
        m: {
            v: {"median_ms": statistics.median(x) * 1000, "min_ms": min(x) * 1000, "max_ms": max(x) * 1000}
            for v, x in got[m].items()
        }
        for m in modes
    }
    print(f"\napply -f / delete -f returned -> enforced on all 3 nodes (median, min-max of {args.rounds} rounds):")
    for m, s in summary.items():
        for v, fig in s.items():
            verdict = (
                "met"
                if fig["max_ms"] <= TARGET_S * 1000
                else "NOT met"
                if fig["median_ms"] > TARGET_S * 1000
                else "spread crosses"
            )
            print(
                f"  {m:9s} {v:6s} {fig['median_ms']:6.0f} ms ({fig['min_ms']:.0f}-{fig['max_ms']:.0f})  target <= 1 s: {verdict}"
            )
    doc = {"rounds": args.rounds, "summary": summary, "raw_s": got}
    print(f"saved {record.save(args.out, 'policy_enforce', doc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
