"""``minikubenet trace`` and ``minikubenet doctor``: the live cluster, hop by hop and check by check.

    minikubenet trace default/n1-p1 svc/default/web:80 --lab mkn
    minikubenet trace n1-p1 10.244.2.3:8080 --lab mkn --json
    minikubenet doctor --lab mkn [--node n2] [--json] [--no-probe]
    minikubenet doctor --node-name n1 --etcd-endpoints https://10.0.0.1:2379 --etcd-cafile ...   (on a real node)

In a lab (``--lab NAME``) every node's namespace is read; on a real node the host's own
kernel is, and etcd through the flags the agent takes. Exit code 1 when the packet is
dropped or doctor finds an error, with one line on stderr for what could not be read.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from minikubenet.cli.common import EXIT_ERROR, CliError, etcd_options, open_store
from minikubenet.diagnose import doctor as doctor_checks
from minikubenet.diagnose import gather
from minikubenet.diagnose.cluster import ClusterView
from minikubenet.diagnose.trace import TraceError, resolve, trace


def _lab(args):
    from minikubenet.lab.cluster import LAB_ROOT, Lab, LabError

    try:
        return Lab.existing(args.lab, root=args.lab_root or os.environ.get("MINIKUBENET_LAB_ROOT", LAB_ROOT))
    except LabError as e:
        raise CliError(str(e)) from None


def _view(args, nodes=None):
    try:
        if args.lab:
            return gather.from_lab(_lab(args), nodes)
        node_ip = ipaddress.IPv4Address(args.node_ip) if args.node_ip else None
        return gather.from_host(open_store(args), args.node_name, node_ip)
    except LookupError as e:
        raise CliError(str(e)) from None
    except ValueError as e:
        raise CliError(f"--node-ip: {e}") from None


def cmd_trace(args) -> int:
    started = time.monotonic()
    view = _view(args)
    try:
        src = resolve(view, args.src, is_destination=False)
        dst = resolve(view, args.dst, is_destination=True)
        result = trace(view, src, dst)
    except TraceError as e:
        raise CliError(str(e)) from None
    if args.flows and src.node in view.snapshots:
        from minikubenet.linux.live_state import conntrack_flows

        flows = conntrack_flows(view.snapshots[src.node].netns, str(dst.ip), dst.port, dst.protocol)
    else:
        flows = []
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({**result.as_dict(), "conntrack": flows, "seconds": round(elapsed, 3)}, indent=2))
    else:
        print(result.render())
        if args.flows:
            print(
                f"  conntrack on {src.node}: {len(flows)} flow(s) to {dst.ip}"
                + "".join(f"\n    {f}" for f in flows[:5])
            )
    return EXIT_ERROR if result.dropped else 0


def _etcd_health(args) -> doctor_checks.EtcdHealth:
    started = time.monotonic()
    try:
        if args.lab:
            # etcd's own measure of a health read ("took"), not etcdctl's process start
            lab = _lab(args)
            health = json.loads(lab.etcdctl("endpoint", "health", "-w", "json"))
            latency = max(_duration(h.get("took", "0s")) for h in health)
            if not all(h.get("health") for h in health):
                raise RuntimeError("; ".join(h.get("error", "unhealthy") for h in health if not h.get("health")))
            cert = lab.etcd_tls().cert
        else:
            open_store(args).ping()
            latency = time.monotonic() - started
            cert = args.etcd_certfile
    except Exception as e:  # any failure to talk to etcd is the finding itself
        return doctor_checks.EtcdHealth(False, None, str(e).strip().splitlines()[-1][:300] if str(e) else repr(e))
    not_after = None
    if cert:
        try:
            from cryptography import x509

            with open(cert, "rb") as f:
                not_after = x509.load_pem_x509_certificate(f.read()).not_valid_after_utc
        except (OSError, ValueError):
            not_after = None
    return doctor_checks.EtcdHealth(True, latency, cert_not_after=not_after, cert_path=cert or "")


def _duration(text: str) -> float:
    """Go's time.Duration text ("2.3ms", "850µs", "1.2s") in seconds."""
    for unit, factor in (("ms", 1e-3), ("µs", 1e-6), ("us", 1e-6), ("ns", 1e-9), ("s", 1.0)):
        if text.endswith(unit):
            try:
                return float(text[: -len(unit)]) * factor
            except ValueError:
                return 0.0
    return 0.0


def _mtu_probes(view, nodes) -> list[doctor_checks.MtuProbe]:
    """Each node sends one full-size DF echo to the next node's bridge address (a ring:
    one probe per node, every node's underlay link crossed both ways)."""
    from minikubenet.linux.live_state import df_echo

    names = [n for n in sorted(view.snapshots) if view.nodes.get(n) and view.nodes[n].subnet]
    pairs = []
    for i, name in enumerate(names):
        if len(names) < 2 or (nodes and name not in nodes):
            continue
        other = names[(i + 1) % len(names)]
        snap, node = view.snapshots[name], view.nodes[name]
        underlay = snap.link_with_ip(node.ip)
        if underlay is None:
            continue
        size = doctor_checks.pod_mtu(view, snap, underlay.mtu)
        target = view.nodes[other].subnet.network_address + 1  # its cni0
        pairs.append((name, other, target, size, snap.netns))

    def one(p):
        name, other, target, size, netns = p
        return doctor_checks.MtuProbe(name, other, target, size, df_echo(netns, target, size))

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, pairs))


def cmd_doctor(args) -> int:
    started = time.monotonic()
    nodes = [args.node] if args.node else None
    if args.lab and nodes:
        known = {n.name for n in _lab(args).topo.nodes}
        if args.node not in known:
            raise CliError(f"no node {args.node!r} in lab {args.lab}; one of: {', '.join(sorted(known))}")
    etcd = _etcd_health(args)
    view = None
    if etcd.reachable:
        try:
            view = _view(args, None)
        except CliError as e:
            if args.lab:
                raise
            # etcd answered the health read but not the reads that followed (every one of
            # them failed, so not even the network config came back): as unreachable - a
            # full conntrack table, for one, drops some of the connection's packets
            etcd = doctor_checks.EtcdHealth(False, None, f"it answered a health read, then not the reads: {e}")
    if view is None:
        # Without etcd only the node-local checks can run; they may name the cause (a full
        # conntrack table drops the connection to etcd too).
        findings = doctor_checks.check_etcd(etcd)
        if args.lab:
            netns_of = {n.name: n.netns for n in _lab(args).topo.nodes if not nodes or n.name in nodes}
        else:
            netns_of = {args.node_name: None}
        local = ClusterView(pod_network=ipaddress.IPv4Network("0.0.0.0/0"), backend="unknown")
        gather.read_nodes(local, netns_of)
        for snap in local.snapshots.values():
            findings += doctor_checks.check_conntrack(snap) + doctor_checks.check_sysctls(snap)
        return _print_findings(args, findings, local, list(netns_of), [], started)
    if not args.lab:
        nodes = [args.node_name]
        if view.nodes.get(args.node_name) is None:
            # a real node is known to etcd by its lease only: without it, say so plainly
            raise CliError(
                f"node {args.node_name} holds no lease in etcd: is minikubenet-agent running here? "
                "(give --node-ip if the lease names this node by another address)"
            )
    probes = [] if args.no_probe else _mtu_probes(view, nodes)
    findings = doctor_checks.check_all(view, etcd, probes, nodes, now=datetime.datetime.now(datetime.timezone.utc))
    return _print_findings(args, findings, view, nodes, probes, started)


def _print_findings(args, findings, view, nodes, probes, started: float) -> int:
    elapsed = time.monotonic() - started
    if args.json:
        print(
            json.dumps(
                {
                    "findings": [f.as_dict() for f in findings],
                    "nodes": sorted(view.snapshots),
                    "unreadable": view.unreadable,
                    "probes": len(probes),
                    "seconds": round(elapsed, 3),
                },
                indent=2,
            )
        )
    else:
        print(doctor_checks.render(findings, view, nodes))
        print(f"({elapsed:.1f}s, {len(probes)} path-MTU probes)")
    return EXIT_ERROR if any(f.severity == "error" for f in findings) else 0


def _where(p) -> None:
    p.add_argument("--lab", help="a lab's name: read its nodes' namespaces (default: this host, a real node)")
    p.add_argument(
        "--lab-root", help="where the lab's state lives (default $MINIKUBENET_LAB_ROOT or /run/minikubenet-lab)"
    )
    p.add_argument(
        "--node-name",
        default=socket.gethostname(),
        help="on a real node: its name, as the agent's --node-name (default: the host name)",
    )
    p.add_argument(
        "--node-ip",
        "--public-ip",
        dest="node_ip",
        help="on a real node: its underlay address, the lease's PublicIP (the agent's --public-ip)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    etcd_options(p)


def register(sub) -> None:
    t = sub.add_parser("trace", help="follow one packet through the live cluster, hop by hop")
    t.add_argument("src", help="ns/pod, a node name or an IP")
    t.add_argument("dst", help="ns/pod, svc/ns/name, a node name or an IP, with :PORT[/PROTO]")
    t.add_argument(
        "--flows", action="store_true", help="also list the conntrack entries of the flow on the source node"
    )
    _where(t)
    t.set_defaults(func=cmd_trace)
    d = sub.add_parser("doctor", help="check the cluster's network and say what to fix")
    d.add_argument("--node", help="only this node (lab)")
    d.add_argument("--no-probe", action="store_true", help="skip the path-MTU probe (DF echoes across the overlay)")
    _where(d)
    d.set_defaults(func=cmd_doctor)
