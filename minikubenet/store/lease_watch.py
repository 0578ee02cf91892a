"""Following the subnet leases in etcd, the way flannel's ``WatchLeases`` does it.

The loop itself (list, watch from the listed revision + 1, list again after any break)
is ``ListWatch`` in store/watch.py. This module says what it follows: the ``subnets/``
prefix, delivered as ``LeaseSnapshot`` first, then ``LeasePut`` and ``LeaseDelete`` as
they happen. The consumer diffs each snapshot against what it knew (overlay/leases.py).

An etcd delete carries only the key; the consumer keeps the values (overlay/leases.py).
A lease whose TTL runs out arrives as such a delete.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Union

import pyetcd.events

from minikubenet.store.etcd import EtcdStore, lease_from_kv
from minikubenet.store.keys import subnet_from_key
from minikubenet.store.watch import ListWatch
from minikubenet.subnet_lease_record import SubnetLeaseRecord


@dataclass(frozen=True)
class LeaseSnapshot:
    """Every lease, as of store revision ``revision``."""

    records: list
    revision: int


@dataclass(frozen=True)
class LeasePut:
    record: SubnetLeaseRecord


@dataclass(frozen=True)
class LeaseDelete:
    subnet: ipaddress.IPv4Network


LeaseUpdate = Union[LeaseSnapshot, LeasePut, LeaseDelete]


def list_leases_at_revision(store: EtcdStore) -> LeaseSnapshot:
    """All leases and the revision they were read at (one range request)."""
    response = store.client.get_prefix_response(store.layout.subnets)
    records = [lease_from_kv(kv.key.decode(), kv.value, kv.lease) for kv in response.kvs]
    return LeaseSnapshot([r for r in records if r is not None], response.header.revision)


def to_update(event) -> LeaseUpdate | None:
    """A pyetcd watch event -> our update (None for keys that are not leases)."""
    key = event.key.decode()
    if isinstance(event, pyetcd.events.DeleteEvent):
        subnet = subnet_from_key(key)
        return LeaseDelete(subnet) if subnet is not None else None
    record = lease_from_kv(key, event.value, event.lease)
    return LeasePut(record) if record is not None else None


class LeaseWatch(ListWatch):
    """Lists and watches the leases of an ``EtcdStore`` in a background thread until
    ``stop()``."""

    name = "lease-watch"

    def _prefix(self) -> str:
        return self.store.layout.subnets

    def _list(self) -> LeaseSnapshot:
        return list_leases_at_revision(self.store)

    def _to_update(self, event, header_revision: int) -> LeaseUpdate | None:
        return to_update(event)


def watch_leases(store: EtcdStore, deliver: Callable[[LeaseUpdate], None], **kwargs) -> LeaseWatch:
    """Start following the leases; ``deliver`` gets a snapshot first, then changes."""
    watch = LeaseWatch(store, deliver, **kwargs)  # type: ignore[arg-type]  # ListWatch delivers what _list/_to_update make
    watch.start()
    return watch
