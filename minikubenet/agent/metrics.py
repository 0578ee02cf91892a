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

    minikubenet_agent_cni_request_duration_seconds{command}   histogram: one CNI request, from the
                                                     complete request to the answer (ADD, DEL, CHECK, ...)
    minikubenet_agent_cni_errors_total{command,code} requests answered with a CNI error, by the
                                                     spec's code (7 bad config, 11 try again, 999 ...)
    minikubenet_agent_ipam_addresses_in_use{subnet}  pod IP records in this node's subnet
    minikubenet_agent_ipam_addresses_capacity{subnet} pod addresses the subnet has
    minikubenet_agent_lease_renewals_total{result}   ok, failed, reclaimed (subnet_lease.py)
    minikubenet_agent_overlay_entries{}              entries this node should hold (last resync)
    minikubenet_agent_overlay_entries_programmed_total{kind}  installed for a lease (neigh, fdb, route)
    minikubenet_agent_overlay_entries_withdrawn_total{kind}   removed with their lease
    minikubenet_agent_bgp_peers{state}               bgp: configured BGP peers, established or
                                                     not_established (read from BIRD at each scrape)
    minikubenet_agent_overlay_entries_corrected_total{kind,action}  repaired by the resync:
                                                     restored (missing, changed) or removed (stray)

The overlay and lease counters belong to the overlay controller and the subnet leaser,
which count where the work happens; the agent attaches them here (``attach``).

The conntrack numbers are read from /proc at each scrape (linux/conntrack_table.py), so
they are as fresh as the scrape; the kernel's counters are exported as counters.
"""

from __future__ import annotations

import logging

from minikubenet.linux import conntrack_table
from minikubenet.metrics import Counter, Gauge, Histogram, MetricSet, ObservedCounter

log = logging.getLogger(__name__)

# A CNI ADD takes ~5-20 ms here, a DEL less; a slow etcd makes it seconds (the request
# timeout is 10 s). Prometheus's default buckets, which span exactly that.
CNI_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class AgentMetrics(MetricSet):
    def __init__(self, read_conntrack=conntrack_table.read):
        p = "minikubenet_"
        self.rule_repairs = Counter(
            p + "agent_rule_repairs_total",
            "Times the agent restored its masquerade or forward rules after they were flushed, deleted or changed",
        )
        self.conntrack_entries = Gauge(p + "conntrack_entries", "Entries in the conntrack table of this node")
        self.conntrack_limit = Gauge(p + "conntrack_entries_limit", "The conntrack table's size (nf_conntrack_max)")
        self.conntrack_drop = ObservedCounter(
            p + "conntrack_drop_total", "New connections dropped because the conntrack table was full"
        )
        self.conntrack_early_drop = ObservedCounter(
            p + "conntrack_early_drop_total", "Conntrack entries evicted early to make room for new ones"
        )
        self.conntrack_insert_failed = ObservedCounter(
            p + "conntrack_insert_failed_total", "Conntrack entries that could not be inserted"
        )
        self.cni_duration = Histogram(
            p + "agent_cni_request_duration_seconds", "Time to serve one CNI request, by command", CNI_BUCKETS
        )
        self.cni_errors = Counter(
            p + "agent_cni_errors_total", "CNI requests answered with an error, by command and CNI error code"
        )
        self.ipam_in_use = Gauge(p + "agent_ipam_addresses_in_use", "Pod IP records in this node's subnet")
        self.ipam_capacity = Gauge(p + "agent_ipam_addresses_capacity", "Pod addresses in this node's subnet")
        self.bgp_peers = Gauge(p + "agent_bgp_peers", "Configured BGP peers by session state (bgp backend)")
        self._bgp_counts = None
        self._read_conntrack = read_conntrack
        self._unavailable_said = False
        self._allocator = None

    def attach(self, **metrics) -> None:
        """Add metrics owned by another part of the agent (the overlay's malformed leases)."""
        for name, metric in metrics.items():
            setattr(self, name, metric)

    def observe_cni_request(self, command: str, seconds: float, error_code: int | None) -> None:
        """Called by the CNI server (agent/cni_server.py) once per answered request."""
        self.cni_duration.observe(seconds, command=command)
        if error_code is not None:
            self.cni_errors.inc(command=command, code=error_code)

    def watch_ipam(self, allocator) -> None:
        """Report the use of ``allocator``'s subnet (ipam/allocator.py) at each scrape."""
        self._allocator = allocator

    def watch_bgp(self, counts) -> None:
        """Report the BGP peers at each scrape: ``counts()`` -> {state: number}."""
        self._bgp_counts = counts

    def collect(self) -> None:
        if self._bgp_counts is not None:
            for state, n in self._bgp_counts().items():
                self.bgp_peers.set(n, state=state)
        if self._allocator is not None:
            subnet = str(self._allocator.subnet)
            try:
                self.ipam_in_use.set(self._allocator.in_use(), subnet=subnet)
            except Exception as e:  # etcd unreachable on the first read: report the rest
                log.debug("no IPAM numbers this scrape: %s", e)
            self.ipam_capacity.set(self._allocator.capacity(), subnet=subnet)
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
