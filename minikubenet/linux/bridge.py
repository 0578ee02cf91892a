"""The node bridge ``cni0``: created once, holding the node subnet's gateway address.

``ensure_bridge`` follows the reference plugin's ``ensureBridge``/``ensureAddr``
(plugins/main/bridge/bridge.go): add the link, accept "exists", re-read it and make
sure it really is a bridge; set the MTU; make the gateway address the bridge's only
IPv4 address. A stale address from an earlier subnet (flannel issue: '"cni0" already
has an IP address different from …') is replaced, since the agent owns cni0.
"""

from __future__ import annotations

import errno
import ipaddress
import logging

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)


class BridgeError(Exception):
    pass


def link_kind(link) -> str | None:
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info else None


def ensure_bridge(ipr: IPRoute, name: str, address: ipaddress.IPv4Interface, mtu: int) -> int:
    """Make ``name`` a bridge, up, with ``address`` and ``mtu``. Returns its ifindex."""
    created = True
    try:
        ipr.link("add", ifname=name, kind="bridge", mtu=mtu)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise BridgeError(f"could not create bridge {name}: {e}") from None
        created = False
    link = ipr.get_links(ifname=name)[0]
    if link_kind(link) != "bridge":
        raise BridgeError(
            f"{name} exists but is a {link_kind(link) or 'plain'} device, not a bridge; "
            f"remove it (ip link del {name}) or choose another bridge name"
        )
    index = link["index"]
    if created:
        # A bridge takes the lowest MAC of its ports unless its own MAC was set
        # explicitly; pin it, so the gateway's MAC does not change as pods come and go.
        ipr.link("set", index=index, address=link.get("IFLA_ADDRESS"))
    if link.get("IFLA_MTU") != mtu:
        ipr.link("set", index=index, mtu=mtu)
    have = [(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)]
    want = (str(address.ip), address.network.prefixlen)
    for ip, plen in have:
        if (ip, plen) != want:
            log.warning(
                "removing stale address %s/%s from %s (the node's subnet is now %s)", ip, plen, name, address.network
            )
            ipr.addr("del", index=index, address=ip, prefixlen=plen)
    if want not in have:
        ipr.addr("add", index=index, address=want[0], prefixlen=want[1])
    ipr.link("set", index=index, state="up")
    return index
