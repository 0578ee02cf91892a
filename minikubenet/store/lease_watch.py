"""Following the subnet leases in etcd: list once, then watch from that revision on.

This is the "list, then watch" pattern every etcd (and Kubernetes) client uses, the way
flannel's ``WatchLeases`` does it (pkg/subnet/etcd/registry.go):

1. read the whole ``subnets/`` prefix in one range request; its response header
   carries the store **revision** R of that snapshot;
2. deliver the snapshot (``LeaseSnapshot``), then watch the prefix starting at R+1, so
   not a single change between the read and the watch is lost;
3. deliver each watch event (``LeasePut``, ``LeaseDelete``) as it arrives;
4. when the watch breaks, start again at 1. That covers an etcd restart (the gRPC
   stream ends with UNAVAILABLE), a compaction (etcd no longer holds revision R+1 and
   refuses the watch: a fresh snapshot replaces the lost history), and a failover to
   another endpoint. The consumer diffs each snapshot against what it knew
   (overlay/leases.py), so repeating step 1 is always safe.

Besides errors, we also re-list every ``relist_interval`` seconds: a watch stream over a
network that silently lost its peer can stay open without delivering anything, and a
periodic fresh read bounds how stale we can get.

An etcd delete carries only the key; the consumer keeps the values (overlay/leases.py).
A lease whose TTL runs out arrives as such a delete.

The watch runs in its own thread and hands everything to ``deliver``; it never touches
the kernel itself.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Union

import grpc
import pyetcd.events
import pyetcd.exceptions

from minikubenet.store.etcd import EtcdStore, StoreError, SubnetLeaseRecord
from minikubenet.store.keys import subnet_from_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseSnapshot:
    """Every lease, as of store revision ``revision``."""
    records: list
    revision: int


@dataclass(frozen=True)
class LeasePut:
    record: SubnetLeaseRecord


@dataclass(frozen=True)
class LeaseDelete:
    subnet: ipaddress.IPv4Network


LeaseUpdate = Union[LeaseSnapshot, LeasePut, LeaseDelete]


class WatchBroken(Exception):
    """The watch stream ended; the loop re-lists and watches again."""


# Everything that means "etcd is not talking to us right now".
RETRYABLE = (grpc.RpcError, pyetcd.exceptions.Etcd3Exception, StoreError, WatchBroken)


def list_leases_at_revision(store: EtcdStore) -> LeaseSnapshot:
    """All leases and the revision they were read at (one range request)."""
    response = store.client.get_prefix_response(store.layout.subnets)
    records = [SubnetLeaseRecord.from_kv(kv.key.decode(), kv.value, kv.lease) for kv in response.kvs]
    return LeaseSnapshot([r for r in records if r is not None], response.header.revision)


def to_update(event) -> LeaseUpdate | None:
    """A pyetcd watch event -> our update (None for keys that are not leases)."""
    key = event.key.decode()
    if isinstance(event, pyetcd.events.DeleteEvent):
        subnet = subnet_from_key(key)
        return LeaseDelete(subnet) if subnet is not None else None
    record = SubnetLeaseRecord.from_kv(key, event.value, event.lease)
    return LeasePut(record) if record is not None else None


class LeaseWatch:
    """Lists and watches the leases in a background thread until ``stop()``."""

    def __init__(self, store: EtcdStore, deliver: Callable[[LeaseUpdate], None],
                 retry_interval: float = 1.0, max_retry_interval: float = 10.0,
                 relist_interval: float = 300.0):
        self.store = store
        self.deliver = deliver
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.relist_interval = relist_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "LeaseWatch":
        self._thread = threading.Thread(target=self._run, name="lease-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        delay = self.retry_interval
        while not self._stop.is_set():
            try:
                snapshot = list_leases_at_revision(self.store)
                self.deliver(snapshot)
                delay = self.retry_interval
                self._follow(snapshot.revision + 1)
            except RETRYABLE as e:
                log.warning("lease watch interrupted (%s); listing again in %.0fs", _describe(e), delay)
            except Exception:  # a bug must not end the watch for good: log it and start over
                log.exception("lease watch failed; listing again in %.0fs", delay)
            else:
                continue  # time for the periodic re-list, or stopped
            self._stop.wait(delay)
            delay = min(delay * 2, self.max_retry_interval)

    def _follow(self, start_revision: int) -> None:
        """Deliver watch events until the stream breaks (raises), it is time to re-list
        (returns), or we are stopped (returns)."""
        responses: queue.Queue = queue.Queue()
        client = self.store.client
        watch_id = client.add_watch_prefix_callback(self.store.layout.subnets, responses.put,
                                                    start_revision=start_revision)
        try:
            relist_at = time.monotonic() + self.relist_interval
            while not self._stop.is_set() and time.monotonic() < relist_at:
                try:
                    response = responses.get(timeout=0.5)
                except queue.Empty:
                    continue
                if response is None:
                    raise WatchBroken("the watch stream ended")
                if isinstance(response, Exception):
                    raise response
                for event in response.events:
                    update = to_update(event)
                    if update is not None:
                        self.deliver(update)
        finally:
            try:
                client.cancel_watch(watch_id)
            except RETRYABLE:
                pass  # the stream is gone already


def watch_leases(store: EtcdStore, deliver: Callable[[LeaseUpdate], None], **kwargs) -> LeaseWatch:
    """Start following the leases; ``deliver`` gets a snapshot first, then changes."""
    return LeaseWatch(store, deliver, **kwargs).start()


def _describe(e: Exception) -> str:
    if isinstance(e, pyetcd.exceptions.RevisionCompactedError):
        return f"history compacted up to revision {e.compacted_revision}"
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__
