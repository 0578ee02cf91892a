"""The remote leases a node knows about, as a pure state machine (flannel's LeaseWatcher).

The agent learns about other nodes from etcd in two ways: a full listing of the
``subnets/`` prefix (at start, and again after every watch error), and single watch
events (a put or a delete of one key). Both become the same two events for the
backend: ``Added(lease)`` and ``Removed(lease)``.

Why a cache at all: an etcd delete event carries only the key, no value (flannel
pkg/subnet/etcd/registry.go), but removing a VXLAN peer needs its VtepMAC and
PublicIP to find the FDB entry. So, like flannel's LeaseWatcher (pkg/lease/lease.go),
we remember every remote lease and hand the *cached* record to ``Removed``. A lease
that expires (its etcd TTL runs out) shows up as exactly such a delete.

The node's own lease is never an event: our own subnet lives on ``cni0``, not on the
overlay.

All functions here are pure: they take the cache and return events; ``LeaseCache``
is the small stateful wrapper the controller keeps.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Union

from minikubenet.subnet_lease_record import SubnetLeaseRecord

Subnet = ipaddress.IPv4Network


@dataclass(frozen=True)
class Added:
    lease: SubnetLeaseRecord


@dataclass(frozen=True)
class Removed:
    lease: SubnetLeaseRecord  # the cached record: a delete event has no value


Event = Union[Added, Removed]


def same_attrs(a: SubnetLeaseRecord, b: SubnetLeaseRecord) -> bool:
    """Do two records program the same entries? (A renewal only changes the etcd lease.)"""
    return (a.public_ip, a.backend_type, a.backend_data) == (b.public_ip, b.backend_type, b.backend_data)


def diff(
    known: dict[Subnet, SubnetLeaseRecord], snapshot: list[SubnetLeaseRecord], own_subnet: Subnet | None
) -> list[Event]:
    """Events that turn ``known`` into ``snapshot`` (a full listing of the leases).

    All ``Removed`` come before all ``Added``: if a node moved to a new subnet but kept
    its VtepMAC, removing the old peer after adding the new one would delete the FDB
    entry the new one needs. A lease whose attributes changed (e.g. the node recreated
    its VXLAN device: new VtepMAC) is a ``Removed`` of the old record plus an ``Added``.
    """
    current = {rec.subnet: rec for rec in snapshot if rec.subnet != own_subnet}
    removed, added = [], []
    for subnet, old in sorted(known.items()):
        new = current.get(subnet)
        if new is None or not same_attrs(old, new):
            removed.append(Removed(old))
    for subnet, new in sorted(current.items()):
        before = known.get(subnet)
        if before is None or not same_attrs(before, new):
            added.append(Added(new))
    return removed + added


def on_put(known: dict[Subnet, SubnetLeaseRecord], record: SubnetLeaseRecord, own_subnet: Subnet | None) -> list[Event]:
    """A watch put: a new lease, a changed one, or a renewal that changes nothing."""
    if record.subnet == own_subnet:
        return []
    old = known.get(record.subnet)
    if old is None:
        return [Added(record)]
    if same_attrs(old, record):
        return []
    return [Removed(old), Added(record)]


def on_delete(known: dict[Subnet, SubnetLeaseRecord], subnet: Subnet) -> list[Event]:
    """A watch delete (or TTL expiry): carries only the key, so use the cached record."""
    old = known.get(subnet)
    return [Removed(old)] if old is not None else []


def apply_events(known: dict[Subnet, SubnetLeaseRecord], events: list[Event]) -> dict[Subnet, SubnetLeaseRecord]:
    """The cache after ``events`` (a new dict; ``known`` is not changed)."""
    out = dict(known)
    for ev in events:
        if isinstance(ev, Removed):
            out.pop(ev.lease.subnet, None)
        else:
            out[ev.lease.subnet] = ev.lease
    return out


class LeaseCache:
    """The remote leases as last seen; each method returns the events it caused."""

    def __init__(self, own_subnet: Subnet | None):
        self.own_subnet = own_subnet
        self.known: dict[Subnet, SubnetLeaseRecord] = {}

    def resync(self, snapshot: list[SubnetLeaseRecord]) -> list[Event]:
        return self._advance(diff(self.known, snapshot, self.own_subnet))

    def put(self, record: SubnetLeaseRecord) -> list[Event]:
        return self._advance(on_put(self.known, record, self.own_subnet))

    def delete(self, subnet: Subnet) -> list[Event]:
        return self._advance(on_delete(self.known, subnet))

    def leases(self) -> list[SubnetLeaseRecord]:
        return [self.known[s] for s in sorted(self.known)]

    def _advance(self, events: list[Event]) -> list[Event]:
        self.known = apply_events(self.known, events)
        return events
