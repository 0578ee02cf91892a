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
import subprocess
import time

from minikubenet.agent.backends.base import BackendBase, BackendError, Prepared
from minikubenet.linux import bird, lb_routes
from minikubenet.linux.addresses import Underlay
from minikubenet.linux.netns import node_iproute
from minikubenet.linux.overlay_routes import connected_networks
from minikubenet.network_config import NetworkConfig
from minikubenet.overlay import bgp_sessions, bird_config
from minikubenet.subnet_lease_record import SubnetLeaseRecord

log = logging.getLogger(__name__)


class BgpPeers:
    """The overlay controller's planner for bgp: BIRD's config follows the leases."""

    name = "bgp"
    vxlan_dev = None
    route_devs: list[str] = []  # the controller reads and corrects no route: BIRD owns them

    def __init__(
        self,
        daemon: bird.BirdDaemon,
        own_ip: ipaddress.IPv4Address,
        subnet: ipaddress.IPv4Network,
        asn: int,
        options: dict | None = None,
        connected: list[ipaddress.IPv4Network] | None = None,
    ):
        self.daemon, self.own_ip, self.subnet, self.asn = daemon, own_ip, subnet, asn
        options = options or {}
        self.mesh = options.get("NodeToNodeMesh", True)
        # Backend.RouteReflectors (validated by network_config.py): they replace the mesh
        self.reflectors = [ipaddress.IPv4Address(ip) for ip in options.get("RouteReflectors", [])]
        self.connected = connected
        # Backend.Peers that apply to this node; one outside every network the node is
        # on is not peered (the sessions are direct: multihop is not supported) but said
        configured = bird_config.configured_peers(own_ip, options.get("Peers", []), asn)
        on_link = [p for p in configured if connected is None or any(p.ip in n for n in connected)]
        self.extra = on_link
        self.off_link = [
            f"Backend.Peers {p.ip}: outside every network this node is on "
            f"({', '.join(str(n) for n in connected or [])}): not peered (BGP sessions here are direct)"
            for p in configured
            if p not in on_link
        ]
        if self.reflectors and own_ip not in self.reflectors and connected is not None:
            if not any(ip in n for ip in self.reflectors for n in connected):
                self.off_link.append(
                    f"Backend.RouteReflectors {', '.join(map(str, self.reflectors))}: none is on this node's "
                    "networks: this node has no node to peer with (BGP sessions here are direct)"
                )
        # BIRD protocol name -> when its peer first appeared (monotonic): the grace
        # period of bgp_sessions.unreachable counts from here
        self.configured_at: dict[str, float] = {}

    def peer_names(self, leases: list[SubnetLeaseRecord]) -> list[str]:
        return [p.name for p in self._peers(leases)]

    def _peers(self, leases: list[SubnetLeaseRecord]) -> list[bird_config.BgpPeer]:
        """The node mesh or, with Backend.RouteReflectors, the reflectors (a reflector: every
        node) - only the nodes on this node's own segment when the underlay is routed
        (racks: the others' subnets come reflected by the router, a Backend.Peers entry) -
        and the configured peers."""
        ips = self._ips(leases)
        if self.reflectors:
            nodes = bird_config.reflector_peers(self.own_ip, ips, self.reflectors, self.asn)
        elif self.mesh:
            nodes = bird_config.mesh_peers(self.own_ip, ips, self.asn)
        else:
            nodes = []
        if self.connected is not None and (self.extra or self.reflectors):
            nodes = [p for p in nodes if any(p.ip in n for n in self.connected)]
        return nodes + self.extra

    @staticmethod
    def _ips(leases: list[SubnetLeaseRecord]) -> list[ipaddress.IPv4Address]:
        ips = []
        for lease in leases:
            try:
                ips.append(ipaddress.IPv4Address(lease.public_ip))
            except ValueError:
                continue  # a malformed lease: the controller reports it
        return ips

    def sessions(self) -> list[bgp_sessions.Session]:
        return bgp_sessions.parse_protocols(self.daemon.show("protocols"))

    def health_warnings(self) -> list[str]:
        """One sentence per peer that is still not Established after the grace period
        (for STATUS and the log); BIRD not answering is one too."""
        try:
            sessions = self.sessions()
        except (OSError, subprocess.SubprocessError) as e:
            return [f"BIRD does not answer on its control socket: {e}"]
        if not sessions and self.configured_at and not self.daemon.running():
            return ["BIRD is not running (the agent restarts it)"]
        down = bgp_sessions.unreachable(sessions, self.configured_at, time.monotonic())
        return self.off_link + self._no_reflector() + [s.describe() for s in down]

    def _no_reflector(self) -> list[str]:
        """A client whose reflectors are all missing (no lease: not started, or gone)
        learns nothing from the cluster: say so rather than sit with no node session."""
        if not self.reflectors or self.own_ip in self.reflectors or self.off_link:
            return []
        if any(name.startswith("node_") for name in self.configured_at):
            return []
        return [
            f"Backend.RouteReflectors {', '.join(map(str, self.reflectors))}: none of them holds a lease on this "
            "node's segment, so this node has no session to learn the other nodes' subnets from"
        ]

    def peer_counts(self) -> dict[str, int]:
        """For the metric: configured peers by state (established, not_established)."""
        try:
            sessions = self.sessions()
        except (OSError, subprocess.SubprocessError):
            sessions = []
        up = sum(1 for s in sessions if s.established and s.name in self.configured_at)
        return {"established": up, "not_established": len(self.configured_at) - up}

    def config(self, leases: list[SubnetLeaseRecord]) -> str:
        return bird_config.render(
            self.own_ip,
            self.asn,
            self.subnet,
            self._peers(leases),
            self.daemon.log_file,
            lb_table=lb_routes.LB_TABLE,
            reflector=self.own_ip in self.reflectors,
        )

    def plan(self, lease: SubnetLeaseRecord) -> None:
        return None

    def prepare(self, kernel) -> None:
        pass

    def leases_changed(self, leases: list[SubnetLeaseRecord]) -> None:
        self.daemon.apply(self.config(leases))
        now = time.monotonic()
        self.configured_at = {name: self.configured_at.get(name, now) for name in self.peer_names(leases)}

    def close(self) -> None:
        # the agent stops (a restart, most of the time): BGP graceful restart keeps our
        # routes at the peers for GRACEFUL_RESTART_S; a node that leaves deletes its lease
        self.daemon.stop(graceful=True)


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
        return self._planner(config, underlay, subnet, prepared)

    @staticmethod
    def _planner(config: NetworkConfig, underlay: Underlay, subnet, prepared: Prepared) -> BgpPeers:
        return BgpPeers(
            prepared.state["daemon"],
            ipaddress.IPv4Address(underlay.ip),
            subnet,
            prepared.state["asn"],
            config.backend_options,
            prepared.connected,
        )

    def start(self, store, config: NetworkConfig, underlay: Underlay, subnet, prepared: Prepared):
        # BIRD's first config already names the peers the leases give: a restarted agent's
        # BIRD then reconnects at once, and its graceful-restart recovery ends with the
        # routes in place instead of after a second config (linux/bird.py: -R)
        try:
            prepared.state["initial_leases"] = [lease for lease in store.list_leases() if lease.subnet != subnet]
        except Exception:  # etcd away: the controller's own first listing reports it
            prepared.state["initial_leases"] = []
        return super().start(store, config, underlay, subnet, prepared)

    def before_start(self, config: NetworkConfig, underlay: Underlay, subnet, prepared: Prepared) -> None:
        daemon = prepared.state["daemon"]
        first = self._planner(config, underlay, subnet, prepared).config(prepared.state.get("initial_leases", []))
        try:
            daemon.start(first, recover=bird.routes_left())
        except (bird.BirdError, OSError) as e:
            raise BackendError(f"cannot start BIRD: {e}") from None

    def undo(self, prepared: Prepared) -> None:
        prepared.state["daemon"].stop()
