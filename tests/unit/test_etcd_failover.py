"""FailoverClient (store/etcd.py): which member a call goes to when members die, how
long it keeps trying, and the compare-and-swap write that recognises its own earlier
try. Pure: the members are stand-ins that fail the way pyetcd does."""

from __future__ import annotations

import ipaddress
import time
from types import SimpleNamespace

import grpc
import pyetcd.exceptions
import pytest

from minikubenet.store.etcd import EtcdStore, FailoverClient, StoreUnavailable
from minikubenet.store.keys import KeyLayout


class RpcError(grpc.RpcError):
    def __init__(self, code, details=""):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


REFUSED = RpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: Connection refused")
NO_LEADER = RpcError(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
TIMEOUT = RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


def as_pyetcd(rpc: RpcError) -> Exception:
    """What pyetcd raises: its own exception, with the gRPC error as the context."""
    try:
        raise rpc
    except RpcError:
        try:
            raise {
                grpc.StatusCode.UNAVAILABLE: pyetcd.exceptions.ConnectionFailedError,
                grpc.StatusCode.DEADLINE_EXCEEDED: pyetcd.exceptions.ConnectionTimeoutError,
            }.get(rpc.code(), pyetcd.exceptions.Etcd3Exception)()
        except Exception as e:
            return e


class Member:
    """A member's pyetcd client: its next calls raise ``failures`` in order, then
    ``down`` forever (None: it answers)."""

    transactions = SimpleNamespace()

    def __init__(self, name, failures=(), down=None):
        self.name, self.failures, self.down, self.calls = name, list(failures), down, 0

    def get(self, key):
        self.calls += 1
        if self.failures or self.down:
            raise as_pyetcd(self.failures.pop(0) if self.failures else self.down)
        return (f"{key}@{self.name}".encode(), None)

    def lease(self, ttl):
        return SimpleNamespace(id=7, ttl=ttl, etcd_client=self)

    def close(self):
        pass


def client(*members, **kw) -> FailoverClient:
    return FailoverClient([(f"http://{m.name}:2379", m) for m in members], **kw)


def test_calls_stay_on_one_member_until_it_fails_then_move_on():
    a, b, c = Member("a"), Member("b"), Member("c")
    fc = client(a, b, c)
    assert fc.get("/k") == (b"/k@a", None)
    a.down = REFUSED  # a dies
    assert fc.get("/k") == (b"/k@b", None)  # no error reaches the caller
    assert fc.get("/k") == (b"/k@b", None)  # and b stays the one we talk to
    assert (a.calls, b.calls, c.calls) == (2, 2, 0)


def test_a_cluster_without_leader_is_waited_for_within_the_retry_budget():
    # every member answers "no leader" for a few rounds (an election), then serves
    a, b = Member("a", [NO_LEADER, NO_LEADER, TIMEOUT]), Member("b", [NO_LEADER, NO_LEADER])
    fc = client(a, b, retry_for=5.0)
    value, _ = fc.get("/k")
    assert value in (b"/k@a", b"/k@b")


def test_an_answer_that_is_not_about_reachability_is_not_retried():
    a, b = Member("a", [RpcError(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")]), Member("b")
    fc = client(a, b)
    with pytest.raises(pyetcd.exceptions.Etcd3Exception):
        fc.get("/k")
    assert b.calls == 0


def test_when_no_member_accepts_connections_calls_fail_fast():
    a, b = Member("a", down=REFUSED), Member("b", down=REFUSED)
    fc = client(a, b, retry_for=10.0, unreachable_grace=0.3)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="did not answer .get.*http://a:2379.*Connection refused"):
        fc.get("/k")
    first = time.monotonic() - started
    assert 0.3 <= first < 2.0  # the grace, not the whole retry budget
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        fc.get("/k")  # etcd is known to be down: no waiting again
    assert time.monotonic() - started < 0.1
    a.down = None  # etcd is back: the next call simply works
    assert fc.get("/k")[0] == b"/k@a"


def test_a_member_that_keeps_timing_out_gives_up_after_the_budget():
    fc = client(Member("a", down=TIMEOUT), retry_for=0.4)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="DEADLINE_EXCEEDED"):
        fc.get("/k")
    assert 0.3 <= time.monotonic() - started < 2.0


def test_a_granted_lease_is_refreshed_through_the_failover_client():
    fc = client(Member("a"))
    lease = fc.lease(30)
    assert lease.etcd_client is fc


def test_unknown_calls_are_not_forwarded():
    with pytest.raises(AttributeError):
        _ = client(Member("a")).compact


# --------------------------------------------------------------------------- retried writes


class TxnClient:
    """A transaction whose compare fails, with ``current`` as the key's value."""

    def __init__(self, current: bytes | None, lease_id: int = 0):
        self.current, self.lease_id = current, lease_id
        self.transactions = SimpleNamespace(
            version=lambda key: _Cmp(),
            value=lambda key: _Cmp(),
            put=lambda *a, **kw: ("put", a, kw),
            get=lambda key: ("get", key),
        )

    def transaction(self, compare, success, failure):
        assert failure == [("get", failure[0][1])]
        found = [] if self.current is None else [(self.current, SimpleNamespace(lease_id=self.lease_id))]
        return False, [found]


class _Cmp:
    def __eq__(self, other):
        return ("==", other)


def store_with(txn_client) -> EtcdStore:
    store = EtcdStore.__new__(EtcdStore)
    store.client, store.layout, store.endpoints_text = txn_client, KeyLayout(), "fake://"
    return store


SUBNET, IP = ipaddress.IPv4Network("10.244.1.0/24"), ipaddress.IPv4Address("10.244.1.5")


def test_a_retried_create_that_finds_its_own_record_has_succeeded():
    assert store_with(TxnClient(b'{"containerID": "c1"}')).create_pod_ip(SUBNET, IP, b'{"containerID": "c1"}')


def test_a_create_that_finds_someone_elses_record_has_not():
    assert not store_with(TxnClient(b'{"containerID": "c2"}')).create_pod_ip(SUBNET, IP, b'{"containerID": "c1"}')
    assert not store_with(TxnClient(None)).create_pod_ip(SUBNET, IP, b'{"containerID": "c1"}')


def test_a_subnet_lease_is_ours_only_on_our_etcd_lease():
    from minikubenet.subnet_lease_record import SubnetLeaseRecord

    rec = SubnetLeaseRecord(SUBNET, "172.31.0.11", "vxlan", {})
    mine = SimpleNamespace(id=42)
    assert store_with(TxnClient(rec.attrs_json().encode(), lease_id=42)).create_lease(rec, mine)
    assert not store_with(TxnClient(rec.attrs_json().encode(), lease_id=41)).create_lease(rec, mine)


def test_an_error_without_details_is_still_described():
    fc = client(Member("a", down=RpcError(grpc.StatusCode.UNAVAILABLE, "")), retry_for=0.2)
    with pytest.raises(StoreUnavailable, match="UNAVAILABLE"):
        fc.get("/k")


def test_etcds_own_not_now_answers_are_retried_and_other_unknown_errors_are_not():
    dropped = RpcError(grpc.StatusCode.UNKNOWN, "raft proposal dropped")
    assert client(Member("a", [dropped]), retry_for=2.0).get("/k")[0] == b"/k@a"
    corrupt = RpcError(grpc.StatusCode.UNKNOWN, "etcdserver: corrupt cluster")
    b = Member("b")
    with pytest.raises(pyetcd.exceptions.Etcd3Exception):
        client(Member("a", [corrupt]), b).get("/k")
    assert b.calls == 0


def test_once_the_budget_is_spent_each_call_fails_after_one_round():
    fc = client(Member("a", down=NO_LEADER), retry_for=0.3)  # a member without quorum
    with pytest.raises(StoreUnavailable):
        fc.get("/k")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="no leader"):
        fc.get("/k")
    assert time.monotonic() - started < 0.1


# --------------------------------------------------------------------------- lease renewal


def test_a_failed_lease_renewal_is_retried_soon_after_etcd_is_back(monkeypatch):
    from minikubenet import subnet_lease
    from minikubenet.store.etcd import StoreError
    from minikubenet.subnet_lease_record import SubnetLeaseRecord

    class Store:
        answers = [StoreError("etcd down"), StoreError("etcd down"), 30, 30, 30]

        def refresh(self, lease):
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            if isinstance(answer, Exception):
                raise answer
            return answer

    monkeypatch.setattr(subnet_lease, "RENEW_RETRY_S", 0.05)
    leaser = subnet_lease.SubnetLeaser(
        Store(), config=None, public_ip="172.31.0.11", backend_type="vxlan", backend_data={}, ttl=30
    )
    leaser.record = SubnetLeaseRecord(SUBNET, "172.31.0.11", "vxlan", {})
    leaser.etcd_lease, leaser.healthy = SimpleNamespace(id=1), True
    monkeypatch.setattr(leaser, "renew_interval", lambda: 0.05)
    seen = []
    leaser.start_renewing()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not (False in seen and seen[-1] is True):
        seen.append(leaser.healthy)
        time.sleep(0.01)
    leaser.stop()
    assert False in seen and seen[-1] is True  # unhealthy while etcd failed, healthy again right after
