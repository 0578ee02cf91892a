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

The metric types and the HTTP server are minikubenet/metrics.py's (the agent and the
endpoints controller serve theirs the same way).

Health follows kube-proxy's healthcheck server (pkg/proxy/healthcheck/proxy_health.go):
unhealthy when a change has been waiting longer than ``2 x sync period`` without a
successful sync; the answer is JSON with ``lastUpdated``, ``currentTime``, ``healthy``.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from typing import Callable

from minikubenet.metrics import SYNC_BUCKETS, Counter, Gauge, Histogram, MetricSet, metrics_routes, serve  # noqa: F401 (re-exported)


class ProxyMetrics(MetricSet):
    """Every metric the proxy exports, as attributes."""

    malformed: Gauge  # attached by the daemon: its watch's malformed.MalformedObjects
    malformed_seen: Counter

    def __init__(self, prefix: str = "kubeproxy_"):
        p = prefix
        self.sync_duration = Histogram(p + "sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds")
        self.sync_full_duration = Histogram(
            p + "sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs"
        )
        self.sync_partial_duration = Histogram(
            p + "sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs"
        )
        self.last_sync = Gauge(
            p + "sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced"
        )
        self.last_queued = Gauge(
            p + "sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued"
        )
        self.iptables_total = Gauge(
            p + "sync_proxy_rules_iptables_total", "Total number of iptables rules owned by kube-proxy"
        )
        self.iptables_last = Gauge(
            p + "sync_proxy_rules_iptables_last", "Number of iptables rules written by kube-proxy in last sync"
        )
        self.nftables_total = Gauge(
            p + "sync_proxy_rules_nftables_total", "Number of nftables rules and map elements owned by the proxy"
        )
        self.restore_failures = Counter(
            p + "sync_proxy_rules_iptables_restore_failures_total", "Cumulative proxy iptables restore failures"
        )
        self.partial_restore_failures = Counter(
            p + "sync_proxy_rules_iptables_partial_restore_failures_total",
            "Cumulative proxy iptables partial restore failures",
        )
        self.nft_failures = Counter(
            p + "sync_proxy_rules_nftables_sync_failures_total", "Cumulative proxy nftables sync failures"
        )
        self.service_changes = Counter(
            p + "sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes"
        )
        self.endpoint_changes = Counter(
            p + "sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes"
        )
        self.conntrack_deleted = Counter(
            p + "conntrack_reconciler_deleted_entries_total",
            "Cumulative conntrack flows deleted by conntrack reconciler",
        )
        self.healthz = Counter(p + "proxy_healthz_total", "Cumulative proxy healthz HTTP status")
        self.rule_repairs = Counter(
            "minikubenet_proxy_rule_repairs_total",
            "Full syncs forced because someone else changed or removed our rules "
            "(trigger: notification or periodic check)",
        )


class Health:
    """kube-proxy's ProxyHealthServer state: healthy unless an update has been queued
    for longer than ``timeout`` without a successful sync after it."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.time):
        self.timeout = timeout
        self.clock = clock
        self.last_updated: float = 0.0
        self.oldest_queued: float | None = None
        self.applied_revision = 0  # etcd revision the rules in the kernel reflect
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
            doc = {
                "lastUpdated": _iso(self.last_updated) if self.last_updated else "",
                "currentTime": _iso(now),
                "nodeEligible": True,
                "healthy": healthy,
                "mode": self.mode,
                "appliedRevision": self.applied_revision,
            }
        return healthy, doc


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


def health_routes(health: Health, metrics: ProxyMetrics | None = None) -> dict:
    def answer():
        healthy, doc = health.status()
        code = 200 if healthy else 503
        if metrics:
            metrics.healthz.inc(code=str(code))
        return code, "application/json", json.dumps(doc) + "\n"

    return {"/healthz": answer, "/livez": answer}
