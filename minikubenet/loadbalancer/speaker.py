"""The speaker: on each node, announce exactly the LB IPs this node is responsible for,
and stop announcing the others. Two ways, as MetalLB's speaker has:

- ``--announce arp`` (layer 2, the default): answer ARP for the IPs ``pool.announcer``
  elects this node for (linux/lb_announce.py, gratuitous ARP on taking one over);
- ``--announce bgp`` (with the bgp backend): every eligible node announces every IP
  over BGP (``pool.eligible_nodes``), through its BIRD (linux/lb_routes.py).

    python -m minikubenet.loadbalancer.speaker --node-name n1 --nodes n1,n2,n3 \\
        --iface eth0 --etcd-endpoints ... [--announce arp|bgp] [--once]

Every node runs the same pure choice over the same services, endpoints and node list,
so they agree without talking to each other (MetalLB's speakers use memberlist for the
node list; here it is given). Without ``--once`` it re-reads the store every
``--period`` seconds: a node that leaves the list hands its IPs to the next one, which
announces them with gratuitous ARP.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence

from minikubenet.k8s_objects import Endpoint, Service, ValidationError, endpoints_from_k8s, service_from_k8s
from minikubenet.loadbalancer.pool import announcer, eligible_nodes

log = logging.getLogger("minikubenet.speaker")


def my_ips(
    services: Mapping[str, Service],
    endpoints: Mapping[str, Mapping[str, Sequence[Endpoint]]],
    nodes: Sequence[str],
    me: str,
    announce: str = "arp",
) -> set[ipaddress.IPv4Address]:
    """The LB IPs this node should answer for (arp: the elected node only) or announce
    over BGP (bgp: every eligible node)."""
    if announce == "bgp":
        return {
            ip
            for key, svc in services.items()
            if svc.type == "LoadBalancer" and me in eligible_nodes(svc, nodes, endpoints.get(key, {}))
            for ip in svc.load_balancer_ips
        }
    return {
        ip
        for key, svc in services.items()
        if svc.type == "LoadBalancer"
        for ip in svc.load_balancer_ips
        if announcer(ip, svc, nodes, endpoints.get(key, {})) == me
    }


def _snapshot(store) -> tuple[dict, dict]:
    snap = store.snapshot()
    services, endpoints = {}, {}
    for key, doc in snap.services.items():
        try:
            services[key] = service_from_k8s(doc)
        except ValidationError:
            continue
    for key, doc in snap.endpoints.items():
        try:
            endpoints[key] = endpoints_from_k8s(doc)
        except ValidationError:
            continue
    return services, endpoints


def sync(store, node: str, nodes: Sequence[str], iface: str, announce: str = "arp") -> tuple[list[str], list[str]]:
    """One pass: (added, withdrawn) IPs."""
    from minikubenet.linux import lb_announce, lb_routes

    services, endpoints = _snapshot(store)
    want = my_ips(services, endpoints, nodes, node, announce)
    if announce == "bgp":
        added, removed = lb_routes.reconcile(want)
        how, stop = "announcing over BGP", "no longer announcing"
    else:
        added, removed = lb_announce.reconcile(iface, want)
        how, stop = "answering ARP for", "no longer answering for"
    for ip in added:
        log.info("%s: %s %s", node, how, ip + (" (gratuitous ARP sent)" if announce == "arp" else ""))
    for ip in removed:
        log.info("%s: %s %s", node, stop, ip)
    return added, removed


def main(argv: list[str] | None = None) -> int:
    from minikubenet.store.etcd import EtcdStore, StoreError, TLSFiles, add_etcd_tls_options
    from minikubenet.store.services import ServiceStore

    p = argparse.ArgumentParser(prog="minikubenet-lb-speaker", description=__doc__.split("\n\n")[0])
    p.add_argument("--etcd-endpoints", default=os.environ.get("MINIKUBENET_ETCD_ENDPOINTS", "http://127.0.0.1:2379"))
    add_etcd_tls_options(p)
    p.add_argument("--node-name", required=True)
    p.add_argument("--nodes", required=True, help="the nodes taking part, comma-separated")
    p.add_argument("--iface", default="eth0", help="the underlay interface to answer ARP on")
    p.add_argument(
        "--announce",
        choices=("arp", "bgp"),
        default="arp",
        help="layer 2 (answer ARP, one node per IP) or BGP (through the node's BIRD: the bgp backend)",
    )
    p.add_argument("--period", type=float, default=2.0)
    p.add_argument("--once", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level="INFO", stream=sys.stderr, format="%(asctime)s speaker %(levelname)s %(message)s")
    nodes = [n for n in args.nodes.split(",") if n]
    if args.node_name not in nodes:
        log.error("--node-name %s is not in --nodes %s", args.node_name, args.nodes)
        return 2
    try:
        etcd = EtcdStore(args.etcd_endpoints.split(","), tls=TLSFiles.from_args(args))
    except (ValueError, OSError, StoreError) as e:
        log.error("cannot start: %s", e)
        return 1
    store = ServiceStore(etcd)
    try:
        while True:
            try:
                sync(store, args.node_name, nodes, args.iface, args.announce)
            except Exception as e:  # etcd away or the interface gone: try again
                if args.once:
                    log.error("%s", e)
                    return 1
                log.warning("sync failed (%s); retrying", e)
            if args.once:
                return 0
            time.sleep(args.period)
    finally:
        etcd.close()


if __name__ == "__main__":
    sys.exit(main())
