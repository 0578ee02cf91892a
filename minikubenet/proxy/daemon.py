"""``minikubenet-proxy``: the service proxy, one per node (kube-proxy).

    etcd: /minikubenet/services/…  /minikubenet/endpoints/…
            │ list, then watch (store/services.py ObjectWatch)
            ▼
    ProxyState      Services and Endpoints, parsed; the set of services changed since
            │       the last successful sync ("dirty", kube-proxy's change trackers)
            ▼
    SyncLoop        when to sync (kube-proxy's BoundedFrequencyRunner): at once after a
            │       change, but never more often than --min-sync-period; a periodic
            │       check every --sync-period (were our rules flushed?); a full sync
            │       every --full-sync-period, after any failure, and at start-up
            ▼
    Syncer          syncers.py: plan the changed services, render, apply in ONE
                    iptables-restore --noflush (filter + nat) or ONE nft -f (a large
                    nftables full sync: a few, nft_render.render_staged); then delete
                    stale UDP conntrack entries

No rules are written before the first complete snapshot of services and endpoints has
arrived ("Not syncing iptables until Services and Endpoints have been received", as
kube-proxy logs), so a restarting proxy never briefly rejects every service.

On SIGTERM the proxy exits and leaves its rules in place: traffic keeps flowing while
it restarts, and the next start resumes with a full sync. ``--cleanup`` removes the
rules of both modes; starting in one mode removes what the other left behind.

Served on the side: Prometheus metrics on ``--metrics-bind-address`` (kube-proxy's
127.0.0.1:10249) and ``/healthz`` on ``--healthz-bind-address`` (0.0.0.0:10256);
``/healthz`` also reports ``appliedRevision``, the etcd revision the kernel's rules
reflect, so a test (or a person) can wait for "my change is live on this node".
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

from minikubenet.k8s_objects import (
    DEFAULT_NODE_PORT_RANGE,
    Endpoint,
    Service,
    ValidationError,
    endpoints_from_k8s,
    service_from_k8s,
)
from minikubenet.linux import nft_monitor
from minikubenet.malformed import MalformedObjects
from minikubenet.proxy.healthcheck import ServiceHealthServer
from minikubenet.proxy.metrics import Health, ProxyMetrics, health_routes, metrics_routes, serve
from minikubenet.proxy.model import RenderOptions
from minikubenet.proxy.syncers import SyncConfig, Syncer, SyncError, make_syncer, other_mode_leftovers, parse_node_ips
from minikubenet.store.etcd import add_etcd_tls_options
from minikubenet.store.services import (
    DEFAULT_SERVICE_CIDR,
    ObjectDelete,
    ObjectPut,
    ObjectWatch,
    ServiceStore,
    Snapshot,
)
from minikubenet.waiting import wait_until

log = logging.getLogger("minikubenet.proxy")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minikubenet-proxy", description=__doc__.split("\n\n")[0])
    p.add_argument("--etcd-endpoints", default=os.environ.get("MINIKUBENET_ETCD_ENDPOINTS", "http://127.0.0.1:2379"))
    add_etcd_tls_options(p)
    p.add_argument("--etcd-prefix", default="/coreos.com/network")
    p.add_argument("--project-prefix", default="/minikubenet")
    p.add_argument("--node-name", default=os.uname().nodename)
    p.add_argument("--mode", default="iptables", choices=["iptables", "nftables"])
    p.add_argument(
        "--cluster-cidr",
        help="the pod network (default: from the network config in etcd); "
        "ClusterIP traffic from outside it is masqueraded",
    )
    p.add_argument("--service-cidr", default=os.environ.get("MINIKUBENET_SERVICE_CIDR", DEFAULT_SERVICE_CIDR))
    p.add_argument(
        "--nodeport-addresses",
        nargs="*",
        default=[],
        help="node IPs that accept NodePort traffic (default: every local address)",
    )
    p.add_argument("--masquerade-all", action="store_true", help="SNAT all traffic to ClusterIPs")
    p.add_argument(
        "--iptables",
        default="iptables",
        help="iptables binary: iptables, iptables-nft or iptables-legacy (its -restore/-save are used)",
    )
    p.add_argument(
        "--sync-period",
        type=float,
        default=30.0,
        help="seconds between checks that our rules are still in place (kube-proxy: 30 s)",
    )
    p.add_argument(
        "--min-sync-period",
        type=float,
        default=1.0,
        help="at most one sync per this many seconds; changes in between are batched",
    )
    p.add_argument(
        "--full-sync-period",
        type=float,
        default=3600.0,
        help="seconds between full syncs that rewrite everything (kube-proxy: 1 h)",
    )
    p.add_argument(
        "--no-conntrack-cleanup",
        dest="conntrack_cleanup",
        action="store_false",
        help="do not delete stale UDP conntrack entries",
    )
    p.add_argument("--metrics-bind-address", default="127.0.0.1:10249", help="'' to disable")
    p.add_argument("--healthz-bind-address", default="0.0.0.0:10256", help="'' to disable")
    p.add_argument("--dry-run", action="store_true", help="print the full ruleset for the current state and exit")
    p.add_argument("--cleanup", action="store_true", help="remove the rules of both modes and exit")
    p.add_argument("--startup-timeout", type=float, default=60.0)
    p.add_argument("--log-level", default="info")
    return p


# --------------------------------------------------------------------------- state


class ProxyState:
    """Services and endpoints as the watch delivers them, plus what changed."""

    def __init__(self, on_change=lambda: None, bad: MalformedObjects | None = None):
        self.bad = bad or MalformedObjects(log)  # objects skipped as malformed
        self.services: dict[str, Service] = {}
        self.endpoints: dict[str, dict[str, list[Endpoint]]] = {}  # "ns/name" -> {port key: eps}
        self.dirty: set[str] = set()
        self.revision = 0
        self.synced = False  # a complete snapshot has arrived
        self.service_changes = 0
        self.endpoint_changes = 0
        self.lock = threading.Lock()
        self.on_change = on_change

    def deliver(self, update) -> None:
        changed = False
        with self.lock:
            if isinstance(update, Snapshot):
                changed = self._replace(update) or not self.synced  # the first one always counts
                self.revision = max(self.revision, update.revision)
                self.synced = True
            elif isinstance(update, (ObjectPut, ObjectDelete)) and update.kind in ("services", "endpoints"):
                doc = update.doc if isinstance(update, ObjectPut) else None
                changed = self._set(update.kind, update.key, doc)
                self.revision = max(self.revision, update.revision)
        if changed:
            self.on_change()

    def _replace(self, snap: Snapshot) -> bool:
        keys = set(snap.services) | set(snap.endpoints) | set(self.services) | set(self.endpoints)
        self.bad.keep_only("services", snap.services)
        self.bad.keep_only("endpoints", snap.endpoints)
        changed = False
        for key in keys:
            changed |= self._set("services", key, snap.services.get(key))
            changed |= self._set("endpoints", key, snap.endpoints.get(key))
        return changed

    def _set(self, kind: str, key: str, doc: dict | None) -> bool:
        """Store one parsed object (None: deleted); True if that changes anything. A
        malformed object counts as absent: skipped, logged once, counted (malformed.py)."""
        table = self.services if kind == "services" else self.endpoints
        new = None
        if doc is not None:
            try:
                new = service_from_k8s(doc) if kind == "services" else endpoints_from_k8s(doc)
            except ValidationError as e:
                self.bad.skip(kind, key, e)
        if new is not None or doc is None:
            self.bad.ok(kind, key)
        if table.get(key) == new:
            return False
        if new is None:
            table.pop(key, None)
        else:
            table[key] = new
        self.dirty.add(key)
        if kind == "services":
            self.service_changes += 1
        else:
            self.endpoint_changes += 1
        return True

    def take(self) -> tuple[dict, dict, set[str], int]:
        """A consistent copy for one sync, and the changes it covers."""
        with self.lock:
            dirty, self.dirty = self.dirty, set()
            return dict(self.services), dict(self.endpoints), dirty, self.revision

    def give_back(self, dirty: set[str]) -> None:
        """A sync failed: its changes are still to be applied."""
        with self.lock:
            self.dirty |= dirty


# --------------------------------------------------------------------------- the loop


class SyncLoop:
    def __init__(
        self,
        state: ProxyState,
        syncer: Syncer,
        metrics: ProxyMetrics,
        health: Health,
        sync_period: float = 30.0,
        min_sync_period: float = 1.0,
        full_sync_period: float = 3600.0,
        clock=time.monotonic,
    ):
        self.state, self.syncer, self.metrics, self.health = state, syncer, metrics, health
        self.sync_period, self.min_sync_period, self.full_sync_period = sync_period, min_sync_period, full_sync_period
        self.clock = clock
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.need_full = True
        self.last_sync_end = float("-inf")
        self.last_full = clock()  # the first sync is full anyway (need_full)
        self.next_check = clock() + sync_period
        self.retry_at: float | None = None
        self.backoff = 1.0
        self.syncs = 0
        self.monitored = False  # nf_tables notifications arrive (else: deep periodic checks)
        self._foreign = False  # someone else touched our rules (a notification said so)
        self._check_soon = False  # a foreign change calls for the cheap check at once
        self._check_deep = False  # notifications were lost: look at the kernel
        # called with (services, endpoints) after each good sync
        self.after_sync: Callable[[dict, dict], object] | None = None

    def changed(self) -> None:
        """Called by the watch: something is queued."""
        self.health.queued()
        self.metrics.last_queued.set(time.time())
        self.wake.set()

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()

    def on_transaction(self, tx) -> None:
        """An nf_tables transaction was committed (linux/nft_monitor.py, monitor thread):
        if another process touched our rules, the next sync is full and comes at once."""
        if tx.gen is not None and nft_monitor.OWN.made(tx.gen):
            return
        ours = [c for c in tx.changes if self.syncer.touches_ours(c)]
        if not ours:
            if any(self.syncer.calls_for_check(c) for c in tx.changes):
                self._check_soon = True  # not ours, but our rules may be bypassed now: look
                self.wake.set()
            return
        who = f"{tx.gen.proc_name or '?'} (pid {tx.gen.pid})" if tx.gen else "someone"
        what = ", ".join(f"{c.op} {c.table} {c.name}".rstrip() for c in ours[:3]) + (
            f" and {len(ours) - 3} more" if len(ours) > 3 else ""
        )
        if all(c.deletes for c in ours):
            log.warning("%s deleted our rules (%s): rules were flushed or deleted by hand; full sync", who, what)
        else:
            log.warning("%s changed our rules (%s): full sync", who, what)
        self._foreign = True
        self.wake.set()

    def on_overflow(self) -> None:
        """nf_tables notifications were lost (a burst overflowed the socket buffer)."""
        self._check_deep = True
        self.wake.set()

    def _deadline(self, now: float) -> float:
        times = [self.next_check, self.last_full + self.full_sync_period]
        times += [t for t in (self.retry_at, self.syncer.pending_work_at()) if t is not None]
        looking = self._foreign or self._check_deep or self._check_soon
        if looking and self.state.synced:  # (not synced: step() is not called)
            times.append(self.last_sync_end + self.min_sync_period)
        if self.state.synced and self.retry_at is None and (self.state.dirty or self.need_full):
            times.append(self.last_sync_end + self.min_sync_period)
        return max(0.0, min(times) - now)

    def run(self) -> None:
        while not self.stopped.is_set():
            self.wake.wait(self._deadline(self.clock()))
            self.wake.clear()
            if self.stopped.is_set():
                break
            if self.state.synced:
                self.step()

    def step(self) -> bool:
        """Sync if anything calls for it; True if a sync ran (successfully or not)."""
        now = self.clock()
        if self._foreign and now - self.last_sync_end >= self.min_sync_period:
            self._foreign = False  # (before the first sync: that one is full anyway)
            if self.syncs and not self.need_full:
                self.need_full = True  # a notification: someone touched our rules
                self.metrics.rule_repairs.inc(trigger="notification")
        deep = self._check_deep or not self.monitored
        due = now >= self.next_check or self._check_deep
        soon = self._check_soon and now - self.last_sync_end >= self.min_sync_period
        if due or soon:
            if due:
                self.next_check = now + self.sync_period
            self._check_deep = self._check_soon = False  # (one check answers both)
            if (
                self.syncs
                and not self.need_full
                and not (self.syncer.intact() and (not deep or self.syncer.all_chains_intact()))
            ):
                self.need_full = True  # someone flushed our rules: restore them now
                self.metrics.rule_repairs.inc(trigger="periodic check" if due else "notification")
        if now - self.last_full >= self.full_sync_period:
            self.need_full = True
        pending = self.syncer.pending_work_at()
        retry_due = self.retry_at is not None and now >= self.retry_at
        if not (self.need_full or self.state.dirty or retry_due or (pending is not None and now >= pending)):
            return False
        if self.retry_at is not None and not retry_due:
            return False  # failed recently: wait for the retry time
        if now - self.last_sync_end < self.min_sync_period:
            return False  # too soon; the deadline brings us back
        self.sync_now()
        return True

    def sync_now(self) -> None:
        services, endpoints, dirty, revision = self.state.take()
        full = self.need_full
        started = time.perf_counter()
        try:
            result = self.syncer.sync(services, endpoints, None if full else dirty)
        except SyncError as e:
            self.state.give_back(dirty)
            self.need_full = True
            self.retry_at = self.clock() + self.backoff
            log.error(
                "sync failed, the previous rules stay in place; retrying in %.0fs with a full sync:\n%s",
                self.backoff,
                e,
            )
            self.backoff = min(self.backoff * 2, self.sync_period)
            m = self.metrics
            if self.syncer.mode == "iptables":
                m.restore_failures.inc()
                if not full:
                    m.partial_restore_failures.inc()
            else:
                m.nft_failures.inc()
            self.last_sync_end = self.clock()
            return
        elapsed = time.perf_counter() - started
        self.syncs += 1
        self.last_sync_end = self.clock()
        if full:
            self.last_full = self.last_sync_end
        self.need_full, self.retry_at, self.backoff = False, None, 1.0
        self._record(result, elapsed, revision, len(dirty))
        if self.after_sync is not None:
            self.after_sync(services, endpoints)

    def _record(self, result, elapsed: float, revision: int, changed: int) -> None:
        m = self.metrics
        m.sync_duration.observe(elapsed)
        (m.sync_full_duration if result.full else m.sync_partial_duration).observe(elapsed)
        m.last_sync.set(time.time())
        m.service_changes.inc(self.state.service_changes - m.service_changes.get())
        m.endpoint_changes.inc(self.state.endpoint_changes - m.endpoint_changes.get())
        for table, n in result.total_rules.items():
            (m.nftables_total.set(n) if table == "nftables" else m.iptables_total.set(n, table=table))
        for table, n in result.written_rules.items():
            if table != "nftables":
                m.iptables_last.set(n, table=table)
        if result.conntrack_deleted:
            m.conntrack_deleted.inc(result.conntrack_deleted)
        self.health.updated(revision)
        log.info(
            "%s sync: %d services changed, %s rules written, %.1f ms (revision %d)",
            "full" if result.full else "partial",
            changed,
            "/".join(f"{t} {n}" for t, n in result.written_rules.items()),
            elapsed * 1000,
            revision,
        )


# --------------------------------------------------------------------------- main


class ProxyError(Exception):
    pass


def _connect(args):
    from minikubenet.store.etcd import EtcdStore, TLSFiles
    from minikubenet.store.keys import KeyLayout

    try:
        etcd = EtcdStore(
            args.etcd_endpoints.split(","),
            layout=KeyLayout(args.etcd_prefix, args.project_prefix),
            tls=TLSFiles.from_args(args),
        )
        return etcd, ServiceStore(etcd, args.service_cidr, DEFAULT_NODE_PORT_RANGE)
    except (ValueError, OSError) as e:
        raise ProxyError(f"bad settings: {e}") from None


def _cluster_cidr(args, etcd) -> str | None:
    """--cluster-cidr, else the pod network from etcd's network config (waiting for it)."""
    from minikubenet.network_config import ConfigError
    from minikubenet.store.etcd import StoreError

    if args.cluster_cidr:
        return args.cluster_cidr
    why = [""]

    def network() -> str | None:
        try:
            config = etcd.get_config()
        except (StoreError, ConfigError) as e:
            why[0] = str(e)
        else:
            if config is not None:
                return str(config.network)
            why[0] = f"no network config at {etcd.layout.config}"
        log.info("waiting: %s", why[0])
        return None

    found = wait_until(network, args.startup_timeout, interval=1.0)
    if found is None:
        raise ProxyError(f"cannot learn the cluster network ({why[0]}); pass --cluster-cidr")
    return found


def sync_config(args, cluster_cidr: str | None) -> SyncConfig:
    try:
        node_ips = parse_node_ips(args.nodeport_addresses)
    except ValueError as e:
        raise ProxyError(f"--nodeport-addresses: {e}") from None
    return SyncConfig(
        cluster_cidr=cluster_cidr,
        service_cidr=args.service_cidr,
        node_ips=node_ips,
        options=RenderOptions(
            masquerade_all=args.masquerade_all, node_name=args.node_name, node_ip=node_ips[0] if node_ips else ""
        ),
        iptables=args.iptables,
        conntrack_cleanup=args.conntrack_cleanup,
    )


def dry_run(args) -> int:
    etcd, store = _connect(args)
    try:
        snap = store.snapshot()
        state = ProxyState()
        state.deliver(snap)
        syncer = make_syncer(args.mode, sync_config(args, _cluster_cidr(args, etcd)))
        sys.stdout.write(syncer.render_full(state.services, state.endpoints))
    finally:
        etcd.close()
    return 0


def cleanup(args) -> int:
    config = sync_config(args, args.cluster_cidr)
    for mode in ("iptables", "nftables"):
        make_syncer(mode, config).cleanup()
        log.info("removed the %s rules", mode)
    return 0


def run(args) -> int:
    etcd, store = _connect(args)
    config = sync_config(args, _cluster_cidr(args, etcd))
    syncer = make_syncer(args.mode, config)
    leftovers = other_mode_leftovers(args.mode, config)
    if leftovers is not None:
        log.info("removing the rules %s mode left behind", leftovers.mode)
        leftovers.cleanup()
    metrics, health = ProxyMetrics(), Health(timeout=2 * args.sync_period)
    health.mode = args.mode
    state = ProxyState()
    metrics.malformed, metrics.malformed_seen = state.bad.metrics()
    loop = SyncLoop(state, syncer, metrics, health, args.sync_period, args.min_sync_period, args.full_sync_period)
    state.on_change = loop.changed
    servers = []
    try:
        if args.metrics_bind_address:
            servers.append(serve(args.metrics_bind_address, metrics_routes(metrics)))
        if args.healthz_bind_address:
            servers.append(serve(args.healthz_bind_address, health_routes(health, metrics)))
    except (OSError, ValueError) as e:
        raise ProxyError(f"cannot listen: {e}") from None
    # Health-check NodePorts (eTP=Local LoadBalancers): answered once the rules are in.
    service_health = ServiceHealthServer(args.node_name, proxy_healthy=lambda: health.status()[0])
    loop.after_sync = service_health.update
    monitor = _start_monitor(args, loop)
    watch = ObjectWatch(store, state.deliver).start()

    def on_signal(signum, frame):
        log.info("signal %d: stopping (rules stay in place)", signum)
        loop.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "%s mode, cluster network %s, service network %s; metrics %s, healthz %s",
        args.mode,
        config.cluster_cidr,
        config.service_cidr,
        args.metrics_bind_address or "off",
        args.healthz_bind_address or "off",
    )
    loop.run()
    if monitor is not None:
        monitor.stop()
    watch.stop()
    service_health.close()
    for s in servers:
        s.shutdown()
    etcd.close()
    return 0


def _start_monitor(args, loop: SyncLoop):
    """Follow nf_tables notifications, unless the rules are iptables-legacy's (those send
    none: the periodic check then lists our chains, loop.monitored stays False)."""
    from minikubenet.linux import iptables

    if args.mode == "iptables" and iptables.is_legacy(args.iptables):
        log.info(
            "%s is iptables-legacy: no change notifications; checking every chain every %.0fs",
            args.iptables,
            args.sync_period,
        )
        return None
    try:
        monitor = nft_monitor.NftMonitor(loop.on_transaction, loop.on_overflow).start()
    except nft_monitor.MonitorUnavailable as e:
        log.warning("%s; checking every chain every %.0fs instead", e, args.sync_period)
        return None
    loop.monitored = True
    return monitor


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {args.node_name} %(name)s %(levelname)s %(message)s",
    )
    from minikubenet.store.etcd import StoreError

    try:
        if args.cleanup:
            return cleanup(args)
        if args.dry_run:
            return dry_run(args)
        return run(args)
    except (ProxyError, StoreError) as e:
        log.error("cannot start: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
