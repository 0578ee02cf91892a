"""A userspace service proxy: the baseline the seed calls "painfully slow".

Kubernetes 1.0/1.1's kube-proxy ran in this mode (pkg/proxy/userspace: proxier.go,
proxysocket.go): for every service port it opened a listening socket, iptables sent
the ClusterIP's traffic to it, and for every accepted connection it picked an endpoint
(``LoadBalancerRR``), dialled it and copied bytes both ways in two goroutines
(``ProxyTCP`` -> ``copyBytes``: ``io.Copy``, then close the reading half of one side and
the writing half of the other). Every byte crosses the kernel twice more than with
DNAT (socket -> process -> socket), every connection costs the proxy an accept, a
connect and two copy loops, and the server sees the proxy's address as the client.

This module is that mechanism, small and correct, for the proxy-modes benchmark
(bench/proxy_modes.py) and its test; it is not a mode of ``minikubenet-proxy``
(no watch, no sync: the services are given on the command line):

- it listens on the ClusterIP:port itself. The node must treat the ClusterIP as a
  local address (``ip route add local <ClusterIP>/32 dev lo`` in the node's namespace:
  the bench does that, the lab's namespaces only); packets from the node's pods are
  then delivered to this socket with their original destination, where 1.0 needed a
  REDIRECT rule to a random port;
- an endpoint is chosen at random for each connection (the issue's wording; 1.0 went
  round-robin), and the next one is tried if it refuses (1.0 tried each endpoint with
  growing timeouts, ``tryConnect``);
- two threads per connection copy in each direction with ``recv_into``/``sendall``;
  end of stream on one side half-closes the other (``shutdown(SHUT_WR)``), so a client
  that sends, half-closes and then reads (HTTP/1.0, iperf3's control) works; when both
  directions are done both sockets are closed.

    python -m minikubenet.proxy.userspace --service 10.96.0.10:80=10.244.1.2:8080,10.244.2.3:8080 [--service ...]
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import random
import signal
import socket
import sys
import threading
from dataclasses import dataclass

log = logging.getLogger("minikubenet.proxy.userspace")

BUFFER = 64 * 1024  # one recv per copy step, as io.Copy's 32 KiB buffer, doubled
CONNECT_TIMEOUT_S = 2.0  # per endpoint tried
BACKLOG = 1024


class UserspaceError(Exception):
    """A --service that cannot be parsed or listened on, with a sentence to act on."""


@dataclass(frozen=True)
class ServiceSpec:
    listen: tuple[str, int]
    endpoints: tuple[tuple[str, int], ...]


def _addr(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    try:
        ipaddress.IPv4Address(host)
        if not sep or not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        raise UserspaceError(f"{what} {text!r} is not IPv4:PORT (e.g. 10.96.0.10:80)") from None
    return host, int(port)


def parse_service(text: str) -> ServiceSpec:
    """``CLUSTERIP:PORT=EP:PORT[,EP:PORT...]`` -> ServiceSpec."""
    listen, sep, eps = text.partition("=")
    if not sep or not eps.strip():
        raise UserspaceError(f"--service {text!r}: expected CLUSTERIP:PORT=ENDPOINT:PORT[,ENDPOINT:PORT...]")
    return ServiceSpec(_addr(listen, "the service address"), tuple(_addr(e, "the endpoint") for e in eps.split(",")))


def _copy(src: socket.socket, dst: socket.socket, done: threading.Event | None = None) -> int:
    """Copy until ``src`` ends, then half-close ``dst`` (copyBytes). Returns bytes copied."""
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    total = 0
    try:
        while True:
            n = src.recv_into(buf)
            if n == 0:
                break
            dst.sendall(view[:n])
            total += n
    except OSError:
        pass  # a reset on either side ends this direction; the other notices on its own
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    if done is not None:
        done.set()
    return total


class UserspaceProxy:
    """One listening socket per service; a thread per accepted connection (plus one for
    the second direction)."""

    def __init__(self, services: list[ServiceSpec], choose=random.choice):
        self.services = services
        self.choose = choose
        self.listeners: list[socket.socket] = []
        self._stop = threading.Event()

    def listen(self) -> None:
        for svc in self.services:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(svc.listen)
            except OSError as e:
                s.close()
                self.close()
                raise UserspaceError(
                    f"cannot listen on {svc.listen[0]}:{svc.listen[1]}: {e.strerror} (is the "
                    f"ClusterIP a local address of this node? ip route add local "
                    f"{svc.listen[0]}/32 dev lo)"
                ) from None
            s.listen(BACKLOG)
            self.listeners.append(s)

    def serve_forever(self) -> None:
        threads = [
            threading.Thread(
                target=self._accept_loop, args=(s, svc), daemon=True, name=f"accept-{svc.listen[0]}:{svc.listen[1]}"
            )
            for s, svc in zip(self.listeners, self.services)
        ]
        for t in threads:
            t.start()
        self._stop.wait()

    def stop(self) -> None:
        self._stop.set()
        self.close()

    def close(self) -> None:
        for s in self.listeners:
            try:
                s.close()
            except OSError:
                pass

    def _accept_loop(self, listener: socket.socket, svc: ServiceSpec) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._proxy, args=(client, svc), daemon=True).start()

    def _dial(self, svc: ServiceSpec) -> socket.socket | None:
        """A random endpoint first, then the others: the first that accepts."""
        first = self.choose(svc.endpoints)
        for ep in [first] + [e for e in svc.endpoints if e != first]:
            try:
                backend = socket.create_connection(ep, timeout=CONNECT_TIMEOUT_S)
                backend.settimeout(None)
                return backend
            except OSError as e:
                log.warning("endpoint %s:%d of %s:%d: %s; trying the next", *ep, *svc.listen, e)
        return None

    def _proxy(self, client: socket.socket, svc: ServiceSpec) -> None:
        backend = self._dial(svc)
        if backend is None:
            client.close()  # the client sees its connection closed, as with 1.0
            return
        for s in (client, backend):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        other = threading.Event()
        threading.Thread(target=_copy, args=(backend, client, other), daemon=True).start()
        _copy(client, backend)
        other.wait()
        client.close()
        backend.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m minikubenet.proxy.userspace",
        description="Kubernetes 1.0's userspace service proxy, as a baseline",
    )
    p.add_argument(
        "--service", action="append", required=True, help="CLUSTERIP:PORT=ENDPOINT:PORT[,ENDPOINT:PORT...] (repeatable)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level="INFO", stream=sys.stderr, format="%(asctime)s userspace-proxy %(message)s")
    try:
        proxy = UserspaceProxy([parse_service(s) for s in args.service])
        proxy.listen()
    except UserspaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: proxy.stop())
    log.info(
        "listening: %s",
        ", ".join(f"{s.listen[0]}:{s.listen[1]} -> {len(s.endpoints)} endpoints" for s in proxy.services),
    )
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
