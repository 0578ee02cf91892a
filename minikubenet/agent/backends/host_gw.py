"""The host-gw backend: no encapsulation, one route per remote subnet via that node's
PublicIP on the underlay (overlay/host_gw.py). It works only where every node is on one
L2 segment with the others, and only if the public IP really is ours (no NAT: the peers
route straight to it), which prepare checks. The pod MTU is the underlay's.
"""

from __future__ import annotations

from minikubenet.agent.backends.base import BackendBase, BackendError, Prepared
from minikubenet.linux.addresses import Underlay, interface_ips
from minikubenet.linux.netns import node_iproute
from minikubenet.linux.overlay_routes import connected_networks
from minikubenet.network_config import NetworkConfig
from minikubenet.overlay import host_gw
from minikubenet.overlay.controller import HostGwBackend as HostGwPeers


class HostGwBackend(BackendBase):
    name = "host-gw"

    def prepare(self, config: NetworkConfig, underlay: Underlay, run_dir: str) -> Prepared:
        with node_iproute() as ipr:
            connected = connected_networks(ipr, underlay.index)
            try:
                host_gw.check_public_ip(underlay.ip, interface_ips(ipr))
            except host_gw.HostGwError as e:
                raise BackendError(str(e)) from None
        return Prepared("host-gw", {}, underlay.mtu, connected=connected)

    def peers(self, config: NetworkConfig, underlay: Underlay, subnet, prepared: Prepared) -> HostGwPeers:
        return HostGwPeers(underlay.ifname, prepared.connected)
