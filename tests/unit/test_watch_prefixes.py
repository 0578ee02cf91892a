"""A watch per readable prefix (store/watch.py, store/services.py): the proxy and the
endpoints controller may read services, endpoints and pods only (store/etcd_rbac.py),
and etcd refuses a watch on a range a user cannot read as a whole, silently for pyetcd
(watch id -1, no events ever). So ObjectWatch watches the three prefixes, and a refused
watch breaks the loop loudly instead of leaving a daemon deaf."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from minikubenet.store.etcd import WatchHandle
from minikubenet.store.services import ObjectWatch, ServiceStore
from minikubenet.store.watch import ListWatch, WatchBroken
from tests.unit.fake_etcd import fake_etcd_store


class WatchingClient:
    """add_watch_prefix_callback / cancel_watch as store/etcd.py's FailoverClient has
    them (a WatchHandle of pyetcd's watch id); ``refuse``: prefixes etcd answers with a
    cancelled watch (id -1)."""

    def __init__(self, refuse=()):
        self.refuse = set(refuse)
        self.watches: dict[int, tuple[str, object, int]] = {}
        self.cancelled: list[int] = []

    def add_watch_prefix_callback(self, prefix, callback, start_revision=None):
        if prefix in self.refuse:
            return WatchHandle(self, -1)
        wid = len(self.watches)
        self.watches[wid] = (prefix, callback, start_revision)
        return WatchHandle(self, wid)

    def cancel_watch(self, handle):
        self.cancelled.append(handle.watch_id)


class TwoPrefixes(ListWatch):
    name = "test-watch"

    def _prefixes(self):
        return ("/a/", "/b/")

    def _to_update(self, event, header_revision):
        return event


def test_object_watch_follows_exactly_the_three_kinds():
    watch = ObjectWatch(ServiceStore(fake_etcd_store()), deliver=lambda u: None)
    assert watch._prefixes() == ("/minikubenet/services/", "/minikubenet/endpoints/", "/minikubenet/pods/")


def test_a_refused_watch_breaks_the_loop_and_cancels_the_others():
    client = WatchingClient(refuse={"/b/"})
    watch = TwoPrefixes(SimpleNamespace(client=client), deliver=lambda u: None)
    with pytest.raises(WatchBroken, match="refused the watch of /b/"):
        watch._follow(7)
    # both cancelled: pyetcd keeps a callback under the refused id -1 until then
    assert [p for p, _, _ in client.watches.values()] == ["/a/"] and client.cancelled == [0, -1]


def test_events_of_every_prefix_arrive_in_one_thread_from_one_revision():
    client = WatchingClient()
    got, seen = [], threading.Event()

    def deliver(update):
        got.append((update, threading.current_thread().name))
        if len(got) == 2:
            seen.set()

    watch = TwoPrefixes(SimpleNamespace(client=client), deliver=deliver)
    t = threading.Thread(target=watch._follow, args=(42,), name="follower")
    t.start()
    while len(client.watches) < 2:
        pass
    assert {rev for _, _, rev in client.watches.values()} == {42}
    for prefix, callback, _ in client.watches.values():
        callback(SimpleNamespace(events=[f"{prefix}event"], header=SimpleNamespace(revision=43)))
    assert seen.wait(5)
    watch._stop.set()
    t.join(5)
    assert sorted(u for u, _ in got) == ["/a/event", "/b/event"] and {n for _, n in got} == {"follower"}
    assert sorted(client.cancelled) == [0, 1]
