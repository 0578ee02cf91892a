"""The agent's backend step: from "which backend does the network config name" to a
running overlay (overlay/ has the mechanism; this module only assembles it).

Two moments, as in flannel (backend/vxlan/vxlan.go RegisterNetwork):

- **before the lease** (``prepare``): the VXLAN device is created first, because its
  MAC goes into the lease (``BackendData.VtepMAC``) — the other nodes need it to
  reach us. host-gw checks that the public IP really is ours (no NAT: peers route
  straight to it).
- **after the lease** (``start``): the device gets its /32 address, and the
  ``OverlayController`` programs every remote lease and follows the watch.

The pod MTU is decided here too: underlay MTU − 50 with VXLAN, the underlay MTU with
host-gw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from minikubenet.linux.addresses import Underlay, interface_ips
from minikubenet.linux.netns import node_iproute
from minikubenet.linux.overlay_routes import NetlinkKernel, connected_networks
from minikubenet.linux.vxlan_device import (VxlanDeviceError, delete_vxlan_device, ensure_vxlan_device,
                                            vxlan_device_exists)
from minikubenet.network_config import NetworkConfig
from minikubenet.overlay import host_gw, vxlan
from minikubenet.overlay.vxlan import VxlanSpec
from minikubenet.overlay.controller import HostGwBackend, OverlayController, VxlanBackend

log = logging.getLogger(__name__)


class BackendError(Exception):
    pass


@dataclass
class Prepared:
    backend_type: str
    backend_data: dict
    pod_mtu: int
    spec: VxlanSpec | None = None
    mac: str | None = None
    created_device: bool = False
    connected: list = field(default_factory=list)


def prepare(config: NetworkConfig, underlay: Underlay) -> Prepared:
    with node_iproute() as ipr:
        connected = connected_networks(ipr, underlay.index)
        if config.backend == "host-gw":
            try:
                host_gw.check_public_ip(underlay.ip, interface_ips(ipr))
            except host_gw.HostGwError as e:
                raise BackendError(str(e)) from None
            return Prepared("host-gw", {}, underlay.mtu, connected=connected)
        spec = vxlan.device_spec(config.vni, underlay.ip, underlay.index, underlay.mtu, config.port)
        existed = vxlan_device_exists(ipr, spec.name)
        try:
            _, mac = ensure_vxlan_device(ipr, spec)
        except VxlanDeviceError as e:
            raise BackendError(f"{e}; remove the conflicting device (ip link del {spec.name}) or change "
                               "Backend.VNI/Port in the network config") from None
    log.info("%s: vni %d, port %d, local %s, mtu %d, VtepMAC %s", spec.name, spec.vni, spec.port,
             spec.local_ip, spec.mtu, mac)
    return Prepared("vxlan", {"VNI": config.vni, "VtepMAC": mac}, vxlan.overlay_mtu(underlay.mtu),
                    spec=spec, mac=mac, created_device=not existed, connected=connected)


def undo(prepared: Prepared) -> None:
    """A start-up that fails after ``prepare`` removes a device it created itself."""
    if prepared.created_device and prepared.spec is not None:
        with node_iproute() as ipr:
            delete_vxlan_device(ipr, prepared.spec.name)
        log.info("removed %s again: the agent did not start", prepared.spec.name)


def start(store, config: NetworkConfig, underlay: Underlay, subnet, prepared: Prepared) -> OverlayController:
    backend: HostGwBackend | VxlanBackend
    if prepared.backend_type == "host-gw":
        backend = HostGwBackend(underlay.ifname, prepared.connected)
    else:
        direct = None
        if config.backend_options.get("DirectRouting"):
            direct = vxlan.DirectRouting(underlay.ifname, tuple(prepared.connected))
        spec, mac = prepared.spec, prepared.mac
        assert spec is not None, "prepare() made the vxlan spec"
        with node_iproute() as ipr:
            ensure_vxlan_device(ipr, spec, mac=mac, subnet=subnet, network=config.network)
        backend = VxlanBackend(config.vni, direct_routing=direct, ensure_device=lambda ipr: ensure_vxlan_device(
            ipr, spec, mac=mac, subnet=subnet, network=config.network))
    controller = OverlayController(store, subnet, backend,
                                   make_kernel=lambda: NetlinkKernel.open(config.network))
    controller.start()
    return controller
