"""The agent's end of the shim protocol: a root-only unix socket, one request per connection.

The socket file is created with mode 0600 inside a 0700 run directory: only root may
ask the agent to plumb pods. A request is one JSON object, read until the client
half-closes; the answer is one JSON object (see cni/shim.py for the format).

Connections are handled in two stages, so that what a client holds is bounded:

1. one thread runs an event loop (``selectors``, epoll underneath) that accepts and
   reads every connection without blocking. A connection costs a file descriptor and a
   buffer here, not a thread: 200 clients that connect and send nothing hold no worker.
   Each has ``REQUEST_TIMEOUT_S`` to deliver its whole request (the shim needs a
   millisecond), at most ``MAX_REQUEST_BYTES``, and at most ``MAX_CONNECTIONS`` are
   open at once: past that the oldest unfinished one is dropped to make room, as a
   real client's request is complete long before anyone's patience runs out;
2. a complete request goes to a fixed pool of ``WORKERS`` threads, which decode and
   check it (agent/request_checks.py) before the handler does any work, answer, and
   close. Pods on one node are added concurrently; the handler serialises per
   container ID.

Every request gets an answer, a malformed one included: the error JSON with the code
the shim would have given (6 for what cannot be decoded).

The shim may pass the pod's network namespace as a file descriptor (SCM_RIGHTS
ancillary data on its first bytes). ``recvmsg`` collects it; the handler uses it for
the duration of the request and it is closed afterwards, whatever happened.
"""

from __future__ import annotations

import array
import concurrent.futures
import json
import logging
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from minikubenet.agent.cni_handler import ERR_INTERNAL, CniHandler
from minikubenet.agent.request_checks import check_request, decode_request
from minikubenet.cni.shim import ERR_DECODE, ERR_TRY_AGAIN_LATER, MAX_REQUEST_BYTES, CniError

log = logging.getLogger(__name__)

MAX_FDS = 4  # the shim sends one; more is a confused client
FD_SIZE = array.array("i").itemsize
REQUEST_TIMEOUT_S = 10.0  # from connect to the client's half-close
SEND_TIMEOUT_S = 30.0  # a client that never reads its answer does not pin a worker forever
MAX_CONNECTIONS = 512  # open at once, reading or being served (well under RLIMIT_NOFILE's 1024)
WORKERS = 64  # requests served at once: an ADD mostly waits (etcd, netlink, up to
# 5 s in an etcd outage), so many wait together; each costs a thread
KNOWN_COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
LISTEN_BACKLOG = 256  # a node may start many pods at once


@dataclass
class _Incoming:
    """A connection whose request is still arriving."""

    sock: socket.socket
    deadline: float
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    fds: list[int] = field(default_factory=list)
    refused: bool = False  # answered already (too large); the rest of its input is discarded

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.sock.close()


def error_answer(e: CniError) -> bytes:
    return json.dumps({"error": {"code": e.code, "msg": e.msg, "details": e.details}}).encode()


def _received_fds(ancdata) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(payload[: len(payload) - len(payload) % FD_SIZE])
            fds.extend(got)
    return fds


class CniServer:
    def __init__(
        self,
        path: str,
        handler: CniHandler,
        workers: int = WORKERS,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT_S,
        on_answer: Callable[[str, float, int | None], None] | None = None,
    ):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.chmod(os.path.dirname(path), 0o700)
        try:
            os.unlink(path)  # a stale socket from a previous run
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(path)
        finally:
            os.umask(old)
        self.listener.listen(LISTEN_BACKLOG)
        self.listener.setblocking(False)
        self.cni_handler = handler
        self.path = path
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        # (command, seconds, error code or None) per answered request: the agent's metrics
        self.on_answer = on_answer
        self._workers = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="cni")
        self._incoming: dict[int, _Incoming] = {}  # fileno -> connection still reading
        self._serving = 0  # handed to the workers, not yet answered
        self._serving_lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._running = False
        self._stopped = threading.Event()
        self._closed = False

    # -- the event loop --------------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Run the loop until ``shutdown()``. ``poll_interval`` bounds how late a timed-out
        connection is noticed."""
        self._running = True
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        next_sweep = time.monotonic() + poll_interval
        try:
            while not self._stopping.is_set():
                for key, _ in self._selector.select(timeout=poll_interval):
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._wake_r.recv(64)
                    else:
                        self._read(self._incoming.get(key.fd))
                now = time.monotonic()
                if now >= next_sweep:
                    self._expire(now)
                    next_sweep = now + poll_interval
        finally:
            for conn in list(self._incoming.values()):
                self._drop(conn)
            self._selector.close()
            self._stopped.set()

    def _accept(self) -> None:
        for _ in range(64):  # drain a burst, then let reads run
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: keep serving what is open
                log.warning("CNI socket: accept failed: %s", e)
                return
            sock.setblocking(False)
            if len(self._incoming) + self._serving >= self.max_connections and not self._evict_oldest():
                self._answer_now(
                    sock,
                    CniError(
                        ERR_TRY_AGAIN_LATER,
                        "minikubenet agent busy",
                        f"{self.max_connections} requests are being served",
                    ),
                )
                sock.close()
                continue
            conn = _Incoming(sock, time.monotonic() + self.request_timeout)
            self._incoming[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, None)

    def _read(self, conn: _Incoming | None) -> None:
        if conn is None:
            return
        try:
            data, ancdata, _flags, _addr = conn.sock.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * FD_SIZE))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        fds = _received_fds(ancdata)
        if conn.refused:
            for fd in fds:
                os.close(fd)
            if not data:
                self._drop(conn)
            return
        conn.fds.extend(fds)
        if not data:  # the client half-closed: the request is complete
            self._unregister(conn)
            with self._serving_lock:
                self._serving += 1
            try:
                self._workers.submit(self._serve, conn)
            except RuntimeError:  # shutting down
                self._finished(conn)
            return
        conn.chunks.append(data)
        conn.size += len(data)
        if conn.size > MAX_REQUEST_BYTES:
            self._refuse(
                conn,
                CniError(
                    ERR_DECODE,
                    "agent could not decode the request",
                    f"the request is larger than {MAX_REQUEST_BYTES} bytes",
                ),
            )

    def _refuse(self, conn: _Incoming, e: CniError) -> None:
        """Answer now and discard the rest of the input until the client closes (closing
        with unread input would reset the connection before the client read the answer)."""
        log.warning("CNI socket: %s (%s)", e.msg, e.details)
        self._answer_now(conn.sock, e)
        conn.refused, conn.chunks = True, []
        for fd in conn.fds:
            os.close(fd)
        conn.fds = []
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    @staticmethod
    def _answer_now(sock: socket.socket, e: CniError) -> None:
        """A small error answer from the loop: it fits an empty socket buffer, never blocks."""
        try:
            sock.send(error_answer(e))
        except OSError:
            pass

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._incoming.values() if c.deadline <= now]:
            if not conn.refused:
                log.warning(
                    "CNI socket: no complete request within %.0fs; closing the connection", self.request_timeout
                )
                self._answer_now(
                    conn.sock,
                    CniError(
                        ERR_DECODE,
                        "agent could not decode the request",
                        f"no complete request within {self.request_timeout:.0f}s "
                        "(a client sends its request, then shuts down writing)",
                    ),
                )
            self._drop(conn)

    def _evict_oldest(self) -> bool:
        """Make room for a new connection by dropping the oldest unfinished one."""
        if not self._incoming:
            return False
        oldest = min(self._incoming.values(), key=lambda c: c.deadline)
        log.warning("CNI socket: %d connections open; dropping the oldest unfinished one", self.max_connections)
        self._answer_now(
            oldest.sock,
            CniError(
                ERR_TRY_AGAIN_LATER, "minikubenet agent busy", "too many connections; this one sent no complete request"
            ),
        )
        self._drop(oldest)
        return True

    def _unregister(self, conn: _Incoming) -> None:
        self._incoming.pop(conn.sock.fileno(), None)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass

    def _drop(self, conn: _Incoming) -> None:
        self._unregister(conn)
        conn.close()

    # -- a worker: one complete request ---------------------------------------------------------

    def _serve(self, conn: _Incoming) -> None:
        request: dict = {}
        started = time.monotonic()
        try:
            try:
                request = decode_request(b"".join(conn.chunks))
                check_request(request, self.cni_handler.node.mtu)
                netns_fd = conn.fds[0] if conn.fds and request.get("netnsFd") else None
                answer: dict = {"result": self.cni_handler.handle(request, netns_fd=netns_fd)}
                warnings = self.cni_handler.status_warnings() if request.get("command") == "STATUS" else []
                if warnings:
                    answer["warnings"] = warnings  # the shim prints them on stderr
            except CniError as e:
                env = env if isinstance(env := request.get("env"), dict) else {}
                log.warning(
                    "%s %s: %s (%s)", request.get("command", "?"), env.get("CNI_CONTAINERID", ""), e.msg, e.details
                )
                answer = {"error": {"code": e.code, "msg": e.msg, "details": e.details}}
            except Exception as e:  # never let a bug end the connection without an answer
                log.exception("unexpected error serving a CNI request")
                answer = {
                    "error": {
                        "code": ERR_INTERNAL,
                        "msg": "internal error in minikubenet-agent",
                        "details": f"{type(e).__name__}: {e}",
                    }
                }
            try:
                data = json.dumps(answer).encode()
            except (TypeError, ValueError) as e:
                log.exception("could not encode the answer")
                data = error_answer(CniError(ERR_INTERNAL, "internal error in minikubenet-agent", str(e)))
            try:
                conn.sock.settimeout(SEND_TIMEOUT_S)
                conn.sock.sendall(data)
            except OSError:
                pass  # the shim went away (runtime timeout); nothing to tell
            self._count(request, answer, time.monotonic() - started)
        finally:
            self._finished(conn)

    def _count(self, request: dict, answer: dict, seconds: float) -> None:
        if self.on_answer is None:
            return
        command = request.get("command") if isinstance(request, dict) else None
        # only the verbs the spec names become label values: a bad request cannot make
        # a new time series per garbage string
        command = command if command in KNOWN_COMMANDS else "invalid"
        error = answer.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        try:
            self.on_answer(command, seconds, code)
        except Exception:
            log.exception("could not count a CNI request")

    def _finished(self, conn: _Incoming) -> None:
        conn.close()
        with self._serving_lock:
            self._serving -= 1

    # -- stopping ---------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the loop (from another thread) and wait for it; requests already handed to
        the workers are finished."""
        self._stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._running:
            self._stopped.wait(timeout=10.0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._workers.shutdown(wait=True)
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
