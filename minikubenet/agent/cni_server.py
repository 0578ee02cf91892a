"""The agent's end of the shim protocol: a root-only unix socket, one request per connection.

The socket file is created with mode 0600 inside a 0700 run directory: only root may
ask the agent to plumb pods. Each connection is served on its own thread (pods on one
node are added concurrently; the handler serialises per container ID). A request is
one JSON object, read until the client half-closes; the answer is one JSON object (see
cni/shim.py for the format).
"""

from __future__ import annotations

import json
import logging
import os
import socketserver

from minikubenet.cni.shim import ERR_DECODE, CniError
from minikubenet.agent.cni_handler import ERR_INTERNAL, CniHandler

log = logging.getLogger(__name__)


class _Connection(socketserver.StreamRequestHandler):
    def handle(self):
        handler: CniHandler = self.server.cni_handler
        try:
            raw = self.rfile.read()
            try:
                request = json.loads(raw)
            except ValueError as e:
                raise CniError(ERR_DECODE, "agent could not decode the request", str(e)) from None
            answer = {"result": handler.handle(request)}
        except CniError as e:
            log.warning("%s %s: %s (%s)", request.get("command") if "request" in locals() else "?",
                        (request.get("env") or {}).get("CNI_CONTAINERID", "") if "request" in locals() else "",
                        e.msg, e.details)
            answer = {"error": {"code": e.code, "msg": e.msg, "details": e.details}}
        except Exception as e:  # never let a bug kill the connection without an answer
            log.exception("unexpected error serving a CNI request")
            answer = {"error": {"code": ERR_INTERNAL, "msg": "internal error in minikubenet-agent",
                                "details": f"{type(e).__name__}: {e}"}}
        try:
            self.wfile.write(json.dumps(answer).encode())
        except OSError:
            pass  # the shim went away (runtime timeout); nothing to tell


class CniServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

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
