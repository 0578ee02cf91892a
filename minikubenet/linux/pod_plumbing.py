"""The CNI handler's view of the kernel: the pod-plumbing seam.

The agent's CNI verbs (agent/cni_handler.py) and its start-up repair
(agent/reconcile.py) need a handful of kernel operations on a pod's veth pair. They get
them through one object with the calls below, injected at construction, instead of
opening netlink sockets themselves:

- ``NetlinkPodPlumbing`` is the real one, over pod_interface.py (raw rtnetlink batches
  and pyroute2); it keeps a few idle node-namespace netlink sockets between requests;
- a fake in memory (tests/unit/fake_plumbing.py) lets the handler's logic, its undo
  path above all, be tested without root, as the overlay's fake kernel does for the
  overlay loop (tests/unit/test_overlay_plan.py).

The calls keep the real module's contracts: ``NotOurs`` for a device by our name that
another owner marked (nothing is changed), ``NetnsNotFound`` for a namespace that is
gone; ``detach`` is best effort and repeatable and returns what it left alone.
"""

from __future__ import annotations

import contextlib
import queue
from dataclasses import dataclass
from typing import Protocol


class NotOurs(Exception):
    """A device by the name we need exists and carries another owner's mark (or none)."""


@dataclass(frozen=True)
class AttachedMacs:
    bridge: str
    host_veth: str
    pod: str


class PodHandle(Protocol):
    """An open handle on one pod's namespace (the real one: a NETLINK_ROUTE socket in it)."""

    def close(self) -> None: ...


class PodPlumbing(Protocol):
    """What ADD, DEL, CHECK, GC and the start-up repair do to the kernel."""

    def open_pod(self, netns: str) -> PodHandle: ...
    def survey(self, pod: PodHandle) -> list: ...                      # [pod_network.LinkSeen]
    def create_pair(self, link) -> AttachedMacs: ...                   # pod_network.PodLink
    def configure_pod(self, plan, pod: PodHandle) -> None: ...         # pod_network.PodAttachment
    def detach(self, container_id: str, ifname: str, host_veth: str, netns: str | None) -> list[str]: ...
    def inspect(self, plan) -> list[str]: ...
    def pod_mac(self, netns: str, ifname: str) -> str | None: ...
    def marked_host_veths(self) -> list: ...                           # [pod_network.LinkSeen]
    def delete_marked(self, device) -> bool: ...
    def is_complete(self, plan) -> bool | None: ...
    def close(self) -> None: ...


class NetlinkPodPlumbing:
    """The real kernel (pod_interface.py). Thread-safe: the CNI server runs one thread
    per request."""
    IDLE_NETLINK_SOCKETS = 4   # kept open between requests; more are opened under load

    def __init__(self):
        from minikubenet.linux import pod_interface   # pyroute2 only where the kernel is touched
        self._pi = pod_interface
        self._idle: queue.SimpleQueue = queue.SimpleQueue()

    @contextlib.contextmanager
    def _host(self):
        """A netlink socket in the node's namespace, one request at a time. Opening one
        costs about half a millisecond, so idle ones are kept for the next request; one
        that saw an error is closed rather than reused."""
        try:
            ipr = self._idle.get_nowait()
        except queue.Empty:
            ipr = self._pi.IPRoute()
        try:
            yield ipr
        except BaseException:
            ipr.close()
            raise
        if self._idle.qsize() < self.IDLE_NETLINK_SOCKETS:
            self._idle.put(ipr)
        else:
            ipr.close()

    def open_pod(self, netns: str):
        return self._pi.open_pod_socket(netns)

    def survey(self, pod) -> list:
        return self._pi.survey(pod)

    def create_pair(self, link) -> AttachedMacs:
        with self._host() as host:
            return self._pi.create_pair(host, link)

    def configure_pod(self, plan, pod) -> None:
        self._pi.configure_pod(plan, pod)

    def detach(self, container_id: str, ifname: str, host_veth: str, netns: str | None) -> list[str]:
        with self._host() as host:
            return self._pi.detach(host, container_id, ifname, host_veth, netns)

    def inspect(self, plan) -> list[str]:
        with self._host() as host:
            return self._pi.inspect(host, plan)

    def pod_mac(self, netns: str, ifname: str) -> str | None:
        return self._pi.pod_mac(netns, ifname)

    def marked_host_veths(self) -> list:
        return self._pi.marked_host_veths()

    def delete_marked(self, device) -> bool:
        with self._host() as host:
            return self._pi.delete_marked(host, device)

    def is_complete(self, plan) -> bool | None:
        return self._pi.is_complete(plan)

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()
