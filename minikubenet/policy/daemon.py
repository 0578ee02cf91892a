"""``minikubenet-policy``: the NetworkPolicy controller, one per node.

    etcd: /minikubenet/networkpolicies/…  namespaces/…  pods/…
            │ list, then watch (store/policy_watch.py)
            ▼
    PolicyState     policies, namespace labels and pods, parsed (a malformed object is
            │       skipped, logged and counted, never fatal: malformed.py)
            ▼
    SyncLoop        the proxy's loop (proxy/daemon.py), unchanged: at once after a change
            │       but at most every --min-sync-period; a check every --sync-period for
            │       flushed rules; nf_tables notifications of foreign changes -> full sync,
            │       of a rule added to FORWARD or INPUT -> that check at once (is our
            │       jump still first?)
            ▼
    PolicySyncer    policy/syncers.py: plan this node's pods, render, ONE iptables-restore
                    or ONE nft -f; partial syncs write only what changed

**Why its own daemon, not part of the agent.** The agent must answer CNI calls in
milliseconds and owns links and addresses; the proxy owns packet filter rules and
already has the whole sync machinery (loop, drift repair, metrics, health). A policy
controller is the proxy's twin: same inputs style (watched objects), same output
(one atomic ruleset), same --mode. Keeping it separate, as kube-router and Calico's
Felix keep policy apart from IPAM, means a crash or a slow sync of one never holds up
the other, its etcd user may read only what it needs (store/etcd_rbac.py, user
"policy"), and a cluster that wants no policy simply does not start it.

Served on the side: ``/healthz`` (with ``appliedRevision``: the etcd revision the
kernel's rules reflect) on ``--healthz-bind-address`` and metrics on
``--metrics-bind-address``, both loopback by default.

``--dry-run`` prints the node's ruleset for the current state and exits; ``--explain
SRC DST PORT[/PROTO]`` says what the policies decide for a connection between two pods
(``ns/name``) or addresses, and which policy and rule decide it (model.verdict); with
--mode iptables it also walks the rendered rules with the proxy's tracer and names the
rule that drops the packet.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from minikubenet.malformed import MalformedObjects
from minikubenet.policy.model import (
    Address,
    Cluster,
    Pod,
    Policy,
    PolicyError,
    namespace_labels,
    pod_from_k8s,
    policy_from_k8s,
    verdict,
)
from minikubenet.policy.syncers import PolicySyncer, make_syncer
from minikubenet.store.etcd import add_etcd_tls_options
from minikubenet.store.services import ObjectDelete, ObjectPut

log = logging.getLogger("minikubenet.policy")

HEALTHZ = "127.0.0.1:10257"
METRICS = "127.0.0.1:10258"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minikubenet-policy", description=__doc__.split("\n\n")[0])
    p.add_argument("--etcd-endpoints", default=os.environ.get("MINIKUBENET_ETCD_ENDPOINTS", "http://127.0.0.1:2379"))
    add_etcd_tls_options(p)
    p.add_argument("--etcd-prefix", default="/coreos.com/network")
    p.add_argument("--project-prefix", default="/minikubenet")
    p.add_argument("--node-name", default=os.uname().nodename)
    p.add_argument("--mode", default="iptables", choices=["iptables", "nftables"])
    p.add_argument("--iptables", default="iptables", help="iptables binary (its -restore/-save are used)")
    p.add_argument("--sync-period", type=float, default=30.0)
    p.add_argument("--min-sync-period", type=float, default=1.0)
    p.add_argument("--full-sync-period", type=float, default=3600.0)
    p.add_argument("--metrics-bind-address", default=METRICS, help="'' to disable")
    p.add_argument("--healthz-bind-address", default=HEALTHZ, help="'' to disable")
    p.add_argument("--dry-run", action="store_true", help="print this node's ruleset and exit")
    p.add_argument(
        "--explain",
        nargs=3,
        metavar=("SRC", "DST", "PORT[/PROTO]"),
        help="what the policies decide for one connection, and why",
    )
    p.add_argument("--cleanup", action="store_true", help="remove the rules of both modes and exit")
    p.add_argument("--log-level", default="info")
    return p


class PolicyState:
    """The objects as the watch delivers them; the interface the proxy's SyncLoop reads
    (take / give_back / dirty / synced / revision and two change counters)."""

    def __init__(self, on_change=lambda: None):
        self.bad = MalformedObjects(log)
        self.policies: dict[str, Policy] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.pods: dict[str, Pod] = {}
        self.dirty: set[str] = set()
        self.revision = 0
        self.synced = False
        self.service_changes = 0  # (the loop's metric names) policy and namespace changes
        self.endpoint_changes = 0  # pod changes
        self.lock = threading.Lock()
        self.on_change = on_change

    def deliver(self, update) -> None:
        changed = False
        with self.lock:
            if isinstance(update, (ObjectPut, ObjectDelete)):
                changed = self._set(update.kind, update.key, update.doc if isinstance(update, ObjectPut) else None)
                self.revision = max(self.revision, update.revision)
            else:  # a PolicySnapshot: the whole truth
                for kind in ("networkpolicies", "namespaces", "pods"):
                    docs = update.of(kind)
                    self.bad.keep_only(kind, docs)
                    for key in set(docs) | set(self._table(kind)):
                        changed |= self._set(kind, key, docs.get(key))
                changed |= not self.synced
                self.synced = True
                self.revision = max(self.revision, update.revision)
        if changed:
            self.on_change()

    def _table(self, kind: str) -> dict:
        tables: dict[str, dict] = {"networkpolicies": self.policies, "namespaces": self.namespaces, "pods": self.pods}
        return tables[kind]

    def _set(self, kind: str, key: str, doc) -> bool:
        table = self._table(kind)
        new = None
        if doc is not None:
            try:
                new = (
                    policy_from_k8s(doc)
                    if kind == "networkpolicies"
                    else namespace_labels(doc)
                    if kind == "namespaces"
                    else pod_from_k8s(doc)
                )
            except (PolicyError, AttributeError, TypeError) as e:
                self.bad.skip(kind, key, e)
        if new is not None or doc is None:
            self.bad.ok(kind, key)
        if table.get(key) == new:
            return False
        if new is None:
            table.pop(key, None)
        else:
            table[key] = new
        self.dirty.add(f"{kind}/{key}")
        if kind == "pods":
            self.endpoint_changes += 1
        else:
            self.service_changes += 1
        return True

    def cluster(self) -> Cluster:
        return Cluster(list(self.policies.values()), list(self.pods.values()), dict(self.namespaces))

    def take(self):
        with self.lock:
            dirty, self.dirty = self.dirty, set()
            return self.cluster(), None, dirty, self.revision

    def give_back(self, dirty: set[str]) -> None:
        with self.lock:
            self.dirty |= dirty


class PolicyDaemonError(Exception):
    pass


def _connect(args):
    from minikubenet.store.etcd import EtcdStore, TLSFiles
    from minikubenet.store.keys import KeyLayout

    try:
        return EtcdStore(
            args.etcd_endpoints.split(","),
            layout=KeyLayout(args.etcd_prefix, args.project_prefix),
            tls=TLSFiles.from_args(args),
        )
    except (ValueError, OSError) as e:
        raise PolicyDaemonError(f"bad settings: {e}") from None


def _snapshot_state(args) -> PolicyState:
    from minikubenet.store.policy_watch import PolicyWatch

    etcd = _connect(args)
    try:
        state = PolicyState()
        state.deliver(PolicyWatch(etcd, lambda u: None).snapshot())
        return state
    finally:
        etcd.close()


def _address(cluster: Cluster, text: str) -> Address:
    pod = next((p for p in cluster.pods if p.key == text or p.ip == text), None)
    if pod is not None and pod.ip:
        return Address(pod.ip, pod)
    if "/" in text:
        raise PolicyDaemonError(f"no pod {text} (with an IP) in etcd")
    return Address(text)


def explain(args, out=sys.stdout) -> int:
    state = _snapshot_state(args)
    cluster = state.cluster()
    src, dst = _address(cluster, args.explain[0]), _address(cluster, args.explain[1])
    port_text, _, proto = args.explain[2].partition("/")
    try:
        port, proto = int(port_text), (proto or "TCP").upper()
    except ValueError:
        raise PolicyDaemonError(f"bad port {args.explain[2]!r}: PORT or PORT/PROTO") from None
    v = verdict(cluster, src, dst, port, proto)
    out.write(f"{'ALLOWED' if v.allowed else 'DROPPED'}: {v.reason}\n")
    if args.mode == "iptables":
        from minikubenet.policy import iptables_render
        from minikubenet.policy.plan import plan_node
        from minikubenet.proxy.tracer import trace_packet

        # the node that judges: the destination's for ingress, the source's for egress
        judge = (
            dst.pod.node if dst.pod and (v.allowed or v.direction == "Ingress") else (src.pod.node if src.pod else "")
        )
        text = iptables_render.render(iptables_render.chains(plan_node(cluster, judge)), jump=True)
        trace = trace_packet(text, src.ip, dst.ip, port, proto.lower(), jumps=())
        for why in trace.dropped_by():
            out.write(f"  node {judge}: dropped by rule {why!r}\n")
    return 0 if v.allowed else 3


def dry_run(args) -> int:
    state = _snapshot_state(args)
    syncer = make_syncer(args.mode, args.node_name, args.iptables)
    sys.stdout.write(syncer.render_full(state.cluster()))  # type: ignore[attr-defined]
    return 0


def cleanup(args) -> int:
    for mode in ("iptables", "nftables"):
        make_syncer(mode, args.node_name, args.iptables).cleanup()  # type: ignore[attr-defined]
    return 0


def _bridged_traffic_to_forward() -> None:
    """Pods of one node talk across the bridge; br_netfilter hands those frames to the
    IPv4 hooks (FORWARD) only with this sysctl on (it is per network namespace)."""
    from minikubenet.linux import sysctl

    try:
        if sysctl.read("net.bridge.bridge-nf-call-iptables").strip() != "1":
            sysctl.write("net.bridge.bridge-nf-call-iptables", 1)
            log.info("net.bridge.bridge-nf-call-iptables=1: bridged pod traffic passes FORWARD")
    except OSError as e:
        log.warning(
            "cannot enable br_netfilter's bridge-nf-call-iptables (%s): traffic between pods of "
            "this node is NOT filtered",
            e,
        )


def run(args) -> int:
    from minikubenet.linux import nft_monitor
    from minikubenet.proxy.daemon import SyncLoop
    from minikubenet.proxy.metrics import Health, ProxyMetrics, health_routes, metrics_routes, serve
    from minikubenet.store.policy_watch import PolicyWatch

    etcd = _connect(args)
    _bridged_traffic_to_forward()
    syncer: PolicySyncer = make_syncer(args.mode, args.node_name, args.iptables)
    other = make_syncer("nftables" if args.mode == "iptables" else "iptables", args.node_name, args.iptables)
    try:
        other.cleanup()  # type: ignore[attr-defined]
    except Exception as e:  # noqa: BLE001 - the other mode's leftovers are best effort
        log.warning("could not remove the other mode's rules: %s", e)
    metrics, health = ProxyMetrics(prefix="minikubenet_policy_"), Health(timeout=2 * args.sync_period)
    health.mode = args.mode
    state = PolicyState()
    metrics.malformed, metrics.malformed_seen = state.bad.metrics()
    loop = SyncLoop(
        state,  # type: ignore[arg-type]  # the same interface as ProxyState (take, give_back, dirty...)
        syncer,  # type: ignore[arg-type]  # and the same interface as the proxy's Syncer
        metrics,
        health,
        args.sync_period,
        args.min_sync_period,
        args.full_sync_period,
    )
    state.on_change = loop.changed
    servers = []
    try:
        if args.metrics_bind_address:
            servers.append(serve(args.metrics_bind_address, metrics_routes(metrics)))
        if args.healthz_bind_address:
            servers.append(serve(args.healthz_bind_address, health_routes(health, metrics)))
    except (OSError, ValueError) as e:
        raise PolicyDaemonError(f"cannot listen: {e}") from None
    monitor = None
    try:
        monitor = nft_monitor.NftMonitor(loop.on_transaction, loop.on_overflow).start()
        loop.monitored = True
    except nft_monitor.MonitorUnavailable as e:
        log.warning("%s; checking every chain every %.0fs instead", e, args.sync_period)
    watch = PolicyWatch(etcd, state.deliver).start()

    def on_signal(signum, frame):
        log.info("signal %d: stopping (rules stay in place)", signum)
        loop.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("%s mode, node %s", args.mode, args.node_name)
    loop.run()
    if monitor is not None:
        monitor.stop()
    watch.stop()
    for s in servers:
        s.shutdown()
    etcd.close()
    return 0


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
        if args.explain:
            return explain(args)
        return run(args)
    except (PolicyDaemonError, StoreError) as e:
        log.error("minikubenet-policy: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
