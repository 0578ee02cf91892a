"""The agent's end of the shim protocol: a root-only unix socket, one request per connection.

The socket file is created with mode 0600 inside a 0700 run directory: only root may
ask the agent to plumb pods. Each connection is served on its own thread (pods on one
node are added concurrently; the handler serialises per container ID). A request is
one JSON object, read until the client half-closes; the answer is one JSON object (see
cni/shim.py for the format).

The shim may pass the pod's network namespace as a file descriptor (SCM_RIGHTS
ancillary data on its first bytes). ``recvmsg`` collects it; the handler uses it for
the duration of the request and it is closed afterwards, whatever happened.
"""

from __future__ import annotations

import array
import json
import logging
import os
import socket
import socketserver

from minikubenet.agent.cni_handler import ERR_INTERNAL, CniHandler
from minikubenet.cni.shim import ERR_DECODE, CniError

log = logging.getLogger(__name__)

MAX_FDS = 4                  # the shim sends one; more is a confused client
READ_TIMEOUT_S = 30.0        # a client that never half-closes does not pin a thread forever


def read_request(sock: socket.socket) -> tuple[bytes, list[int]]:
    """The whole request and any file descriptors that came with it."""
    chunks, fds = [], []
    fd_size = array.array("i").itemsize
    while True:
        data, ancdata, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * fd_size))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[:len(payload) - len(payload) % fd_size])
                fds.extend(got)
        if not data:
            return b"".join(chunks), fds
        chunks.append(data)


class _Connection(socketserver.BaseRequestHandler):
    def handle(self):
        handler: CniHandler = self.server.cni_handler
        self.request.settimeout(READ_TIMEOUT_S)
        request, fds = {}, []
        try:
            try:
                raw, fds = read_request(self.request)
                request = json.loads(raw)
                if not isinstance(request, dict):
                    raise ValueError("expected a JSON object")
            except (ValueError, OSError) as e:
                raise CniError(ERR_DECODE, "agent could not decode the request", str(e)) from None
            netns_fd = fds[0] if fds and request.get("netnsFd") else None
            answer = {"result": handler.handle(request, netns_fd=netns_fd)}
            warnings = handler.status_warnings() if request.get("command") == "STATUS" else []
            if warnings:
                answer["warnings"] = warnings      # the shim prints them on stderr
        except CniError as e:
            log.warning("%s %s: %s (%s)", request.get("command", "?"),
                        (request.get("env") or {}).get("CNI_CONTAINERID", ""), e.msg, e.details)
            answer = {"error": {"code": e.code, "msg": e.msg, "details": e.details}}
        except Exception as e:  # never let a bug kill the connection without an answer
            log.exception("unexpected error serving a CNI request")
            answer = {"error": {"code": ERR_INTERNAL, "msg": "internal error in minikubenet-agent",
                                "details": f"{type(e).__name__}: {e}"}}
        finally:
            for fd in fds:
                os.close(fd)
        try:
            self.request.sendall(json.dumps(answer).encode())
        except OSError:
            pass  # the shim went away (runtime timeout); nothing to tell


class CniServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256   # listen backlog: a node may start many pods at once (default 5)

    def __init__(self, path: str, handler: CniHandler):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.chmod(os.path.dirname(path), 0o700)
        try:
            os.unlink(path)  # a stale socket from a previous run
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            super().__init__(path, _Connection)
        finally:
            os.umask(old)
        self.cni_handler = handler
        self.path = path

    def close(self) -> None:
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
