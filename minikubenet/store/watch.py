"""List, then watch: how a daemon follows a key prefix in etcd.

Reading a prefix once is ``EtcdStore``'s job; *following* one is this module's. Both
followers in minikubenet are subclasses of ``ListWatch``: the subnet leases
(store/lease_watch.py, for the overlay controller) and the services, endpoints and pods
(store/services.py, for the proxy and the endpoints controller). Each runs in its own
thread and hands everything to ``deliver``; it never touches the kernel itself.

The loop is the "list, then watch" of every etcd client and every Kubernetes informer
(flannel's ``WatchLeases``, pkg/subnet/etcd/registry.go):

1. list the prefix in one consistent read; its response header carries the store
   **revision** R of that snapshot. Deliver the snapshot;
2. watch the prefix starting at R+1: etcd replays every change after the snapshot, so
   not a single change between the read and the watch is lost, and none is seen twice;
3. deliver each watch event as it arrives;
4. when the watch breaks, pause (50 ms, doubling up to 500 ms: a restarted etcd is
   followed again within half a second) and start again at 1:

   - **compaction**: etcd keeps only recent history. Once it has compacted past R+1 it
     refuses the watch, and the lost changes cannot be replayed; a fresh snapshot holds
     their sum, so it replaces them;
   - **etcd restart** (or a member killed): the gRPC stream ends with UNAVAILABLE, or
     just ends. We list again once etcd answers (the store's FailoverClient tries
     every member), which also catches up on what changed while we were cut off. The
     revision is the cluster's, the same on every member, so the new watch may run on
     another member than the list did.

   The consumer treats every snapshot as the whole truth and diffs it against what it
   knew, so repeating step 1 is always safe.

Besides errors, we also re-list every ``relist_interval`` seconds: a watch stream over a
network that silently lost its peer can stay open without delivering anything, and a
periodic fresh read bounds how stale we can get.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

import grpc
import pyetcd.exceptions

from minikubenet.store.etcd import StoreError

log = logging.getLogger(__name__)


class WatchBroken(Exception):
    """The watch stream ended; the loop re-lists and watches again."""


# Everything that means "etcd is not talking to us right now".
RETRYABLE = (grpc.RpcError, pyetcd.exceptions.Etcd3Exception, StoreError, WatchBroken)


class ListWatch:
    """Lists and watches one prefix in a background thread until ``stop()``.

    A subclass says what it follows: ``_prefix()`` (or several ``_prefixes()``), ``_list()`` (a snapshot with a
    ``revision``) and ``_to_update(event, header_revision)`` (None skips the event).
    ``store`` is anything with an etcd ``client``; ``name`` names the thread and the
    log lines."""

    name = "watch"

    def __init__(
        self,
        store,
        deliver: Callable[[object], None],
        retry_interval: float = 0.05,
        max_retry_interval: float = 0.5,
        relist_interval: float = 300.0,
    ):
        self.store = store
        self.deliver = deliver
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.relist_interval = relist_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _prefix(self) -> str:
        raise NotImplementedError

    def _prefixes(self) -> tuple[str, ...]:
        """Every prefix to watch, all from the same revision (one by default). More than
        one when the reader may read only parts of a common prefix (store/etcd_rbac.py)."""
        return (self._prefix(),)

    def _list(self):
        raise NotImplementedError

    def _to_update(self, event, header_revision: int):
        raise NotImplementedError

    def start(self) -> ListWatch:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
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
                snapshot = self._list()
                self.deliver(snapshot)
                delay = self.retry_interval  # etcd answered: the next break starts short again
                self._follow(snapshot.revision + 1)
                continue  # time for the periodic re-list, or stopped
            except RETRYABLE as e:
                log.warning("%s interrupted (%s); listing again in %.2fs", self.name, _describe(e), delay)
            except Exception:  # a bug must not end the watch for good: log it and start over
                log.exception("%s failed; listing again in %.2fs", self.name, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, self.max_retry_interval)

    def _follow(self, start_revision: int) -> None:
        """Deliver watch events until the stream breaks (raises), it is time to re-list
        (returns), or we are stopped (returns)."""
        # pyetcd calls back on its own thread; a queue brings every response to ours, so
        # ``deliver`` is only ever called from this one thread, in order
        responses: queue.Queue = queue.Queue()
        client = self.store.client
        watch_ids = []
        try:
            for prefix in self._prefixes():
                watch = client.add_watch_prefix_callback(prefix, responses.put, start_revision=start_revision)
                watch_ids.append(watch)
                if watch.watch_id is None or watch.watch_id < 0:
                    # etcd answers a watch it refuses (RBAC: no read on the whole prefix)
                    # with created+canceled and id -1; pyetcd then delivers nothing, ever
                    raise WatchBroken(f"etcd refused the watch of {prefix} (permission denied?)")
            relist_at = time.monotonic() + self.relist_interval
            while not self._stop.is_set() and time.monotonic() < relist_at:
                try:
                    response = responses.get(timeout=0.5)  # wakes up to notice stop()
                except queue.Empty:
                    continue
                if response is None:
                    raise WatchBroken("the watch stream ended")
                if isinstance(response, Exception):
                    raise response
                for event in response.events:
                    update = self._to_update(event, response.header.revision)
                    if update is not None:
                        self.deliver(update)
        finally:
            for watch_id in watch_ids:
                try:
                    client.cancel_watch(watch_id)
                except RETRYABLE:
                    pass  # the stream is gone already


def _describe(e: Exception) -> str:
    if isinstance(e, pyetcd.exceptions.RevisionCompactedError):
        return f"history compacted up to revision {e.compacted_revision}"
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__
