"""The endpoints controller: the one place where a Service's endpoints are derived.

In Kubernetes, kube-controller-manager's endpoints controller watches Services and
Pods and writes, for every Service with a selector, an Endpoints object listing the
pods that match it (ready ones under ``addresses``, the others under
``notReadyAddresses``). Every kube-proxy then reads Endpoints, never Pods: the
decision "which pods back this service" is made once, in one place, and every node
applies the same answer. (pkg/controller/endpoint/endpoints_controller.go)

    Pods (labels, IP, Ready) ──┐
                               ├─> desired_endpoints() ──> /minikubenet/endpoints/<ns>/<name>
    Services (selector) ───────┘                                  │
                                                     every minikubenet-proxy watches these

Each address carries EndpointSlice-style conditions when they say more than its list
does: a pod being deleted (deletionTimestamp) is ``terminating``, and ``serving`` while
its Ready condition holds, which the proxy falls back to when no endpoint is ready
(kube-proxy's CategorizeEndpoints).

Services without a selector are left alone: their Endpoints are written by hand
(``minikubenet svc set-endpoints``), as in Kubernetes. Endpoints whose Service is gone
are deleted.

The controller runs once per cluster (the lab starts it in the etcd namespace, its
"control plane"): ``python -m minikubenet.proxy.endpoints_controller --etcd-endpoints ...``.
It lists and watches, and after every batch of changes recomputes everything (a few
thousand pods take milliseconds) and writes only the objects whose content changed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping

from minikubenet.k8s_objects import (
    Pod,
    ValidationError,
    derive_endpoints,
    endpoints_to_k8s,
    pod_from_k8s,
    service_from_k8s,
)
from minikubenet.loadbalancer.controller import reconcile as lb_reconcile
from minikubenet.loadbalancer.pool import PoolError, parse_pool
from minikubenet.malformed import MalformedObjects
from minikubenet.metrics import MetricSet, metrics_routes, serve
from minikubenet.store.services import ObjectDelete, ObjectPut, ObjectWatch, ServiceStore, Snapshot

log = logging.getLogger("minikubenet.endpoints")


# --------------------------------------------------------------------------- pure


def valid_pods(pods: Mapping[str, dict], bad: MalformedObjects | None = None) -> dict[str, Pod]:
    """The pods that parse, by "ns/name"; the others are skipped (and told to ``bad``)."""
    out = {}
    for key, doc in pods.items():
        try:
            out[key] = pod_from_k8s(doc)
        except ValidationError as e:
            _skip(bad, "pods", key, e)
            continue
        if bad:
            bad.ok("pods", key)
    return out


def desired_endpoints(
    services: Mapping[str, dict], pods: Mapping[str, dict], bad: MalformedObjects | None = None
) -> dict[str, dict]:
    """ "ns/name" -> the Endpoints document for every service that has a selector.
    A malformed pod or service is skipped; every other one still gets its endpoints."""
    parsed_pods = list(valid_pods(pods, bad).values())
    out = {}
    for key, doc in services.items():
        try:
            svc = service_from_k8s(doc)
        except ValidationError as e:
            _skip(bad, "services", key, e)
            continue
        if bad:
            bad.ok("services", key)
        if not svc.selector:
            continue  # endpoints managed by hand
        out[key] = endpoints_to_k8s(svc, derive_endpoints(svc, parsed_pods))
    return out


def _skip(bad: MalformedObjects | None, kind: str, key: str, error: Exception) -> None:
    if bad is None:
        log.warning("ignoring malformed %s %s: %s", kind, key, " ".join(str(error).split()))
    else:
        bad.skip(kind, key, error)


def plan_writes(
    services: Mapping[str, dict], desired: Mapping[str, dict], current: Mapping[str, dict]
) -> tuple[dict[str, dict], list[str]]:
    """(objects to put, keys to delete) to turn ``current`` into ``desired``. Only
    changed content is written; endpoints of a service that no longer exists are
    deleted; hand-written endpoints of selector-less services are kept."""
    puts = {k: doc for k, doc in desired.items() if _canonical(current.get(k)) != _canonical(doc)}
    deletes = sorted(k for k in current if k not in services)
    return puts, deletes


def _canonical(doc) -> str:
    return json.dumps(doc, sort_keys=True)


# --------------------------------------------------------------------------- the loop


class ControllerMetrics(MetricSet):
    def __init__(self, bad: MalformedObjects):
        self.malformed, self.malformed_seen = bad.metrics()


class EndpointsController:
    """Keeps the cluster state from the watch and reconciles after each change."""

    def __init__(self, store: ServiceStore, settle: float = 0.02, lb_pool=None):
        self.store = store
        self.lb_pool = lb_pool  # LoadBalancer addresses (loadbalancer/controller.py), or None
        self.bad = MalformedObjects(log)
        self.metrics = ControllerMetrics(self.bad)
        self.settle = settle  # coalesce a burst of changes into one reconcile
        self.state = Snapshot()
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stop = threading.Event()
        self.watch = ObjectWatch(store, self.deliver)

    def deliver(self, update) -> None:
        with self._lock:
            if isinstance(update, Snapshot):
                self.state = update
            elif isinstance(update, ObjectPut):
                self.state.of(update.kind)[update.key] = update.doc
            elif isinstance(update, ObjectDelete):
                self.state.of(update.kind).pop(update.key, None)
        self._changed.set()

    def reconcile(self) -> tuple[int, int]:
        """Write what differs; returns (puts, deletes)."""
        with self._lock:
            services, pods = dict(self.state.services), dict(self.state.pods)
            current = dict(self.state.endpoints)
        for kind, objects in (("pods", pods), ("services", services)):
            self.bad.keep_only(kind, objects)  # deleted bad objects are no longer skipped
        desired = desired_endpoints(services, pods, self.bad)
        # an endpoint must name a known pod (put_endpoints checks): only the valid ones count
        skipped = set(self.bad.skipped("pods"))
        known_pods = {k: doc for k, doc in pods.items() if ("pods", k) not in skipped}
        puts, deletes = plan_writes(services, desired, current)
        for key, doc in puts.items():
            try:
                self.store.put_endpoints(doc, pods=known_pods)
                log.info("endpoints %s: %s", key, _summary(doc))
            except ValidationError as e:  # the service was deleted meanwhile
                log.info("not writing endpoints %s: %s", key, e)
        for key in deletes:
            ns, name = key.split("/", 1)
            self.store.delete_endpoints(ns, name)
            log.info("endpoints %s deleted (no such service)", key)
        if self.lb_pool:
            lb_reconcile(self.store, self.lb_pool, services)
        return len(puts), len(deletes)

    def run(self) -> None:
        self.watch.start()
        while not self._stop.is_set():
            if not self._changed.wait(timeout=1.0):
                continue
            self._stop.wait(self.settle)
            self._changed.clear()
            try:
                self.reconcile()
            except Exception as e:  # etcd away: the watch re-lists and we try again
                log.warning("reconcile failed (%s); retrying", e)
                self._stop.wait(1.0)
                self._changed.set()

    def stop(self) -> None:
        self._stop.set()
        self.watch.stop()


def reconcile_once(store: ServiceStore) -> tuple[int, int]:
    """One pass from a fresh snapshot (for the CLI and the tests)."""
    c = EndpointsController(store)
    c.state = store.snapshot()
    return c.reconcile()


def _summary(doc: dict) -> str:
    ready = sorted({a["ip"] for s in doc.get("subsets") or [] for a in s.get("addresses") or []})
    not_ready = sorted({a["ip"] for s in doc.get("subsets") or [] for a in s.get("notReadyAddresses") or []})
    return f"ready {', '.join(ready) or '-'}" + (f"; not ready {', '.join(not_ready)}" if not_ready else "")


def main(argv: list[str] | None = None) -> int:
    from minikubenet.store.etcd import EtcdStore, StoreError, TLSFiles, add_etcd_tls_options
    from minikubenet.store.keys import KeyLayout

    p = argparse.ArgumentParser(prog="minikubenet-endpoints-controller", description=__doc__.split("\n\n")[0])
    p.add_argument("--etcd-endpoints", default=os.environ.get("MINIKUBENET_ETCD_ENDPOINTS", "http://127.0.0.1:2379"))
    p.add_argument("--etcd-prefix", default="/coreos.com/network")
    p.add_argument("--project-prefix", default="/minikubenet")
    add_etcd_tls_options(p)
    p.add_argument(
        "--metrics-bind-address",
        default="",
        help="host:port for Prometheus metrics (malformed objects skipped); default: off",
    )
    p.add_argument(
        "--lb-pool",
        default="",
        help="addresses for LoadBalancer services (CIDR or first-last, comma-separated); "
        "default: none, LoadBalancer services stay pending",
    )
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s endpoints-controller %(levelname)s %(message)s",
    )
    try:
        etcd = EtcdStore(
            args.etcd_endpoints.split(","),
            layout=KeyLayout(args.etcd_prefix, args.project_prefix),
            tls=TLSFiles.from_args(args),
        )
    except (ValueError, OSError, StoreError) as e:
        log.error("cannot start: %s", e)
        return 1
    try:
        pool = parse_pool(args.lb_pool) if args.lb_pool else None
    except PoolError as e:
        log.error("--lb-pool: %s", e)
        return 1
    controller = EndpointsController(ServiceStore(etcd), lb_pool=pool)
    if args.metrics_bind_address:
        try:
            serve(args.metrics_bind_address, metrics_routes(controller.metrics))
        except (OSError, ValueError) as e:
            log.error("cannot serve metrics on %s: %s", args.metrics_bind_address, e)
            return 1
    signal.signal(signal.SIGTERM, lambda *_: controller.stop())
    signal.signal(signal.SIGINT, lambda *_: controller.stop())
    log.info("watching services and pods under %s", args.project_prefix)
    controller.run()
    etcd.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
