"""``minikubenet trace SRC DST[:PORT[/PROTO]]``: one packet's path through the live cluster.

The walk is what the kernel does with the first packet of a connection, hop by hop,
and at every hop it names the entry that decided it, read from the nodes right now
(diagnose/cluster.py's snapshots):

    source pod      its IP record (etcd) and its veth (alias minikubenet:<cid>:<ifname>)
    service         the proxy's live ruleset on the source node: iptables-save through
                    proxy/tracer.py, or the nftables service map; one path per endpoint,
                    each with its probability (-m statistic / numgen)
    routing         the longest-prefix match in the node's main table
    VXLAN           the neighbour entry (gateway -> remote VTEP MAC) and the FDB entry
                    (MAC -> remote underlay IP) on flannel.1; the remote device must
                    own that MAC
    host-gw / BGP   a route via the remote node's underlay address (BGP: proto bird;
                    the same hop, learned instead of programmed)
    router          across racks, a route via a router that is not a node: the lab's
                    router is read too, and its own route names the node it forwards
                    to; a router that cannot be read ends the walk ("leaves for")
    delivery        the destination node's route to its cni0 and the pod's veth on it
    policy          NetworkPolicy (policy/model.py's verdict, the semantics both renderings
                    are tested against): an egress denial drops at the source node, an
                    ingress denial at the destination's, naming the isolating policies;
                    an allowed connection names the policy and rule that allowed it

It ends with "delivered to ns/pod" or "dropped by <entry> on <node>" and the reason.
Everything here is pure: tests give it hand-made snapshots.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from minikubenet.diagnose.cluster import ClusterView, PodInfo
from minikubenet.linux.live_state import NodeSnapshot, RouteEntry
from minikubenet.pod_network import ownership_mark
from minikubenet.policy.model import EGRESS, Address, Verdict, verdict
from minikubenet.proxy.tracer import TracerError, trace_packet


class TraceError(Exception):
    """SRC or DST names nothing this cluster has; the message says what is missing."""


@dataclass(frozen=True)
class Endpoint:
    """Where a trace starts or ends: a pod, a node, a service or a bare address."""

    kind: str  # pod, node, service, ip
    ip: ipaddress.IPv4Address
    label: str  # "default/web-1", "n1", "svc/default/web", "10.0.0.9"
    node: str | None = None  # the node it lives on (pods, nodes)
    port: int | None = None
    protocol: str = "tcp"


@dataclass
class Hop:
    node: str | None
    what: str  # "source", "service", "route", "neighbour", ...
    text: str
    entry: str = ""  # the kernel entry or rule that decided it

    def as_dict(self) -> dict:
        return {"node": self.node, "what": self.what, "text": self.text, "entry": self.entry}


@dataclass
class Path:
    hops: list[Hop] = field(default_factory=list)
    result: str = ""  # "delivered to ns/pod" or "dropped by ... on node"
    delivered: bool = False
    uninspected: bool = False  # it left the nodes we could read (a real node sees only itself)
    probability: float = 1.0
    endpoint: str | None = None  # "ip:port" after the service's DNAT
    policy: Verdict | None = None  # NetworkPolicy's verdict on this path's connection

    def as_dict(self) -> dict:
        return {
            "endpoint": self.endpoint,
            "probability": round(self.probability, 4),
            "delivered": self.delivered,
            "result": self.result,
            "hops": [h.as_dict() for h in self.hops],
        }


@dataclass
class TraceResult:
    src: Endpoint
    dst: Endpoint
    paths: list[Path]

    @property
    def delivered(self) -> bool:
        return all(p.delivered for p in self.paths)

    @property
    def dropped(self) -> bool:
        """Some path ends in a drop (not merely beyond the nodes we could read)."""
        return any(not p.delivered and not p.uninspected for p in self.paths)

    def as_dict(self) -> dict:
        return {
            "src": self.src.label,
            "dst": self.dst.label,
            "delivered": self.delivered,
            "paths": [p.as_dict() for p in self.paths],
        }

    def render(self) -> str:
        lines = [
            f"trace {self.src.label} ({self.src.ip}) -> {self.dst.label} ({self.dst.ip}"
            + (f":{self.dst.port}/{self.dst.protocol}" if self.dst.port else "")
            + ")"
        ]
        for path in self.paths:
            if len(self.paths) > 1 or path.endpoint:
                lines.append(f"  path to {path.endpoint} (p={path.probability:.2f}):")
            for h in path.hops:
                where = f"[{h.node}] " if h.node else ""
                lines.append(f"    {where}{h.what}: {h.text}" + (f"\n        by: {h.entry}" if h.entry else ""))
            lines.append(f"    => {path.result}")
        return "\n".join(lines)


def policy_verdict(view: ClusterView, src: Endpoint, ip: ipaddress.IPv4Address, port: int | None) -> Verdict | None:
    """What NetworkPolicy says about ``src`` opening a connection to ``ip``:``port`` (after
    a service's DNAT: Kubernetes judges the real endpoint). None: no policies were read,
    or no port to judge (a policy's rules name ports, so a portless trace cannot be judged)."""
    if view.policy is None or port is None or not view.policy.policies:
        return None
    cluster = view.policy
    src_pod = cluster.pod_by_ip(str(src.ip))
    source = Address(str(src.ip), src_pod, src.node if src.kind == "node" else None)
    target = Address(str(ip), cluster.pod_by_ip(str(ip)))
    return verdict(cluster, source, target, port, src.protocol.upper())


def _policy_entry(v: Verdict) -> str:
    if v.policy is not None:
        return f"NetworkPolicy {v.policy} rule {v.rule} ({(v.direction or '').lower()})"
    if v.isolating:
        return f"NetworkPolicy {', '.join(v.isolating)} ({(v.direction or '').lower()}: no rule allows it)"
    return "no NetworkPolicy selects either end"


# --------------------------------------------------------------------------- resolving names

_TARGET = re.compile(r"^(?P<name>.+?)(?::(?P<port>\d+)(?:/(?P<proto>tcp|udp|sctp))?)?$", re.I)


def resolve(view: ClusterView, text: str, is_destination: bool) -> Endpoint:
    """``ns/pod``, ``svc/ns/name``, a node name or an IP, with ``:PORT[/PROTO]`` on DST."""
    m = _TARGET.match(text.strip())
    if not m or not m["name"]:
        raise TraceError(f"cannot read {text!r}: expected ns/pod, svc/ns/name, a node name or an IP")
    name, port, proto = m["name"], int(m["port"]) if m["port"] else None, (m["proto"] or "tcp").lower()
    if port is not None and not is_destination:
        raise TraceError(f"{text!r}: a port belongs to the destination only")
    if name.startswith("svc/"):
        key = name[4:] if name.count("/") == 2 else f"default/{name[4:]}"
        svc = view.services.get(key)
        if svc is None:
            raise TraceError(f"no service {key} (services: {', '.join(sorted(view.services)) or 'none'})")
        if not is_destination:
            raise TraceError("a service can only be a destination (it has no address of its own to send from)")
        if port is None:
            if len(svc.ports) != 1:
                raise TraceError(f"service {key} has ports {[p[1] for p in svc.ports]}: say which, svc/{key}:PORT")
            port, proto = svc.ports[0][1], svc.ports[0][2].lower()
        return Endpoint("service", svc.cluster_ip, f"svc/{key}", None, port, proto)
    if name in view.nodes:
        n = view.nodes[name]
        return Endpoint("node", n.ip, name, name, port, proto)
    try:
        ip = ipaddress.IPv4Address(name)
    except ValueError:
        key = name if "/" in name else f"default/{name}"
        pod = view.pods.get(key)
        if pod is None:
            raise TraceError(
                f"no pod {key} and no node {name!r} (pods: {', '.join(sorted(view.pods)) or 'none'}; "
                f"nodes: {', '.join(sorted(view.nodes))})"
            ) from None
        return Endpoint("pod", pod.ip, pod.key, pod.node, port, proto)
    pod, node, svc = view.pod_by_ip(ip), view.node_by_ip(ip), view.service_by_ip(ip)
    if pod:
        return Endpoint("pod", ip, pod.key, pod.node, port, proto)
    if node:
        return Endpoint("node", ip, node.name, node.name, port, proto)
    if svc and is_destination:
        return Endpoint("service", ip, f"svc/{svc.key}", None, port or svc.ports[0][1], proto)
    owner = view.node_of_subnet_ip(ip)
    if owner is not None:
        return Endpoint("ip", ip, str(ip), owner.name, port, proto)  # a pod address nobody holds (yet)
    if ip in view.pod_network:
        raise TraceError(f"{ip} is in the pod network {view.pod_network} but in no node's subnet")
    raise TraceError(
        f"{ip} is in no network of this cluster (pods {view.pod_network}, "
        f"nodes {', '.join(str(n.ip) for n in view.nodes.values())})"
    )


# --------------------------------------------------------------------------- the walk


def longest_match(routes: list[RouteEntry], ip: ipaddress.IPv4Address) -> RouteEntry | None:
    candidates = [r for r in routes if ip in r.dst]
    return max(candidates, key=lambda r: r.dst.prefixlen) if candidates else None


def route_text(r: RouteEntry) -> str:
    via = f" via {r.gateway}" if r.gateway else ""
    return (
        f"{'default' if r.dst.prefixlen == 0 else r.dst}{via} dev {r.dev}"
        + (" onlink" if r.onlink else "")
        + ("" if r.protocol in ("boot", "kernel", "static") else f" proto {r.protocol}")
    )


def kube_rules_only(iptables_save: str) -> str:
    """The proxy's part of a live ``iptables-save -t nat``: the KUBE-* chains and the
    jumps into them from the built-in chains; other software's rules are not ours to
    interpret (the tracer refuses what it does not model)."""
    out = []
    for line in iptables_save.splitlines():
        if line.startswith(("*", "COMMIT")):
            out.append(line)
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if name.startswith("KUBE-") or name in ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"):
                out.append(line)
        elif line.startswith("-A "):
            chain = line.split()[1]
            if chain.startswith("KUBE-") or " -j KUBE-" in line:
                out.append(line)
    return "\n".join(out) + "\n"


_NFT_SERVICE = r"{ip} \. {proto} \. {port} : goto \"?(?P<chain>[\w./-]+)\"?"


def nft_endpoints(
    nft_text: str, ip: ipaddress.IPv4Address, port: int, proto: str
) -> tuple[list[tuple[str, float]], str]:
    """(["ip:port", probability]..., the deciding map element) from the live nftables
    table: the service-ips element, the service chain's numgen vmap, the endpoint
    chains' ``dnat to``."""
    m = re.search(_NFT_SERVICE.format(ip=re.escape(str(ip)), proto=proto, port=port), nft_text)
    if not m:
        return [], ""
    chain = m["chain"]
    body = _nft_chain(nft_text, chain)
    targets = re.findall(r"goto \"?(endpoint-[\w./-]+)\"?", body)
    out = []
    for t in targets:
        d = re.search(r"dnat to ([\d.]+:\d+)", _nft_chain(nft_text, t))
        if d:
            out.append((d.group(1), 1.0 / len(targets)))
    return out, f"service-ips element {ip} . {proto} . {port} : goto {chain}"


def _nft_chain(text: str, name: str) -> str:
    m = re.search(r"chain \"?" + re.escape(name) + r"\"? \{(.*?)\n\t\}", text, re.S)
    return m.group(1) if m else ""


def service_dnat(snap: NodeSnapshot, src: ipaddress.IPv4Address, dst: Endpoint) -> list[tuple[str, float, str]]:
    """The endpoints the source node's proxy sends ``src -> dst`` to: [(ip:port, p, the
    rule that chose it)]; [("", 1.0, rule)] when the proxy rejects or drops it. Raises
    TraceError when the node has no proxy rules."""
    port = dst.port or 0
    if snap.iptables_nat:
        try:
            t = trace_packet(
                kube_rules_only(snap.iptables_nat),
                str(src),
                str(dst.ip),
                port,
                dst.protocol,
                local_ips=[str(ip) for ip in snap.local_ips()],
                jumps=(),
            )
        except TracerError as e:
            raise TraceError(f"cannot follow the proxy's live iptables rules on {snap.node}: {e}") from None
        out = []
        for o in t.outcomes:
            decisive = [r for r in o.rules if "-j DNAT" in r or "-j REJECT" in r or "-j DROP" in r]
            rule = decisive[-1] if decisive else (o.rules[-1] if o.rules else "")
            if o.dnat and o.verdict == "ACCEPT":
                out.append((o.destination, o.probability, rule))
            elif o.verdict in ("REJECT", "DROP"):
                out.append(("", o.probability, rule or f"{o.verdict} in the nat/filter rules"))
        return out
    if snap.nft_proxy:
        eps, element = nft_endpoints(snap.nft_proxy, dst.ip, port, dst.protocol)
        return [(ep, p, element) for ep, p in eps]
    raise TraceError(
        f"node {snap.node} has no service proxy rules (neither iptables KUBE-SERVICES "
        "nor the nftables table): is minikubenet-proxy running there?"
    )


def trace(view: ClusterView, src: Endpoint, dst: Endpoint) -> TraceResult:
    """Every path of ``src -> dst`` (one per service endpoint)."""
    if src.node is None:
        raise TraceError(f"{src.label} is not on any node of this cluster: start from a pod, a node or a pod IP")
    start = view.snapshots.get(src.node)
    if start is None:
        raise TraceError(f"node {src.node} cannot be read: {view.unreadable.get(src.node, 'not inspected')}")
    base = [Hop(src.node, "source", _source_text(view, start, src))]
    if dst.kind != "service":
        path = Path(hops=list(base))
        _walk(view, src, dst.ip, dst.port, path, src.node)
        return TraceResult(src, dst, [path])
    endpoints = service_dnat(start, src.ip, dst)
    if not endpoints:
        p = Path(
            hops=base
            + [
                Hop(
                    src.node,
                    "service",
                    f"{dst.label} {dst.ip}:{dst.port}/{dst.protocol}: no rule for this service port",
                )
            ]
        )
        p.result = f"dropped by the proxy (no rule for {dst.ip}:{dst.port}) on {src.node}"
        return TraceResult(src, dst, [p])
    paths = []
    for ep, probability, rule in sorted(endpoints):
        p = Path(hops=list(base), probability=probability, endpoint=ep or None)
        if not ep:
            _drop(
                p,
                src.node,
                "service",
                f"{dst.label} {dst.ip}:{dst.port}/{dst.protocol}: rejected (no ready endpoint)",
                rule,
            )
            paths.append(p)
            continue
        ip_text, _, port_text = ep.partition(":")
        p.hops.append(
            Hop(
                src.node,
                "service",
                f"{dst.label} {dst.ip}:{dst.port}/{dst.protocol} DNAT to {ep} (p={probability:.2f})",
                rule,
            )
        )
        _walk(view, src, ipaddress.IPv4Address(ip_text), int(port_text), p, src.node)
        paths.append(p)
    return TraceResult(src, dst, paths)


def _source_text(view: ClusterView, snap: NodeSnapshot, src: Endpoint) -> str:
    if src.kind != "pod":
        return f"{src.label} {src.ip}"
    pod = view.pods.get(src.label)
    veth = _pod_veth(snap, pod) if pod else None
    return f"pod {src.label} {src.ip}" + (f", host veth {veth} on {view.bridge}" if veth else "")


def _pod_veth(snap: NodeSnapshot, pod: PodInfo) -> str | None:
    if not pod.container_id:
        return None
    mark = ownership_mark(pod.container_id, pod.ifname)
    return next((link.name for link in snap.links.values() if link.alias == mark), None)


def _drop(path: Path, node: str | None, what: str, text: str, entry: str = "") -> None:
    path.hops.append(Hop(node, what, text, entry))
    path.result = f"dropped by {entry or what} on {node}: {text}"


def _walk(
    view: ClusterView, src: Endpoint, ip: ipaddress.IPv4Address, port: int | None, path: Path, node: str, depth: int = 0
) -> None:
    """Route ``ip`` from ``node``, following the overlay to the node that delivers it."""
    snap = view.snapshots.get(node)
    if snap is None and node not in view.unreadable:
        path.hops.append(Hop(node, "node", "not inspected from here"))
        path.result, path.uninspected = f"leaves for {node}: run `minikubenet trace` there to follow it further", True
        return
    if snap is None:
        _drop(path, node, "node", f"cannot be read: {view.unreadable[node]}", "the node itself")
        return
    if depth > 4:
        _drop(path, node, "route", "routing loop between nodes", "the routes")
        return
    if depth == 0:
        path.policy = policy_verdict(view, src, ip, port)
        if path.policy is not None and not path.policy.allowed and path.policy.direction == EGRESS:
            _drop(path, node, "policy", path.policy.reason, _policy_entry(path.policy))
            return
    if ip in snap.local_ips():
        path.hops.append(Hop(node, "local", f"{ip} is an address of {node}"))
        path.result, path.delivered = f"delivered to node {node}", True
        return
    route = longest_match(snap.routes, ip)
    if route is None or route.kind in ("blackhole", "unreachable", "prohibit"):
        _drop(path, node, "route", f"no route to {ip}", route_text(route) if route else "the main routing table")
        return
    path.hops.append(Hop(node, "route", f"to {ip}", route_text(route)))
    if route.dev == view.bridge and route.gateway is None:
        _deliver_local(view, snap, ip, path, node)
    elif route.dev == view.vxlan_device:
        _vxlan_hop(view, snap, ip, port, route, path, node, depth, src)
    elif route.gateway is not None:
        nxt = view.node_by_ip(route.gateway)
        if nxt is None:
            _router_hop(view, src, ip, port, route, path, node, depth)
            return
        kind = "bgp" if route.protocol == "bird" else "host-gw"
        path.hops.append(Hop(node, kind, f"to {nxt.name} ({nxt.ip}) on the underlay, unencapsulated"))
        _walk(view, src, ip, port, path, nxt.name, depth + 1)
    else:
        # a connected route on the underlay: the destination is another node's address
        nxt = view.node_by_ip(ip)
        if nxt is None:
            _drop(path, node, "route", f"{ip} is on {route.dev}'s segment but no node has it", route_text(route))
            return
        path.hops.append(Hop(node, "underlay", f"to {nxt.name} on {route.dev}"))
        _walk(view, src, ip, port, path, nxt.name, depth + 1)


def _router_hop(
    view: ClusterView,
    src: Endpoint,
    ip: ipaddress.IPv4Address,
    port: int | None,
    route: RouteEntry,
    path: Path,
    node: str,
    depth: int,
) -> None:
    """The gateway is not a node: a router of a routed underlay (racks). If its kernel
    can be read (the lab's), its own route decides the next hop; if not, the walk stops
    there, naming the node that holds the destination - not a drop, the packet left."""
    gw = route.gateway
    assert gw is not None
    how = "bgp" if route.protocol == "bird" else "route"
    found = view.router_by_ip(gw)
    if found is None:
        owner = view.node_of_subnet_ip(ip) or view.node_by_ip(ip)
        if owner is None:
            _drop(path, node, "route", f"gateway {gw} is no node of this cluster", route_text(route))
            return
        path.hops.append(
            Hop(node, how, f"to {gw}, a router (no node of this cluster) on the underlay", route_text(route))
        )
        path.result, path.uninspected = (
            f"leaves for router {gw}, which cannot be read from here; {ip} is on {owner.name}: "
            f"run `minikubenet trace` there to follow it further",
            True,
        )
        return
    name, rsnap = found
    path.hops.append(Hop(node, how, f"to router {name} ({gw}) on the underlay, unencapsulated"))
    rroute = longest_match(rsnap.routes, ip)
    if rroute is None or rroute.kind in ("blackhole", "unreachable", "prohibit"):
        _drop(path, name, "route", f"the router has no route to {ip}", route_text(rroute) if rroute else "its table")
        return
    path.hops.append(Hop(name, "route", f"to {ip}", route_text(rroute)))
    nxt = view.node_by_ip(rroute.gateway if rroute.gateway is not None else ip)
    if nxt is None:
        _drop(path, name, "route", f"{rroute.gateway or ip} is no node of this cluster", route_text(rroute))
        return
    path.hops.append(Hop(name, "router", f"to {nxt.name} ({nxt.ip}) on {rroute.dev}"))
    _walk(view, src, ip, port, path, nxt.name, depth + 1)


def _vxlan_hop(
    view: ClusterView, snap: NodeSnapshot, ip, port, route: RouteEntry, path: Path, node: str, depth: int, src: Endpoint
) -> None:
    gw = route.gateway
    neigh = next((n for n in snap.neighbours if n.dev == view.vxlan_device and n.ip == gw and n.mac), None)
    if neigh is None or neigh.mac is None:
        _drop(
            path,
            node,
            "neighbour",
            f"no neighbour entry for {gw} on {view.vxlan_device}: the remote VTEP's "
            "MAC is unknown, so the packet is never encapsulated (flannel programs it from the lease)",
            f"neigh {gw} dev {view.vxlan_device}",
        )
        return
    path.hops.append(
        Hop(
            node,
            "neighbour",
            f"{gw} is VTEP MAC {neigh.mac}",
            f"neigh {gw} lladdr {neigh.mac} dev {view.vxlan_device}" + (" PERMANENT" if neigh.permanent else ""),
        )
    )
    fdb = next((f for f in snap.fdb if f.dev == view.vxlan_device and f.mac == neigh.mac and f.dst), None)
    if fdb is None:
        _drop(
            path,
            node,
            "fdb",
            f"no FDB entry for {neigh.mac} on {view.vxlan_device}: the kernel does not know "
            "which underlay address to send the VXLAN packet to",
            f"fdb {neigh.mac} dev {view.vxlan_device}",
        )
        return
    path.hops.append(
        Hop(node, "fdb", f"VXLAN (UDP 8472) to {fdb.dst}", f"fdb {fdb.mac} dev {view.vxlan_device} dst {fdb.dst}")
    )
    remote = view.node_by_ip(fdb.dst) if fdb.dst is not None else None
    if remote is None:
        _drop(path, node, "underlay", f"{fdb.dst} is no node of this cluster", f"fdb {fdb.mac} dst {fdb.dst}")
        return
    rsnap = view.snapshots.get(remote.name)
    if rsnap is None and remote.name not in view.unreadable:
        path.hops.append(Hop(remote.name, "node", "not inspected from here"))
        path.result, path.uninspected = (
            (f"leaves for {remote.name} (VXLAN): run `minikubenet trace` there to follow it further"),
            True,
        )
        return
    if rsnap is None:
        _drop(
            path,
            remote.name,
            "node",
            f"cannot be read: {view.unreadable.get(remote.name, 'not inspected')}",
            "the node itself",
        )
        return
    dev = rsnap.links.get(view.vxlan_device)
    if dev is None or (dev.mac or "").lower() != neigh.mac.lower():
        have = f"has MAC {dev.mac}" if dev else "has no such device"
        _drop(
            path,
            remote.name,
            "vxlan",
            f"{view.vxlan_device} {have}, but {node} sends to VTEP MAC {neigh.mac}: "
            "the decapsulated frame is not for it (a stale lease or neighbour)",
            f"{view.vxlan_device} on {remote.name}",
        )
        return
    path.hops.append(Hop(remote.name, "vxlan", f"decapsulated on {view.vxlan_device} (VNI {dev.vxlan_vni})"))
    _walk(view, src, ip, port, path, remote.name, depth + 1)


def _deliver_local(view: ClusterView, snap: NodeSnapshot, ip, path: Path, node: str) -> None:
    pod = view.pod_by_ip(ip)
    if pod is None:
        _drop(path, node, "bridge", f"no pod holds {ip} (no IP record)", f"{view.bridge} on {node}")
        return
    if pod.node != node:
        _drop(
            path,
            node,
            "bridge",
            f"{ip} belongs to {pod.key} on {pod.node}, but {node} routes it to its own {view.bridge}",
            f"{view.bridge} on {node}",
        )
        return
    veth = _pod_veth(snap, pod)
    link = snap.links.get(veth) if veth else None
    if link is None or veth is None:
        _drop(
            path,
            node,
            "veth",
            f"pod {pod.key}'s veth is missing on {node} (its IP record has no interface)",
            f"a device aliased {ownership_mark(pod.container_id, pod.ifname)}",
        )
        return
    if link.master != view.bridge or not link.up:
        _drop(path, node, "veth", f"{veth} is {'down' if not link.up else 'not on ' + view.bridge}", veth)
        return
    decision = path.policy
    if decision is not None and not decision.allowed:  # ingress: judged on the pod's own node
        _drop(path, node, "policy", decision.reason, _policy_entry(decision))
        return
    if decision is not None and decision.policy is not None:
        path.hops.append(Hop(node, "policy", decision.reason, _policy_entry(decision)))
    path.hops.append(Hop(node, "bridge", f"{view.bridge} -> {veth} -> pod {pod.key}", f"{veth} master {view.bridge}"))
    path.result, path.delivered = f"delivered to {pod.key}", True
