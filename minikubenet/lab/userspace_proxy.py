"""The userspace proxy (proxy/userspace.py) on a lab node, for the proxy-modes benchmark
and its test.

A ClusterIP of the userspace proxy must be a local address of the node: one
``ip route add local <ClusterIP>/32 dev lo`` in the node's namespace (the lab's own
namespace, never the host's) makes the kernel deliver the node's pods' packets for it
to the proxy's socket. The addresses are taken from the top of the service network,
out of the range the ClusterIP allocator hands out first, and the proxy's own rules
never see them (no Service object exists for them). The process is started with the
lab's ``_start``, so ``lab down`` stops it by PID.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time

from minikubenet.lab import probes, processes
from minikubenet.lab.processes import ProcessRecord

# 10.96.0.0/12 ends at 10.111.255.255; the allocator starts at the bottom
USERSPACE_VIPS = [ipaddress.IPv4Address("10.111.255.200") + i for i in range(50)]


def start(lab, node_name: str, services: dict[tuple[str, int], list[tuple[str, int]]]) -> ProcessRecord:
    """Run the userspace proxy in ``node_name``'s namespace for ``services``
    ({(clusterIP, port): [(endpoint ip, port), ...]}); returns when every port listens."""
    node = lab.topo.node(node_name)
    for vip in sorted({ip for ip, _ in services}):
        subprocess.run(
            ["ip", "-n", node.netns, "route", "replace", "local", f"{vip}/32", "dev", "lo"],
            check=True,
            capture_output=True,
        )
    argv = [sys.executable, "-m", "minikubenet.proxy.userspace"]
    for (vip, port), eps in services.items():
        argv += ["--service", f"{vip}:{port}=" + ",".join(f"{ip}:{p}" for ip, p in eps)]
    log = os.path.join(lab.dir, "logs", f"userspace-proxy-{node.name}.log")
    rec = lab._start(node.netns, argv, log, f"userspace proxy {node.name}")
    wait_listening(node.netns, list(services), rec, log)
    return rec


def wait_listening(
    netns: str,
    addrs: list[tuple[str, int]],
    rec: ProcessRecord,
    log: str,
    timeout: float = 15.0,
    what: str = "the userspace proxy",
) -> None:
    """Until ``ss`` lists every address as listening (``0.0.0.0``: any address). Not by
    connecting: a probe connection would be proxied to an endpoint (iperf3 takes it for
    a client and resets the real one)."""
    deadline = time.monotonic() + timeout

    def listening(ip: str, port: int, seen: set[str]) -> bool:
        wild = {f"*:{port}", f"0.0.0.0:{port}", f"[::]:{port}"}
        return f"{ip}:{port}" in seen or (ip == "0.0.0.0" and bool(wild & seen))

    while True:
        out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hltn"], capture_output=True, text=True).stdout
        seen = {line.split()[3] for line in out.splitlines() if len(line.split()) > 3}
        if all(listening(ip, port, seen) for ip, port in addrs):
            return
        if not rec.alive() or time.monotonic() > deadline:
            raise probes.ProbeFailed(
                f"{what} does not listen on "
                f"{', '.join(f'{ip}:{port}' for ip, port in addrs)} in {netns}; "
                f"{log} ends with:\n{processes.tail(log)}"
            )
        time.sleep(0.05)
