"""The agent's backends, by the name the network config's ``Backend.Type`` gives
(base.py has the interface; one module per backend)."""

from __future__ import annotations

from minikubenet.agent.backends.base import BackendBase, BackendError, Prepared
from minikubenet.agent.backends.bgp import BgpBackend
from minikubenet.agent.backends.host_gw import HostGwBackend
from minikubenet.agent.backends.vxlan import VxlanBackend

__all__ = ["BackendBase", "BackendError", "Prepared", "REGISTRY", "for_config"]

REGISTRY: dict[str, BackendBase] = {b.name: b for b in (VxlanBackend(), HostGwBackend(), BgpBackend())}


def for_config(backend_type: str) -> BackendBase:
    try:
        return REGISTRY[backend_type]
    except KeyError:
        raise BackendError(f"no backend {backend_type!r} in this agent; known: {', '.join(sorted(REGISTRY))}") from None
