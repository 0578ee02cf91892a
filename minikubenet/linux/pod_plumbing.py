"""The CNI handler's view of the kernel: the pod-plumbing seam.

The agent's CNI verbs (agent/cni_handler.py) and its start-up repair
(agent/reconcile.py) need a handful of kernel operations on a pod's veth pair. They get
them through one object with the calls below, injected at construction, instead of
opening netlink sockets themselves:

- ``NetlinkPodPlumbing`` (linux/netlink_pod_plumbing.py) is the real one, over
  pod_interface.py (raw rtnetlink batches and pyroute2); it keeps a few idle
  node-namespace netlink sockets between requests;
- a fake in memory (tests/unit/fake_plumbing.py) lets the handler's logic, its undo
  path above all, be tested without root, as the overlay's fake kernel does for the
  overlay loop (tests/unit/test_overlay_plan.py).

The calls keep the real module's contracts: ``NotOurs`` for a device by our name that
another owner marked (nothing is changed), ``NetnsNotFound`` for a namespace that is
gone; ``detach`` is best effort and repeatable and returns what it left alone.
"""

from __future__ import annotations

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
    def survey(self, pod: PodHandle) -> list: ...  # [pod_network.LinkSeen]
    def create_pair(self, link) -> AttachedMacs: ...  # pod_network.PodLink
    def configure_pod(self, plan, pod: PodHandle) -> None: ...  # pod_network.PodAttachment
    def detach(self, container_id: str, ifname: str, host_veth: str, netns: str | None) -> list[str]: ...
    def inspect(self, plan) -> list[str]: ...
    def pod_mac(self, netns: str, ifname: str) -> str | None: ...
    def marked_host_veths(self) -> list: ...  # [pod_network.LinkSeen]
    def delete_marked(self, device) -> bool: ...
    def is_complete(self, plan) -> bool | None: ...
    def close(self) -> None: ...
