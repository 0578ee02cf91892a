"""Plumb one pod into its node: a veth pair, the pod's address and default route.

Attaching a pod applies a ``PodAttachment`` plan (pod_network.py) in eight netlink
requests, sent in four batches (rtnl_batch.py: one round trip each, no per-request Python machinery,
since every pod start waits for them):

1. node: look up the bridge (its index and MAC);
2. node: create the veth pair in one request: the host end already a port of the bridge
   and up, the peer created directly inside the pod's namespace under its final name
   (IFLA_NET_NS_FD on the peer), both ends with the overlay MTU and with MACs we chose
   (so nothing has to be read back); and hairpin mode on the host end's bridge port (a
   pod may reach itself through a Service). If the names exist from an earlier attempt,
   remove those leftovers and create again;
3. pod: bring ``lo`` up, find the peer's index;
4. pod: bring the peer up, give it the address, add the default route via the
   bridge's address.

Steps 1-2 (``create_pair``) need no IP, so the agent runs them while etcd is still
recording the pod's IP; steps 3-4 are ``configure_pod``.

``create_pair`` returns the MACs for the CNI result. ``detach`` is best effort and repeatable:
deleting either end of a veth pair deletes both, and a pod namespace that is gone
already took its end with it (SPEC §2 DEL: "return success when the resources are
already gone"). ``inspect`` lists what differs from the plan, for CHECK.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from minikubenet.linux import rtnl_batch
from minikubenet.linux.netns import NetnsNotFound, iproute_in, socket_in
from minikubenet.pod_network import PodAttachment, PodLink


LOOPBACK_INDEX = 1   # "lo" is always the first device of a network namespace


@dataclass(frozen=True)
class AttachedMacs:
    bridge: str
    host_veth: str
    pod: str


def _lookup(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _delete(ipr: IPRoute, name: str) -> bool:
    index = _lookup(ipr, name)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise
    return True


def veth_macs(link: PodLink) -> tuple[str, str]:
    """Stable, locally administered unicast MACs for the two ends, derived from the
    attachment: set at creation, so no read-back is needed for the CNI result, and a
    re-created pod interface keeps the MAC its neighbours have cached."""
    digest = hashlib.sha256(f"{link.container_id}/{link.ifname}".encode()).digest()
    def mac(tag: int) -> str:
        octets = [0x0a | (tag << 4)] + list(digest[:5])   # 0x?a: bit 1 set (local), bit 0 clear (unicast)
        return ":".join(f"{o:02x}" for o in octets)
    return mac(0), mac(1)


def create_pair(host: IPRoute, link: PodLink) -> AttachedMacs:
    """Steps 1-2 (no IP needed): look up the bridge; create the pair and set hairpin.
    ``host`` (pyroute2) is only used to clear leftovers of an earlier attempt."""
    node = rtnl_batch.open_socket()
    try:
        try:
            [bridge] = rtnl_batch.send_batch(node, [rtnl_batch.get_link(link.bridge)])
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise
            raise RuntimeError(f"bridge {link.bridge} does not exist on this node") from None
        bridge_index, bridge_mac = rtnl_batch.link_index(bridge), rtnl_batch.link_mac(bridge)
        host_mac, pod_mac = veth_macs(link)
        try:
            netns_fd = os.open(link.netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise NetnsNotFound(f"network namespace {link.netns}: {e.strerror}") from None
        try:
            # Hairpin: let the bridge send a frame back out of the port it came in on,
            # so a pod reaching its own Service (DNAT back to itself) gets its answer
            # (the reference bridge plugin's hairpinMode, which flannel turns on).
            create = [rtnl_batch.create_veth(link.host_veth, link.ifname, netns_fd, link.mtu, host_mac,
                                             pod_mac, bridge_index),
                      rtnl_batch.set_hairpin(link.host_veth)]
            try:
                rtnl_batch.send_batch(node, create)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
                # leftovers of an earlier attempt (a repeated ADD): remove, then create anew
                _delete(host, link.host_veth)
                _delete_in(link.netns, link.ifname)
                rtnl_batch.send_batch(node, create)
        finally:
            os.close(netns_fd)
    finally:
        node.close()
    return AttachedMacs(bridge=bridge_mac, host_veth=host_mac, pod=pod_mac)


def configure_pod(plan: PodAttachment) -> None:
    """Steps 3-4, inside the pod: ``lo`` up and find the peer; the peer up, its address,
    the default route via the bridge's address."""
    link = plan.link
    pod = socket_in(link.netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        _, peer = rtnl_batch.send_batch(pod, [rtnl_batch.set_up(LOOPBACK_INDEX, "lo"),
                                              rtnl_batch.get_link(link.ifname)])
        pod_index = rtnl_batch.link_index(peer)
        rtnl_batch.send_batch(pod, [
            rtnl_batch.set_up(pod_index, link.ifname),
            rtnl_batch.add_address(pod_index, str(plan.address.ip), plan.address.network.prefixlen, link.ifname),
            rtnl_batch.replace_default_route(str(plan.gateway), pod_index)])
    finally:
        pod.close()


def _delete_in(netns: str, name: str) -> None:
    pod = iproute_in(netns)
    try:
        _delete(pod, name)
    finally:
        pod.close()


def detach(host: IPRoute, container_id: str, ifname: str, host_veth: str, netns: str | None) -> None:
    """Remove the pod's veth pair if it is still there. Never fails for missing pieces."""
    if _delete(host, host_veth):
        return
    if netns and os.path.exists(netns):
        try:
            pod = iproute_in(netns)
        except NetnsNotFound:
            return
        try:
            _delete(pod, ifname)
        finally:
            pod.close()


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
    elif bridge_index is not None and host.get_links(host_index)[0].get("IFLA_MASTER") != bridge_index:
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
