"""minikubenet.ipam.allocator against an in-memory store with etcd's semantics.

The allocator claims an IP with compare-and-create (one winner per key, anywhere in
the cluster) and releases it with compare-and-delete on the exact record. The fake
below gives the same guarantees with a lock, so these tests show the allocator's own
logic: distinct IPs, idempotent repeat ADD, round robin, full subnet, safe release,
and no double allocation under concurrency (also across two agents on one store).
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import threading
import time
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N
from typing import Protocol

import pytest

from minikubenet.ipam.allocator import Allocation, Owner, PodIPAllocator, SubnetFull
from minikubenet.store.etcd import EtcdStore

SUBNET = N("10.244.1.0/24")


class PodIPStore(Protocol):
    """The part of EtcdStore that PodIPAllocator uses."""

    def list_pod_ips(self, subnet: ipaddress.IPv4Network) -> dict[ipaddress.IPv4Address, bytes]: ...

    def create_pod_ip(self, subnet, ip, record: bytes, claimed: bool = False) -> bool: ...

    def list_pod_ip_claims(self, subnet: ipaddress.IPv4Network) -> dict[ipaddress.IPv4Address, bytes]: ...

    def complete_pod_ip(self, subnet, ip, record: bytes) -> bool: ...

    def delete_pod_ip(self, subnet, ip, record: bytes) -> bool: ...


class FakeStore:
    """In memory, with etcd's transaction semantics for pod IP keys."""

    def __init__(self):
        self._lock = threading.Lock()
        self.data: dict[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], bytes] = {}
        self.claims: dict[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], bytes] = {}
        self.conflicts = 0  # compare-and-create transactions that lost (etcd round trips wasted)

    def list_pod_ips(self, subnet: ipaddress.IPv4Network) -> dict[ipaddress.IPv4Address, bytes]:
        with self._lock:
            return {ip: v for (s, ip), v in self.data.items() if s == subnet}

    def list_pod_ip_claims(self, subnet: ipaddress.IPv4Network) -> dict[ipaddress.IPv4Address, bytes]:
        with self._lock:
            return {ip: v for (s, ip), v in self.claims.items() if s == subnet}

    def create_pod_ip(self, subnet, ip, record: bytes, claimed: bool = False) -> bool:
        """Compare-and-create: only if the key does not exist (etcd ``version(key) == 0``),
        with the claim marker in the same step."""
        with self._lock:
            if (subnet, ip) in self.data:
                self.conflicts += 1
                return False
            self.data[(subnet, ip)] = record
            if claimed:
                self.claims[(subnet, ip)] = record
            return True

    def complete_pod_ip(self, subnet, ip, record: bytes) -> bool:
        with self._lock:
            if self.claims.get((subnet, ip)) != record:
                return False
            del self.claims[(subnet, ip)]
            return True

    def delete_pod_ip(self, subnet, ip, record: bytes) -> bool:
        """Compare-and-delete: only if the key holds exactly ``record`` (etcd ``value(key) == record``)."""
        with self._lock:
            if self.data.get((subnet, ip)) != record:
                return False
            del self.data[(subnet, ip)]
            self.claims.pop((subnet, ip), None)
            return True


class SlowStore(FakeStore):
    """Every call takes a moment, as an etcd round trip does, so concurrent callers overlap."""

    def list_pod_ips(self, subnet):
        time.sleep(0.001)
        return super().list_pod_ips(subnet)

    def create_pod_ip(self, subnet, ip, record, claimed=False):
        time.sleep(0.001)
        return super().create_pod_ip(subnet, ip, record, claimed)


# Static conformance (mypy/pyright): FakeStore provides what the allocator needs from EtcdStore.
_: PodIPStore = FakeStore()


def test_fake_store_has_the_real_stores_signatures():
    # the runtime half of the conformance check: the fake cannot drift from EtcdStore
    for name in ("list_pod_ips", "list_pod_ip_claims", "create_pod_ip", "complete_pod_ip", "delete_pod_ip"):
        real = list(inspect.signature(getattr(EtcdStore, name)).parameters)
        fake = list(inspect.signature(getattr(FakeStore, name)).parameters)
        assert fake == real, name


def owner(n: int | str, ifname: str = "eth0") -> Owner:
    return Owner(container_id=f"c{n}", ifname=ifname, node="n1", network="mkn", netns=f"/run/netns/p{n}")


@pytest.fixture
def store():
    return FakeStore()


@pytest.fixture
def alloc(store):
    return PodIPAllocator(store, SUBNET)


# -- basics --------------------------------------------------------------------------------


def test_first_ip_is_dot_2_and_next_ones_are_distinct_and_in_order(alloc, store):
    got = [alloc.allocate(owner(i)) for i in range(5)]
    assert [a.ip for a, _ in got] == [A(f"10.244.1.{i}") for i in range(2, 7)]
    assert all(new for _, new in got)
    assert len(store.data) == 5
    for a, _ in got:
        assert store.data[(SUBNET, a.ip)] == a.record
        assert Owner.from_record(a.record) == a.owner


def test_never_hands_out_network_gateway_or_broadcast(store):
    alloc = PodIPAllocator(store, N("10.0.0.0/29"))
    ips = {alloc.allocate(owner(i))[0].ip for i in range(5)}
    assert ips == {A("10.0.0.2"), A("10.0.0.3"), A("10.0.0.4"), A("10.0.0.5"), A("10.0.0.6")}


def test_repeated_add_for_the_same_attachment_gets_the_same_ip(alloc, store):
    first, new1 = alloc.allocate(owner(1))
    alloc.allocate(owner(2))
    again, new2 = alloc.allocate(owner(1))
    assert (new1, new2) == (True, False)
    assert again.ip == first.ip
    assert again.record == first.record
    assert len(store.data) == 2


def test_same_container_other_interface_gets_another_ip(alloc):
    a, _ = alloc.allocate(owner(1, "eth0"))
    b, new = alloc.allocate(owner(1, "net1"))
    assert new and a.ip != b.ip


def test_repeated_add_is_recognised_by_container_and_ifname_only(alloc):
    a, _ = alloc.allocate(owner(1))
    other_details = Owner("c1", "eth0", node="n1", network="mkn", netns="/run/netns/elsewhere", pod_name="web-0")
    b, new = alloc.allocate(other_details)
    assert (b.ip, new) == (a.ip, False)


def test_a_second_agent_finds_an_existing_allocation(store):
    a, _ = PodIPAllocator(store, SUBNET).allocate(owner(1))
    b, new = PodIPAllocator(store, SUBNET).allocate(owner(1))  # agent restarted
    assert (b.ip, new) == (a.ip, False)


def test_find_and_list(alloc):
    a, _ = alloc.allocate(owner(1))
    b, _ = alloc.allocate(owner(2))
    assert alloc.find("c2", "eth0") == b
    assert alloc.find("c2", "net1") is None
    assert alloc.find("c9", "eth0") is None
    assert alloc.list() == [a, b]


def test_unparseable_records_are_treated_as_taken(alloc, store):
    store.create_pod_ip(SUBNET, A("10.244.1.2"), b"not json")
    store.create_pod_ip(SUBNET, A("10.244.1.3"), json.dumps({"node": "n1"}).encode())
    a, _ = alloc.allocate(owner(1))
    assert a.ip == A("10.244.1.4")
    assert store.data[(SUBNET, A("10.244.1.2"))] == b"not json"  # left alone


def test_allocations_of_another_subnet_do_not_interfere(store):
    other = PodIPAllocator(store, N("10.244.2.0/24"))
    other.allocate(owner(1))
    a, new = PodIPAllocator(store, SUBNET).allocate(owner(1))
    assert new and a.ip == A("10.244.1.2")


# -- round robin ---------------------------------------------------------------------------


def test_round_robin_does_not_reuse_a_just_released_ip(alloc):
    a, _ = alloc.allocate(owner(1))  # .2
    b, _ = alloc.allocate(owner(2))  # .3
    assert alloc.release(a)
    c, _ = alloc.allocate(owner(3))
    assert c.ip == A("10.244.1.4")  # not .2 again: a crash-looping pod gets a new IP
    assert alloc.release(c)
    d, _ = alloc.allocate(owner(4))
    assert d.ip == A("10.244.1.5")


def test_round_robin_wraps_around_to_the_lowest_free(store):
    alloc = PodIPAllocator(store, N("10.0.0.0/29"))  # .2 .. .6
    got = [alloc.allocate(owner(i))[0] for i in range(5)]
    assert alloc.release(got[1])  # free .3
    assert alloc.release(got[3])  # free .5
    nxt, _ = alloc.allocate(owner(10))
    assert nxt.ip == A("10.0.0.3")  # after .6 comes .2 (taken), then .3
    nxt2, _ = alloc.allocate(owner(11))
    assert nxt2.ip == A("10.0.0.5")


# -- full ----------------------------------------------------------------------------------


def test_full_subnet_raises_subnet_full_naming_subnet_and_size(store):
    alloc = PodIPAllocator(store, N("10.0.0.0/29"))
    for i in range(5):
        alloc.allocate(owner(i))
    with pytest.raises(SubnetFull) as e:
        alloc.allocate(owner(99))
    assert "10.0.0.0/29" in str(e.value)
    assert "5" in str(e.value)
    assert len(store.data) == 5


def test_full_subnet_still_answers_a_repeated_add(store):
    alloc = PodIPAllocator(store, N("10.0.0.0/30"))  # a single pod address
    a, _ = alloc.allocate(owner(1))
    with pytest.raises(SubnetFull):
        alloc.allocate(owner(2))
    b, new = alloc.allocate(owner(1))
    assert (b.ip, new) == (a.ip, False)


def test_a_full_253_pod_subnet(alloc):
    ips = {alloc.allocate(owner(i))[0].ip for i in range(253)}
    assert len(ips) == 253
    with pytest.raises(SubnetFull, match="253"):
        alloc.allocate(owner(253))


# -- release -------------------------------------------------------------------------------


def test_release_frees_the_ip(alloc, store):
    a, _ = alloc.allocate(owner(1))
    assert alloc.release(a) is True
    assert store.data == {}
    assert alloc.release(a) is False  # already gone: nothing to do


def test_release_needs_the_exact_record(alloc, store):
    a, _ = alloc.allocate(owner(1))
    forged = Allocation(a.ip, owner(2), owner(2).to_record())
    assert alloc.release(forged) is False
    assert store.data[(SUBNET, a.ip)] == a.record


def test_stale_release_never_frees_the_next_owners_ip(store):
    tiny = N("10.0.0.0/30")  # only 10.0.0.2, so it is reused
    alloc = PodIPAllocator(store, tiny)
    old, _ = alloc.allocate(owner(1))
    assert alloc.release(old)
    new, _ = alloc.allocate(owner(2))
    assert new.ip == old.ip
    assert alloc.release(old) is False  # a late DEL of the old pod
    assert store.data[(tiny, new.ip)] == new.record  # the new pod keeps its IP


# -- claimed, then complete (crash consistency) ----------------------------------------------


def test_a_claim_is_written_with_its_record_and_completing_removes_only_the_marker(alloc, store):
    from dataclasses import replace

    a, created = alloc.allocate(replace(owner(1), mac="0a:11:22:33:44:55"), claimed=True)
    assert created and alloc.claims() == {a.ip: a.record}
    doc = json.loads(store.data[(SUBNET, a.ip)])
    assert doc["mac"] == "0a:11:22:33:44:55" and doc["netns"] == "/run/netns/p1"
    assert alloc.complete(a) is True
    assert alloc.claims() == {} and store.data[(SUBNET, a.ip)] == a.record, "the record itself is unchanged"
    assert alloc.complete(a) is False  # complete already


def test_an_ipam_mode_allocation_has_no_claim(alloc):
    alloc.allocate(owner(1))
    assert alloc.claims() == {}


def test_release_removes_the_claim_too_and_completing_then_changes_nothing(alloc, store):
    a, _ = alloc.allocate(owner(1), claimed=True)
    assert alloc.release(a)
    assert alloc.complete(a) is False
    assert store.data == {} and store.claims == {}


def test_completing_a_stale_copy_never_completes_the_next_owners_claim(store):
    tiny = N("10.0.0.0/30")
    alloc = PodIPAllocator(store, tiny)
    old, _ = alloc.allocate(owner(1), claimed=True)
    assert alloc.release(old)
    new, _ = alloc.allocate(owner(2), claimed=True)
    assert new.ip == old.ip
    assert alloc.complete(old) is False
    assert alloc.claims() == {new.ip: new.record}


# -- races ---------------------------------------------------------------------------------


class RacingStore(FakeStore):
    """Another node grabs the first address the allocator tries, between its list and its create."""

    def __init__(self):
        super().__init__()
        self.stolen: list = []

    def create_pod_ip(self, subnet, ip, record, claimed=False):
        if not self.stolen:
            self.stolen.append(ip)
            super().create_pod_ip(subnet, ip, owner("thief").to_record())
        return super().create_pod_ip(subnet, ip, record, claimed)


def test_losing_a_race_moves_on_and_never_takes_the_winners_ip():
    store = RacingStore()
    a, new = PodIPAllocator(store, SUBNET).allocate(owner(1))
    assert new
    (stolen,) = store.stolen
    assert a.ip != stolen
    assert Owner.from_record(store.data[(SUBNET, stolen)]).container_id == "cthief"
    assert Owner.from_record(store.data[(SUBNET, a.ip)]).container_id == "c1"


@pytest.mark.parametrize("agents", [1, 5], ids=["one-agent", "five-agents"])
def test_50_concurrent_allocations_get_50_distinct_ips(agents):
    store = SlowStore()
    allocators = [PodIPAllocator(store, SUBNET) for _ in range(agents)]
    barrier = threading.Barrier(50)
    results: list = [None] * 50
    errors: list = []

    def worker(i):
        try:
            barrier.wait()
            results[i] = allocators[i % agents].allocate(owner(i))[0]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    ips = [r.ip for r in results]
    assert len(set(ips)) == 50
    assert len(store.data) == 50
    for r in results:  # every stored record belongs to the thread that got the IP
        assert store.data[(SUBNET, r.ip)] == r.record


def test_one_agent_serialises_its_own_adds_so_no_transaction_is_wasted():
    # the transaction makes it safe; the in-agent lock makes it fast: concurrent ADDs on
    # one agent never try the same candidate, so no compare-and-create ever loses
    store = SlowStore()
    alloc = PodIPAllocator(store, SUBNET)
    barrier = threading.Barrier(30)

    def worker(i):
        barrier.wait()
        alloc.allocate(owner(i))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(store.data) == 30
    assert store.conflicts == 0


# -- owner records -------------------------------------------------------------------------


def test_owner_record_round_trip_and_shape():
    o = Owner(
        "3f9a1c0de", "eth0", node="n1", network="mkn", netns="/run/netns/p1", pod_namespace="default", pod_name="web-0"
    )
    doc = json.loads(o.to_record())
    assert doc == {
        "containerID": "3f9a1c0de",
        "ifname": "eth0",
        "node": "n1",
        "network": "mkn",
        "netns": "/run/netns/p1",
        "podNamespace": "default",
        "podName": "web-0",
    }
    assert Owner.from_record(o.to_record()) == o
    assert o.to_record() == o.to_record()  # deterministic: compare-and-delete compares bytes


@pytest.mark.parametrize("raw", [b"", b"nope", b"[]", b"{}", b'{"containerID": "x"}', b"null"])
def test_owner_from_garbage_is_none(raw):
    assert Owner.from_record(raw) is None
