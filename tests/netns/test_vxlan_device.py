"""The VXLAN overlay against a real kernel: two "nodes" in two network namespaces.

    mkntest-ovl-<r>-a                                   mkntest-ovl-<r>-b
    cni0 10.244.1.1/24 (the "pod" side)                 cni0 10.244.2.1/24
    flannel.1 10.244.1.0/32  ── VXLAN, UDP 8472 ──      flannel.1 10.244.2.0/32
    eth0 192.168.77.1/24  ═══════ veth pair ═══════     eth0 192.168.77.2/24

Each node's flannel.1 is built by ensure_vxlan_device and programmed with the plan for
the other node's lease; a DF-set ping of exactly the overlay MTU must cross. Everything
lives in namespaces this file creates (prefix ``mkntest-ovl-``) and removes again,
also when a test fails. Needs root.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import subprocess
import uuid

import pytest

from minikubenet.linux import overlay_routes, vxlan_device
from minikubenet.linux.netns import iproute_in
from minikubenet.linux.overlay_routes import NetlinkKernel
from minikubenet.linux.vxlan_device import VxlanDeviceError, ensure_vxlan_address, ensure_vxlan_device, vxlan_attrs
from minikubenet.overlay import KernelState, reconcile
from minikubenet.overlay.controller import HostGwBackend, OverlayController, VxlanBackend
from minikubenet.overlay.host_gw import plan_peer as host_gw_plan
from minikubenet.overlay.vxlan import device_spec, plan_peer, vtep_address
from minikubenet.store.lease_watch import LeaseDelete, LeasePut
from minikubenet.subnet_lease_record import SubnetLeaseRecord
from minikubenet.waiting import wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
UNDERLAY = ipaddress.IPv4Network("192.168.77.0/24")


def sh(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=check)


class Node:
    """One node namespace: its netlink socket, underlay and (once built) its VXLAN device."""

    def __init__(self, name: str, public_ip: str, subnet: str):
        self.name = name
        self.path = f"/run/netns/{name}"
        self.public_ip = public_ip
        self.subnet = ipaddress.IPv4Network(subnet)
        self.ipr = iproute_in(self.path)
        self.mac = None

    def index(self, ifname: str) -> int:
        return self.ipr.link_lookup(ifname=ifname)[0]

    def spec(self, **overrides):
        return dataclasses.replace(device_spec(1, self.public_ip, self.index("eth0"), 1500), **overrides)

    def build_vxlan(self) -> int:
        # as the agent does it: the device first (its MAC goes into the lease), then the address
        index, self.mac = ensure_vxlan_device(self.ipr, self.spec(), netns=self.path)
        ensure_vxlan_device(self.ipr, self.spec(), netns=self.path, mac=self.mac, subnet=self.subnet, network=NETWORK)
        return index

    def lease(self, backend_type: str = "vxlan") -> SubnetLeaseRecord:
        data = {"VNI": 1, "VtepMAC": self.mac} if backend_type == "vxlan" else {}
        return SubnetLeaseRecord(self.subnet, self.public_ip, backend_type, data)

    def state(self, route_devs=("flannel.1",)) -> KernelState:
        return overlay_routes.read_state(self.ipr, "flannel.1", route_devs, NETWORK)


@pytest.fixture
def nodes():
    """Two node namespaces joined by a veth pair; both removed afterwards, whatever happens."""
    prefix = f"mkntest-ovl-{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}-a", f"{prefix}-b"]
    made: list[str] = []
    built: list[Node] = []
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
            made.append(name)
        a = Node(names[0], "192.168.77.1", "10.244.1.0/24")
        b = Node(names[1], "192.168.77.2", "10.244.2.0/24")
        built += [a, b]
        fd = os.open(b.path, os.O_RDONLY)
        try:
            a.ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd})
        finally:
            os.close(fd)
        for node in (a, b):
            eth0 = node.index("eth0")
            node.ipr.addr("add", index=eth0, address=node.public_ip, prefixlen=24)
            node.ipr.link("set", index=eth0, state="up")
            node.ipr.link("set", index=node.index("lo"), state="up")
            # the "pods": the node subnet's gateway address on a bridge, as the agent has it
            node.ipr.link("add", ifname="cni0", kind="bridge")
            node.ipr.addr(
                "add",
                index=node.index("cni0"),
                address=str(node.subnet.network_address + 1),
                prefixlen=node.subnet.prefixlen,
            )
            node.ipr.link("set", index=node.index("cni0"), state="up")
        yield a, b
    finally:
        for node in built:
            node.ipr.close()
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


def program_each_other(a: Node, b: Node) -> None:
    overlay_routes.apply_plan(a.ipr, plan_peer(b.lease()))
    overlay_routes.apply_plan(b.ipr, plan_peer(a.lease()))


def ping(src: Node, dst_ip: str, size: int) -> subprocess.CompletedProcess:
    return sh(
        src.name,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "-M",
        "do",
        "-s",
        str(size),
        "-I",
        str(src.subnet.network_address + 1),
        dst_ip,
        check=False,
    )


def tx_packets(node: Node, ifname: str) -> int:
    return node.ipr.get_links(node.index(ifname))[0].get("IFLA_STATS64")["tx_packets"]


# -- the device -------------------------------------------------------------------------------


def test_device_matches_flannel(nodes):
    a, _ = nodes
    index = a.build_vxlan()
    link = a.ipr.get_links(index)[0]
    attrs = vxlan_attrs(link)
    assert attrs["kind"] == "vxlan" and attrs["vni"] == 1 and attrs["port"] == 8472
    assert attrs["local"] == "192.168.77.1" and attrs["link"] == a.index("eth0")
    assert attrs["learning"] is False and not attrs["group"]
    assert link.get("IFLA_MTU") == 1450 and link.get("IFLA_OPERSTATE") in ("UNKNOWN", "UP")
    first_octet = int(a.mac.split(":")[0], 16)
    assert first_octet & 0x02 and not first_octet & 0x01  # locally administered unicast
    addrs = [(x.get("IFA_ADDRESS"), x["prefixlen"]) for x in a.ipr.get_addr(index=index, family=2)]
    assert addrs == [("10.244.1.0", 32)]
    assert sh(a.name, "cat", "/proc/sys/net/ipv6/conf/flannel.1/accept_ra").stdout.strip() == "0"


def test_compatible_device_is_reused(nodes):
    a, _ = nodes
    index, mac = ensure_vxlan_device(a.ipr, a.spec(), netns=a.path)
    again = ensure_vxlan_device(a.ipr, a.spec(), netns=a.path)
    assert again == (index, mac)


def test_compatible_device_gets_mtu_fixed(nodes):
    a, _ = nodes
    index, _ = ensure_vxlan_device(a.ipr, a.spec(), netns=a.path)
    a.ipr.link("set", index=index, mtu=1300)
    assert ensure_vxlan_device(a.ipr, a.spec(), netns=a.path)[0] == index
    assert a.ipr.get_links(index)[0].get("IFLA_MTU") == 1450


def test_incompatible_device_is_recreated(nodes, caplog):
    a, _ = nodes
    old_index, old_mac = ensure_vxlan_device(a.ipr, a.spec(port=4789), netns=a.path)
    with caplog.at_level(logging.WARNING, logger=vxlan_device.__name__):
        index, mac = ensure_vxlan_device(a.ipr, a.spec(), netns=a.path)
    assert index != old_index and mac != old_mac
    assert "port: 8472 vs 4789" in caplog.text
    assert vxlan_attrs(a.ipr.get_links(index)[0])["port"] == 8472


def test_other_kind_of_device_is_replaced(nodes, caplog):
    a, _ = nodes
    a.ipr.link("add", ifname="flannel.1", kind="bridge")
    with caplog.at_level(logging.WARNING, logger=vxlan_device.__name__):
        index, _ = ensure_vxlan_device(a.ipr, a.spec(), netns=a.path)
    assert "link type: vxlan vs bridge" in caplog.text
    assert vxlan_attrs(a.ipr.get_links(index)[0])["kind"] == "vxlan"


def test_vni_taken_by_another_device_is_a_clear_error(nodes):
    a, _ = nodes
    a.ipr.link(
        "add",
        ifname="vx-other",
        kind="vxlan",
        vxlan_id=1,
        vxlan_local=a.public_ip,
        vxlan_link=a.index("eth0"),
        vxlan_port=8472,
    )
    with pytest.raises(VxlanDeviceError, match="vx-other already uses VNI 1"):
        ensure_vxlan_device(a.ipr, a.spec(), netns=a.path)
    assert not a.ipr.link_lookup(ifname="flannel.1")


def test_failure_after_create_leaves_no_device(nodes, monkeypatch):
    a, _ = nodes

    def broken(*args):
        raise PermissionError("read-only /proc/sys")

    monkeypatch.setattr(vxlan_device, "_write_proc_sys", broken)
    with pytest.raises(VxlanDeviceError, match="could not configure flannel.1"):
        ensure_vxlan_device(a.ipr, a.spec(), netns=a.path)
    assert not a.ipr.link_lookup(ifname="flannel.1")


def test_the_published_mac_is_put_back(nodes):
    a, _ = nodes
    index = a.build_vxlan()
    a.ipr.link("set", index=index, address="02:00:00:00:00:01")
    assert ensure_vxlan_device(a.ipr, a.spec(), netns=a.path, mac=a.mac) == (index, a.mac)


def test_stale_address_inside_the_network_is_removed(nodes):
    a, _ = nodes
    index = a.build_vxlan()
    a.ipr.addr("add", index=index, address="10.244.9.0", prefixlen=32)  # an earlier subnet
    a.ipr.addr("add", index=index, address="172.31.0.1", prefixlen=32)  # not ours to judge
    ensure_vxlan_address(a.ipr, index, vtep_address(a.subnet), NETWORK)
    addrs = {x.get("IFA_ADDRESS") for x in a.ipr.get_addr(index=index, family=2)}
    assert addrs == {"10.244.1.0", "172.31.0.1"}


# -- peers --------------------------------------------------------------------------------------


def test_ping_crosses_the_vxlan_at_full_mtu(nodes):
    a, b = nodes
    a.build_vxlan(), b.build_vxlan()
    program_each_other(a, b)
    before = tx_packets(a, "flannel.1")
    # 1422 bytes of ICMP payload + 8 ICMP + 20 IP = 1450: exactly the overlay MTU, DF set
    done = ping(a, "10.244.2.1", 1422)
    assert done.returncode == 0, done.stdout + done.stderr
    assert tx_packets(a, "flannel.1") > before  # it went through the tunnel
    too_big = ping(a, "10.244.2.1", 1423)
    assert too_big.returncode != 0  # one byte more does not fit


def test_peer_entries_are_exactly_the_plan(nodes):
    a, b = nodes
    a.build_vxlan(), b.build_vxlan()
    plan = plan_peer(b.lease())
    overlay_routes.apply_plan(a.ipr, plan)
    assert a.state() == KernelState(frozenset({plan.neigh}), frozenset({plan.fdb}), frozenset({plan.route}))
    assert reconcile([plan], a.state()) == ([], [])
    overlay_routes.apply_plan(a.ipr, plan)  # replace: applying twice is fine
    assert reconcile([plan], a.state()) == ([], [])


def test_removing_a_peer_removes_neigh_fdb_and_route(nodes):
    a, b = nodes
    a.build_vxlan(), b.build_vxlan()
    program_each_other(a, b)
    plan = plan_peer(b.lease())
    assert overlay_routes.remove_plan(a.ipr, plan) == []
    assert a.state() == KernelState()
    assert ping(a, "10.244.2.1", 56).returncode != 0
    assert overlay_routes.remove_plan(a.ipr, plan) == []  # already gone is fine


def test_failed_step_is_undone(nodes):
    a, b = nodes
    a.build_vxlan(), b.build_vxlan()
    plan = plan_peer(b.lease())
    # With flannel.1 down the kernel takes the neighbour and FDB entries but refuses
    # the onlink route (ENETDOWN): the two entries before it must be rolled back.
    a.ipr.link("set", index=a.index("flannel.1"), state="down")
    with pytest.raises(overlay_routes.OverlayRouteError, match="could not add route"):
        overlay_routes.apply_plan(a.ipr, plan)
    assert a.state() == KernelState()


class FakeStore:
    def __init__(self, leases):
        self.leases = leases

    def list_leases(self):
        return list(self.leases)


class CapturedWatch:
    """Stands in for store/lease_watch.py: the test delivers the updates itself."""

    last = None

    def __init__(self, store, deliver):
        self.deliver = deliver
        CapturedWatch.last = self

    def stop(self):
        pass


def eventually(check, timeout=5.0):
    assert wait_until(check, timeout), "timed out"


def kernel_in(node: Node):
    # built on the controller's worker thread, with a netlink socket of its own
    return lambda: NetlinkKernel(iproute_in(node.path), NETWORK)


def vxlan_controller(a: Node, leases) -> OverlayController:
    spec = a.spec()  # on this thread: a.ipr belongs to it

    def ensure_device(ipr):
        ensure_vxlan_device(ipr, spec, netns=a.path, mac=a.mac, subnet=a.subnet, network=NETWORK)

    return OverlayController(
        FakeStore(leases),
        a.subnet,
        VxlanBackend(1, ensure_device=ensure_device),
        kernel_in(a),
        watch=CapturedWatch,
        resync_interval=3600,
    )


def test_controller_follows_the_watch(nodes):
    a, b = nodes
    a.build_vxlan(), b.build_vxlan()
    overlay_routes.apply_plan(b.ipr, plan_peer(a.lease()))
    ctl = vxlan_controller(a, [a.lease(), b.lease()])
    ctl.start()
    try:
        assert ping(a, "10.244.2.1", 1422).returncode == 0  # programmed before start() returned
        watch = CapturedWatch.last
        watch.deliver(LeaseDelete(b.subnet))  # B's lease expired
        eventually(lambda: a.state() == KernelState())
        watch.deliver(LeasePut(b.lease()))  # B is back
        eventually(lambda: reconcile([plan_peer(b.lease())], a.state()) == ([], []))
        assert ping(a, "10.244.2.1", 1422).returncode == 0
    finally:
        ctl.stop()


def test_controller_resync_repairs_hand_made_changes(nodes):
    a, b = nodes
    a.build_vxlan(), b.build_vxlan()
    overlay_routes.apply_plan(b.ipr, plan_peer(a.lease()))
    ctl = vxlan_controller(a, [a.lease(), b.lease()])
    ctl.start()
    try:
        # by hand: delete the neighbour, add a stray FDB entry and a stray route
        sh(a.name, "ip", "neigh", "del", "10.244.2.0", "dev", "flannel.1")
        sh(a.name, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "flannel.1", "dst", "192.168.77.9")
        sh(a.name, "ip", "route", "add", "10.244.7.0/24", "via", "10.244.7.0", "dev", "flannel.1", "onlink")
        to_add, to_remove = ctl.resync_now()
        assert [str(e) for e in to_add] == [str(plan_peer(b.lease()).neigh)]
        assert {type(e).__name__ for e in to_remove} == {"Fdb", "Route"}
        assert reconcile([plan_peer(b.lease())], a.state()) == ([], [])
        assert ping(a, "10.244.2.1", 1422).returncode == 0
        # by hand: delete flannel.1 itself; it comes back with the MAC peers know
        sh(a.name, "ip", "link", "del", "flannel.1")
        ctl.resync_now()
        assert a.ipr.get_links(a.index("flannel.1"))[0].get("IFLA_ADDRESS") == a.mac
        assert ping(a, "10.244.2.1", 1422).returncode == 0
    finally:
        ctl.stop()


def test_host_gw_routes_via_the_peer(nodes):
    a, b = nodes
    for node, peer in ((a, b), (b, a)):
        plan = host_gw_plan(
            peer.lease("host-gw"), "eth0", overlay_routes.connected_networks(node.ipr, node.index("eth0"))
        )
        overlay_routes.apply_plan(node.ipr, plan)
    assert ping(a, "10.244.2.1", 1472).returncode == 0  # no encapsulation: the full 1500
    state = overlay_routes.read_state(a.ipr, None, ["eth0"], NETWORK)
    assert [str(r) for r in state.routes] == ["route 10.244.2.0/24 via 192.168.77.2 dev eth0"]
    ctl = OverlayController(
        FakeStore([b.lease("host-gw")]),
        a.subnet,
        HostGwBackend("eth0", [UNDERLAY]),
        kernel_in(a),
        watch=CapturedWatch,
        resync_interval=3600,
    )
    ctl.start()
    try:
        assert ctl.resync_now() == ([], [])
    finally:
        ctl.stop()
