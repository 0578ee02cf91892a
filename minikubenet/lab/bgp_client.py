"""The lab's client network as a BGP speaker: with the bgp backend, LoadBalancer IPs are
announced over BGP (MetalLB's BGP mode), so whoever reaches them must learn them.

    <lab>-cl (.200)  BIRD, AS 64512 ── iBGP ── every node's BIRD (Backend.Peers: .200)

The client namespace (lab/loadbalancer.py's "not a node") stands for the router in
front of a real cluster: it peers with every node (the lab writes it into the network
config as a ``Backend.Peers`` entry, so every node's BIRD peers back), accepts what the
nodes announce - their pod subnets and the LB /32s of the nodes that may serve them -
and installs it in its kernel. It announces nothing. A node that withdraws an LB IP
(the service went away, or with externalTrafficPolicy Local its last local endpoint)
takes its route out of the client's table.

``render`` is pure; the lab starts ``bird -f`` in the client namespace as one of its
processes (stopped by PID at ``lab down``).
"""

from __future__ import annotations

import ipaddress
import os

from minikubenet.overlay.bird_config import DEFAULT_AS, check_asn


def render(
    own_ip: ipaddress.IPv4Address, node_ips: list[ipaddress.IPv4Address], log_file: str, asn: int = DEFAULT_AS
) -> str:
    check_asn(asn)
    lines = [
        "# The lab's client network (lab/bgp_client.py): learns what the nodes announce.",
        f'log "{log_file}" {{ info, remote, warning, error, auth, fatal, bug }};',
        f"router id {own_ip};",
        "",
        "protocol device {",
        "  scan time 10;",
        "}",
        "",
        "protocol kernel {",
        "  ipv4 {",
        "    import none;",
        "    export where source = RTS_BGP;",
        "  };",
        "  learn off;",
        "}",
        "",
        "template bgp node {",
        f"  local {own_ip} as {asn};",
        "  hold time 9;",
        "  keepalive time 3;",
        "  direct;",
        "  connect delay time 0;",
        "  connect retry time 1;",
        "  error wait time 1, 10;",
        "  ipv4 {",
        "    import all;",
        "    export none;           # a client network announces nothing to the cluster",
        "  };",
        "}",
    ]
    for ip in sorted(set(node_ips)):
        name = "node_" + str(ip).replace(".", "_")
        lines += ["", f"protocol bgp {name} from node {{", f"  neighbor {ip} as {asn};", "}"]
    return "\n".join(lines) + "\n"


def files(lab_dir: str) -> tuple[str, str, str]:
    """(config, control socket, log) of the client's BIRD."""
    d = os.path.join(lab_dir, "client-bird")
    return os.path.join(d, "bird.conf"), os.path.join(d, "bird.ctl"), os.path.join(d, "bird.log")
