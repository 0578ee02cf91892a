"""Namespaces and NetworkPolicies in etcd, beside the Services, Endpoints and Pods.

Same scheme as store/services.py (``ServiceKeys.prefix(kind)``), Kubernetes-shaped JSON::

    /minikubenet/namespaces/<name>                 a v1 Namespace (labels always include
                                                   kubernetes.io/metadata.name: <name>)
    /minikubenet/networkpolicies/<ns>/<name>       a networking.k8s.io/v1 NetworkPolicy,
                                                   as applied

This module maps objects to keys and values only: it stores what it is given. Whether a
document is a valid NetworkPolicy is decided before it gets here (netpol_validation.py,
manifests.py), so nothing invalid reaches etcd.

**All or nothing.** ``commit`` writes a whole ``apply -f`` (puts, deletes and the
Services' parts from ServiceStore.plan_apply) in ONE etcd transaction: every compare
holds and every write happens, or nothing is written. etcd limits the operations of one
transaction (``--max-txn-ops``, 128 by default), so a file that needs more than
``MAX_TXN_OPS`` compares or writes is written in several transactions, the Services'
parts (whose compares can fail) first. Validation still runs over the whole file before
any of them, so a part can be left written only when etcd fails between two of them, or
when a Service of a later transaction was changed by someone else meanwhile (the error
says which).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from minikubenet.store.etcd import EtcdStore, _wrap_errors
from minikubenet.store.services import ServiceKeys, ServiceWrite, _dumps, _loads

NAMESPACES = "namespaces"
NETWORK_POLICIES = "networkpolicies"
MAX_TXN_OPS = 128  # etcd's --max-txn-ops default, per list (compares, writes)


@dataclass(frozen=True)
class ObjectWrite:
    """Put ``doc`` at ``key`` (``doc`` None: delete the key)."""

    key: str
    doc: Mapping | None


class PolicyObjectStore:
    """Namespaces and NetworkPolicies over an ``EtcdStore`` (etcd errors become
    ``StoreUnavailable`` / ``StoreForbidden``)."""

    def __init__(self, store: EtcdStore):
        self.store = store
        self.keys = ServiceKeys(store.layout)
        self.endpoints_text = store.endpoints_text  # for _wrap_errors' messages

    @property
    def client(self):
        return self.store.client

    # -- keys ------------------------------------------------------------------------------

    def namespace_key(self, name: str) -> str:
        return f"{self.keys.prefix(NAMESPACES)}{name}"

    def policy_key(self, namespace: str, name: str) -> str:
        return self.keys.object(NETWORK_POLICIES, namespace, name)

    # -- namespaces --------------------------------------------------------------------------

    def put_namespace(self, doc: Mapping) -> None:
        self._put(self.namespace_key(doc["metadata"]["name"]), doc)

    def get_namespace(self, name: str) -> dict | None:
        return self._get(self.namespace_key(name))

    def list_namespaces(self) -> dict[str, dict]:
        """name -> Namespace."""
        prefix = self.keys.prefix(NAMESPACES)
        return {k[len(prefix) :]: d for k, d in self._list(prefix).items() if "/" not in k[len(prefix) :]}

    def delete_namespace(self, name: str) -> bool:
        return self._delete(self.namespace_key(name))

    # -- network policies --------------------------------------------------------------------

    def put_network_policy(self, doc: Mapping) -> None:
        meta = doc["metadata"]
        self._put(self.policy_key(meta["namespace"], meta["name"]), doc)

    def get_network_policy(self, namespace: str, name: str) -> dict | None:
        return self._get(self.policy_key(namespace, name))

    def list_network_policies(self, namespace: str | None = None) -> dict[str, dict]:
        """ "ns/name" -> NetworkPolicy, of one namespace or (None) of all."""
        prefix = self.keys.prefix(NETWORK_POLICIES)
        docs = self._list(prefix + (f"{namespace}/" if namespace else ""))
        out = {}
        for key, doc in docs.items():
            ns, _, name = key[len(prefix) :].partition("/")
            if ns and name and "/" not in name:
                out[f"{ns}/{name}"] = doc
        return out

    def delete_network_policy(self, namespace: str, name: str) -> bool:
        return self._delete(self.policy_key(namespace, name))

    # -- one transaction for a whole file ------------------------------------------------------

    @_wrap_errors
    def commit(self, writes: Sequence[ObjectWrite], services: Sequence[ServiceWrite] = ()) -> ServiceWrite | bool:
        """Write everything, atomically per transaction (see the module text). Returns True,
        or the ServiceWrite whose compare failed (something changed since it was planned:
        nothing of that transaction was written)."""
        t = self.client.transactions
        parts: list[tuple[list, list, ServiceWrite | None]] = [(s.compare, s.success, s) for s in services]
        parts += [([], [t.delete(w.key) if w.doc is None else t.put(w.key, _dumps(w.doc))], None) for w in writes]
        for chunk in _chunks(parts):
            ok, _ = self.client.transaction(
                compare=[c for p in chunk for c in p[0]], success=[s for p in chunk for s in p[1]], failure=[]
            )
            if not ok:
                return next(p[2] for p in chunk if p[2] is not None)
        return True

    # -- plain reads and writes ------------------------------------------------------------------

    @_wrap_errors
    def _get(self, key: str) -> dict | None:
        raw = self.client.get(key)[0]
        return _loads(raw, key) if raw is not None else None

    @_wrap_errors
    def _list(self, prefix: str) -> dict[str, dict]:
        out = {}
        for value, meta in self.client.get_prefix(prefix):
            doc = _loads(value, meta.key.decode())
            if doc is not None:
                out[meta.key.decode()] = doc
        return out

    @_wrap_errors
    def _put(self, key: str, doc: Mapping) -> None:
        self.client.put(key, _dumps(doc))

    @_wrap_errors
    def _delete(self, key: str) -> bool:
        return bool(self.client.delete(key))


def _chunks(parts: list[tuple[list, list, ServiceWrite | None]]) -> list[list]:
    """Consecutive groups of parts whose compares and whose writes each stay within
    MAX_TXN_OPS (one object's part is never split)."""
    out: list[list] = [[]]
    compares = writes = 0
    for part in parts:
        if out[-1] and (compares + len(part[0]) > MAX_TXN_OPS or writes + len(part[1]) > MAX_TXN_OPS):
            out.append([])
            compares = writes = 0
        out[-1].append(part)
        compares += len(part[0])
        writes += len(part[1])
    return [c for c in out if c]
