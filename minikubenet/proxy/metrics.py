"""The proxy's Prometheus metrics and its health check, in plain Python.

Metrics are served as Prometheus' text format on ``/metrics`` (kube-proxy:
``--metrics-bind-address``, 127.0.0.1:10249), health on ``/healthz`` and ``/livez``
(``--healthz-bind-address``, 0.0.0.0:10256). The names are kube-proxy's, in its
``kubeproxy`` subsystem (pkg/proxy/metrics/metrics.go), so dashboards and alerts
written for kube-proxy read ours too:

    kubeproxy_sync_proxy_rules_duration_seconds            histogram, every sync
    kubeproxy_sync_full_proxy_rules_duration_seconds       histogram, full syncs
    kubeproxy_sync_partial_proxy_rules_duration_seconds    histogram, partial syncs
    kubeproxy_sync_proxy_rules_last_timestamp_seconds      last *successful* sync
    kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds  oldest change not yet applied
    kubeproxy_sync_proxy_rules_iptables_total{table}       rules we own (iptables mode)
    kubeproxy_sync_proxy_rules_iptables_last{table}        rules written by the last sync
    kubeproxy_sync_proxy_rules_nftables_total              rules + map elements (nftables mode)
    kubeproxy_sync_proxy_rules_iptables_restore_failures_total
    kubeproxy_sync_proxy_rules_nftables_sync_failures_total
    kubeproxy_sync_proxy_rules_service_changes_total / _endpoint_changes_total
    kubeproxy_conntrack_reconciler_deleted_entries_total

The text format is simple enough to write by hand (no client library needed): one
``# HELP`` and ``# TYPE`` line per metric, then ``name{label="v"} value`` lines; a
histogram is cumulative ``_bucket{le="..."}`` counters plus ``_sum`` and ``_count``.

Health follows kube-proxy's healthcheck server (pkg/proxy/healthcheck/proxy_health.go):
unhealthy when a change has been waiting longer than ``2 x sync period`` without a
successful sync; the answer is JSON with ``lastUpdated``, ``currentTime``, ``healthy``.
"""

from __future__ import annotations

import datetime
import http.server
import json
import socketserver
import threading
import time
from typing import Callable

# kube-proxy: metrics.ExponentialBuckets(0.001, 2, 15) -> 1 ms .. 16.4 s
SYNC_BUCKETS = tuple(0.001 * 2 ** i for i in range(15))


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _number(x: float) -> str:
    return repr(float(x)) if x != int(x) or abs(x) > 1e15 else str(int(x))


class _Metric:
    type = ""

    def __init__(self, name: str, help_text: str):
        self.name, self.help = name, help_text
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.type}"]


class Counter(_Metric):
    type = "counter"

    def __init__(self, name: str, help_text: str):
        super().__init__(name, help_text)
        self.values: dict[tuple, float] = {}

    def inc(self, amount: float = 1, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self.values[key] = self.values.get(key, 0) + amount

    def get(self, **labels) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)

    def lines(self) -> list[str]:
        values = self.values or {(): 0}
        return [f"{self.name}{_labels(dict(k))} {_number(v)}" for k, v in sorted(values.items())]


class Gauge(Counter):
    type = "gauge"

    def set(self, value: float, **labels) -> None:
        with self._lock:
            self.values[tuple(sorted(labels.items()))] = value


class Histogram(_Metric):
    type = "histogram"

    def __init__(self, name: str, help_text: str, buckets=SYNC_BUCKETS):
        super().__init__(name, help_text)
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            for i, upper in enumerate(self.buckets):
                if value <= upper:
                    self.counts[i] += 1
            self.sum += value
            self.count += 1

    def lines(self) -> list[str]:
        out = [f'{self.name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        return out + [f'{self.name}_bucket{{le="+Inf"}} {self.count}',
                      f"{self.name}_sum {_number(self.sum)}", f"{self.name}_count {self.count}"]


class ProxyMetrics:
    """Every metric the proxy exports, as attributes."""

    def __init__(self, prefix: str = "kubeproxy_"):
        p = prefix
        self.sync_duration = Histogram(p + "sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds")
        self.sync_full_duration = Histogram(p + "sync_full_proxy_rules_duration_seconds",
                                            "SyncProxyRules latency in seconds for full resyncs")
        self.sync_partial_duration = Histogram(p + "sync_partial_proxy_rules_duration_seconds",
                                               "SyncProxyRules latency in seconds for partial resyncs")
        self.last_sync = Gauge(p + "sync_proxy_rules_last_timestamp_seconds",
                               "The last time proxy rules were successfully synced")
        self.last_queued = Gauge(p + "sync_proxy_rules_last_queued_timestamp_seconds",
                                 "The last time a sync of proxy rules was queued")
        self.iptables_total = Gauge(p + "sync_proxy_rules_iptables_total",
                                    "Total number of iptables rules owned by kube-proxy")
        self.iptables_last = Gauge(p + "sync_proxy_rules_iptables_last",
                                   "Number of iptables rules written by kube-proxy in last sync")
        self.nftables_total = Gauge(p + "sync_proxy_rules_nftables_total",
                                    "Number of nftables rules and map elements owned by the proxy")
        self.restore_failures = Counter(p + "sync_proxy_rules_iptables_restore_failures_total",
                                        "Cumulative proxy iptables restore failures")
        self.partial_restore_failures = Counter(p + "sync_proxy_rules_iptables_partial_restore_failures_total",
                                                "Cumulative proxy iptables partial restore failures")
        self.nft_failures = Counter(p + "sync_proxy_rules_nftables_sync_failures_total",
                                    "Cumulative proxy nftables sync failures")
        self.service_changes = Counter(p + "sync_proxy_rules_service_changes_total",
                                       "Cumulative proxy rules Service changes")
        self.endpoint_changes = Counter(p + "sync_proxy_rules_endpoint_changes_total",
                                        "Cumulative proxy rules Endpoint changes")
        self.conntrack_deleted = Counter(p + "conntrack_reconciler_deleted_entries_total",
                                         "Cumulative conntrack flows deleted by conntrack reconciler")
        self.healthz = Counter(p + "proxy_healthz_total", "Cumulative proxy healthz HTTP status")

    def all(self) -> list[_Metric]:
        return [m for m in vars(self).values() if isinstance(m, _Metric)]

    def render(self) -> str:
        lines: list[str] = []
        for m in self.all():
            lines += m.header() + m.lines()
        return "\n".join(lines) + "\n"


class Health:
    """kube-proxy's ProxyHealthServer state: healthy unless an update has been queued
    for longer than ``timeout`` without a successful sync after it."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.time):
        self.timeout = timeout
        self.clock = clock
        self.last_updated: float = 0.0
        self.oldest_queued: float | None = None
        self.applied_revision = 0          # etcd revision the rules in the kernel reflect
        self.mode = ""
        self._lock = threading.Lock()

    def queued(self) -> None:
        with self._lock:
            if self.oldest_queued is None:
                self.oldest_queued = self.clock()

    def updated(self, revision: int = 0) -> None:
        with self._lock:
            self.last_updated = self.clock()
            self.oldest_queued = None
            self.applied_revision = max(self.applied_revision, revision)

    def status(self) -> tuple[bool, dict]:
        now = self.clock()
        with self._lock:
            healthy = self.oldest_queued is None or now - self.oldest_queued <= self.timeout
            doc = {"lastUpdated": _iso(self.last_updated) if self.last_updated else "",
                   "currentTime": _iso(now), "nodeEligible": True, "healthy": healthy,
                   "mode": self.mode, "appliedRevision": self.applied_revision}
        return healthy, doc


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(bind: str, routes: dict[str, Callable[[], tuple[int, str, str]]]) -> _Server:
    """An HTTP server on ``host:port`` in a background thread; ``routes`` maps a path to
    a function returning (status, content type, body)."""
    host, _, port = bind.rpartition(":")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            route = routes.get(self.path.split("?")[0])
            status, ctype, body = route() if route else (404, "text/plain", "not found\n")
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            pass

    server = _Server((host or "0.0.0.0", int(port)), Handler)
    threading.Thread(target=server.serve_forever, name=f"http-{bind}", daemon=True).start()
    return server


def metrics_routes(metrics: ProxyMetrics) -> dict:
    return {"/metrics": lambda: (200, "text/plain; version=0.0.4", metrics.render())}


def health_routes(health: Health, metrics: ProxyMetrics | None = None) -> dict:
    def answer():
        healthy, doc = health.status()
        code = 200 if healthy else 503
        if metrics:
            metrics.healthz.inc(code=str(code))
        return code, "application/json", json.dumps(doc) + "\n"
    return {"/healthz": answer, "/livez": answer}
