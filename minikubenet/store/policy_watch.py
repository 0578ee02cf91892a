"""NetworkPolicies, Namespaces and Pods in etcd, as the policy controller follows them.

    /minikubenet/networkpolicies/<ns>/<name>   a NetworkPolicy, as applied (networking.k8s.io/v1)
    /minikubenet/namespaces/<name>             a Namespace (v1)
    /minikubenet/pods/<ns>/<name>              a Pod (store/services.py writes them)

The same scheme as services and endpoints (store/services.py ``ServiceKeys``). This
module only READS them (``minikubenet apply -f`` writes policies and namespaces):
``PolicyWatch`` delivers a ``PolicySnapshot`` of all three at one revision, then an
``ObjectPut``/``ObjectDelete`` per change (store/watch.py's list-then-watch). Keys are
"ns/name" for policies and pods, and the name for namespaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyetcd.events

from minikubenet.store.etcd import _wrap_errors
from minikubenet.store.services import ObjectDelete, ObjectPut, ServiceKeys, _loads
from minikubenet.store.watch import ListWatch

POLICY_KINDS = ("networkpolicies", "namespaces", "pods")


@dataclass
class PolicySnapshot:
    networkpolicies: dict[str, dict] = field(default_factory=dict)
    namespaces: dict[str, dict] = field(default_factory=dict)
    pods: dict[str, dict] = field(default_factory=dict)
    revision: int = 0

    def of(self, kind: str) -> dict[str, dict]:
        return getattr(self, kind)


def parse_key(keys: ServiceKeys, key: str) -> tuple[str, str] | None:
    """``/minikubenet/networkpolicies/x/deny`` -> ("networkpolicies", "x/deny");
    ``/minikubenet/namespaces/x`` -> ("namespaces", "x"); None for anything else."""
    for kind in POLICY_KINDS:
        p = keys.prefix(kind)
        if key.startswith(p):
            rest = key[len(p) :]
            parts = rest.split("/")
            if (kind == "namespaces" and len(parts) == 1 and parts[0]) or (
                kind != "namespaces" and len(parts) == 2 and all(parts)
            ):
                return kind, rest
    return None


class PolicyWatch(ListWatch):
    """List, then watch, the three prefixes of ``store`` (an EtcdStore)."""

    name = "policy-watch"

    def __init__(self, store, deliver, **kwargs):
        super().__init__(store, deliver, **kwargs)
        self.keys = ServiceKeys(store.layout)

    def _prefixes(self) -> tuple[str, ...]:
        return tuple(self.keys.prefix(k) for k in POLICY_KINDS)

    @_wrap_errors
    def snapshot(self) -> PolicySnapshot:
        snap, revision = PolicySnapshot(), None
        for kind in POLICY_KINDS:
            kwargs: dict[str, int] = {"revision": revision} if revision else {}
            response = self.store.client.get_prefix_response(self.keys.prefix(kind), **kwargs)
            revision = revision or response.header.revision
            for kv in response.kvs:
                parsed = parse_key(self.keys, kv.key.decode())
                doc = _loads(kv.value, kv.key.decode())
                if parsed and doc is not None:
                    snap.of(kind)[parsed[1]] = doc
        snap.revision = revision or 0
        return snap

    def _list(self) -> PolicySnapshot:
        return self.snapshot()

    def _to_update(self, event, header_revision: int):
        key = event.key.decode()
        parsed = parse_key(self.keys, key)
        if parsed is None:
            return None
        kind, name = parsed
        revision = getattr(event, "mod_revision", 0) or header_revision
        if isinstance(event, pyetcd.events.DeleteEvent):
            return ObjectDelete(kind, name, revision)
        doc = _loads(event.value, key)
        return ObjectPut(kind, name, doc, revision) if doc is not None else None
