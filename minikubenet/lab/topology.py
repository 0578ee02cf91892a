"""The lab's shape, as data: which namespaces, links and addresses a lab consists of.

    ┌──────────── <lab>-sw (the underlay switch: bridge br0) ─────────────┐
    │  etcd        n1            n2            n3   ...  (veth ports)      │
    └───┬───────────┬─────────────┬─────────────┬──────────────────────────┘
        │ eth0      │ eth0        │ eth0        │ eth0     172.31.0.0/24
    <lab>-etcd   <lab>-n1      <lab>-n2      <lab>-n3
    etcd .2      agent .11     agent .12     agent .13
                 cni0 ── pods  cni0 ── pods  cni0 ── pods
                 <lab>-n1-p1 ...

With ``etcd_members`` > 1 (``lab up --etcd-members 3``) every further member is a
namespace of its own on the switch: ``<lab>-etcd2`` at .3 (port etcd2),
``<lab>-etcd3`` at .4, and so on; the first member stays ``<lab>-etcd`` at .2.

With ``racks`` > 1 (``lab up --racks R``) the underlay is routed: every rack is an L2
segment of its own (bridge ``br<r>`` in the switch namespace; rack 0 keeps br0 and the
underlay, rack r the r-th /24 after it), and the router namespace ``<lab>-rt`` joins
them with address .1 in each (its leg ``eth<r>``, switch port ``rt<r>``) - the spine or
ToR of an L3 fabric. Nodes fill the racks in blocks (n1..nk in rack 0, ...); etcd and
the client network stay in rack 0. Every namespace on a rack gets a route to the other
racks' subnets via its rack's router address.

    rack 0: 172.31.0.0/24 (br0)  etcd .2, n1 .11, n2 .12 ─┐
                                                          <lab>-rt .1 / .1  (forwarding)
    rack 1: 172.31.1.0/24 (br1)  n3 .13, n4 .14 ─────────┘

Every name starts with the lab's name, so ``lab down`` (and a person) can tell exactly
what belongs to it. Interfaces are created directly inside the lab's namespaces: the
host's own namespace never gets an address, route or link from the lab.

Pure: building a Topology does nothing; ``cluster.py`` makes it real.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

NAME_RE = re.compile(r"[a-z][a-z0-9]{0,7}\Z")
DEFAULT_UNDERLAY = "172.31.0.0/24"
DEFAULT_POD_NETWORK = "10.244.0.0/16"
POD_PORT = 8080


@dataclass(frozen=True)
class NodeSpec:
    name: str  # "n1"
    netns: str  # "<lab>-n1"
    switch_port: str  # the veth end in the switch namespace
    ip: ipaddress.IPv4Address
    pods: tuple[PodSpec, ...] = ()
    rack: int = 0


@dataclass(frozen=True)
class PodSpec:
    name: str  # "n1-p1"
    netns: str  # "<lab>-n1-p1"
    node: str
    container_id: str


@dataclass(frozen=True)
class EtcdMemberSpec:
    name: str  # "m1"
    netns: str  # "<lab>-etcd" for m1, "<lab>-etcd2" for m2 ...
    switch_port: str  # "etcd", "etcd2" ...
    ip: ipaddress.IPv4Address

    @property
    def client_url(self) -> str:
        return f"https://{self.ip}:2379"


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: tuple[NodeSpec, ...]
    underlay: ipaddress.IPv4Network
    pod_network: ipaddress.IPv4Network
    backend: str = "vxlan"
    mtu: int = 1500
    subnet_len: int = 24
    etcd_ip: ipaddress.IPv4Address = ipaddress.IPv4Address("0.0.0.0")  # the first member's (build_topology sets it)
    etcd_members: int = 1
    racks: int = 1

    @property
    def switch_netns(self) -> str:
        return f"{self.name}-sw"

    @property
    def router_netns(self) -> str:
        return f"{self.name}-rt"

    def rack_net(self, rack: int) -> ipaddress.IPv4Network:
        """Rack 0 is the underlay; rack r the r-th /24 after it."""
        if rack == 0:
            return self.underlay
        return ipaddress.IPv4Network((int(self.underlay.network_address) + rack * 256, 24))

    def bridge(self, rack: int) -> str:
        return f"br{rack}"

    def router_ip(self, rack: int) -> ipaddress.IPv4Address:
        return self.rack_net(rack).network_address + 1

    def other_racks(self, rack: int) -> list[ipaddress.IPv4Network]:
        return [self.rack_net(r) for r in range(self.racks) if r != rack]

    @property
    def etcd_netns(self) -> str:
        return f"{self.name}-etcd"

    @property
    def etcd_endpoint(self) -> str:
        """The first member's client URL (TLS only: the lab's etcd takes clients with a
        certificate of the lab's CA, lab/cluster.py)."""
        return f"https://{self.etcd_ip}:2379"

    def etcd_member_specs(self) -> list[EtcdMemberSpec]:
        return [
            EtcdMemberSpec(
                name=f"m{i}",
                netns=self.etcd_netns + ("" if i == 1 else str(i)),
                switch_port="etcd" + ("" if i == 1 else str(i)),
                ip=self.etcd_ip + i - 1,
            )
            for i in range(1, self.etcd_members + 1)
        ]

    def etcd_member(self, name: str) -> EtcdMemberSpec:
        for m in self.etcd_member_specs():
            if m.name == name:
                return m
        raise KeyError(
            f"no etcd member {name!r} in lab {self.name} "
            f"(members: {', '.join(m.name for m in self.etcd_member_specs())})"
        )

    @property
    def etcd_endpoints(self) -> str:
        """Every member's client URL, comma-separated: what every daemon and tool gets."""
        return ",".join(m.client_url for m in self.etcd_member_specs())

    def all_netns(self) -> list[str]:
        """Every namespace of the lab, in creation order."""
        out = [self.switch_netns] + ([self.router_netns] if self.racks > 1 else [])
        out += [m.netns for m in self.etcd_member_specs()]
        for n in self.nodes:
            out.append(n.netns)
            out += [p.netns for p in n.pods]
        return out

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in lab {self.name} (nodes: {', '.join(n.name for n in self.nodes)})")

    def pods(self) -> list[PodSpec]:
        return [p for n in self.nodes for p in n.pods]


def validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(
            f"lab name {name!r} must be 1-8 lowercase letters/digits starting with a letter "
            "(it prefixes every namespace and must keep interface names under 15 characters)"
        )
    return name


def build_topology(
    name: str = "mkn",
    nodes: int = 3,
    pods_per_node: int = 2,
    underlay: str = DEFAULT_UNDERLAY,
    pod_network: str = DEFAULT_POD_NETWORK,
    backend: str = "vxlan",
    mtu: int = 1500,
    subnet_len: int = 24,
    etcd_members: int = 1,
    racks: int = 1,
) -> Topology:
    validate_name(name)
    net = ipaddress.IPv4Network(underlay)
    if racks < 1:
        raise ValueError(f"--racks {racks}: a lab has at least one rack")
    if racks > nodes:
        raise ValueError(f"--racks {racks} is more than the {nodes} nodes: every rack needs a node")
    if racks > 1 and backend == "host-gw":
        raise ValueError(
            "host-gw cannot cross racks: its routes point at the other nodes' addresses as next hops "
            "on one L2 segment (flannel's host-gw); use vxlan (with --direct-routing: encapsulation only "
            "between racks) or bgp"
        )
    if racks > 1 and net.prefixlen != 24:
        raise ValueError(f"--racks needs a /24 underlay (rack r is the r-th /24 after it), got {net}")
    if racks > 1 and racks > 16:
        raise ValueError(f"--racks {racks}: at most 16")
    if not 1 <= etcd_members <= 7:
        raise ValueError(
            f"etcd members must be between 1 and 7, got {etcd_members} "
            "(an odd number: 3 members survive the loss of one, 5 of two)"
        )
    if nodes < 1:
        raise ValueError("a lab needs at least one node")
    if nodes + 11 > net.num_addresses - 2:
        raise ValueError(f"underlay {net} is too small for {nodes} nodes")
    if pods_per_node < 0 or pods_per_node > 250:
        raise ValueError("pods per node must be between 0 and 250")
    if not 1280 <= mtu <= 9000:
        raise ValueError(f"underlay MTU {mtu} must be between 1280 and 9000")
    node_specs = []
    for i in range(1, nodes + 1):
        node = f"n{i}"
        rack = (i - 1) * racks // nodes  # in blocks: the first nodes in rack 0
        rack_net = net if rack == 0 else ipaddress.IPv4Network((int(net.network_address) + rack * 256, 24))
        pods = tuple(
            PodSpec(name=f"{node}-p{j}", netns=f"{name}-{node}-p{j}", node=node, container_id=f"{name}-{node}-p{j}")
            for j in range(1, pods_per_node + 1)
        )
        node_specs.append(
            NodeSpec(
                name=node,
                netns=f"{name}-{node}",
                switch_port=f"{node}",
                ip=rack_net.network_address + 10 + i,
                pods=pods,
                rack=rack,
            )
        )
    topo = Topology(
        name=name,
        nodes=tuple(node_specs),
        underlay=net,
        pod_network=ipaddress.IPv4Network(pod_network),
        backend=backend,
        mtu=mtu,
        subnet_len=subnet_len,
        etcd_ip=net.network_address + 2,
        etcd_members=etcd_members,
        racks=racks,
    )
    if racks > 1:
        for r in range(1, racks):
            if topo.rack_net(r).overlaps(topo.pod_network):
                raise ValueError(f"rack {r}'s underlay {topo.rack_net(r)} overlaps the pod network {pod_network}")
    return topo


LB_POOL_HOSTS = (240, 247)  # LoadBalancer addresses on the underlay (lab/loadbalancer.py)


def lb_pool_spec(underlay: ipaddress.IPv4Network) -> str:
    """ "first-last" on the underlay (MetalLB layer 2: the pool is part of the LAN);
    "" when the underlay is smaller than a /24."""
    if underlay.num_addresses < 256:
        return ""
    return f"{underlay[LB_POOL_HOSTS[0]]}-{underlay[LB_POOL_HOSTS[1]]}"
