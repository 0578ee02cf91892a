"""Connectivity probes: does traffic from one namespace reach an address?

HTTP probes open their TCP socket *inside* the source namespace (linux/netns.socket_in)
and then use it from this process, so a matrix of hundreds of pod-to-pod checks costs
no process start per check. Pings use the real ``ping`` binary inside the namespace,
because its options (``-M do`` sets the DF bit, ``-s`` the payload size) are exactly
what a person would type to test an MTU.
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import time

from minikubenet.linux.netns import path_of, socket_in
from minikubenet.waiting import wait_until


class ProbeFailed(Exception):
    pass


def http_get(netns: str, ip: str, port: int, path: str = "/", timeout: float = 3.0) -> bytes:
    """GET ``path`` from ip:port, connecting from inside ``netns``; returns the body."""
    s = socket_in(path_of(netns), socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = s.recv(262144)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as e:
        raise ProbeFailed(f"{netns} -> {ip}:{port}{path}: {e}") from None
    finally:
        s.close()
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise ProbeFailed(f"{netns} -> {ip}:{port}{path}: bad answer {head[:60]!r}")
    return body


def whoami(netns: str, ip: str, port: int, timeout: float = 3.0) -> dict:
    return json.loads(http_get(netns, ip, port, "/", timeout))


def transfer(netns: str, ip: str, port: int, nbytes: int, timeout: float = 10.0) -> float:
    """Fetch ``nbytes`` over TCP; returns seconds taken. Fails if any byte is missing."""
    t0 = time.perf_counter()
    body = http_get(netns, ip, port, f"/bytes?n={nbytes}", timeout)
    if len(body) != nbytes:
        raise ProbeFailed(f"{netns} -> {ip}: got {len(body)} of {nbytes} bytes")
    return time.perf_counter() - t0


def ping(netns: str, ip: str, size: int = 56, dont_fragment: bool = False, count: int = 1, timeout_s: int = 2) -> bool:
    argv = ["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", str(count), "-W", str(timeout_s), "-s", str(size)]
    if dont_fragment:
        argv += ["-M", "do"]
    return subprocess.run(argv + [ip], capture_output=True).returncode == 0


IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2  # <linux/in.h>: always set DF, never fragment locally


def too_big_for_path(netns: str, ip: str, size: int) -> bool:
    """True when the kernel in ``netns`` refuses to send ``size`` bytes of payload (plus
    28 bytes of IPv4 and UDP/ICMP header) to ``ip`` with DF set, because the route's
    MTU is smaller. Unlike a ping that is never answered, the refusal is immediate."""
    s = socket_in(path_of(netns), socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        s.connect((ip, 9))  # discard port: nothing needs to answer
        s.send(b"x" * size)
        return False
    except OSError as e:
        if e.errno == errno.EMSGSIZE:
            return True
        raise
    finally:
        s.close()


def connect_error(netns: str, ip: str, port: int, timeout: float = 0.5, protocol: str = "TCP") -> OSError | None:
    """Try one TCP (or SCTP) connection from ``netns``: None if it was accepted, else the error."""
    s = socket_in(path_of(netns), socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP if protocol == "SCTP" else 0)
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        return None
    except OSError as e:
        return e
    finally:
        s.close()


def wait_listening(netns: str, ip: str, port: int, timeout: float = 10.0, alive=None, protocol: str = "TCP") -> None:
    """Until something accepts on ip:port (TCP or SCTP) in ``netns``. ``alive`` (optional)
    is asked between tries: False means the process that should listen has died, stop waiting."""
    errors: list[OSError] = []

    def accepted() -> bool:
        error = connect_error(netns, ip, port, protocol=protocol)
        if error is None:
            return True
        errors[:] = [error]
        if alive is not None and not alive():
            raise ProbeFailed(f"the process that should listen on {ip}:{port} exited")
        return False

    if not wait_until(accepted, timeout, interval=0.05):
        raise ProbeFailed(f"nothing listens on {ip}:{port} in {netns}: {errors[0] if errors else 'no answer'}")
