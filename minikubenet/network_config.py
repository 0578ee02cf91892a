"""The cluster network config: flannel's ``<prefix>/config`` JSON, parsed and validated.

One document in etcd says which address space pods live in and how nodes reach each
other: ``{"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan",
"VNI": 1, "Port": 8472}}``. Every agent reads it at start; ``minikubenet network init``
writes it. Defaults follow flannel (pkg/subnet/config.go): SubnetLen 24, SubnetMin the
second subnet, SubnetMax the last one. Unlike flannel, a missing Backend means vxlan
(flannel silently picks "udp").
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

BACKENDS = ("vxlan", "host-gw", "bgp")
DEFAULT_AS = 64512  # the bgp backend's AS (Calico's default)
DEFAULT_VNI = 1
DEFAULT_VXLAN_PORT = 8472  # the Linux kernel's historical VXLAN port, flannel's default


class ConfigError(ValueError):
    """The network config is invalid; the message says which value and why."""


@dataclass(frozen=True)
class NetworkConfig:
    network: ipaddress.IPv4Network
    subnet_len: int = 24
    subnet_min: ipaddress.IPv4Network | None = None
    subnet_max: ipaddress.IPv4Network | None = None
    backend: str = "vxlan"
    backend_options: dict = field(default_factory=dict, compare=False)

    @property
    def vni(self) -> int:
        return int(self.backend_options.get("VNI", DEFAULT_VNI))

    @property
    def port(self) -> int:
        return int(self.backend_options.get("Port", DEFAULT_VXLAN_PORT) or DEFAULT_VXLAN_PORT)

    def subnets(self) -> list[ipaddress.IPv4Network]:
        """All node subnets this network can lease, SubnetMin..SubnetMax."""
        lo = self.subnet_min or first_leasable(self.network, self.subnet_len)
        hi = self.subnet_max or list(self.network.subnets(new_prefix=self.subnet_len))[-1]
        return [
            s
            for s in self.network.subnets(new_prefix=self.subnet_len)
            if lo.network_address <= s.network_address <= hi.network_address
        ]

    def to_json(self) -> str:
        doc = {"Network": str(self.network), "SubnetLen": self.subnet_len}
        if self.subnet_min:
            doc["SubnetMin"] = str(self.subnet_min.network_address)
        if self.subnet_max:
            doc["SubnetMax"] = str(self.subnet_max.network_address)
        doc["Backend"] = {"Type": self.backend, **self.backend_options}
        return json.dumps(doc)


def first_leasable(network: ipaddress.IPv4Network, subnet_len: int) -> ipaddress.IPv4Network:
    # flannel skips the network's first subnet (SubnetMin = second subnet), so that the
    # network address of the whole range is never a node's subnet address.
    subs = network.subnets(new_prefix=subnet_len)
    next(subs)
    return next(subs)


def make_config(
    network: str,
    subnet_len: int = 24,
    backend: str = "vxlan",
    vni: int | None = None,
    port: int | None = None,
    direct_routing: bool = False,
    bgp_peers: list[dict] | None = None,
    node_mesh: bool = True,
    route_reflectors: list[str] | None = None,
) -> NetworkConfig:
    """Build and validate a config from command-line style values."""
    options: dict = {}
    if backend == "vxlan":
        options = {"VNI": DEFAULT_VNI if vni is None else vni, "Port": DEFAULT_VXLAN_PORT if port is None else port}
        if direct_routing:
            options["DirectRouting"] = True
    elif backend == "bgp":
        options = {"AS": DEFAULT_AS}
        if bgp_peers:
            options["Peers"] = bgp_peers
        if not node_mesh:
            options["NodeToNodeMesh"] = False
        if route_reflectors:
            options["RouteReflectors"] = route_reflectors
    doc = {"Network": network, "SubnetLen": subnet_len, "Backend": {"Type": backend, **options}}
    return parse_config(json.dumps(doc))


def parse_config(text: str | bytes) -> NetworkConfig:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"network config is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError("network config must be a JSON object")
    if not isinstance(doc.get("Network"), str):
        raise ConfigError(f'Network {doc.get("Network")!r} must be a CIDR string such as "10.244.0.0/16"')
    try:
        network = ipaddress.IPv4Network(doc["Network"], strict=True)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError) as e:
        raise ConfigError(f"Network {doc.get('Network')!r} is not an IPv4 CIDR with no host bits set: {e}") from None
    subnet_len = doc.get("SubnetLen", 24)
    if not isinstance(subnet_len, int) or isinstance(subnet_len, bool):
        raise ConfigError(f"SubnetLen {subnet_len!r} must be an integer")
    if not 8 <= subnet_len <= 30:
        raise ConfigError(f"SubnetLen {subnet_len} must be between 8 and 30 (a node needs room for pods)")
    if subnet_len <= network.prefixlen:
        raise ConfigError(
            f"Network {network} is too small for SubnetLen {subnet_len}: it must be larger than one subnet "
            f"(at least /{subnet_len - 1})"
        )
    if subnet_len - network.prefixlen > 16:
        raise ConfigError(
            f"Network {network} with SubnetLen {subnet_len} gives more than 65536 subnets; "
            "use a longer network prefix or a shorter SubnetLen"
        )
    bounds = {}
    for key in ("SubnetMin", "SubnetMax"):
        if key in doc:
            try:
                sub = ipaddress.IPv4Network(f"{doc[key]}/{subnet_len}", strict=True)
            except ValueError as e:
                raise ConfigError(f"{key} {doc[key]!r} is not a /{subnet_len} subnet address: {e}") from None
            if not sub.subnet_of(network):
                raise ConfigError(f"{key} {sub} lies outside Network {network}")
            bounds[key] = sub
    if (
        "SubnetMin" in bounds
        and "SubnetMax" in bounds
        and bounds["SubnetMin"].network_address > bounds["SubnetMax"].network_address
    ):
        raise ConfigError(f"SubnetMin {bounds['SubnetMin']} is above SubnetMax {bounds['SubnetMax']}")
    backend_doc = doc.get("Backend", {"Type": "vxlan"})
    if not isinstance(backend_doc, dict):
        raise ConfigError('Backend must be an object like {"Type": "vxlan"}')
    backend = backend_doc.get("Type", "vxlan")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown Backend.Type {backend!r}; choose one of {', '.join(BACKENDS)}")
    options = {k: v for k, v in backend_doc.items() if k != "Type"}
    if backend == "vxlan":
        vni = options.get("VNI", DEFAULT_VNI)
        if not isinstance(vni, int) or isinstance(vni, bool) or not 1 <= vni <= 0xFFFFFF:
            raise ConfigError(f"Backend.VNI {vni!r} is out of range: a VXLAN VNI is 1..16777215 (24 bits)")
        port = options.get("Port", DEFAULT_VXLAN_PORT)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ConfigError(f"Backend.Port {port!r} is out of range: a UDP port is 1..65535 (0 = 8472)")
    elif backend == "bgp":
        asn = options.get("AS", DEFAULT_AS)
        if not isinstance(asn, int) or isinstance(asn, bool) or not 1 <= asn <= 4294967294:
            raise ConfigError(f"Backend.AS {asn!r} is not an AS number (1..4294967294; private: 64512-65534)")
        _check_bgp_peering(options)
    return NetworkConfig(
        network=network,
        subnet_len=subnet_len,
        subnet_min=bounds.get("SubnetMin"),
        subnet_max=bounds.get("SubnetMax"),
        backend=backend,
        backend_options=options,
    )


BGP_PEER_KEYS = ("PeerIP", "AS", "NodeSubnet", "Nodes")


def _check_bgp_peering(options: dict) -> None:
    """Backend.NodeToNodeMesh and Backend.Peers (Calico's nodeToNodeMeshEnabled and
    BGPPeer; overlay/bird_config.py renders them)."""
    mesh = options.get("NodeToNodeMesh", True)
    if not isinstance(mesh, bool):
        raise ConfigError(f"Backend.NodeToNodeMesh {mesh!r} must be true or false")
    _check_route_reflectors(options)
    peers = options.get("Peers", [])
    if not isinstance(peers, list):
        raise ConfigError('Backend.Peers must be a list like [{"PeerIP": "10.0.0.1", "AS": 64512}]')
    seen: set[str] = set()
    for i, peer in enumerate(peers):
        path = f"Backend.Peers[{i}]"
        if not isinstance(peer, dict):
            raise ConfigError(f'{path} must be an object like {{"PeerIP": "10.0.0.1", "AS": 64512}}')
        unknown = sorted(set(peer) - set(BGP_PEER_KEYS))
        if unknown:
            raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(BGP_PEER_KEYS)})")
        try:
            if not isinstance(peer.get("PeerIP"), str):
                raise ValueError
            ip = ipaddress.IPv4Address(peer["PeerIP"])
        except ValueError:
            raise ConfigError(f"{path}.PeerIP {peer.get('PeerIP')!r} is not an IPv4 address") from None
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip == ipaddress.IPv4Address("255.255.255.255"):
            raise ConfigError(f"{path}.PeerIP {ip} cannot be a BGP neighbour")
        if str(ip) in seen:
            raise ConfigError(f"{path}.PeerIP {ip} is given twice")
        seen.add(str(ip))
        asn = peer.get("AS", options.get("AS", DEFAULT_AS))
        if not isinstance(asn, int) or isinstance(asn, bool) or not 1 <= asn <= 4294967294:
            raise ConfigError(f"{path}.AS {asn!r} is not an AS number (1..4294967294; private: 64512-65534)")
        if "NodeSubnet" in peer and "Nodes" in peer:
            raise ConfigError(f"{path}: give NodeSubnet or Nodes, not both")
        if "NodeSubnet" in peer:
            try:
                ipaddress.IPv4Network(peer["NodeSubnet"])
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{path}.NodeSubnet {peer['NodeSubnet']!r} is not a network: {e}") from None
        if "Nodes" in peer:
            nodes = peer["Nodes"]
            if not isinstance(nodes, list) or not nodes:
                raise ConfigError(f"{path}.Nodes must be a non-empty list of node addresses")
            for j, node in enumerate(nodes):
                try:
                    ipaddress.IPv4Address(node)
                except ValueError:
                    raise ConfigError(f"{path}.Nodes[{j}] {node!r} is not an IPv4 address") from None


def _check_route_reflectors(options: dict) -> None:
    """Backend.RouteReflectors: node addresses (Calico's nodes with a
    routeReflectorClusterID). They replace the node-to-node mesh, as in Calico, where
    the mesh is turned off when route reflectors are used."""
    if "RouteReflectors" not in options:
        return
    rrs = options["RouteReflectors"]
    if not isinstance(rrs, list) or not rrs:
        raise ConfigError('Backend.RouteReflectors must be a non-empty list of node addresses like ["10.0.0.11"]')
    for i, node in enumerate(rrs):
        try:
            if not isinstance(node, str):
                raise ValueError
            ipaddress.IPv4Address(node)
        except ValueError:
            raise ConfigError(f"Backend.RouteReflectors[{i}] {node!r} is not an IPv4 address") from None
    if len(set(rrs)) != len(rrs):
        raise ConfigError("Backend.RouteReflectors names a node twice")
    if options.get("NodeToNodeMesh") is True:
        raise ConfigError(
            "Backend.RouteReflectors replace the node-to-node mesh: leave NodeToNodeMesh out (or false) with them"
        )


def check_no_overlap(config: NetworkConfig, others: dict[str, ipaddress.IPv4Network]) -> None:
    """Refuse a pod network that overlaps another network the user named (e.g. the
    service network or the node underlay): packets would be routed to the wrong place."""
    for what, net in others.items():
        if config.network.overlaps(net):
            raise ConfigError(f"Network {config.network} overlaps the {what} {net}; choose disjoint ranges")
