"""An in-memory stand-in for the pyetcd client, with etcd's semantics for what the
service store uses: revisions, prefix reads (also at an older revision), and
transactions whose compares and writes happen as one step."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import SimpleNamespace

from minikubenet.store.keys import KeyLayout


@dataclass
class _KV:
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    version: int

    @property
    def lease_id(self):
        return 0


class _Compare:
    def __init__(self, what: str, key: str):
        self.what, self.key = what, key

    def __eq__(self, other):
        return ("==", self.what, self.key, other)


class _Txns:
    @staticmethod
    def version(key):
        return _Compare("version", key)

    @staticmethod
    def value(key):
        return _Compare("value", key)

    @staticmethod
    def put(key, value):
        return ("put", key, value)

    @staticmethod
    def delete(key):
        return ("delete", key)


class FakeEtcd:
    transactions = _Txns()

    def __init__(self):
        self.kv: dict[str, _KV] = {}
        self.history: list[tuple[int, dict[str, _KV]]] = []
        self.revision = 1
        self.lock = threading.Lock()
        self.transactions_run = 0

    # -- writes (callers hold the lock) --

    def _put(self, key: str, value) -> None:
        value = value.encode() if isinstance(value, str) else bytes(value)
        old = self.kv.get(key)
        self.revision += 1
        self.kv[key] = _KV(
            key.encode(),
            value,
            self.revision,
            old.create_revision if old else self.revision,
            (old.version if old else 0) + 1,
        )
        self.history.append((self.revision, dict(self.kv)))

    def _delete(self, key: str) -> bool:
        if key not in self.kv:
            return False
        self.revision += 1
        del self.kv[key]
        self.history.append((self.revision, dict(self.kv)))
        return True

    def put(self, key, value):
        with self.lock:
            self._put(key, value)

    def delete(self, key):
        with self.lock:
            return self._delete(key)

    # -- reads --

    def get(self, key):
        kv = self.kv.get(key)
        return (kv.value, SimpleNamespace(key=kv.key, mod_revision=kv.mod_revision)) if kv else (None, None)

    def get_prefix(self, prefix, keys_only=False):
        return [
            (None if keys_only else kv.value, SimpleNamespace(key=kv.key, mod_revision=kv.mod_revision))
            for k, kv in sorted(self.kv.items())
            if k.startswith(prefix)
        ]

    def get_prefix_response(self, prefix, revision=None):
        with self.lock:
            data = self.kv
            if revision:
                data = {}
                for rev, snap in self.history:
                    if rev <= revision:
                        data = snap
            kvs = [
                SimpleNamespace(key=kv.key, value=kv.value) for k, kv in sorted(data.items()) if k.startswith(prefix)
            ]
            return SimpleNamespace(kvs=kvs, header=SimpleNamespace(revision=revision or self.revision))

    def transaction(self, compare, success, failure):
        with self.lock:
            self.transactions_run += 1
            ok = all(self._holds(c) for c in compare)
            for op in success if ok else failure:
                if op[0] == "put":
                    self._put(op[1], op[2])
                else:
                    self._delete(op[1])
            return ok, []

    def _holds(self, cmp) -> bool:
        _, what, key, expected = cmp
        kv = self.kv.get(key)
        if what == "version":
            return (kv.version if kv else 0) == expected
        expected = expected.encode() if isinstance(expected, str) else expected
        return kv is not None and kv.value == expected

    def close(self):
        pass


def fake_etcd_store(layout: KeyLayout | None = None):
    """What ServiceStore needs from an EtcdStore: client, layout, endpoints_text."""
    return SimpleNamespace(client=FakeEtcd(), layout=layout or KeyLayout(), endpoints_text="fake://etcd")
