"""The overlay's pure parts: lease events, VXLAN and host-gw plans, reconcile, the loop."""

from __future__ import annotations

import ipaddress
import logging
import random
from types import SimpleNamespace

import pyetcd.events
import pytest

from minikubenet.overlay import (
    Fdb,
    KernelState,
    Neigh,
    PeerPlan,
    Route,
    Skipped,
    host_gw,
    leases,
    reconcile,
    removable,
    vxlan,
)
from minikubenet.overlay.controller import HostGwBackend, OverlayController, VxlanBackend
from minikubenet.overlay.leases import Added, LeaseCache, Removed
from minikubenet.store.lease_watch import LeaseDelete, LeasePut, LeaseSnapshot, to_update
from minikubenet.subnet_lease_record import SubnetLeaseRecord

net = ipaddress.IPv4Network
ip = ipaddress.IPv4Address

OWN = net("10.244.0.0/24")
MAC_B = "aa:bb:cc:00:00:01"
MAC_C = "aa:bb:cc:00:00:02"


def lease(
    subnet: str, public_ip: str, mac: str | None = MAC_B, backend: str = "vxlan", vni: int = 1, lease_id: int = 0
) -> SubnetLeaseRecord:
    data = {"VNI": vni, "VtepMAC": mac} if backend == "vxlan" else {}
    return SubnetLeaseRecord(net(subnet), public_ip, backend, data, lease_id=lease_id)


B = lease("10.244.1.0/24", "192.168.1.11", MAC_B)
C = lease("10.244.2.0/24", "192.168.1.12", MAC_C)
ME = lease(str(OWN), "192.168.1.10", "aa:bb:cc:00:00:99")


# -- MTU and the device spec --------------------------------------------------------------------


@pytest.mark.parametrize("underlay,overlay", [(1500, 1450), (9000, 8950), (1400, 1350), (9001, 8951)])
def test_overlay_mtu_is_underlay_minus_50(underlay, overlay):
    assert vxlan.overlay_mtu(underlay) == overlay


def test_overlay_mtu_too_small_is_refused():
    with pytest.raises(ValueError, match="needs at least 68"):
        vxlan.overlay_mtu(100)


def test_device_spec_defaults_follow_flannel():
    spec = vxlan.device_spec(1, "192.168.1.10", 2, 1500)
    assert spec == vxlan.VxlanSpec(
        name="flannel.1",
        vni=1,
        port=8472,
        local_ip="192.168.1.10",
        underlay_index=2,
        mtu=1450,
        learning=False,
        gbp=False,
    )
    assert vxlan.device_spec(42, "192.168.1.10", 2, 1500, port=0).port == 8472  # flannel: 0 = default
    assert vxlan.device_spec(42, "192.168.1.10", 2, 1500).name == "flannel.42"


# -- incompatibility ---------------------------------------------------------------------------

SPEC = vxlan.device_spec(1, "192.168.1.10", 2, 1500)
GOOD = {
    "kind": "vxlan",
    "vni": 1,
    "link": 2,
    "local": "192.168.1.10",
    "port": 8472,
    "group": None,
    "learning": False,
    "gbp": False,
    "l2miss": False,
}


def test_compatible_device_has_no_reason():
    assert vxlan.incompatibility(GOOD, SPEC) is None


def test_unset_link_local_and_port_do_not_count():
    # like flannel: those are only compared when both sides name one
    assert vxlan.incompatibility({**GOOD, "link": None, "local": None, "port": 0}, SPEC) is None


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"kind": "bridge"}, "link type: vxlan vs bridge"),
        ({"vni": 2}, "vni: 1 vs 2"),
        ({"link": 7}, "vtep (external) interface: 2 vs 7"),
        ({"local": "10.0.0.9"}, "vtep (external) IP: 192.168.1.10 vs 10.0.0.9"),
        ({"group": "239.1.1.1"}, "group address: none vs 239.1.1.1"),
        ({"l2miss": True}, "l2miss: False vs True"),
        ({"port": 4789}, "port: 8472 vs 4789"),
        ({"gbp": True}, "gbp: False vs True"),
        ({"learning": True}, "learning: False vs True"),
    ],
)
def test_incompatibility_reasons(change, reason):
    assert vxlan.incompatibility({**GOOD, **change}, SPEC) == reason


def test_mtu_is_not_a_reason_to_recreate():
    assert vxlan.incompatibility({**GOOD, "mtu": 1300}, SPEC) is None


def test_random_vtep_mac_is_locally_administered_unicast():
    for seed in range(50):
        mac = vxlan.random_vtep_mac(random.Random(seed))
        first = int(mac.split(":")[0], 16)
        assert first & 0x02 and not first & 0x01
        assert vxlan.normalize_mac(mac) == mac


# -- VXLAN peer plans -----------------------------------------------------------------------------


def test_vxlan_plan_is_neigh_then_fdb_then_route():
    plan = vxlan.plan_peer(B)
    assert plan.entries() == [
        Neigh(dev="flannel.1", ip=ip("10.244.1.0"), mac=MAC_B),
        Fdb(dev="flannel.1", mac=MAC_B, dst=ip("192.168.1.11")),
        Route(dst=net("10.244.1.0/24"), gateway=ip("10.244.1.0"), dev="flannel.1", onlink=True),
    ]
    assert [type(e) for e in plan.removal_order()] == [Route, Fdb, Neigh]
    assert str(plan) == (
        "neigh 10.244.1.0 lladdr aa:bb:cc:00:00:01 dev flannel.1 permanent; "
        "fdb aa:bb:cc:00:00:01 dev flannel.1 dst 192.168.1.11 self permanent; "
        "route 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink"
    )


def test_vxlan_plan_uses_our_vni_device_and_normalises_the_mac():
    plan = vxlan.plan_peer(lease("10.244.1.0/24", "192.168.1.11", "AA-BB-CC-00-00-01", vni=7), vni=7)
    assert plan.neigh.dev == plan.fdb.dev == plan.route.dev == "flannel.7"
    assert plan.neigh.mac == MAC_B


@pytest.mark.parametrize(
    "record,why",
    [
        (lease("10.244.1.0/24", "192.168.1.11", backend="host-gw"), "BackendType is 'host-gw'"),
        (lease("10.244.1.0/24", "192.168.1.11", mac=None), "no usable VtepMAC"),
        (lease("10.244.1.0/24", "192.168.1.11", mac="not-a-mac"), "no usable VtepMAC"),
        (lease("10.244.1.0/24", "not-an-ip"), "is not an IPv4 address"),
        (lease("10.244.1.0/24", "192.168.1.11", vni=2), "VNI 2 differs from ours (1)"),
    ],
)
def test_unusable_leases_are_skipped_with_a_reason(record, why):
    plan = vxlan.plan_peer(record)
    assert isinstance(plan, Skipped) and why in plan.reason


def test_direct_routing_for_peers_on_our_segment_only():
    direct = vxlan.DirectRouting("eth0", (net("192.168.1.0/24"),))
    same = vxlan.plan_peer(B, direct=direct)
    assert same.entries() == [Route(net("10.244.1.0/24"), ip("192.168.1.11"), "eth0")]
    far = vxlan.plan_peer(lease("10.244.3.0/24", "172.16.0.5", MAC_C), direct=direct)
    assert [type(e) for e in far.entries()] == [Neigh, Fdb, Route] and far.route.dev == "flannel.1"


def test_vtep_address_is_the_network_address_slash_32():
    assert str(vxlan.vtep_address(net("10.244.1.0/24"))) == "10.244.1.0/32"


# -- host-gw ---------------------------------------------------------------------------------------


def test_host_gw_plan_is_one_route_via_the_public_ip():
    plan = host_gw.plan_peer(lease("10.244.1.0/24", "192.168.1.11", backend="host-gw"), "eth0", [net("192.168.1.0/24")])
    assert plan.entries() == [Route(net("10.244.1.0/24"), ip("192.168.1.11"), "eth0", onlink=False)]


def test_host_gw_peer_off_our_segment_is_a_clear_error():
    plan = host_gw.plan_peer(lease("10.244.1.0/24", "10.9.0.7", backend="host-gw"), "eth0", [net("192.168.1.0/24")])
    assert isinstance(plan, Skipped)
    assert "10.9.0.7 is not on our L2 segment" in plan.reason and "192.168.1.0/24" in plan.reason
    assert "use the vxlan backend" in str(plan)


def test_host_gw_ignores_vxlan_leases():
    plan = host_gw.plan_peer(B, "eth0", [net("192.168.1.0/24")])
    assert isinstance(plan, Skipped) and "BackendType is 'vxlan'" in plan.reason


def test_host_gw_refuses_a_public_ip_behind_nat():
    host_gw.check_public_ip("192.168.1.10", ["192.168.1.10"])
    with pytest.raises(host_gw.HostGwError, match="behind NAT"):
        host_gw.check_public_ip("203.0.113.5", ["192.168.1.10"])


# -- the lease state machine -------------------------------------------------------------------------


def test_diff_from_nothing_adds_every_remote_lease_but_not_ours():
    assert leases.diff({}, [ME, C, B], OWN) == [Added(B), Added(C)]


def test_diff_removes_with_the_cached_record():
    events = leases.diff({B.subnet: B, C.subnet: C}, [C], OWN)
    assert events == [Removed(B)]
    assert events[0].lease.backend_data["VtepMAC"] == MAC_B


def test_diff_of_a_changed_lease_is_removed_then_added_and_removals_come_first():
    b2 = lease("10.244.1.0/24", "192.168.1.11", "aa:bb:cc:00:00:77")
    d = lease("10.244.4.0/24", "192.168.1.14", "aa:bb:cc:00:00:44")
    events = leases.diff({B.subnet: B, C.subnet: C}, [b2, d], OWN)
    assert events == [Removed(B), Removed(C), Added(b2), Added(d)]


def test_a_renewal_is_not_an_event():
    renewed = lease("10.244.1.0/24", "192.168.1.11", MAC_B, lease_id=99)
    assert leases.diff({B.subnet: B}, [renewed], OWN) == []
    assert leases.on_put({B.subnet: B}, renewed, OWN) == []


def test_watch_put_and_delete():
    known = {}
    assert leases.on_put(known, B, OWN) == [Added(B)]
    assert leases.on_put(known, ME, OWN) == []
    known = {B.subnet: B}
    # an etcd delete carries the key only: the event must carry the cached VtepMAC and PublicIP
    [ev] = leases.on_delete(known, net("10.244.1.0/24"))
    assert ev == Removed(B) and ev.lease.public_ip == "192.168.1.11"
    assert leases.on_delete(known, net("10.244.9.0/24")) == []


def test_apply_events_does_not_change_its_input():
    known = {B.subnet: B}
    after = leases.apply_events(known, [Removed(B), Added(C)])
    assert after == {C.subnet: C} and known == {B.subnet: B}


def test_lease_cache_follows_snapshots_and_events():
    cache = LeaseCache(OWN)
    assert cache.resync([ME, B]) == [Added(B)]
    assert cache.put(C) == [Added(C)]
    assert cache.delete(B.subnet) == [Removed(B)]
    assert cache.delete(B.subnet) == []
    assert cache.leases() == [C]
    assert cache.resync([]) == [Removed(C)]


# -- etcd watch events -> updates -------------------------------------------------------------------


def _etcd_event(cls, key: str, value: bytes = b"", lease_id: int = 0):
    return cls(SimpleNamespace(kv=SimpleNamespace(key=key.encode(), value=value, lease=lease_id)))


def test_watch_events_become_updates():
    put = to_update(
        _etcd_event(pyetcd.events.PutEvent, "/coreos.com/network/subnets/10.244.1.0-24", B.attrs_json().encode(), 7)
    )
    assert isinstance(put, LeasePut) and put.record.subnet == B.subnet and put.record.lease_id == 7
    assert put.record.backend_data == B.backend_data
    gone = to_update(_etcd_event(pyetcd.events.DeleteEvent, "/coreos.com/network/subnets/10.244.1.0-24"))
    assert gone == LeaseDelete(net("10.244.1.0/24"))
    assert to_update(_etcd_event(pyetcd.events.PutEvent, "/coreos.com/network/subnets/junk", b"{}")) is None


# -- reconcile -------------------------------------------------------------------------------------------


def state(*entries) -> KernelState:
    return KernelState(
        frozenset(e for e in entries if isinstance(e, Neigh)),
        frozenset(e for e in entries if isinstance(e, Fdb)),
        frozenset(e for e in entries if isinstance(e, Route)),
    )


def test_reconcile_in_sync():
    plans = [vxlan.plan_peer(B), vxlan.plan_peer(C)]
    everything = [e for p in plans for e in p.entries()]
    assert reconcile(plans, state(*everything)) == ([], [])


def test_reconcile_restores_missing_entries_in_install_order():
    plans = [vxlan.plan_peer(B), vxlan.plan_peer(C)]
    to_add, to_remove = reconcile(plans, state(plans[0].neigh))
    assert to_remove == []
    assert [type(e) for e in to_add] == [Neigh, Fdb, Fdb, Route, Route]


def test_reconcile_removes_strays_routes_first():
    plan = vxlan.plan_peer(B)
    stray = vxlan.plan_peer(C)
    to_add, to_remove = reconcile([plan], state(*plan.entries(), *stray.entries()))
    assert to_add == [] and to_remove == stray.removal_order()


def test_reconcile_replaces_a_changed_mac_without_deleting_the_key_first():
    old = vxlan.plan_peer(B)
    new = vxlan.plan_peer(lease("10.244.1.0/24", "192.168.1.11", "aa:bb:cc:00:00:77"))
    to_add, to_remove = reconcile([new], state(*old.entries()))
    assert to_add == [new.neigh, new.fdb]  # replace rewrites the neighbour's MAC
    assert to_remove == [old.fdb]  # the FDB is keyed by MAC: the old one goes


def test_removable_keeps_entries_another_peer_still_needs():
    moved = lease("10.244.5.0/24", "192.168.1.11", MAC_B)  # node B, new subnet, same VtepMAC
    entries = removable(vxlan.plan_peer(B), [vxlan.plan_peer(moved)])
    assert [type(e) for e in entries] == [Route, Neigh]  # not the shared FDB entry


# -- the controller, with a fake kernel ------------------------------------------------------------------


class FakeKernel:
    def __init__(self):
        self.entries: dict = {}
        self.calls: list = []

    def apply_plan(self, plan: PeerPlan):
        self.calls.append(("plan", str(plan.subnet)))
        for e in plan.entries():
            self.entries[e.key()] = e

    def add(self, entries):
        for e in entries:
            self.entries[e.key()] = e
        return []

    def delete(self, entries):
        for e in entries:
            if self.entries.get(e.key()) == e:
                del self.entries[e.key()]
        return []

    def read(self, backend):
        return state(*self.entries.values())


class FakeStore:
    def __init__(self, records):
        self.records = records

    def list_leases(self):
        return list(self.records)


class FakeWatch:
    started: list = []

    def __init__(self, store, deliver):
        self.deliver = deliver
        self.stopped = False
        FakeWatch.started.append(self)

    def stop(self):
        self.stopped = True


def controller(records, backend=None):
    kernel = FakeKernel()
    ctl = OverlayController(
        FakeStore(records), OWN, backend or VxlanBackend(1), lambda: kernel, watch=FakeWatch, resync_interval=3600
    )
    return ctl, kernel


def test_controller_programs_every_remote_lease_on_start():
    ctl, kernel = controller([ME, B, C])
    ctl.start()
    try:
        assert kernel.calls == [("plan", "10.244.1.0/24"), ("plan", "10.244.2.0/24")]
        assert reconcile([vxlan.plan_peer(B), vxlan.plan_peer(C)], kernel.read(None)) == ([], [])
        FakeWatch.started[-1].deliver(LeaseDelete(C.subnet))
        assert ctl.resync_now() == ([], [])  # the delete was handled before this job
        assert set(kernel.entries.values()) == set(vxlan.plan_peer(B).entries())
    finally:
        ctl.stop()
    assert FakeWatch.started[-1].stopped


def test_controller_start_fails_loudly_when_the_store_does():
    class DeadStore:
        def list_leases(self):
            raise RuntimeError("etcd at http://127.0.0.1:2379 did not answer")

    ctl = OverlayController(DeadStore(), OWN, VxlanBackend(1), FakeKernel, watch=FakeWatch)
    with pytest.raises(RuntimeError, match="did not answer"):
        ctl.start(timeout=5)
    assert not ctl._worker.is_alive()


def test_controller_follows_puts_and_deletes():
    ctl, kernel = controller([B])
    ctl.resync(ctl.store.list_leases())
    ctl.handle(LeasePut(C))
    assert vxlan.plan_peer(C).route in kernel.entries.values()
    ctl.handle(LeaseDelete(B.subnet))  # no value: the cache supplies VtepMAC and PublicIP
    assert set(kernel.entries.values()) == set(vxlan.plan_peer(C).entries())


def test_controller_snapshot_after_reconnect_removes_what_vanished():
    ctl, kernel = controller([B, C])
    ctl.resync(ctl.store.list_leases())
    ctl.handle(LeaseSnapshot([C], revision=42))
    assert set(kernel.entries.values()) == set(vxlan.plan_peer(C).entries())


def test_controller_resync_repairs_hand_made_changes():
    ctl, kernel = controller([B])
    ctl.resync(ctl.store.list_leases())
    plan = vxlan.plan_peer(B)
    del kernel.entries[plan.fdb.key()]  # deleted by hand
    stray = vxlan.plan_peer(C).route
    kernel.entries[stray.key()] = stray  # added by hand
    to_add, to_remove = ctl.reconcile_kernel()
    assert to_add == [plan.fdb] and to_remove == [stray]
    assert set(kernel.entries.values()) == set(plan.entries())


def test_controller_logs_a_skipped_lease_once(caplog):
    far = lease("10.244.3.0/24", "10.9.0.7", backend="host-gw")
    ctl, kernel = controller([far], HostGwBackend("eth0", [net("192.168.1.0/24")]))
    with caplog.at_level(logging.WARNING):
        ctl.resync(ctl.store.list_leases())
        ctl.reconcile_kernel()
        ctl.reconcile_kernel()
    assert caplog.text.count("not on our L2 segment") == 1
    assert kernel.entries == {}
