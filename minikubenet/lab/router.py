"""The lab's router between racks (``lab up --racks R``): the spine/ToR of an L3 fabric.

    rack 0 (br0) ── eth0 .1 ┐
    rack 1 (br1) ── eth1 .1 ┤ <lab>-rt   ip_forward=1, BIRD (with the bgp backend)
    ...                     ┘

The router namespace has address .1 on every rack's segment and forwards between them;
every other namespace of a rack reaches the other racks through it (lab/cluster.py
gives each a route per other rack). That is all vxlan needs: VXLAN packets to a node
in another rack are plain UDP for the router.

With the bgp backend the router also runs BIRD, so that pod subnets are routable across
racks (Calico's L3 fabric, "ToR as route reflector"). Every node peers with its rack's
router address (``Backend.Peers`` with ``NodeSubnet``: the lab writes it at ``network
init``); the router is a route reflector (RFC 4456) for all of them and, as a ToR does,
sets itself as next hop (``next hop self``): a node in rack 0 sends rack 1's pods to
.1, the router forwards to the node that announced them (it installs every learned
route into its own kernel). ``--bgp-mode``:

- ``mesh`` (default): the node-to-node mesh stays on; a node peers directly with the
  nodes of its own rack (same segment) and learns the other racks' subnets from the
  router. A route learned both ways is taken from the node itself (a reflected route
  carries a CLUSTER_LIST and loses the tie, RFC 4456 section 9).
- ``tor``: no node-to-node mesh; every node peers with its router only, and even
  traffic inside a rack goes through it.
- ``rr``: Calico's in-cluster route reflectors (``Backend.RouteReflectors``): the first
  node of each rack reflects for the others of its rack (next hop unchanged: traffic
  inside a rack goes node to node) and is the only one that peers with the router.

``render`` is pure; the lab starts ``bird -f`` in the router namespace as one of its
processes (stopped by PID at ``lab down``).
"""

from __future__ import annotations

import ipaddress
import os

from minikubenet.overlay.bird_config import DEFAULT_AS, check_asn

BGP_MODES = ("mesh", "tor", "rr")


def render(
    router_id: ipaddress.IPv4Address,
    node_ips: list[ipaddress.IPv4Address],
    log_file: str,
    asn: int = DEFAULT_AS,
    hold_time: int = 9,
) -> str:
    check_asn(asn)
    lines = [
        "# The lab's router between racks (lab/router.py): reflects every node's pod subnet.",
        f'log "{log_file}" {{ info, remote, warning, error, auth, fatal, bug }};',
        f"router id {router_id};",
        "",
        "protocol device {",
        "  scan time 10;",
        "}",
        "",
        "# Forward pod traffic between racks: install what the nodes announce.",
        "protocol kernel {",
        "  ipv4 {",
        "    import none;",
        "    export where source = RTS_BGP;",
        "  };",
        "  learn off;",
        "}",
        "",
        "template bgp rack_node {",
        f"  local as {asn};",
        f"  hold time {hold_time};",
        f"  keepalive time {max(1, hold_time // 3)};",
        "  direct;",
        "  rr client;               # reflect each node's routes to every other node",
        "  connect delay time 0;",
        "  connect retry time 1;",
        "  error wait time 1, 10;",
        "  graceful restart on;",
        "  ipv4 {",
        "    import all;",
        "    export all;",
        "    next hop self;         # as a ToR: the other racks' pods are reached through us",
        "  };",
        "}",
    ]
    for ip in sorted(set(node_ips)):
        name = "node_" + str(ip).replace(".", "_")
        lines += ["", f"protocol bgp {name} from rack_node {{", f"  neighbor {ip} as {asn};", "}"]
    return "\n".join(lines) + "\n"


def files(lab_dir: str) -> tuple[str, str, str]:
    """(config, control socket, log) of the router's BIRD."""
    d = os.path.join(lab_dir, "router-bird")
    return os.path.join(d, "bird.conf"), os.path.join(d, "bird.ctl"), os.path.join(d, "bird.log")
