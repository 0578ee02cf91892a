"""Network namespaces: how we talk to the kernel *inside* a pod's namespace safely.

``setns(2)`` moves only the calling thread. A daemon with many threads must never
let one of them wander into a pod's namespace and then serve another request from
there. So we never switch a long-lived thread: a short-lived thread enters the
namespace, opens a socket, and exits. A socket stays bound to the namespace it was
created in, so the calling thread can then use it (``IPRoute(fileno=...)``). This is
the "open the socket inside, use it outside" pattern; it costs about 1 ms, where
pyroute2's own ``netns=`` forks a child process.

One catch: pyroute2 0.9's ``IPRoute`` keeps its socket per thread, so an ``IPRoute``
built this way works only on the thread that built it. Plain sockets (the lab's probes)
have no such limit.

Python 3.11 has no ``os.setns``, hence ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading

from pyroute2 import IPRoute

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsNotFound(Exception):
    pass


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def socket_in(netns_path: str, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket created inside the namespace at ``netns_path`` (a /run/netns/x or
    /proc/<pid>/ns/net path), usable from this process (for IPRoute: from this thread)."""
    if not os.path.exists(netns_path):
        raise NetnsNotFound(f"network namespace {netns_path} does not exist")
    out: dict = {}

    def enter_and_open():
        try:
            _setns(netns_path)
            out["sock"] = socket.socket(family, type_, proto)
        except OSError as e:
            out["err"] = e
        # This thread ends here, still inside the namespace: nothing else runs on it.

    t = threading.Thread(target=enter_and_open, name="netns-socket")
    t.start()
    t.join()
    if "err" in out:
        if out["err"].errno in (errno.ENOENT, errno.EINVAL):
            raise NetnsNotFound(f"{netns_path} is not a network namespace: {out['err']}")
        raise out["err"]
    return out["sock"]


def run_in(netns_path: str, fn):
    """``fn()`` on a new thread that enters ``netns_path`` first and ends after it, so no
    thread of ours stays moved; returns fn's result or raises its exception. Threads
    and processes ``fn`` starts are born in that namespace."""
    out: dict = {}

    def enter_and_run():
        try:
            _setns(netns_path)
            out["result"] = fn()
        except BaseException as e:  # handed to the caller
            out["err"] = e

    t = threading.Thread(target=enter_and_run, name="in-netns")
    t.start()
    t.join()
    if "err" in out:
        raise out["err"]
    return out.get("result")


def node_iproute() -> IPRoute:
    """A pyroute2 socket in the calling thread's own namespace (the node's, for the
    agent). Close it (or use it in ``with``)."""
    return IPRoute()


def iproute_in(netns_path: str) -> IPRoute:
    """An ``IPRoute`` whose netlink socket lives in the given namespace."""
    sock = socket_in(netns_path, socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
    return IPRoute(fileno=sock.detach())


def path_of(name_or_path: str) -> str:
    return name_or_path if "/" in name_or_path else os.path.join(NETNS_RUN_DIR, name_or_path)
