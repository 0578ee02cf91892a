"""The reachability matrix: from every pod to every pod on one port, reachable or not.

This is the view the upstream Kubernetes network-policy e2e tests judge a CNI by
(test/e2e/network/netpol: reachability.go, truthtable.go): rows are the source pods,
columns the destinations, ``.`` reachable and ``X`` blocked::

    -       x/a  x/b  x/c  y/a  ...
    x/a     .    .    .    X
    x/b     .    .    .    X

A test states the *expected* matrix with a few rules (everything reachable, then
"nothing into x/a", "x/b may reach x/a"...), ``probe`` fills the *observed* one from
real connections (a TCP connect that gets the pod's answer, or a UDP datagram that is
echoed), and ``compare`` marks the cells that differ. As upstream does, a pod's
connection to itself is not judged ("loopback follows no policy": the packet never
leaves the pod's namespace).

The model part (``Reachability``) is pure; ``probe`` opens sockets inside the source
pods' namespaces (linux/netns.socket_in), many at once.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

Matrix = dict[tuple[str, str], bool]  # (from "ns/pod", to "ns/pod") -> reachable


class Reachability:
    """An expected matrix over ``pods`` ("ns/name" strings), built by rules applied in
    order, each overriding the cells it names (upstream's Expect*, ExpectPeer)."""

    def __init__(self, pods: Sequence[str], default: bool):
        self.pods = list(pods)
        self.expected: Matrix = {(a, b): default for a in self.pods for b in self.pods}

    def expect(self, src: str, dst: str, reachable: bool) -> Reachability:
        self.expected[(src, dst)] = reachable
        return self

    def expect_all_ingress(self, dst: str, reachable: bool) -> Reachability:
        """Everything into ``dst``."""
        for src in self.pods:
            self.expected[(src, dst)] = reachable
        return self

    def expect_all_egress(self, src: str, reachable: bool) -> Reachability:
        """Everything out of ``src``."""
        for dst in self.pods:
            self.expected[(src, dst)] = reachable
        return self

    def expect_peer(
        self, reachable: bool, from_ns: str = "", from_pod: str = "", to_ns: str = "", to_pod: str = ""
    ) -> Reachability:
        """Every pair whose source matches (from_ns, from_pod) and destination (to_ns,
        to_pod); an empty part matches anything."""
        for src in self.pods:
            if _matches(src, from_ns, from_pod):
                for dst in self.pods:
                    if _matches(dst, to_ns, to_pod):
                        self.expected[(src, dst)] = reachable
        return self


def _matches(pod: str, ns: str, name: str) -> bool:
    pod_ns, _, pod_name = pod.partition("/")
    return (not ns or ns == pod_ns) and (not name or name == pod_name)


# --------------------------------------------------------------------------- printing


def pretty(pods: Sequence[str], cells: dict[tuple[str, str], str]) -> str:
    """The matrix as upstream's TruthTable.PrettyPrint lays it out (aligned with spaces
    instead of tabs): a header row of destinations after "-", one row per source."""
    width = max([len(p) for p in pods] + [1])
    lines = ["  ".join(["-".ljust(width)] + [p.ljust(width) for p in pods]).rstrip()]
    for src in pods:
        lines.append("  ".join([src.ljust(width)] + [cells.get((src, dst), "?").ljust(width) for dst in pods]).rstrip())
    return "\n".join(lines)


def marks(matrix: Matrix) -> dict[tuple[str, str], str]:
    return {k: "." if v else "X" for k, v in matrix.items()}


def compare(pods: Sequence[str], expected: Matrix, observed: Matrix) -> tuple[list[tuple[str, str]], str]:
    """The cells where observed differs from expected (the diagonal is not judged), and a
    text with the expected, observed and comparison matrices (comparison: ``.`` agrees,
    ``X`` differs, ``-`` loopback, not judged)."""
    wrong = [(a, b) for a in pods for b in pods if a != b and expected.get((a, b)) != observed.get((a, b))]
    comparison = {(a, b): "-" if a == b else ("X" if (a, b) in wrong else ".") for a in pods for b in pods}
    text = (
        f"expected:\n{pretty(pods, marks(expected))}\n\nobserved:\n{pretty(pods, marks(observed))}\n\n"
        f"comparison ({len(wrong)} wrong):\n{pretty(pods, comparison)}"
    )
    return wrong, text


# --------------------------------------------------------------------------- probing


def connect(netns: str, ip: str, port: int, protocol: str, timeout: float = 1.0) -> bool:
    """One probe from inside ``netns``: TCP (and SCTP) connects and reads the server's
    answer; UDP sends a datagram and waits for the echo."""
    from minikubenet.linux.netns import path_of, socket_in

    kind = socket.SOCK_DGRAM if protocol == "UDP" else socket.SOCK_STREAM
    s = socket_in(path_of(netns), socket.AF_INET, kind, socket.IPPROTO_SCTP if protocol == "SCTP" else 0)
    s.settimeout(timeout)
    try:
        if kind == socket.SOCK_STREAM:
            s.connect((ip, port))
            data = s.recv(2048)
        else:
            s.sendto(b"probe", (ip, port))
            data = s.recv(2048)
        return "pod" in json.loads(data)
    except (OSError, ValueError):
        return False
    finally:
        s.close()


def probe(pods: Iterable, port: int, protocol: str, timeout: float = 1.0, tries: int = 2, workers: int = 24) -> Matrix:
    """The observed matrix between ``pods`` (lab/pods.py LabPods) on one port. A failed
    probe is tried again (``tries`` in all), as upstream's prober does, so one lost
    SYN on a busy machine does not read as "blocked"."""
    pods = list(pods)

    def one(pair) -> bool:
        src, dst = pair
        return any(connect(src.netns, dst.ip, port, protocol, timeout) for _ in range(tries))

    pairs = [(a, b) for a in pods for b in pods]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, pairs))
    return {(a.key, b.key): ok for (a, b), ok in zip(pairs, results)}


def parse_port_list(text: str) -> list[tuple[int, str]]:
    """ "80/TCP,81/udp" -> [(80, "TCP"), (81, "UDP")] (the protocol defaults to TCP)."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        number, _, proto = item.partition("/")
        proto = (proto or "TCP").upper()
        if not number.isdigit() or not 1 <= int(number) <= 65535 or proto not in ("TCP", "UDP", "SCTP"):
            raise ValueError(f"--ports {item!r}: expected PORT[/TCP|/UDP|/SCTP]")
        if proto == "SCTP" and sctp_missing():
            raise ValueError(f"--ports {item!r}: {sctp_missing()}")
        out.append((int(number), proto))
    return out


def sctp_missing() -> str | None:
    """Why this kernel cannot carry SCTP, or None. SCTP is a module (sctp.ko) that is
    loaded for the whole host, not per namespace; opening a socket is the honest test
    (it fails with EPROTONOSUPPORT when the module is absent or cannot be loaded)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
    except OSError as e:
        return f"this kernel has no SCTP ({e.strerror}; load the sctp module on the host: modprobe sctp)"
    return None
