"""The bgp backend's plan: BIRD 2's configuration for one node, rendered from the leases.

Calico's model without Calico: every node runs BIRD (Debian's ``bird2``), announces its
own pod subnet and nothing else, and learns every other node's subnet over BGP; BIRD's
kernel protocol installs the learned routes (``proto bird``), next hop = the announcing
node's underlay address. No encapsulation: pod packets are plain IP on the underlay, so
the pod MTU is the underlay MTU.

The default peering is Calico's node-to-node full mesh over iBGP (one AS, 64512, every
node a neighbour of every other: the other leases' PublicIPs). Choices that matter here:

- the subnet is announced from a ``static`` blackhole route that the kernel protocol never
  exports: the kernel keeps its own ``<subnet> dev cni0`` route; BIRD only advertises;
- ``kernel { persist; graceful restart; }``: learned routes stay in the kernel while BIRD
  or the agent restarts, and peers keep ours (BGP graceful restart, RFC 4724): the agent
  stops BIRD with ``birdc graceful restart``, so a peer keeps our routes for
  GRACEFUL_RESTART_S and a restart inside that window loses nothing;
- the sessions are ``direct`` (the peer is on our L2 segment) with ``next hop self``: the
  learned route's gateway is the peer's address, no recursive lookup (iBGP's default,
  which would leave the route unreachable without an IGP); and they start at once
  (``connect delay time 0``; BIRD waits 5 s by default);
- ``learn off``: BIRD never takes over routes the kernel or the agent made.

Besides the nodes, ``Backend.Peers`` names BGP speakers that are not nodes (Calico's
BGPPeer: a ToR router, the LB's clients' router), each for every node or only for the
nodes whose address lies in ``NodeSubnet`` or is listed in ``Nodes``; ``NodeToNodeMesh:
false`` turns the node-to-node mesh off (then only those peers carry the routes). They
get the same announcements as a node does.

LoadBalancer IPs (``lb_table``): the speaker (loadbalancer/speaker.py) does not touch
this file. It puts a /32 route per LB IP this node announces into a routing table of
its own that no rule consults (linux/lb_routes.py); a second kernel protocol ``learn``s
that table into BIRD's table ``lb_ips``, a pipe copies it into the main one, and the
peers' export filter lets it out beside the pod subnet. So the speaker and the agent
never share a config file or a control socket, and a withdrawn route is withdrawn
from BGP as soon as BIRD's netlink listener sees it go.

Changes go to BIRD with ``birdc configure`` (a reload keeps sessions that did not change),
never a restart: linux/bird.py.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DEFAULT_AS = 64512  # Calico's default AS number (a private 16-bit AS, RFC 6996)
# How long the peers keep our routes after our BIRD went away gracefully (the agent
# stopping: linux/bird.py BirdDaemon.stop): a restart within it loses no packet, a node
# that does not come back is withdrawn after it. BIRD's default is 120 s; a lab node's
# agent restarts in about a second.
GRACEFUL_RESTART_S = 10


@dataclass(frozen=True)
class BgpPeer:
    name: str  # BIRD protocol name: letters, digits, underscores
    ip: ipaddress.IPv4Address
    asn: int
    rr_client: bool = False  # we reflect routes to it (we are a route reflector, it is not)


def peer_name(ip: ipaddress.IPv4Address) -> str:
    return "node_" + str(ip).replace(".", "_")


def check_asn(asn: object) -> int:
    if not isinstance(asn, int) or isinstance(asn, bool) or not 1 <= asn <= 4294967294:
        raise ValueError(
            f"AS number {asn!r} is invalid: 1..4294967294 (64512-65534 and 4200000000-4294967294 are private)"
        )
    return asn


def mesh_peers(own_ip: ipaddress.IPv4Address, peer_ips, asn: int) -> list[BgpPeer]:
    """Calico's full mesh: every other node, in the same AS."""
    return [BgpPeer(peer_name(ip), ip, asn) for ip in sorted(set(peer_ips)) if ip != own_ip]


def reflector_peers(
    own_ip: ipaddress.IPv4Address, peer_ips, reflectors: list[ipaddress.IPv4Address], asn: int
) -> list[BgpPeer]:
    """Calico's in-cluster route reflectors (``Backend.RouteReflectors``) instead of the
    mesh: a node that is not a reflector peers with the reflectors only; a reflector
    peers with every node, the non-reflectors as its clients (RFC 4456: what a client
    announces goes to every peer, what a non-client announces goes to the clients only)."""
    rrs = set(reflectors)
    if own_ip not in rrs:
        return [BgpPeer(peer_name(ip), ip, asn) for ip in sorted(set(peer_ips) & rrs) if ip != own_ip]
    return [BgpPeer(peer_name(ip), ip, asn, ip not in rrs) for ip in sorted(set(peer_ips)) if ip != own_ip]


def configured_peers(own_ip: ipaddress.IPv4Address, peers: list[dict], asn: int) -> list[BgpPeer]:
    """The ``Backend.Peers`` (validated by network_config.py) that apply to this node:
    every one without a selector, those whose NodeSubnet holds ``own_ip``, those whose
    Nodes list names it. Named ``peer_<ip>``: a node and a peer never share a name."""
    out = []
    for peer in peers:
        if "NodeSubnet" in peer and own_ip not in ipaddress.IPv4Network(peer["NodeSubnet"]):
            continue
        if "Nodes" in peer and str(own_ip) not in peer["Nodes"]:
            continue
        ip = ipaddress.IPv4Address(peer["PeerIP"])
        if ip != own_ip:
            out.append(BgpPeer("peer_" + str(ip).replace(".", "_"), ip, peer.get("AS", asn)))
    return out


def render(
    router_id: ipaddress.IPv4Address,
    asn: int,
    own_subnet: ipaddress.IPv4Network,
    peers: list[BgpPeer],
    log_file: str,
    hold_time: int = 9,
    lb_table: int | None = None,
    reflector: bool = False,
) -> str:
    """bird.conf for one node. ``hold_time``: seconds without a keepalive before a peer
    counts as dead (BIRD's default is 240; a short one lets a crashed node's routes go
    within seconds; a node that stops cleanly closes its sessions and is withdrawn at once).
    ``lb_table``: the kernel table the LB speaker puts its /32 routes in (see above).
    ``reflector``: this node is a route reflector (see reflector_peers): it passes on the
    routes it learned as well as its own, with their next hop unchanged (the announcing
    node, on the same segment: traffic does not go through the reflector)."""
    check_asn(asn)
    for p in peers:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p.name):
            raise ValueError(f"peer name {p.name!r} is not a BIRD symbol")
    lines = [
        "# Written by minikubenet-agent (overlay/bird_config.py); changes go in with `birdc configure`.",
        f'log "{log_file}" {{ info, remote, warning, error, auth, fatal, bug }};',
        f"router id {router_id};",
        "# BIRD starts in graceful-restart recovery (linux/bird.py: -R): at most this long",
        "# before the kernel routes the previous BIRD left are checked against the peers'.",
        f"graceful restart wait {GRACEFUL_RESTART_S + 5};",
        "",
        "protocol device {",
        "  scan time 10;",
        "}",
        "",
        "# Announce this node's pod subnet; the kernel keeps its own route to cni0.",
        "protocol static pod_subnet {",
        "  ipv4;",
        f"  route {own_subnet} blackhole;",
        "}",
        "",
        "# Install what the peers announce; never export our own announcement to the kernel.",
        "protocol kernel {",
        "  ipv4 {",
        "    import none;",
        "    export where source = RTS_BGP;",
        "  };",
        "  persist;",
        "  graceful restart;",
        "  learn off;",
        "  scan time 10;",
        "}",
        "",
        *(_lb_ips(lb_table) if lb_table else []),
        "template bgp node_peer {",
        f"  local {router_id} as {asn};",
        f"  hold time {hold_time};",
        f"  keepalive time {max(1, hold_time // 3)};",
        "  direct;                 # the peer is on our segment: its address is the next hop",
        "  connect delay time 0;",
        "  connect retry time 1;",
        "  error wait time 1, 10;",
        "  graceful restart on;",
        f"  graceful restart time {GRACEFUL_RESTART_S};",
        "  ipv4 {",
        "    import all;",
        f"    export where {_REFLECTED if reflector else _EXPORTED if lb_table else _POD_SUBNET};",
        *([] if reflector else ["    next hop self;"]),
        "  };",
        "}",
    ]
    for p in peers:
        lines += [
            "",
            f"protocol bgp {p.name} from node_peer {{",
            f"  neighbor {p.ip} as {p.asn};",
            *(["  rr client;"] if p.rr_client else []),
            "}",
        ]
    return "\n".join(lines) + "\n"


_POD_SUBNET = 'proto = "pod_subnet"'
_EXPORTED = _POD_SUBNET + ' || proto = "lb_ips_kernel"'
# a reflector's: its own and what it learned over BGP (BIRD applies RFC 4456's rules on
# top: nothing goes back to the peer it came from, non-client routes reach clients only)
_REFLECTED = _EXPORTED + " || source = RTS_BGP"


def _lb_ips(table: int) -> list[str]:
    """The LB speaker's /32s: learned from its kernel table, piped into master4."""
    if not 1 <= table <= 0xFFFFFFFE or table in (253, 254, 255):
        raise ValueError(f"kernel table {table} cannot hold the LB routes (1..2^32-2, not default/main/local)")
    return [
        f"# LoadBalancer IPs this node announces: the speaker's routes in kernel table {table} (linux/lb_routes.py).",
        "ipv4 table lb_ips;",
        "protocol kernel lb_ips_kernel {",
        "  ipv4 {",
        "    table lb_ips;",
        "    import all;",
        "    export none;",
        "  };",
        f"  kernel table {table};",
        "  learn;                  # the routes are the speaker's, not BIRD's",
        "  scan time 10;",
        "}",
        "",
        "protocol pipe lb_ips_pipe {",
        "  table master4;",
        "  peer table lb_ips;",
        "  import all;             # lb_ips -> master4",
        "  export none;",
        "}",
        "",
    ]
