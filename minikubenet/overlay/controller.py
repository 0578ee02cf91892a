"""The overlay loop the agent runs: keep the kernel in step with the remote leases.

Three inputs, one worker thread (so kernel changes never race each other):

- **start**: list every lease and program every remote one, before ``start()``
  returns; the agent reports ready only after that;
- **watch updates** (store/lease_watch.py): a snapshot after every (re)connect, and
  single puts and deletes in between. They go through the lease cache
  (overlay/leases.py), which turns them into Added/Removed events; each event is
  planned by the backend and applied at once;
- **a periodic resync** (every ``resync_interval`` seconds, like flannel's host-gw
  route check every 10 s): read back what the kernel holds and ``reconcile`` it with
  the plans. This repairs whatever the events could not: an entry deleted by hand, a
  stray one added by hand, an apply that failed earlier (flannel wraps each step in
  ``retry.Do``; here the next resync is the retry).

A backend is three small things: ``plan(lease) -> PeerPlan | Skipped``, the devices
whose entries it owns (``vxlan_dev`` for neighbours/FDB, ``route_devs`` for routes), and
``prepare()``, run before each resync (VXLAN: make sure flannel.1 still exists). The
kernel side sits behind four calls (``apply_plan``, ``add``, ``delete``, ``read``): the
real one is linux/overlay_routes.py's ``NetlinkKernel``, a fake lets the loop be tested
without root.

Threads: all kernel work happens on the worker thread, which also builds the netlink
socket it uses (see ``OverlayController``); ``start()`` and ``resync_now()`` hand their
work to it and wait.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import threading
import time
from typing import Any, Callable, Protocol, Union

from minikubenet.malformed import MalformedObjects
from minikubenet.metrics import Counter, Gauge
from minikubenet.overlay import Entry, PeerPlan, Skipped, host_gw, reconcile, removable, vxlan
from minikubenet.overlay.leases import Event, LeaseCache, Removed
from minikubenet.store.lease_watch import LeaseDelete, LeasePut, LeaseSnapshot, watch_leases
from minikubenet.subnet_lease_record import SubnetLeaseRecord

log = logging.getLogger(__name__)

DEFAULT_RESYNC_S = 10.0


# -- backends ---------------------------------------------------------------------------------


class VxlanBackend:
    """flannel's vxlan: neighbour + FDB + onlink route per peer on ``flannel.<VNI>``."""

    name = "vxlan"

    def __init__(
        self,
        vni: int = vxlan.DEFAULT_VNI,
        direct_routing: vxlan.DirectRouting | None = None,
        ensure_device: Callable[[object], object] | None = None,
    ):
        self.vni = vni
        self.direct = direct_routing
        self.ensure_device = ensure_device
        self.vxlan_dev = vxlan.device_name(vni)
        self.route_devs = [self.vxlan_dev] + ([direct_routing.underlay_dev] if direct_routing else [])

    def plan(self, lease: SubnetLeaseRecord) -> Union[PeerPlan, Skipped]:
        return vxlan.plan_peer(lease, self.vni, self.direct)

    def leases_changed(self, leases: list[SubnetLeaseRecord]) -> None:
        pass

    def close(self) -> None:
        pass

    def prepare(self, kernel) -> None:
        # flannel watches netlink and recreates a deleted flannel.1 (vxlan_network.go);
        # we check it before every resync instead, and bring it back with our VtepMAC.
        # ``ensure_device(ipr)`` gets the worker's own netlink socket.
        if self.ensure_device is not None:
            self.ensure_device(kernel.ipr)


class HostGwBackend:
    """flannel's host-gw: one route via the peer's PublicIP on the underlay."""

    name = "host-gw"

    def __init__(self, underlay_dev: str, connected: list[ipaddress.IPv4Network]):
        self.underlay_dev = underlay_dev
        self.connected = list(connected)
        self.vxlan_dev = None
        self.route_devs = [underlay_dev]

    def plan(self, lease: SubnetLeaseRecord) -> Union[PeerPlan, Skipped]:
        return host_gw.plan_peer(lease, self.underlay_dev, self.connected)

    def prepare(self, kernel) -> None:
        pass

    def leases_changed(self, leases: list[SubnetLeaseRecord]) -> None:
        pass

    def close(self) -> None:
        pass


class Planner(Protocol):
    """What the controller asks of a backend (agent/backends/ makes one per backend):
    ``plan`` one remote lease (a PeerPlan, a Skipped with the reason, or None when the
    backend programs nothing per lease itself: bgp, where BIRD installs the routes),
    ``prepare`` the kernel before a resync, ``leases_changed`` with every remote lease
    after each change, ``close`` when the controller stops."""

    name: str
    vxlan_dev: str | None
    route_devs: list[str]

    def plan(self, lease: SubnetLeaseRecord) -> Union[PeerPlan, Skipped, None]: ...
    def prepare(self, kernel) -> None: ...
    def leases_changed(self, leases: list[SubnetLeaseRecord]) -> None: ...
    def close(self) -> None: ...


Backend = Planner


# -- the controller -----------------------------------------------------------------------------

WatchStarter = Callable[..., object]  # (store, deliver) -> an object with .stop()


class _Job:
    """A function to run on the worker thread, and its outcome for the caller."""

    def __init__(self, fn: Callable[[], object]):
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # handed to the waiting caller
            self.error = e
        finally:
            self.done.set()

    def wait(self, timeout: float):
        if not self.done.wait(timeout):
            raise TimeoutError(f"the overlay worker did not finish within {timeout:.0f}s")
        if self.error is not None:
            raise self.error
        return self.result


class OverlayController:
    """Programs every remote lease for ``backend`` and keeps it that way.

    ``make_kernel`` builds the kernel side (``lambda: NetlinkKernel.open(network)``,
    linux/overlay_routes.py)
    and is called on the thread that first does kernel work: after ``start()`` that is
    always the worker. This matters: a pyroute2 0.9 ``IPRoute`` keeps its socket per
    thread, and one bound to another namespace (linux/netns.py ``iproute_in``) only
    works on the thread that made it.
    """

    def __init__(
        self,
        store,
        own_subnet: ipaddress.IPv4Network,
        backend: Backend,
        make_kernel: Callable[[], object],
        watch: WatchStarter = watch_leases,
        resync_interval: float = DEFAULT_RESYNC_S,
    ):
        self.store = store
        self.backend = backend
        self.make_kernel = make_kernel
        self._kernel = None
        self.cache = LeaseCache(own_subnet)
        self.watch = watch
        self.resync_interval = resync_interval
        self._updates: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._watch_handle: Any = None
        self._said: dict = {}  # subnet -> the Skipped reason we last logged
        self.bad = MalformedObjects(log)  # leases skipped as malformed (logged once, counted)
        # the agent exports these (agent/metrics.py); ``kind`` is neigh, fdb or route
        self.programmed = Counter(
            "minikubenet_agent_overlay_entries_programmed_total",
            "Overlay entries installed for a remote lease (at start and on watch events)",
        )
        self.withdrawn = Counter(
            "minikubenet_agent_overlay_entries_withdrawn_total",
            "Overlay entries removed because their lease was deleted or expired",
        )
        self.corrected = Counter(
            "minikubenet_agent_overlay_entries_corrected_total",
            "Overlay entries the periodic resync found wrong in the kernel: action=restored "
            "(missing or changed) or removed (nobody wants it)",
        )
        self.wanted_entries = Gauge(
            "minikubenet_agent_overlay_entries", "Overlay entries this node should hold, at the last resync"
        )
        self.last_resync = time.monotonic()

    @property
    def kernel(self):
        if self._kernel is None:
            self._kernel = self.make_kernel()
        return self._kernel

    # -- lifecycle

    def start(self, timeout: float = 60.0) -> None:
        """Program every remote lease (on the worker, waiting for it), then follow changes.
        Raises what the first listing or programming raised (e.g. StoreUnavailable)."""
        first = _Job(lambda: self.resync(self.store.list_leases()))
        self._updates.put(first)  # queued before the worker runs: it is the first thing it does
        self._worker = threading.Thread(target=self._run, name="overlay", daemon=True)
        self._worker.start()
        try:
            first.wait(timeout)
        except BaseException:
            self.stop()
            raise
        self._watch_handle = self.watch(self.store, self._updates.put)

    def stop(self) -> None:
        self._stop.set()
        if self._watch_handle is not None:
            self._watch_handle.stop()
        self._updates.put(None)
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=5.0)
        self.backend.close()

    def resync_now(self, timeout: float = 30.0) -> tuple[list[Entry], list[Entry]]:
        """Reconcile at once (on the worker) and return ``(added, removed)``."""
        return self._submit(self.reconcile_kernel).wait(timeout)

    def _submit(self, fn: Callable[[], object]) -> _Job:
        job = _Job(fn)
        self._updates.put(job)
        return job

    # -- the worker: one update at a time, and a resync when it is due

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = max(0.0, self.last_resync + self.resync_interval - time.monotonic())
            try:
                update = self._updates.get(timeout=wait)
            except queue.Empty:
                update = None
            try:
                if isinstance(update, _Job):
                    update.run()
                elif update is not None:
                    self.handle(update)
                if time.monotonic() >= self.last_resync + self.resync_interval:
                    self.reconcile_kernel()
            except Exception:  # keep the overlay alive; the next resync retries
                log.exception("overlay update failed; retrying at the next resync")
                self.last_resync = time.monotonic()
        if self._kernel is not None and hasattr(self._kernel, "close"):
            self._kernel.close()  # on the thread that opened it

    def handle(self, update) -> None:
        if isinstance(update, LeaseSnapshot):
            self.resync(update.records)
        elif isinstance(update, LeasePut):
            self.apply_events(self.cache.put(update.record))
        elif isinstance(update, LeaseDelete):
            self.apply_events(self.cache.delete(update.subnet))
        self.backend.leases_changed(self.cache.leases())

    # -- the work

    def resync(self, records: list[SubnetLeaseRecord]) -> None:
        """A full listing: apply what changed, then compare everything with the kernel."""
        self.bad.keep_only("leases", [str(r.subnet) for r in records])
        self.apply_events(self.cache.resync(records))
        self.backend.leases_changed(self.cache.leases())
        self.reconcile_kernel()

    def plan(self, lease: SubnetLeaseRecord) -> Union[PeerPlan, Skipped, None]:
        """The backend's plan for one lease, or None for a malformed lease: that one is
        skipped (logged once, counted) and every other lease is still programmed."""
        key = str(lease.subnet)
        try:
            if lease.problem:
                raise ValueError(lease.problem)
            plan = self.backend.plan(lease)
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            self.bad.skip("leases", key, e)
            return None
        self.bad.ok("leases", key)
        return plan

    def wanted(self) -> list[PeerPlan]:
        plans = []
        for lease in self.cache.leases():
            plan = self.plan(lease)
            if plan is None:
                continue
            if isinstance(plan, Skipped):
                self._say_once(plan)
            else:
                plans.append(plan)
        return plans

    def apply_events(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, Removed) and ev.lease.problem:
                self.bad.ok("leases", str(ev.lease.subnet))  # a malformed lease was never programmed
                continue
            plan = self.plan(ev.lease)
            if isinstance(ev, Removed):
                self._said.pop(ev.lease.subnet, None)
                if isinstance(plan, PeerPlan):
                    self.remove_peer(plan)
            elif isinstance(plan, Skipped):
                self._say_once(plan)
            elif plan is not None:
                self.add_peer(plan)

    def add_peer(self, plan: PeerPlan) -> None:
        log.info("adding peer %s (node %s): %s", plan.subnet, plan.public_ip, plan)
        try:
            self.kernel.apply_plan(plan)
        except Exception as e:
            log.warning("%s; retrying at the next resync", e)
            return
        _count(self.programmed, plan.entries())

    def remove_peer(self, plan: PeerPlan) -> None:
        log.info("removing peer %s (node %s)", plan.subnet, plan.public_ip)
        # The cache already holds the new state, so wanted() is what must remain.
        gone = removable(plan, self.wanted())
        for err in self.kernel.delete(gone):
            log.warning("%s", err)
        _count(self.withdrawn, gone)

    def reconcile_kernel(self) -> tuple[list[Entry], list[Entry]]:
        """Read the kernel back and correct it: extra entries go, missing ones come back."""
        self.last_resync = time.monotonic()
        self.backend.prepare(self.kernel)
        wanted = self.wanted()
        self.wanted_entries.set(sum(len(p.entries()) for p in wanted))
        to_add, to_remove = reconcile(wanted, self.kernel.read(self.backend))
        if to_remove:
            log.warning(
                "resync: removing %d entries nobody wants: %s", len(to_remove), ", ".join(str(e) for e in to_remove)
            )
            for err in self.kernel.delete(to_remove):
                log.warning("%s", err)
            _count(self.corrected, to_remove, action="removed")
        if to_add:
            log.warning(
                "resync: restoring %d missing or changed entries: %s", len(to_add), ", ".join(str(e) for e in to_add)
            )
            for err in self.kernel.add(to_add):
                log.warning("%s", err)
            _count(self.corrected, to_add, action="restored")
        return to_add, to_remove

    def _say_once(self, skipped: Skipped) -> None:
        if self._said.get(skipped.subnet) != skipped.reason:
            self._said[skipped.subnet] = skipped.reason
            log.warning("%s", skipped)


def _count(counter: Counter, entries, **labels) -> None:
    """One increment per entry, labelled by its kind (``neigh``, ``fdb``, ``route``). A
    change counts when it was made or tried: one that failed is logged, and the next
    resync counts it again as corrected."""
    for e in entries:
        counter.inc(kind=type(e).__name__.lower(), **labels)
