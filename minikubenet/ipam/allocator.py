"""Pod IP allocation over etcd: one key per IP, never two owners.

An IP belongs to whoever created its key ``<project>/ipam/<subnet>/<ip>``; the key is
created with a compare-and-create transaction (``version == 0``), so of two ADDs that
race for one address, on one node or on two, exactly one wins and the other moves on
to the next candidate. The record names its owner (container ID + interface, as
host-local does, plus node and pod name), so DEL and GC can find it, and release is a
compare-and-delete on that exact record.

Inside one agent a lock keeps concurrent ADDs from all trying the same candidate
first; the transaction is what makes it safe, the lock only makes it fast.

A record is crash-consistent: CNI ADD writes it as claimed (with the container ID,
interface, namespace path and the pod interface's MAC) before the kernel work, and marks
it complete after it. "Claimed" is a second key written in the same transaction as the
record (store/keys.py ``pod_ip_claim``), and "complete" deletes it: the record itself is
written once, so its bytes stay what a DEL compares before deleting. An agent killed in
between leaves a claim that its next start checks against the kernel (agent/reconcile.py).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from dataclasses import dataclass

from minikubenet.ipam import ranges
from minikubenet.store.etcd import EtcdStore

log = logging.getLogger(__name__)


class SubnetFull(Exception):
    pass


@dataclass(frozen=True)
class Owner:
    """Who holds a pod IP. (container_id, ifname) is the identity; the rest is for people."""

    container_id: str
    ifname: str
    node: str = ""
    network: str = ""
    netns: str = ""
    pod_namespace: str = ""
    pod_name: str = ""
    mac: str = ""  # the pod interface's MAC (main mode; in IPAM mode the caller makes it)

    def to_record(self) -> bytes:
        doc = {
            "containerID": self.container_id,
            "ifname": self.ifname,
            "node": self.node,
            "network": self.network,
            "netns": self.netns,
        }
        if self.mac:
            doc["mac"] = self.mac
        if self.pod_namespace:
            doc["podNamespace"] = self.pod_namespace
        if self.pod_name:
            doc["podName"] = self.pod_name
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_record(cls, raw: bytes) -> Owner | None:
        try:
            doc = json.loads(raw)
            return cls(
                container_id=doc["containerID"],
                ifname=doc["ifname"],
                node=doc.get("node", ""),
                network=doc.get("network", ""),
                netns=doc.get("netns", ""),
                pod_namespace=doc.get("podNamespace", ""),
                pod_name=doc.get("podName", ""),
                mac=doc.get("mac", ""),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass(frozen=True)
class Allocation:
    ip: ipaddress.IPv4Address
    owner: Owner
    record: bytes  # exactly what is stored, for the compare-and-delete


class PodIPAllocator:
    """Allocates the IPs of one node subnet.

    It keeps a copy of the subnet's records in memory, read from etcd once, so an ADD
    costs one etcd round trip (the transaction) instead of a listing plus the
    transaction. The copy is only a hint for picking candidates: etcd stays the truth.
    A transaction that finds an address taken, or a lookup that misses, re-reads it.
    """

    def __init__(self, store: EtcdStore, subnet: ipaddress.IPv4Network):
        self.store = store
        self.subnet = subnet
        self._lock = threading.Lock()
        self._last: ipaddress.IPv4Address | None = None  # round-robin cursor (host-local's last_reserved_ip)
        self._known: dict[ipaddress.IPv4Address, bytes] | None = None

    def _reload(self) -> dict[ipaddress.IPv4Address, bytes]:
        self._known = self.store.list_pod_ips(self.subnet)
        return self._known

    def _records(self) -> dict[ipaddress.IPv4Address, bytes]:
        return self._known if self._known is not None else self._reload()

    @staticmethod
    def _held_by(records, container_id: str, ifname: str) -> Allocation | None:
        for ip, raw in records.items():
            owner = Owner.from_record(raw)
            if owner and (owner.container_id, owner.ifname) == (container_id, ifname):
                return Allocation(ip, owner, raw)
        return None

    def list(self) -> list[Allocation]:
        """Every allocation of the subnet, read from etcd (GC and tools need the truth)."""
        with self._lock:
            records = self._reload()
        out = []
        for ip, raw in sorted(records.items()):
            owner = Owner.from_record(raw)
            if owner:
                out.append(Allocation(ip, owner, raw))
        return out

    def find(self, container_id: str, ifname: str) -> Allocation | None:
        with self._lock:
            found = self._held_by(self._records(), container_id, ifname)
            if found is None:  # a miss may be a stale copy: ask etcd before saying "none"
                found = self._held_by(self._reload(), container_id, ifname)
            return found

    def allocate(self, owner: Owner, claimed: bool = False) -> tuple[Allocation, bool]:
        """The IP for ``owner``: its existing one (False) or a newly claimed one (True).
        ``claimed``: write the claim marker with a new record (``complete`` removes it)."""
        with self._lock:
            if self._held_by(self._records(), owner.container_id, owner.ifname) is not None:
                # a repeated ADD (rare): confirm against etcd, then hand out the same IP again
                existing = self._held_by(self._reload(), owner.container_id, owner.ifname)
                if existing is not None:
                    return existing, False
            record = owner.to_record()
            for ip in ranges.candidates(self.subnet, after=self._last):
                if ip in self._records():
                    continue
                if self.store.create_pod_ip(self.subnet, ip, record, claimed):
                    self._last = ip
                    self._records()[ip] = record
                    return Allocation(ip, owner, record), True
                log.debug("%s was taken meanwhile; re-reading the subnet's records", ip)
                self._reload()
            raise SubnetFull(
                f"no free pod IP in {self.subnet}: all {ranges.pod_capacity(self.subnet)} addresses are taken"
            )

    def in_use(self) -> int:
        """How many of the subnet's addresses have a record, from the in-memory copy
        (kept current by every allocate and release of this agent; read from etcd the
        first time): what a metrics scrape may cost, no etcd round trip."""
        with self._lock:
            return len(self._records())

    def capacity(self) -> int:
        return ranges.pod_capacity(self.subnet)

    def claims(self) -> dict[ipaddress.IPv4Address, bytes]:
        """The subnet's claim markers (ADDs not finished), read from etcd."""
        return self.store.list_pod_ip_claims(self.subnet)

    def complete(self, allocation: Allocation) -> bool:
        """Mark ``allocation``'s pod complete: remove its claim marker (False if there was
        none: complete already, or released meanwhile)."""
        return self.store.complete_pod_ip(self.subnet, allocation.ip, allocation.record)

    def release(self, allocation: Allocation) -> bool:
        released = self.store.delete_pod_ip(self.subnet, allocation.ip, allocation.record)
        with self._lock:
            if self._known is not None and self._known.get(allocation.ip) == allocation.record:
                del self._known[allocation.ip]
        return released
