"""At start, before the CNI socket opens: repair what an agent killed during ADD left.

ADD writes a pod's IP record with a claim marker before the kernel work and removes the
marker after (ipam/allocator.py); both ends of the veth carry the attachment's
mark (pod_network.py) from the moment they exist. A ``kill -9`` between those steps
leaves one of these, and this module turns each into "nothing" or "a complete pod":

======================================  ==========================================
what is found                           what is done
======================================  ==========================================
claimed record, no marked veth          release the record
claimed record, marked veth, pod        mark it complete (the runtime may not have
complete (address, route, up)           heard the answer: its retry ADD or DEL
                                        finds a consistent pod)
claimed record, marked veth, pod        remove the veth, release the record
half-made (e.g. eth0 without address)
marked veth whose mark names no record  remove the veth
complete record (no claim marker)       nothing (its pod is the runtime's: DEL, GC)
======================================  ==========================================

Only devices with our mark are ever removed, and only records of this node's subnet
that name this node. A record whose namespace the agent cannot see is left alone.
The plan is a pure function (``plan_repairs``); ``reconcile`` gathers and applies it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from minikubenet.ipam.allocator import Allocation, Owner, PodIPAllocator
from minikubenet.linux.pod_plumbing import PodPlumbing
from minikubenet.pod_network import LinkSeen, PodLink, ownership_mark, plan_attachment
from minikubenet.store.etcd import StoreError

log = logging.getLogger(__name__)


@dataclass
class Repairs:
    release: list[Allocation] = field(default_factory=list)
    remove: list[LinkSeen] = field(default_factory=list)
    complete: list[Allocation] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)


def plan_repairs(
    records: list[Allocation],
    claimed: set,
    marked_veths: list[LinkSeen],
    pod_complete: dict,
    node_name: str,
    marks_elsewhere: frozenset[str] | None = frozenset(),
) -> Repairs:
    """``records``: every record of the node's subnet; ``claimed``: the IPs among them
    whose claim marker names that same record. ``pod_complete``: record IP -> True
    (complete), False (half-made) or None (cannot tell), for the claimed records whose
    veth exists. ``marks_elsewhere``: the marks of attachments with a record in another
    subnet (the node's previous lease, say); None when they could not be read, and then
    a marked veth without a record here is kept. Any record keeps its veth; only claimed
    records of this node (or of no node) are acted on, so a renamed node or a subnet's
    earlier owner loses nothing."""
    by_mark = {d.alias: d for d in marked_veths if d.alias not in (marks_elsewhere or ())}
    out = Repairs()
    for a in records:
        veth = by_mark.pop(ownership_mark(a.owner.container_id, a.owner.ifname), None)
        if a.ip not in claimed or a.owner.node not in ("", node_name):
            continue
        if veth is None:
            out.release.append(a)
            continue
        state = pod_complete.get(a.ip)
        if state is True:
            out.complete.append(a)
        elif state is False:
            out.remove.append(veth)
            out.release.append(a)
        else:
            out.left_alone.append(
                f"{a.ip} of {a.owner.container_id}/{a.owner.ifname}: its namespace "
                f"{a.owner.netns or '(none)'} cannot be looked at; left claimed"
            )
    if marks_elsewhere is not None:
        out.remove.extend(by_mark.values())  # ours, but no record names them: half-made
    return out


def reconcile(allocator: PodIPAllocator, node_name: str, mtu: int, kernel: PodPlumbing) -> Repairs:
    """Gather, plan, apply. A failing etcd skips it all (nothing is removed on a guess).
    ``kernel``: the pod plumbing the CNI handler uses (linux/pod_plumbing.py)."""
    try:
        records = allocator.list()
        claims = allocator.claims()
    except StoreError as e:
        log.error("start-up repair skipped: cannot list the pod IP records (%s)", e)
        return Repairs()
    try:
        here = {a.record for a in records}
        elsewhere = frozenset(
            ownership_mark(o.container_id, o.ifname)
            for raw in allocator.store.list_all_pod_ips().values()
            if raw not in here and (o := Owner.from_record(raw)) is not None
        )
    except StoreError as e:
        # e.g. etcd's RBAC lets this agent read only its own subnet's records: then a
        # marked veth without a record here may have one elsewhere, and is kept
        log.warning("start-up repair: cannot read other subnets' records (%s); veths without a record are kept", e)
        elsewhere = None
    veths = kernel.marked_host_veths()
    marks = {d.alias for d in veths}
    claimed = {a.ip for a in records if claims.get(a.ip) == a.record}
    pod_complete = {}
    for a in records:
        o = a.owner
        if a.ip in claimed and o.node in ("", node_name) and ownership_mark(o.container_id, o.ifname) in marks:
            plan = plan_attachment(PodLink(o.container_id, o.ifname, o.netns, mtu), a.ip, allocator.subnet)
            pod_complete[a.ip] = kernel.is_complete(plan)
    repairs = plan_repairs(records, claimed, veths, pod_complete, node_name, elsewhere)
    for device in repairs.remove:
        if kernel.delete_marked(device):
            log.info("start-up repair: removed half-made %s (%s)", device.name, device.alias)
    try:
        for a in repairs.release:
            if allocator.release(a):
                log.info(
                    "start-up repair: released %s, claimed by %s/%s and never completed",
                    a.ip,
                    a.owner.container_id,
                    a.owner.ifname,
                )
        for a in repairs.complete:
            allocator.complete(a)
            log.info(
                "start-up repair: %s of %s/%s is a complete pod; claim marked complete",
                a.ip,
                a.owner.container_id,
                a.owner.ifname,
            )
    except StoreError as e:
        # what is left stays claimed: the next start, a retry ADD, DEL or GC finishes it
        log.error("start-up repair: etcd failed midway (%s)", e)
    for note in repairs.left_alone:
        log.warning("start-up repair: %s", note)
    return repairs
