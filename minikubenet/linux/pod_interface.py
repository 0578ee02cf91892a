"""Plumb one pod into its node: a veth pair, the pod's address and default route.

``attach`` applies a ``PodAttachment`` plan (pod_network.py) in seven netlink requests:

1. create the veth pair in one request: the host end already a port of the bridge and
   up, the peer created directly inside the pod's namespace under its final name
   (IFLA_NET_NS_FD on the peer), both ends with the overlay MTU and with MACs we chose
   (so nothing has to be read back); if the names exist from an earlier attempt,
   remove those leftovers and create again;
2. host end: hairpin mode on its bridge port (a pod may reach itself through a Service);
3. pod end: find it, give it the address, bring it and ``lo`` up, add the default
   route via the bridge's address.

It returns the MACs for the CNI result. ``detach`` is best effort and repeatable:
deleting either end of a veth pair deletes both, and a pod namespace that is gone
already took its end with it (SPEC §2 DEL: "return success when the resources are
already gone"). ``inspect`` lists what differs from the plan, for CHECK.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from minikubenet.linux.netns import NetnsNotFound, iproute_in
from minikubenet.pod_network import PodAttachment


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


def _mac(ipr: IPRoute, index: int) -> str:
    return ipr.get_links(index)[0].get("IFLA_ADDRESS")


def veth_macs(plan: PodAttachment) -> tuple[str, str]:
    """Stable, locally administered unicast MACs for the two ends, derived from the
    attachment: set at creation, so no read-back is needed for the CNI result, and a
    re-created pod interface keeps the MAC its neighbours have cached."""
    digest = hashlib.sha256(f"{plan.container_id}/{plan.ifname}".encode()).digest()
    def mac(tag: int) -> str:
        octets = [0x0a | (tag << 4)] + list(digest[:5])   # 0x?a: bit 1 set (local), bit 0 clear (unicast)
        return ":".join(f"{o:02x}" for o in octets)
    return mac(0), mac(1)


def attach(host: IPRoute, plan: PodAttachment) -> AttachedMacs:
    """Seven netlink requests: create the pair (host end already on the bridge and up,
    the peer already inside the pod), hairpin on, find the peer, address, up, lo, route."""
    try:
        # link("get"): one RTM_GETLINK for this name (get_links would dump every link)
        bridge = host.link("get", ifname=plan.bridge)[0]
    except NetlinkError:
        raise RuntimeError(f"bridge {plan.bridge} does not exist on this node") from None
    bridge_index, bridge_mac = bridge["index"], bridge.get("IFLA_ADDRESS")
    host_mac, pod_mac = veth_macs(plan)
    pod = iproute_in(plan.netns)
    try:
        netns_fd = os.open(plan.netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            request = dict(ifname=plan.host_veth, kind="veth", mtu=plan.mtu, address=host_mac,
                           master=bridge_index, state="up",
                           peer={"ifname": plan.ifname, "net_ns_fd": netns_fd, "mtu": plan.mtu,
                                 "address": pod_mac})
            try:
                host.link("add", **request)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
                # leftovers of an earlier attempt (a repeated ADD): remove, then create anew
                _delete(host, plan.host_veth)
                _delete(pod, plan.ifname)
                host.link("add", **request)
        finally:
            os.close(netns_fd)
        # Hairpin: let the bridge send a frame back out of the port it came in on, so a
        # pod reaching its own Service (DNAT back to itself) gets its answer (the
        # reference bridge plugin's hairpinMode, which flannel turns on).
        host.link("set", ifname=plan.host_veth, kind="bridge_slave", mode=1)
        pod_index = _lookup(pod, plan.ifname)
        pod.addr("add", index=pod_index, address=str(plan.address.ip), prefixlen=plan.address.network.prefixlen)
        pod.link("set", index=pod_index, state="up")
        pod.link("set", index=LOOPBACK_INDEX, state="up")
        pod.route("replace", dst="0.0.0.0/0", gateway=str(plan.gateway), oif=pod_index)
        return AttachedMacs(bridge=bridge_mac, host_veth=host_mac, pod=pod_mac)
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
    problems = []
    host_index = _lookup(host, plan.host_veth)
    bridge_index = _lookup(host, plan.bridge)
    if bridge_index is None:
        problems.append(f"bridge {plan.bridge} is missing")
    if host_index is None:
        problems.append(f"host veth {plan.host_veth} is missing")
    elif bridge_index is not None and host.get_links(host_index)[0].get("IFLA_MASTER") != bridge_index:
        problems.append(f"host veth {plan.host_veth} is not a port of {plan.bridge}")
    try:
        pod = iproute_in(plan.netns)
    except NetnsNotFound:
        return problems + [f"network namespace {plan.netns} is gone"]
    try:
        pod_index = _lookup(pod, plan.ifname)
        if pod_index is None:
            return problems + [f"interface {plan.ifname} is missing in {plan.netns}"]
        link = pod.get_links(pod_index)[0]
        if link.get("IFLA_MTU") != plan.mtu:
            problems.append(f"{plan.ifname} has MTU {link.get('IFLA_MTU')}, expected {plan.mtu}")
        if link.get("IFLA_OPERSTATE") not in ("UP", "UNKNOWN") and not (link["flags"] & 1):
            problems.append(f"{plan.ifname} is down")
        addrs = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in pod.get_addr(index=pod_index, family=2)}
        if (str(plan.address.ip), plan.address.network.prefixlen) not in addrs:
            problems.append(f"{plan.ifname} lacks address {plan.address}")
        routes = pod.get_routes(family=2, dst_len=0, table=254)
        if not any(r.get("RTA_GATEWAY") == str(plan.gateway) for r in routes):
            problems.append(f"no default route via {plan.gateway} in {plan.netns}")
    finally:
        pod.close()
    return problems
