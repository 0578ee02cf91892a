"""The vxlan backend (flannel's default): ``flannel.<VNI>`` carries pod packets in UDP 8472.

prepare creates the device first, because its MAC goes into the lease
(``BackendData.VtepMAC``) - the other nodes need it to reach us - and the pod MTU is the
underlay's minus 50 (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14). After the lease
the device gets its /32 address; per remote lease the controller programs a neighbour,
an FDB entry and an onlink route (overlay/vxlan.py), or with DirectRouting a plain route
to peers on the same segment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from minikubenet.agent.backends.base import BackendBase, BackendError, Prepared
from minikubenet.linux.addresses import Underlay
from minikubenet.linux.netns import node_iproute
from minikubenet.linux.overlay_routes import connected_networks
from minikubenet.linux.vxlan_device import (
    VxlanDeviceError,
    delete_vxlan_device,
    ensure_vxlan_device,
    vxlan_device_exists,
)
from minikubenet.network_config import NetworkConfig
from minikubenet.overlay import vxlan
from minikubenet.overlay.controller import VxlanBackend as VxlanPeers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VxlanState:
    spec: vxlan.VxlanSpec
    mac: str
    created_device: bool  # made by this start (undo removes it), not found


class VxlanBackend(BackendBase):
    name = "vxlan"

    def prepare(self, config: NetworkConfig, underlay: Underlay, run_dir: str) -> Prepared:
        with node_iproute() as ipr:
            connected = connected_networks(ipr, underlay.index)
            spec = vxlan.device_spec(config.vni, underlay.ip, underlay.index, underlay.mtu, config.port)
            existed = vxlan_device_exists(ipr, spec.name)
            try:
                _, mac = ensure_vxlan_device(ipr, spec)
            except VxlanDeviceError as e:
                raise BackendError(
                    f"{e}; remove the conflicting device (ip link del {spec.name}) or change "
                    "Backend.VNI/Port in the network config"
                ) from None
        log.info(
            "%s: vni %d, port %d, local %s, mtu %d, VtepMAC %s",
            spec.name,
            spec.vni,
            spec.port,
            spec.local_ip,
            spec.mtu,
            mac,
        )
        return Prepared(
            "vxlan",
            {"VNI": config.vni, "VtepMAC": mac},
            vxlan.overlay_mtu(underlay.mtu),
            connected=connected,
            devices=[spec.name],
            state=VxlanState(spec, mac, not existed),
        )

    def before_start(self, config: NetworkConfig, underlay: Underlay, subnet, prepared: Prepared) -> None:
        s: VxlanState = prepared.state
        with node_iproute() as ipr:
            ensure_vxlan_device(ipr, s.spec, mac=s.mac, subnet=subnet, network=config.network)

    def peers(self, config: NetworkConfig, underlay: Underlay, subnet, prepared: Prepared) -> VxlanPeers:
        s: VxlanState = prepared.state
        direct = None
        if config.backend_options.get("DirectRouting"):
            direct = vxlan.DirectRouting(underlay.ifname, tuple(prepared.connected))
        return VxlanPeers(
            config.vni,
            direct_routing=direct,
            ensure_device=lambda ipr: ensure_vxlan_device(
                ipr, s.spec, mac=s.mac, subnet=subnet, network=config.network
            ),
        )

    def undo(self, prepared: Prepared) -> None:
        s: VxlanState = prepared.state
        if s is not None and s.created_device:
            with node_iproute() as ipr:
                delete_vxlan_device(ipr, s.spec.name)
            log.info("removed %s again: the agent did not start", s.spec.name)
