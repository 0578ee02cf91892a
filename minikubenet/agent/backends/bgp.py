"""The bgp backend (Calico's way): no overlay device, no encapsulation; BIRD on every node
announces the node's pod subnet and installs the other nodes' subnets as plain routes
via their underlay addresses (overlay/bird_config.py has the config, linux/bird.py runs
BIRD).

prepare checks that BIRD is installed and that the AS number is valid, and decides the
pod MTU: the underlay's (nothing is added to a packet). The lease's BackendData carries
the AS. After the lease, BIRD starts with no peers; from then on every lease change
re-renders bird.conf (the full mesh: every other lease's PublicIP) and reloads BIRD.
The overlay controller programs nothing per lease itself (``plan`` is None): the routes
are BIRD's, and its kernel protocol keeps them in step.
"""

from __future__ import annotations

import ipaddress
import logging
import os

from minikubenet.agent.backends.base import BackendBase, BackendError, Prepared
from minikubenet.linux import bird
from minikubenet.linux.addresses import Underlay
from minikubenet.linux.netns import node_iproute
from minikubenet.linux.overlay_routes import connected_networks
from minikubenet.network_config import NetworkConfig
from minikubenet.overlay import bird_config
from minikubenet.subnet_lease_record import SubnetLeaseRecord

log = logging.getLogger(__name__)


class BgpPeers:
    """The overlay controller's planner for bgp: BIRD's config follows the leases."""

    name = "bgp"
    vxlan_dev = None
    route_devs: list[str] = []  # the controller reads and corrects no route: BIRD owns them

    def __init__(self, daemon: bird.BirdDaemon, own_ip: ipaddress.IPv4Address, subnet: ipaddress.IPv4Network, asn: int):
        self.daemon, self.own_ip, self.subnet, self.asn = daemon, own_ip, subnet, asn

    def config(self, leases: list[SubnetLeaseRecord]) -> str:
        ips = []
        for lease in leases:
            try:
                ips.append(ipaddress.IPv4Address(lease.public_ip))
            except ValueError:
                continue  # a malformed lease: the controller reports it
        peers = bird_config.mesh_peers(self.own_ip, ips, self.asn)
        return bird_config.render(self.own_ip, self.asn, self.subnet, peers, self.daemon.log_file)

    def plan(self, lease: SubnetLeaseRecord) -> None:
        return None

    def prepare(self, kernel) -> None:
        pass

    def leases_changed(self, leases: list[SubnetLeaseRecord]) -> None:
        self.daemon.apply(self.config(leases))

    def close(self) -> None:
        self.daemon.stop()


class BgpBackend(BackendBase):
    name = "bgp"

    def prepare(self, config: NetworkConfig, underlay: Underlay, run_dir: str) -> Prepared:
        missing = bird.installed()
        if missing:
            raise BackendError(f"the bgp backend runs BIRD: {missing}")
        try:
            asn = bird_config.check_asn(config.backend_options.get("AS", bird_config.DEFAULT_AS))
        except ValueError as e:
            raise BackendError(f"Backend.AS: {e}") from None
        with node_iproute() as ipr:
            connected = connected_networks(ipr, underlay.index)
        return Prepared(
            "bgp",
            {"AS": asn},
            underlay.mtu,
            connected=connected,
            state={"asn": asn, "daemon": bird.BirdDaemon(os.path.join(run_dir, "bird"))},
        )

    def peers(self, config: NetworkConfig, underlay: Underlay, subnet, prepared: Prepared) -> BgpPeers:
        daemon = prepared.state["daemon"]
        return BgpPeers(daemon, ipaddress.IPv4Address(underlay.ip), subnet, prepared.state["asn"])

    def before_start(self, config: NetworkConfig, underlay: Underlay, subnet, prepared: Prepared) -> None:
        daemon = prepared.state["daemon"]
        first = BgpPeers(daemon, ipaddress.IPv4Address(underlay.ip), subnet, prepared.state["asn"]).config([])
        try:
            daemon.start(first)
        except (bird.BirdError, OSError) as e:
            raise BackendError(f"cannot start BIRD: {e}") from None

    def undo(self, prepared: Prepared) -> None:
        prepared.state["daemon"].stop()
