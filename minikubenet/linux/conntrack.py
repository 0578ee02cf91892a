"""Deleting conntrack entries, so that UDP clients move off an endpoint that is gone.

NAT happens once per *flow*: the first packet goes through the nat table and is DNATed
to an endpoint; conntrack remembers the choice and rewrites every later packet of the
flow without looking at any rule again. For TCP that is what we want: a connection
ends, the next one is balanced anew. UDP has no end: a client that keeps sending from
the same socket (DNS, statsd, a game) keeps refreshing its entry (30 s, 120 s once the
flow is bidirectional), so after its endpoint is deleted its packets are *still* DNATed
to the dead pod IP, forever. kube-proxy therefore deletes the UDP entries of a
service whose endpoints were removed (kubernetes#125467, #126130), and so do we:

    conntrack -D -p udp --orig-dst <clusterIP> --orig-port-dst <port> --reply-src <old endpoint>
    conntrack -D -p udp --orig-port-dst <nodePort> --reply-src <old endpoint>

The next packet of the client finds no entry, goes through the rules again and is
DNATed to a live endpoint. (``--reply-src``: in a DNATed flow the reply comes *from*
the endpoint, so the reply tuple names it.) Only UDP: deleting TCP entries would break
connections that are draining gracefully (kubernetes#101607).

This is kube-proxy's pre-1.32 event-based cleanup, done with the ``conntrack`` tool
(pkg/util/conntrack, ClearEntriesForNAT / ClearEntriesForPort). The tool exits 1 when
nothing matched ("0 flow entries have been deleted"), which is not an error here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass


class ConntrackError(Exception):
    pass


@dataclass(frozen=True)
class UdpFlowFilter:
    """UDP entries to delete: to ``dst_ip:dst_port`` (any dst IP when ``dst_ip`` is
    None: a NodePort) whose reply comes from ``endpoint_ip``; every endpoint when it
    is None (a service that just got its first endpoint: entries made while it had
    none were never DNATed, kube-proxy's NewlyActiveUDPServices)."""

    dst_port: int
    dst_ip: str | None = None
    endpoint_ip: str | None = None

    def argv(self, binary: str = "conntrack") -> list[str]:
        args = [binary, "-D", "-p", "udp"]
        if self.dst_ip:
            args += ["--orig-dst", self.dst_ip]
        args += ["--orig-port-dst", str(self.dst_port)]
        if self.endpoint_ip:
            args += ["--reply-src", self.endpoint_ip]
        return args


_DELETED = re.compile(r"(\d+) flow entries have been deleted")


def delete(f: UdpFlowFilter, binary: str = "conntrack") -> int:
    """Delete the matching entries; returns how many were deleted."""
    p = subprocess.run(f.argv(binary), capture_output=True, text=True)
    m = _DELETED.search(p.stderr + p.stdout)
    if m:
        return int(m.group(1))
    if p.returncode != 0:
        raise ConntrackError(f"{' '.join(f.argv(binary))}: {p.stderr.strip() or f'exit {p.returncode}'}")
    return 0


def available(binary: str = "conntrack") -> bool:
    return shutil.which(binary) is not None
