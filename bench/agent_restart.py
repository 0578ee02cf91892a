"""An agent restart under a flowing TCP stream: does the pod network notice?

    .venv/bin/python bench/agent_restart.py [--rounds 5] [--backends vxlan,bgp] [--seconds 6]

For each backend a 2-node lab (one pod per node) is built; all are up at once and the
rounds alternate between them (the order flips every round). A round runs iperf3 from
n1-p1 to n2-p1 for ``--seconds`` at a fixed rate (``--rate``: below what the machine
can carry, so congestion adds no retransmits of its own) and restarts the sender node's
agent (stop, start) a second in. iperf3 -J counts the sender's TCP retransmits; the same
stream without a restart is measured in the same round as the baseline.

What it shows: vxlan's device, FDB and routes stay in the kernel while its agent is away.
bgp's routes on the restarting node stay (the kernel protocol's ``persist``), but the
agent stops BIRD, which closes its sessions cleanly, so the peers withdraw the node's
subnet until the new agent's BIRD has its sessions back (BIRD's first connect waits
0.75-1 s): the return path of the stream is gone meanwhile.
Figures are saved in bench/results/agent_restart.json.
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
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minikubenet.lab import processes  # noqa: E402
from minikubenet.lab.cluster import Lab  # noqa: E402
from minikubenet.lab.topology import build_topology  # noqa: E402
from minikubenet.waiting import wait_until  # noqa: E402

PORT = 5201
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def stream(lab: Lab, seconds: int, rate: str, restart_at: float | None) -> dict:
    """One iperf3 stream n1-p1 -> n2-p1; with ``restart_at``, n1's agent is restarted
    that many seconds in. Returns retransmits, Gbit/s and the restart's duration."""
    ips = {name: rec["ip"] for name, rec in lab.pods().items()}
    pods = {p.name: p for p in lab.topo.pods()}
    server_ns, client_ns = pods["n2-p1"].netns, pods["n1-p1"].netns
    rec = lab._start(
        server_ns, ["iperf3", "-s", "-p", str(PORT)], os.path.join(lab.dir, "logs", "iperf3.log"), "iperf3"
    )
    restarted: dict[str, float] = {}
    try:
        # the listening socket, read with ss (a probe connection would be taken for a client)
        wait_until(
            lambda: (
                f":{PORT} "
                in subprocess.run(
                    ["ip", "netns", "exec", server_ns, "ss", "-Hltn"], capture_output=True, text=True
                ).stdout
            ),
            10,
            what="iperf3 listening",
        )

        def restart() -> None:
            time.sleep(restart_at or 0)
            t0 = time.monotonic()
            lab.stop_agent("n1")
            lab.start_agent("n1")
            restarted["agent_down_s"] = time.monotonic() - t0

        t = threading.Thread(target=restart) if restart_at is not None else None
        argv = ["ip", "netns", "exec", client_ns, "iperf3", "-c", ips["n2-p1"], "-p", str(PORT)]
        argv += ["-t", str(seconds), "-b", rate, "-J"]
        client = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        if t:
            t.start()
        out, _ = client.communicate(timeout=seconds + 60)
        if t:
            t.join()
        doc = json.loads(out)
        if "error" in doc:
            raise RuntimeError(f"iperf3: {doc['error']}")
        sent = doc["end"]["sum_sent"]
        return {
            "retransmits": sent.get("retransmits", 0),
            "gbps": doc["end"]["sum_received"]["bits_per_second"] / 1e9,
            **restarted,
        }
    finally:
        processes.stop([rec.pid])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--backends", default="vxlan,bgp")
    p.add_argument("--seconds", type=int, default=6)
    p.add_argument("--rate", default="500M", help="iperf3 -b")
    p.add_argument("--racks", type=int, default=1, help="2: the two nodes on different racks (lab up --racks)")
    p.add_argument("--json", default=os.path.join(RESULTS, "agent_restart.json"))
    args = p.parse_args()
    backends = args.backends.split(",")
    results: dict[str, dict[str, list]] = {b: {"restart": [], "baseline": []} for b in backends}
    labs: dict[str, Lab] = {}
    with tempfile.TemporaryDirectory(prefix="mkn-bench-") as root:
        try:
            for i, b in enumerate(backends):
                lab = Lab(
                    build_topology(
                        f"ar{os.getpid() % 10000}{i}", nodes=2, pods_per_node=1, backend=b, racks=args.racks
                    ),
                    root=root,
                    say=lambda *a: None,
                )
                lab.proxy_mode = None
                labs[b] = lab
                lab.up()
            for r in range(args.rounds):
                for b in backends if r % 2 == 0 else list(reversed(backends)):
                    results[b]["baseline"].append(stream(labs[b], args.seconds, args.rate, None))
                    results[b]["restart"].append(stream(labs[b], args.seconds, args.rate, 1.0))
                    if b == "bgp":
                        labs[b].wait_bgp_converged(timeout=30)
        finally:
            for lab in labs.values():
                lab.down()
    machine = f"{os.cpu_count()} cores, kernel {platform.release()}, Python {platform.python_version()}"
    print(f"machine: {machine}")
    print(
        f"agent restart (n1, the sender's node) under iperf3 -b {args.rate} for {args.seconds} s, "
        f"{args.rounds} alternating rounds: median [min - max]"
    )
    print(f"  {'':<34}" + "".join(f"{b:>24}" for b in backends))
    for kind, key, label in (
        ("baseline", "retransmits", "retransmits, no restart"),
        ("restart", "retransmits", "retransmits, agent restarted"),
        ("restart", "gbps", "Gbit/s received, agent restarted"),
        ("restart", "agent_down_s", "agent stop+start took (s)"),
    ):
        cells = []
        for b in backends:
            v = [x[key] for x in results[b][kind]]
            cells.append(f"{statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]")
        print(f"  {label:<34}" + "".join(f"{c:>24}" for c in cells))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": machine, "rate": args.rate, "seconds": args.seconds, "results": results}, f, indent=1)
    print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
