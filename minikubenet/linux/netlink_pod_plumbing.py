"""The real pod plumbing: linux/pod_plumbing.py's ``PodPlumbing`` carried out on the
kernel by pod_interface.py (raw rtnetlink batches and pyroute2).

A module of its own so that the seam (pod_plumbing.py: the protocol and its types) stays
free of pyroute2 for the unit tests' fake, and pod_interface.py can use those types
without an import cycle.
"""

from __future__ import annotations

import contextlib
import queue

from minikubenet.linux import pod_interface
from minikubenet.linux.pod_plumbing import AttachedMacs


class NetlinkPodPlumbing:
    """The real kernel (pod_interface.py). Thread-safe: the CNI server runs one thread
    per request."""

    IDLE_NETLINK_SOCKETS = 4  # kept open between requests; more are opened under load

    def __init__(self):
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
