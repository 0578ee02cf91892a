"""The cluster as ``trace`` and ``doctor`` see it: plain data, no I/O.

gather.py fills it from etcd (leases, pod IP records, Services, Pods) and from every
node's kernel (linux/live_state.py); the tools only read it, so their logic is tested
with hand-made views.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from minikubenet.linux.live_state import NodeSnapshot
from minikubenet.policy.model import Cluster as PolicyCluster


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ip: ipaddress.IPv4Address  # the underlay address (the lease's PublicIP)
    subnet: ipaddress.IPv4Network | None  # its pod subnet, from its lease (None: no lease)
    vtep_mac: str | None = None  # the lease's BackendData.VtepMAC (vxlan)
    agent_running: bool | None = None  # None: unknown (a real cluster's other nodes)


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    ip: ipaddress.IPv4Address
    node: str
    container_id: str = ""
    ifname: str = "eth0"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServiceInfo:
    namespace: str
    name: str
    cluster_ip: ipaddress.IPv4Address
    ports: tuple[tuple[str, int, str], ...]  # (name, port, protocol)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Lease:
    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
    backend: str
    vtep_mac: str | None


@dataclass(frozen=True)
class IpRecord:
    ip: ipaddress.IPv4Address
    subnet: ipaddress.IPv4Network
    container_id: str
    ifname: str
    node: str
    pod: str  # "ns/name" or the container ID


@dataclass
class ClusterView:
    pod_network: ipaddress.IPv4Network
    backend: str  # vxlan, host-gw, bgp
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    pods: dict[str, PodInfo] = field(default_factory=dict)  # "ns/name"
    services: dict[str, ServiceInfo] = field(default_factory=dict)  # "ns/name"
    leases: list[Lease] = field(default_factory=list)
    ip_records: list[IpRecord] = field(default_factory=list)
    snapshots: dict[str, NodeSnapshot] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # node -> why
    vxlan_device: str = "flannel.1"
    # NetworkPolicies, Namespaces and Pods as the policy controller sees them (policy/model.py);
    # trace asks it "which policy and which rule" drops a packet. None: not read.
    policy: PolicyCluster | None = None
    bridge: str = "cni0"
    # vxlan's DirectRouting: leases on the node's own segment get a plain route instead
    direct_routing: bool = False
    # routers of a routed underlay whose kernel can be read (the lab's ``<lab>-rt``
    # between racks): name -> snapshot. A gateway that is neither a node nor one of
    # these is a router trace cannot look into.
    routers: dict[str, NodeSnapshot] = field(default_factory=dict)

    def pod_by_ip(self, ip: ipaddress.IPv4Address) -> PodInfo | None:
        return next((p for p in self.pods.values() if p.ip == ip), None)

    def node_by_ip(self, ip: ipaddress.IPv4Address) -> NodeInfo | None:
        return next((n for n in self.nodes.values() if n.ip == ip), None)

    def router_by_ip(self, ip: ipaddress.IPv4Address) -> tuple[str, NodeSnapshot] | None:
        return next(((name, snap) for name, snap in self.routers.items() if ip in snap.local_ips()), None)

    def node_of_subnet_ip(self, ip: ipaddress.IPv4Address) -> NodeInfo | None:
        return next((n for n in self.nodes.values() if n.subnet is not None and ip in n.subnet), None)

    def service_by_ip(self, ip: ipaddress.IPv4Address) -> ServiceInfo | None:
        return next((s for s in self.services.values() if s.cluster_ip == ip), None)
