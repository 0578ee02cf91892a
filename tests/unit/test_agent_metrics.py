"""The agent's operating metrics (agent/metrics.py), without root: what each part
counts, and that the text a scraper reads carries it.

The numbers moving on a live node (pods added and deleted, an error answered) are
tests/faults/test_agent_metrics.py.
"""

from __future__ import annotations

import ipaddress
import logging

from minikubenet.agent.metrics import AgentMetrics
from minikubenet.metrics import Histogram
from minikubenet.overlay import vxlan
from minikubenet.store.lease_watch import LeaseDelete, LeasePut
from tests.unit.test_overlay_plan import B, C, controller


def no_conntrack():
    from minikubenet.linux.conntrack_table import ConntrackUnavailable

    raise ConntrackUnavailable("not in this test")


def samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_a_labelled_histogram_keeps_one_series_per_label_set():
    h = Histogram("x_seconds", "help", buckets=(0.01, 0.1))
    h.observe(0.005, command="ADD")
    h.observe(0.05, command="ADD")
    h.observe(0.5, command="DEL")
    s = samples("\n".join(h.lines()))
    assert s['x_seconds_bucket{command="ADD",le="0.01"}'] == 1
    assert s['x_seconds_bucket{command="ADD",le="0.1"}'] == 2
    assert s['x_seconds_bucket{command="ADD",le="+Inf"}'] == 2
    assert s['x_seconds_count{command="DEL"}'] == 1
    assert s['x_seconds_bucket{command="DEL",le="0.1"}'] == 0
    assert abs(s['x_seconds_sum{command="ADD"}'] - 0.055) < 1e-9


def test_an_unlabelled_histogram_renders_as_before():
    h = Histogram("y_seconds", "help", buckets=(1.0,))
    assert h.lines() == [
        'y_seconds_bucket{le="1"} 0',
        'y_seconds_bucket{le="+Inf"} 0',
        "y_seconds_sum 0",
        "y_seconds_count 0",
    ]
    h.observe(0.5)
    assert (h.count, h.sum, h.counts) == (1, 0.5, [1])


def test_cni_requests_are_timed_by_command_and_errors_counted_by_code():
    m = AgentMetrics(read_conntrack=no_conntrack)
    m.observe_cni_request("ADD", 0.012, None)
    m.observe_cni_request("ADD", 0.003, 11)
    m.observe_cni_request("DEL", 0.002, None)
    s = samples(m.render())
    assert s['minikubenet_agent_cni_request_duration_seconds_count{command="ADD"}'] == 2
    assert s['minikubenet_agent_cni_request_duration_seconds_bucket{command="ADD",le="0.005"}'] == 1
    assert s['minikubenet_agent_cni_request_duration_seconds_count{command="DEL"}'] == 1
    assert s['minikubenet_agent_cni_errors_total{code="11",command="ADD"}'] == 1


class FakeAllocator:
    subnet = ipaddress.IPv4Network("10.244.7.0/24")

    def __init__(self):
        self.used = 3

    def in_use(self):
        return self.used

    def capacity(self):
        return 253


def test_ipam_use_is_read_at_each_scrape():
    m = AgentMetrics(read_conntrack=no_conntrack)
    alloc = FakeAllocator()
    m.watch_ipam(alloc)
    assert samples(m.render())['minikubenet_agent_ipam_addresses_in_use{subnet="10.244.7.0/24"}'] == 3
    alloc.used = 5
    s = samples(m.render())
    assert s['minikubenet_agent_ipam_addresses_in_use{subnet="10.244.7.0/24"}'] == 5
    assert s['minikubenet_agent_ipam_addresses_capacity{subnet="10.244.7.0/24"}'] == 253


def test_overlay_counts_programmed_withdrawn_and_corrected_entries(caplog):
    ctl, kernel = controller([B])
    with caplog.at_level(logging.ERROR):
        ctl.resync(ctl.store.list_leases())
    assert ctl.programmed.get(kind="route") == 1 and ctl.programmed.get(kind="fdb") == 1
    assert ctl.wanted_entries.get() == 3  # neigh, fdb, route of B
    ctl.handle(LeasePut(C))
    assert ctl.programmed.get(kind="neigh") == 2

    plan = vxlan.plan_peer(B)
    del kernel.entries[plan.fdb.key()]  # deleted by hand
    stray = vxlan.plan_peer(C).neigh
    ctl.handle(LeaseDelete(C.subnet))
    assert ctl.withdrawn.get(kind="route") == 1
    kernel.entries[stray.key()] = stray  # put back by hand: nobody wants it
    ctl.reconcile_kernel()
    assert ctl.corrected.get(kind="fdb", action="restored") == 1
    assert ctl.corrected.get(kind="neigh", action="removed") == 1
    ctl.reconcile_kernel()  # nothing left to correct
    assert ctl.corrected.get(kind="fdb", action="restored") == 1

    m = AgentMetrics(read_conntrack=no_conntrack)
    m.attach(overlay_corrected=ctl.corrected)
    assert 'minikubenet_agent_overlay_entries_corrected_total{action="restored",kind="fdb"} 1' in m.render()


def test_lease_renewals_are_counted_by_result():
    import threading

    from minikubenet.network_config import make_config
    from minikubenet.store.etcd import StoreError
    from minikubenet.subnet_lease import SubnetLeaser

    class Store:
        answers = [60, StoreError("etcd did not answer"), 60, 0]

        def refresh(self, lease):
            answer = self.answers.pop(0)
            if not self.answers:
                leaser.stop()
            if isinstance(answer, Exception):
                raise answer
            return answer

    leaser = SubnetLeaser(Store(), make_config("10.244.0.0/16"), "192.168.1.10", "vxlan", {}, ttl=3)
    leaser.record = type("R", (), {"subnet": ipaddress.IPv4Network("10.244.1.0/24")})()
    leaser.acquire = lambda previous=None: None
    leaser.renew_interval = lambda: 0.01
    t = threading.Thread(target=leaser._renew_loop)
    t.start()
    t.join(timeout=10)
    assert leaser.renewals.get(result="ok") == 2
    assert leaser.renewals.get(result="failed") == 1
    assert leaser.renewals.get(result="reclaimed") == 1
