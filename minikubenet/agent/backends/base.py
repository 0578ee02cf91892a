"""The backend interface: what every way of carrying pod traffic between nodes provides.

flannel's ``backend.Backend`` (backend/common.go) is the model: a backend is chosen by the
network config's ``Backend.Type`` and does its work in three moments of the agent's
start, plus one on failure:

    prepare(config, underlay, run_dir)
                                before the lease: create devices, decide the pod MTU and
                                what the lease's ``BackendData`` tells the other nodes
                                (VXLAN: its VTEP MAC); -> Prepared
    peers(config, underlay, subnet, prepared)
                                the planner of the overlay controller: per remote lease,
                                the routes / neighbours / FDB entries to program
                                (overlay/vxlan.py, overlay/host_gw.py: pure plans)
    start(store, ...)           after the lease: finish the devices, run the controller
                                (the same for every backend: ``BackendBase.start``)
    undo(prepared)              a start that failed after ``prepare`` removes what
                                ``prepare`` created, and nothing else

A new backend is one module with a ``BackendBase`` subclass and one line in
agent/backends/__init__.py's ``REGISTRY``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from minikubenet.linux.addresses import Underlay
from minikubenet.linux.overlay_routes import NetlinkKernel
from minikubenet.network_config import NetworkConfig
from minikubenet.overlay.controller import OverlayController


class BackendError(Exception):
    """The backend cannot run on this node as configured (a clear message, nothing made)."""


@dataclass
class Prepared:
    backend_type: str
    backend_data: dict  # the lease's BackendData
    pod_mtu: int
    connected: list = field(default_factory=list)  # the underlay's directly attached networks
    devices: list[str] = field(default_factory=list)  # devices the backend uses (RPS is set on them)
    state: Any = None  # the backend's own (e.g. the VXLAN device spec and MAC)


class BackendBase:
    name = ""

    def prepare(self, config: NetworkConfig, underlay: Underlay, run_dir: str) -> Prepared:
        """``run_dir``: the agent's own directory, for files a backend keeps (BIRD's)."""
        raise NotImplementedError

    def peers(self, config: NetworkConfig, underlay: Underlay, subnet, prepared: Prepared):
        """The overlay controller's planner (overlay/controller.py VxlanBackend, HostGwBackend)."""
        raise NotImplementedError

    def before_start(self, config: NetworkConfig, underlay: Underlay, subnet, prepared: Prepared) -> None:
        """After the lease, before the controller programs the peers."""

    def start(self, store, config: NetworkConfig, underlay: Underlay, subnet, prepared: Prepared) -> OverlayController:
        self.before_start(config, underlay, subnet, prepared)
        controller = OverlayController(
            store,
            subnet,
            self.peers(config, underlay, subnet, prepared),
            make_kernel=lambda: NetlinkKernel.open(config.network),
        )
        controller.start()
        return controller

    def undo(self, prepared: Prepared) -> None:
        """Remove what ``prepare`` created (only that)."""
