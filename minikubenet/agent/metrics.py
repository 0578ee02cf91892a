"""The agent's Prometheus metrics, served on ``--metrics-bind-address`` (``/metrics``).

The types and the HTTP server are minikubenet/metrics.py's, the same the proxy uses.

    minikubenet_agent_rule_repairs_total{table}      our masquerade/forward rules were found
                                                     missing or changed, and restored
    minikubenet_conntrack_entries                    entries in this node's table now
    minikubenet_conntrack_entries_limit              nf_conntrack_max
    minikubenet_conntrack_drop_total                 new connections dropped: table full
    minikubenet_conntrack_early_drop_total           entries evicted to make room
    minikubenet_conntrack_insert_failed_total        entries that could not be inserted (clash)
    minikubenet_malformed_objects{kind="leases"}     leases skipped as malformed (malformed.py)
    minikubenet_malformed_objects_seen_total{kind}

The conntrack numbers are read from /proc at each scrape (linux/conntrack_table.py), so
they are as fresh as the scrape; the kernel's counters are exported as counters.
"""

from __future__ import annotations

import logging

from minikubenet.linux import conntrack_table
from minikubenet.metrics import Counter, Gauge, MetricSet, ObservedCounter

log = logging.getLogger(__name__)


class AgentMetrics(MetricSet):
    def __init__(self, read_conntrack=conntrack_table.read):
        p = "minikubenet_"
        self.rule_repairs = Counter(p + "agent_rule_repairs_total",
                                    "Times the agent restored its masquerade or forward rules after they "
                                    "were flushed, deleted or changed")
        self.conntrack_entries = Gauge(p + "conntrack_entries", "Entries in the conntrack table of this node")
        self.conntrack_limit = Gauge(p + "conntrack_entries_limit", "The conntrack table's size (nf_conntrack_max)")
        self.conntrack_drop = ObservedCounter(p + "conntrack_drop_total",
                                              "New connections dropped because the conntrack table was full")
        self.conntrack_early_drop = ObservedCounter(p + "conntrack_early_drop_total",
                                                    "Conntrack entries evicted early to make room for new ones")
        self.conntrack_insert_failed = ObservedCounter(p + "conntrack_insert_failed_total",
                                                       "Conntrack entries that could not be inserted")
        self._read_conntrack = read_conntrack
        self._unavailable_said = False

    def attach(self, **metrics) -> None:
        """Add metrics owned by another part of the agent (the overlay's malformed leases)."""
        for name, metric in metrics.items():
            setattr(self, name, metric)

    def collect(self) -> None:
        try:
            table = self._read_conntrack()
        except conntrack_table.ConntrackUnavailable as e:
            if not self._unavailable_said:
                log.info("no conntrack metrics: %s", e)
                self._unavailable_said = True
            return
        self.observe_conntrack(table)

    def observe_conntrack(self, table: conntrack_table.ConntrackTable) -> None:
        self.conntrack_entries.set(table.count)
        self.conntrack_limit.set(table.max)
        self.conntrack_drop.set(table.stat("drop"))
        self.conntrack_early_drop.set(table.stat("early_drop"))
        self.conntrack_insert_failed.set(table.stat("insert_failed"))
