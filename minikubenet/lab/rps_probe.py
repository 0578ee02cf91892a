"""Receive packet steering in the lab: on, off, or whichever measures faster here.

Whether RPS (linux/rps.py) helps a netns lab depends on the machine. It moves each
receive hop of a pod's path to another CPU, as between two real machines; that pays
when the sending CPU is the bottleneck and costs when the cross-CPU handoff (an IPI
per batch, a colder cache) is dearer than the work moved. Measured with
bench/throughput.py: on one 2-core VM RPS took host-gw pod -> pod from 0.76 to 0.99 of
the underlay; on a fresh VM of the same kind it took it from 0.94-0.96 down to 0.80-0.83.
So the lab does not pick one: ``lab up --rps off`` (the default, the kernel's own
setting), ``on`` (every CPU but the first), or ``auto``: once the pods are up, a short
probe streams pod -> pod across two nodes with RPS off and on, alternating, and keeps
whichever carried more.

The setting is written live to every receive queue of every device in every node's
namespace (underlay port, cni0, flannel.1, the pods' host-side veths): the same devices
the agent's ``--rps-cpus`` covers. The running agents keep the flag they started with,
so the choice is recorded in the lab's state: ``lab pod add`` applies it to the node's
devices after each ADD, and agents started again (``Lab.start_agent``) get it as
their ``--rps-cpus``.
"""

from __future__ import annotations

import os
import statistics
import subprocess

from minikubenet.lab import iperf
from minikubenet.linux import rps

MODES = ("off", "on", "auto")


def apply_to_netns(netns: str, mask: str | None) -> None:
    """``mask`` (None: off) on every receive queue of every device but lo in ``netns``.
    ``ip netns exec`` mounts the namespace's own sysfs for the shell it runs."""
    value = mask or "0"
    script = (
        "for q in /sys/class/net/*/queues/rx-*/rps_cpus; do "
        f'case "$q" in /sys/class/net/lo/*) ;; *) echo {value} > "$q" ;; esac; done'
    )
    subprocess.run(["ip", "netns", "exec", netns, "sh", "-c", script], check=True, capture_output=True)


def apply_to_lab(lab, mask: str | None) -> None:
    for node in lab.topo.nodes:
        apply_to_netns(node.netns, mask)


def choose(off_gbps: list[float], on_gbps: list[float]) -> bool:
    """True when RPS on carried more than off (medians of the alternating runs)."""
    return bool(on_gbps) and bool(off_gbps) and statistics.median(on_gbps) > statistics.median(off_gbps)


def probe(lab, seconds: int = 1, rounds: int = 2) -> tuple[str | None, str]:
    """Measure pod -> pod across the lab's first two nodes with RPS off and on,
    ``rounds`` times each, alternating; leave the faster setting applied. Returns the
    chosen mask (None: off) and a sentence saying what was measured."""
    mask = rps.all_but_first_cpu()
    if mask is None:
        return None, "one CPU: nothing to steer, RPS off"
    if not iperf.available():
        return None, "iperf3 is not installed (./setup.sh installs it): no probe, RPS off"
    with_pods = [n for n in lab.topo.nodes if n.pods]
    if len(with_pods) < 2:
        return None, "fewer than two nodes with pods: nothing to probe, RPS off"
    client, server = with_pods[0].pods[0], with_pods[1].pods[0]
    server_ip = lab.pods()[server.name]["ip"]
    log = os.path.join(lab.dir, "logs", "rps-probe-iperf3.log")
    runs: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds):
        for on in (False, True) if r % 2 == 0 else (True, False):
            apply_to_lab(lab, mask if on else None)
            runs[on].append(iperf.stream(lab._start, server.netns, server_ip, client.netns, seconds, log)["gbps"])
    on = choose(runs[False], runs[True])
    apply_to_lab(lab, mask if on else None)
    figures = (
        f"pod -> pod {statistics.median(runs[False]):.1f} Gbit/s without, "
        f"{statistics.median(runs[True]):.1f} with (median of {rounds} x {seconds} s each)"
    )
    return (mask, f"RPS on, CPU mask {mask}: {figures}") if on else (None, f"RPS off: {figures}")
