"""One iperf3 TCP stream between two of a lab's namespaces, with the CPU it cost.

Used by the lab's receive-packet-steering probe (rps_probe.py) and by bench/backends.py.
The client runs on the first usable CPU and the server on the others, in every
measurement (the same placement for the underlay and every pod path; RPS, when on,
steers receive work to the server's CPUs, linux/rps.py).

CPU cost: ``/proc/stat``'s ``system`` and ``softirq`` columns of all CPUs, read before and
after the transfer (proc(5)). Packet processing in a netns lab is kernel work, and
most of it runs in softirq, where ``getrusage`` of the two iperf3 processes does not
see it; the machine-wide counters do, and also count whatever else the machine does
meanwhile, so on a shared machine the figure is an upper bound.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from minikubenet.lab import processes
from minikubenet.linux import rps
from minikubenet.waiting import wait_until

PORT = 5201


class IperfError(Exception):
    pass


def available() -> bool:
    return shutil.which("iperf3") is not None


def cpu_placement() -> tuple[list[str], list[str]]:
    """taskset prefixes of the client (first usable CPU) and the server (the others)."""
    cpus = rps.usable_cpus()
    client = ["taskset", "-c", str(cpus[0])]
    server = ["taskset", "-c", ",".join(str(c) for c in cpus[1:])] if len(cpus) > 1 else []
    return client, server


def kernel_cpu_seconds() -> float:
    """system + softirq time of all CPUs so far, in seconds (/proc/stat, USER_HZ ticks)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()  # "cpu user nice system idle iowait irq softirq ..."
    return (int(fields[3]) + int(fields[7])) / os.sysconf("SC_CLK_TCK")


def _listening(netns: str, port: int) -> bool:
    # ss, not a connect: iperf3 would take a probe connection for a client and reset the real one
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hltn"], capture_output=True, text=True).stdout
    return f":{port} " in out


def stream(start, server_ns: str, server_ip: str, client_ns: str, seconds: float, log: str) -> dict:
    """One TCP stream client_ns -> server_ip for ``seconds``. ``start(netns, argv, log, what)``
    starts the server and returns its ProcessRecord (the lab's ``_start``, so ``lab down``
    finds it after a crash). Returns gbps (received), retransmits, kernel_cpu_s and
    cpu_s_per_gbit (system+softirq seconds per gigabit transferred)."""
    client_cpu, server_cpus = cpu_placement()
    rec = start(server_ns, [*server_cpus, "iperf3", "-s", "-1", "-p", str(PORT)], log, "iperf3 server")
    try:
        if not wait_until(lambda: _listening(server_ns, PORT), 10, interval=0.05):
            raise IperfError(f"iperf3 does not listen in {server_ns}")
        argv = ["ip", "netns", "exec", client_ns, *client_cpu, "iperf3", "-c", server_ip, "-p", str(PORT)]
        argv += ["-t", f"{seconds:g}", "-J"]
        cpu0 = kernel_cpu_seconds()
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        cpu = kernel_cpu_seconds() - cpu0
        try:
            doc = json.loads(out.stdout)
        except ValueError:
            raise IperfError(f"iperf3 printed no JSON: {out.stderr.strip()[:200]}") from None
        if "error" in doc:
            raise IperfError(f"iperf3: {doc['error']}")
        end = doc["end"]
        gbits = end["sum_received"]["bytes"] * 8 / 1e9
        return {
            "gbps": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": end["sum_sent"].get("retransmits", 0),
            "kernel_cpu_s": cpu,
            "cpu_s_per_gbit": cpu / gbits if gbits else float("nan"),
        }
    finally:
        processes.stop([rec.pid])
