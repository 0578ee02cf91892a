"""agent/backends/: one interface, registered by name (flannel's backend.Backend)."""

from __future__ import annotations

import pytest

from minikubenet.agent.backends import REGISTRY, BackendBase, BackendError, for_config
from minikubenet.network_config import BACKENDS


def test_every_backend_of_the_network_config_is_registered():
    assert set(REGISTRY) == set(BACKENDS)
    assert all(for_config(name).name == name for name in REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_backend_implements_prepare_and_peers(name):
    cls = type(REGISTRY[name])
    assert cls.prepare is not BackendBase.prepare and cls.peers is not BackendBase.peers


def test_an_unknown_backend_is_a_clear_error():
    with pytest.raises(BackendError, match="no backend 'udp' in this agent; known: bgp, host-gw, vxlan"):
        for_config("udp")
