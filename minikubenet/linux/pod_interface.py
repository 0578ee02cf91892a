"""Plumb one pod into its node: a veth pair, the pod's address and default route.

Attaching a pod applies a ``PodAttachment`` plan (pod_network.py) in netlink requests
sent in a few batches (rtnl_batch.py: one round trip each, no per-request Python
machinery, since every pod start waits for them):

0. pod: list the devices (``survey``), so the agent can refuse a namespace that is a
   node's or whose ``CNI_IFNAME`` belongs to someone else *before* it changes anything;
1. node: look up the bridge (its index and MAC) and whether the host end's name is taken
   (by a leftover of this attachment, removed; by anything else: ``NotOurs``);
2. node: create the veth pair in one request: the host end already a port of the bridge
   and up, the peer created directly inside the pod's namespace under its final name
   (IFLA_NET_NS_FD on the peer), both ends with the overlay MTU and with MACs we chose
   (so nothing has to be read back); then, in the same batch, hairpin mode and the
   ownership mark (alias) on the host end. If the pod end's name exists from an earlier
   attempt of the same attachment (its mark), remove that leftover and create again; a
   name held by anything else is ``NotOurs``;
3. pod: bring ``lo`` up; bring the peer up with its mark; find the peer's index;
4. pod: give the peer its address, add the default route via the bridge's address.

Steps 1-2 (``create_pair``) need no IP, so the agent runs them while etcd is still
recording the pod's IP; steps 3-4 are ``configure_pod``.

``create_pair`` returns the MACs for the CNI result. ``detach`` is best effort and repeatable:
deleting either end of a veth pair deletes both, and a pod namespace that is gone
already took its end with it (SPEC §2 DEL: "return success when the resources are
already gone"); it deletes only a device whose mark names the attachment, and returns
what it left alone. ``inspect`` lists what differs from the plan, for CHECK.
"""

from __future__ import annotations

import errno
import os
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from minikubenet.linux import rtnl_batch
from minikubenet.linux.netns import NetnsNotFound, iproute_in, socket_in
from minikubenet.linux.pod_plumbing import AttachedMacs, NotOurs
from minikubenet.pod_network import MARK_PREFIX, LinkSeen, PodAttachment, PodLink, attachment_macs, ownership_mark, owns

LOOPBACK_INDEX = 1  # "lo" is always the first device of a network namespace


def _lookup(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


ABSENT, DELETED, FOREIGN = "absent", "deleted", "foreign"


def _delete_owned(ipr: IPRoute, name: str, mark: str, expected_mac: str) -> tuple[str, str]:
    """Delete device ``name`` only if it is the one ``mark`` names. Returns (outcome,
    the alias found), outcome ABSENT, DELETED or FOREIGN (then nothing was changed)."""
    index = _lookup(ipr, name)
    if index is None:
        return ABSENT, ""
    try:
        [dev] = ipr.get_links(index)
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return ABSENT, ""
        raise
    alias = dev.get("IFLA_IFALIAS") or ""
    if not owns(mark, alias, dev.get("IFLA_ADDRESS"), expected_mac):
        return FOREIGN, alias
    try:
        ipr.link("del", index=index)
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise
    return DELETED, alias


def veth_macs(link: PodLink) -> tuple[str, str]:
    """The (host, pod) MACs of this attachment (pod_network.attachment_macs)."""
    return attachment_macs(link.container_id, link.ifname)


def open_pod_socket(netns: str) -> socket.socket:
    """A NETLINK_ROUTE socket inside the pod's namespace, for ``survey`` and ``configure_pod``."""
    return socket_in(netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)


def survey(pod: socket.socket) -> list[LinkSeen]:
    """Step 0: the devices of the pod's namespace, with their kinds and marks."""
    return rtnl_batch.dump_links(pod)


def create_pair(host: IPRoute, link: PodLink) -> AttachedMacs:
    """Steps 1-2 (no IP needed): look up the bridge; create the pair, set hairpin and the
    host end's mark. ``host`` (pyroute2) is only used to clear leftovers of an earlier
    attempt of this attachment; a device of another owner raises NotOurs, untouched."""
    node = rtnl_batch.open_socket()
    try:
        # The bridge, and whether the host end's name is taken: in a batch the kernel
        # handles every message even after one failed, so the hairpin-and-mark request
        # below would change a device of that name that someone else made.
        try:
            bridge, taken = rtnl_batch.send_batch(
                node, [rtnl_batch.get_link(link.bridge), rtnl_batch.get_link(link.host_veth, missing_ok=True)]
            )
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise
            raise RuntimeError(f"bridge {link.bridge} does not exist on this node") from None
        bridge_index, bridge_mac = rtnl_batch.link_index(bridge), rtnl_batch.link_mac(bridge)
        host_mac, pod_mac = veth_macs(link)
        if taken is not None:
            # a leftover of this attachment (a repeated ADD, or one cut short) is removed
            outcome, alias = _delete_owned(host, link.host_veth, link.mark, host_mac)
            if outcome == FOREIGN:
                raise NotOurs(
                    f"{link.host_veth} already exists on the node and is not this attachment's (alias {alias!r})"
                )
        try:
            netns_fd = os.open(link.netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise NetnsNotFound(f"network namespace {link.netns}: {e.strerror}") from None
        try:
            # Hairpin: let the bridge send a frame back out of the port it came in on,
            # so a pod reaching its own Service (DNAT back to itself) gets its answer
            # (the reference bridge plugin's hairpinMode, which flannel turns on).
            # The mark rides in the same batch: the kernel handles the whole datagram
            # within one send, so a veth never exists unmarked once the agent goes on.
            create = [
                rtnl_batch.create_veth(
                    link.host_veth, link.ifname, netns_fd, link.mtu, host_mac, pod_mac, bridge_index
                ),
                rtnl_batch.set_hairpin(link.host_veth, alias=link.mark),
            ]
            try:
                rtnl_batch.send_batch(node, create)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
                # the pod end's name is taken: a leftover of this attachment is removed
                # and the pair created anew; anything else is refused, untouched
                pod = iproute_in(link.netns)
                try:
                    outcome, alias = _delete_owned(pod, link.ifname, link.mark, pod_mac)
                finally:
                    pod.close()
                if outcome == FOREIGN:
                    raise NotOurs(f"container veth name provided ({link.ifname}) already exists") from None
                rtnl_batch.send_batch(node, create)
        finally:
            os.close(netns_fd)
    finally:
        node.close()
    return AttachedMacs(bridge=bridge_mac or "", host_veth=host_mac, pod=pod_mac)


def configure_pod(plan: PodAttachment, pod: socket.socket | None = None) -> None:
    """Steps 3-4, inside the pod: ``lo`` up, the peer up with its mark, find the peer;
    the peer's address, the default route via the bridge's address. ``pod``: a socket
    from ``open_pod_socket`` (else one is opened here)."""
    link = plan.link
    own = pod is None
    if pod is None:
        pod = open_pod_socket(link.netns)
    try:
        _, _, peer = rtnl_batch.send_batch(
            pod,
            [
                rtnl_batch.set_up(LOOPBACK_INDEX, "lo"),
                rtnl_batch.set_up_by_name(link.ifname, alias=link.mark),
                rtnl_batch.get_link(link.ifname),
            ],
        )
        pod_index = rtnl_batch.link_index(peer)
        rtnl_batch.send_batch(
            pod,
            [
                rtnl_batch.add_address(pod_index, str(plan.address.ip), plan.address.network.prefixlen, link.ifname),
                rtnl_batch.replace_default_route(str(plan.gateway), pod_index),
            ],
        )
    finally:
        if own:
            pod.close()


def detach(host: IPRoute, container_id: str, ifname: str, host_veth: str, netns: str | None) -> list[str]:
    """Remove the pod's veth pair if it is still there and carries this attachment's
    mark. Never fails for missing pieces. Returns what was left alone because it is
    not ours (for the caller to report; never "fixed" by deleting)."""
    mark = ownership_mark(container_id, ifname)
    host_mac, pod_mac = attachment_macs(container_id, ifname)
    left_alone: list[str] = []
    outcome, alias = _delete_owned(host, host_veth, mark, host_mac)
    if outcome == DELETED:
        return left_alone
    if outcome == FOREIGN:
        left_alone.append(f"node device {host_veth} carries {alias or 'no mark'!r}, not {mark!r}")
    if netns and os.path.exists(netns):
        try:
            pod = iproute_in(netns)
        except NetnsNotFound:
            return left_alone
        try:
            outcome, alias = _delete_owned(pod, ifname, mark, pod_mac)
        finally:
            pod.close()
        if outcome == FOREIGN:
            left_alone.append(f"{ifname} in {netns} carries {alias or 'no mark'!r}, not {mark!r}")
    return left_alone


def inspect(host: IPRoute, plan: PodAttachment) -> list[str]:
    """What is wrong with this attachment now; empty when it matches the plan."""
    want = plan.link
    problems = []
    host_index = _lookup(host, want.host_veth)
    bridge_index = _lookup(host, want.bridge)
    if bridge_index is None:
        problems.append(f"bridge {want.bridge} is missing")
    if host_index is None:
        problems.append(f"host veth {want.host_veth} is missing")
    else:
        host_link = host.get_links(host_index)[0]
        if not owns(want.mark, host_link.get("IFLA_IFALIAS"), host_link.get("IFLA_ADDRESS"), veth_macs(want)[0]):
            problems.append(
                f"host veth {want.host_veth} is not this attachment's "
                f"(alias {host_link.get('IFLA_IFALIAS') or 'none'!r}, expected {want.mark!r})"
            )
        elif bridge_index is not None and host_link.get("IFLA_MASTER") != bridge_index:
            problems.append(f"host veth {want.host_veth} is not a port of {want.bridge}")
    try:
        pod = iproute_in(want.netns)
    except NetnsNotFound:
        return problems + [f"network namespace {want.netns} is gone"]
    try:
        pod_index = _lookup(pod, want.ifname)
        if pod_index is None:
            return problems + [f"interface {want.ifname} is missing in {want.netns}"]
        link = pod.get_links(pod_index)[0]
        if not owns(want.mark, link.get("IFLA_IFALIAS"), link.get("IFLA_ADDRESS"), veth_macs(want)[1]):
            return problems + [
                f"{want.ifname} in {want.netns} is not this attachment's "
                f"(alias {link.get('IFLA_IFALIAS') or 'none'!r}, expected {want.mark!r})"
            ]
        if link.get("IFLA_MTU") != want.mtu:
            problems.append(f"{want.ifname} has MTU {link.get('IFLA_MTU')}, expected {want.mtu}")
        if link.get("IFLA_OPERSTATE") not in ("UP", "UNKNOWN") and not (link["flags"] & 1):
            problems.append(f"{want.ifname} is down")
        addrs = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in pod.get_addr(index=pod_index, family=2)}
        if (str(plan.address.ip), plan.address.network.prefixlen) not in addrs:
            problems.append(f"{want.ifname} lacks address {plan.address}")
        routes = pod.get_routes(family=2, dst_len=0, table=254)
        if not any(r.get("RTA_GATEWAY") == str(plan.gateway) for r in routes):
            problems.append(f"no default route via {plan.gateway} in {want.netns}")
    finally:
        pod.close()
    return problems


def pod_mac(netns: str, ifname: str) -> str | None:
    """The MAC of ``ifname`` in the pod's namespace (None: no such device), for CHECK."""
    pod = iproute_in(netns)
    try:
        index = pod.link_lookup(ifname=ifname)
        return pod.get_links(index[0])[0].get("IFLA_ADDRESS") if index else None
    finally:
        pod.close()


# -- for the agent's start (agent/reconcile.py) ------------------------------------------------


def marked_host_veths() -> list[LinkSeen]:
    """The node's veths that carry an attachment mark: the pods this agent plumbed."""
    node = rtnl_batch.open_socket()
    try:
        return [d for d in rtnl_batch.dump_links(node) if d.kind == "veth" and d.alias.startswith(MARK_PREFIX)]
    finally:
        node.close()


def delete_marked(host: IPRoute, device: LinkSeen) -> bool:
    """Delete a node device only if it still carries the mark it was listed with."""
    outcome, _ = _delete_owned(host, device.name, device.alias, expected_mac="")
    return outcome == DELETED


def is_complete(plan: PodAttachment) -> bool | None:
    """Did ADD finish this attachment inside the pod: its interface (with our mark) up,
    with the address and the default route? None when the namespace cannot be looked
    at from here (its path is not visible to the agent). MTU and the bridge are not
    asked: they are the node's settings, not a sign of a half-made pod."""
    want = plan.link
    if not want.netns or not os.path.exists(want.netns):
        return None
    try:
        pod = iproute_in(want.netns)
    except NetnsNotFound:
        return None
    try:
        index = _lookup(pod, want.ifname)
        if index is None:
            return False
        dev = pod.get_links(index)[0]
        if not owns(want.mark, dev.get("IFLA_IFALIAS"), dev.get("IFLA_ADDRESS"), veth_macs(want)[1]):
            return False
        if not dev["flags"] & 1:  # IFF_UP
            return False
        addrs = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in pod.get_addr(index=index, family=2)}
        if (str(plan.address.ip), plan.address.network.prefixlen) not in addrs:
            return False
        routes = pod.get_routes(family=2, dst_len=0, table=254)
        return any(r.get("RTA_GATEWAY") == str(plan.gateway) for r in routes)
    finally:
        pod.close()
