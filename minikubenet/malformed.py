"""Objects a control loop cannot use: skipped, logged once with their key, counted.

Every daemon that follows etcd (the endpoints controller, the proxy, the agent's overlay
controller) reads documents anyone with write access may have put there. One malformed
document must cost exactly that one object, never the loop: the consumer parses each
object on its own, and when parsing fails it calls ``skip(kind, key, error)`` and
carries on with every other object. A skipped object is treated as absent (the store
holds no usable version of it), the way an informer drops what it cannot decode.

A loop that recomputes everything after each change would otherwise log the same bad
object again on every pass; ``MalformedObjects`` remembers what it has said, so the log
names each bad object once, and once more only when its content changes (a new error
message) or after it was fixed or deleted and then broken again.

Two metrics (minikubenet/metrics.py), labelled by ``kind`` ("pods", "services",
"endpoints", "leases"):

    <prefix>malformed_objects              gauge: objects skipped right now
    <prefix>malformed_objects_seen_total   counter: bad versions seen (each counted once)
"""

from __future__ import annotations

import logging
import threading

from minikubenet.metrics import Counter, Gauge


class MalformedObjects:
    def __init__(self, log: logging.Logger, prefix: str = "minikubenet_"):
        self.log = log
        self.current = Gauge(prefix + "malformed_objects", "Objects in etcd skipped because they are malformed")
        self.seen = Counter(
            prefix + "malformed_objects_seen_total", "Malformed object versions seen in etcd (each logged once)"
        )
        self._said: dict[tuple[str, str], str] = {}  # (kind, key) -> the error we logged
        self._lock = threading.Lock()

    def skip(self, kind: str, key: str, error: object) -> None:
        """``kind``/``key`` could not be used because of ``error``: log (once) and count."""
        message = " ".join(str(error).split())  # one line, whatever the error held
        with self._lock:
            if self._said.get((kind, key)) == message:
                return
            self._said[(kind, key)] = message
            self.seen.inc(kind=kind)
            self._update_gauge(kind)
        self.log.warning("skipping malformed %s %s (every other object is still served): %s", kind, key, message)

    def ok(self, kind: str, key: str) -> None:
        """``kind``/``key`` is valid now, or deleted: a later bad version is news again."""
        with self._lock:
            if self._said.pop((kind, key), None) is None:
                return
            self._update_gauge(kind)
        self.log.info("%s %s is no longer malformed", kind, key)

    def keep_only(self, kind: str, keys) -> None:
        """After a full listing: forget the bad objects of ``kind`` that are gone."""
        keys = set(keys)
        with self._lock:
            gone = [key for k, key in self._said if k == kind and key not in keys]
        for key in gone:
            self.ok(kind, key)

    def skipped(self, kind: str | None = None) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(k for k in self._said if kind is None or k[0] == kind)

    def metrics(self) -> list:
        return [self.current, self.seen]

    def _update_gauge(self, kind: str) -> None:
        self.current.set(sum(1 for k, _ in self._said if k == kind), kind=kind)
