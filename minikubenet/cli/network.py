"""``minikubenet network init|show``: the cluster network config in etcd, in flannel's
layout (``<etcd-prefix>/config``), and the subnet leases the nodes hold under it.

    minikubenet network init --network 10.244.0.0/16 --subnet-len 24 --backend vxlan
    minikubenet network show
"""

from __future__ import annotations

import ipaddress

from minikubenet.cli.common import CliError, etcd_options, open_store


def _bgp_peer(text: str) -> dict:
    """ "10.0.0.1", "10.0.0.1/65001", "10.0.1.1@10.0.1.0/24" (only for the nodes in that
    subnet: a rack's router) -> a Backend.Peers entry (validated by make_config)."""
    from minikubenet.network_config import ConfigError

    address, at, node_subnet = text.partition("@")
    ip, slash, asn = address.partition("/")
    peer: dict = {"PeerIP": ip}
    if slash:
        if not asn.isdigit():
            raise ConfigError(f"--bgp-peer {text!r}: expected PEER-IP[/AS][@NODE-SUBNET]")
        peer["AS"] = int(asn)
    if at:
        peer["NodeSubnet"] = node_subnet
    return peer


def cmd_network_init(args) -> int:
    from minikubenet.network_config import ConfigError, check_no_overlap, make_config

    try:
        if (args.bgp_peer or args.no_node_mesh or args.route_reflector) and args.backend != "bgp":
            raise ConfigError("--bgp-peer, --no-node-mesh and --route-reflector are options of --backend bgp")
        config = make_config(
            args.network,
            args.subnet_len,
            args.backend,
            args.vni,
            args.port,
            args.direct_routing,
            bgp_peers=[_bgp_peer(text) for text in args.bgp_peer],
            node_mesh=not args.no_node_mesh,
            route_reflectors=args.route_reflector,
        )
        others = {"service network": ipaddress.IPv4Network(args.service_network)}
        check_no_overlap(config, others)
    except (ConfigError, ValueError) as e:
        raise CliError(str(e)) from None
    store = open_store(args)
    existing = store.get_config_raw()
    if existing is not None:
        from minikubenet.network_config import parse_config

        try:
            current = parse_config(existing)
        except ConfigError:
            current = None
        if current == config and current.backend_options == config.backend_options:
            print(f"{store.layout.config} already holds this config: {config.to_json()}")
            return 0
        leases = store.list_leases()
        outside = [
            str(rec.subnet)
            for rec in leases
            if not rec.subnet.subnet_of(config.network) or rec.subnet.prefixlen != config.subnet_len
        ]
        if outside:
            raise CliError(
                f"nodes hold subnets that the new config would not contain ({', '.join(outside)}); "
                "stop their agents and remove their leases first"
            )
        if not args.force:
            raise CliError(
                f"{store.layout.config} already holds a different config ({existing.decode()}); "
                "pass --force to replace it"
            )
    store.put_config(config)
    print(f"wrote {store.layout.config}: {config.to_json()}")
    return 0


def cmd_network_show(args) -> int:
    store = open_store(args)
    raw = store.get_config_raw()
    if raw is None:
        raise CliError(f"no network config at {store.layout.config}; run `minikubenet network init`")
    print(f"{store.layout.config}: {raw.decode()}")
    for rec in store.list_leases():
        print(f"{store.layout.subnet(rec.subnet)}: {rec.attrs_json()}")
    return 0


def register(sub) -> None:
    net = sub.add_parser("network", help="the cluster network config in etcd").add_subparsers(dest="cmd", required=True)
    init = net.add_parser("init", help="write the network config (flannel's layout)")
    etcd_options(init)
    init.add_argument("--network", required=True, help="pod network, e.g. 10.244.0.0/16")
    init.add_argument("--subnet-len", type=int, default=24, help="prefix length of each node's subnet")
    init.add_argument("--backend", default="vxlan", help="vxlan, host-gw or bgp")
    init.add_argument("--vni", type=int)
    init.add_argument("--port", type=int)
    init.add_argument("--direct-routing", action="store_true", help="vxlan: plain routes to same-segment peers")
    init.add_argument(
        "--bgp-peer",
        action="append",
        default=[],
        metavar="IP[/AS][@NODE-SUBNET]",
        help="bgp: a BGP speaker the nodes peer with besides each other (a router; with @NODE-SUBNET only "
        "the nodes in that subnet: a rack's ToR; repeatable)",
    )
    init.add_argument("--no-node-mesh", action="store_true", help="bgp: no node-to-node mesh (peers only)")
    init.add_argument(
        "--route-reflector",
        action="append",
        default=[],
        metavar="NODE-IP",
        help="bgp: this node is a route reflector; the others of its segment peer with it instead of "
        "with each other (Calico's in-cluster route reflectors; repeatable)",
    )
    init.add_argument("--service-network", default="10.96.0.0/12", help="must not overlap the pod network")
    init.add_argument("--force", action="store_true", help="replace a different existing config")
    init.set_defaults(func=cmd_network_init)
    show = net.add_parser("show", help="print the config and the subnet leases")
    etcd_options(show)
    show.set_defaults(func=cmd_network_show)
