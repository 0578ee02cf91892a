"""``minikubenet doctor [--node N]``: what is wrong with this cluster's network, and the fix.

Each check compares two sources that must agree and reports every difference as a
finding with the fix a person would apply:

    mtu          underlay - 50 = flannel.1 = cni0 = every pod veth (vxlan; without
                 encapsulation all equal the underlay), and a DF ping of exactly the pod
                 MTU across the overlay (the probe, gather.py) that must pass
    conntrack    count against nf_conntrack_max, and the kernel's drop counters: a full
                 table drops new connections (the seed's warning)
    ipam         every pod IP record has its veth on the node, every veth we marked has
                 its record (either side alone is a leak)
    leases       every lease belongs to a node whose agent runs (a dead node's lease
                 keeps every other node routing into the void until it expires)
    overlay      the kernel's routes, neighbours and FDB entries against the leases:
                 missing (a node unreachable) and stray (traffic sent to a dead VTEP)
    sysctls      ip_forward, rp_filter, bridge-nf-call-iptables
    etcd         reachable, how fast, client certificate expiry

Findings are "error" (something is broken: exit code 1) or "warning". The checks are
pure functions of the ClusterView and the probe results, so tests build both by hand.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from minikubenet.diagnose.cluster import ClusterView, NodeInfo
from minikubenet.linux.live_state import NodeSnapshot
from minikubenet.pod_network import MARK_PREFIX, ownership_mark

VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
CONNTRACK_WARN = 0.9
CERT_WARN_DAYS = 30
ETCD_SLOW_S = 0.5


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" or "warning"
    check: str  # mtu, conntrack, ipam, leases, overlay, sysctl, etcd, node
    node: str | None
    text: str
    fix: str

    def as_dict(self) -> dict:
        return {"severity": self.severity, "check": self.check, "node": self.node, "text": self.text, "fix": self.fix}


@dataclass(frozen=True)
class EtcdHealth:
    reachable: bool
    latency_s: float | None
    error: str = ""
    cert_not_after: datetime.datetime | None = None
    cert_path: str = ""


@dataclass(frozen=True)
class MtuProbe:
    src: str
    dst: str
    target: ipaddress.IPv4Address
    size: int  # the whole IP packet: the pod MTU
    passed: bool


def pod_mtu(view: ClusterView, snap: NodeSnapshot, underlay_mtu: int) -> int:
    return underlay_mtu - VXLAN_OVERHEAD if view.backend == "vxlan" else underlay_mtu


def check_all(
    view: ClusterView,
    etcd: EtcdHealth | None = None,
    probes: Sequence[MtuProbe] = (),
    nodes: list[str] | None = None,
    now: datetime.datetime | None = None,
) -> list[Finding]:
    wanted = set(nodes) if nodes else set(view.nodes) | set(view.snapshots) | set(view.unreadable)
    out: list[Finding] = []
    for name, why in sorted(view.unreadable.items()):
        if name in wanted:
            out.append(
                Finding(
                    "error",
                    "node",
                    name,
                    f"cannot read the node: {why}",
                    "start the node (or check its network namespace); trace and doctor need its kernel",
                )
            )
    if etcd is not None:
        out += check_etcd(etcd, now)
    out += check_leases(view, wanted)
    for name, snap in sorted(view.snapshots.items()):
        if name not in wanted:
            continue
        node = view.nodes.get(name)
        out += check_sysctls(snap)
        out += check_conntrack(snap)
        if node is None:
            out.append(
                Finding(
                    "error",
                    "leases",
                    name,
                    "this node holds no subnet lease",
                    "start minikubenet-agent on it (it takes a lease at start)",
                )
            )
            continue
        out += check_mtu(view, node, snap)
        out += check_ipam(view, node, snap)
        out += check_overlay(view, node, snap)
    for p in probes:
        if not p.passed and (p.src in wanted or p.dst in wanted):
            out.append(
                Finding(
                    "error",
                    "mtu",
                    p.src,
                    f"a {p.size}-byte packet with DF set does not reach {p.dst} "
                    f"({p.target}) across the overlay: full-size pod packets are dropped on the way",
                    "make the pod MTU (cni0, veths) the underlay MTU minus the overlay's overhead, and "
                    "check the underlay's MTU between the nodes",
                )
            )
    return out


def check_etcd(e: EtcdHealth, now: datetime.datetime | None = None) -> list[Finding]:
    out = []
    if not e.reachable:
        out.append(
            Finding(
                "error",
                "etcd",
                None,
                f"etcd does not answer: {e.error}",
                "start etcd or fix --etcd-endpoints; without it no pod gets an IP and no node a lease",
            )
        )
    elif e.latency_s is not None and e.latency_s > ETCD_SLOW_S:
        out.append(
            Finding(
                "warning",
                "etcd",
                None,
                f"etcd answered a full read in {e.latency_s:.2f}s",
                "a slow etcd delays pod starts and lease renewals: check its disk (fsync) and load",
            )
        )
    if e.cert_not_after is not None:
        now = now or datetime.datetime.now(datetime.timezone.utc)
        left = e.cert_not_after - now
        if left.total_seconds() <= 0:
            out.append(
                Finding(
                    "error",
                    "etcd",
                    None,
                    f"the client certificate {e.cert_path} expired on {e.cert_not_after:%Y-%m-%d}",
                    "issue a new client certificate from the etcd CA",
                )
            )
        elif left.days < CERT_WARN_DAYS:
            out.append(
                Finding(
                    "warning",
                    "etcd",
                    None,
                    f"the client certificate {e.cert_path} expires in {left.days} days ({e.cert_not_after:%Y-%m-%d})",
                    "renew it before it expires",
                )
            )
    return out


def check_leases(view: ClusterView, wanted: set[str]) -> list[Finding]:
    out = []
    for lease in view.leases:
        owner = view.node_by_ip(lease.public_ip)
        if owner is None or owner.name not in wanted:
            continue
        if owner.agent_running is False:
            out.append(
                Finding(
                    "error",
                    "leases",
                    owner.name,
                    f"lease {lease.subnet} ({lease.public_ip}) belongs to {owner.name}, whose agent is not "
                    "running: every other node still routes that subnet to it",
                    f"start the agent on {owner.name}, or delete the lease if the node is gone "
                    "(it also expires after its TTL)",
                )
            )
    return out


def check_sysctls(snap: NodeSnapshot) -> list[Finding]:
    s, out = snap.sysctls, []
    if s.get("net.ipv4.ip_forward") not in (None, "1"):
        out.append(
            Finding(
                "error",
                "sysctl",
                snap.node,
                "net.ipv4.ip_forward is 0: the node does not forward between its pods and the other nodes",
                "sysctl -w net.ipv4.ip_forward=1 (the agent sets it at start; something reset it)",
            )
        )
    for key in ("net.ipv4.conf.all.rp_filter", f"net.ipv4.conf.{'flannel.1'}.rp_filter"):
        if s.get(key) == "1":
            out.append(
                Finding(
                    "warning",
                    "sysctl",
                    snap.node,
                    f"{key} is 1 (strict reverse-path filtering): a packet "
                    "arriving on an interface other than the route back to its source is dropped",
                    f"sysctl -w {key}=2 (loose), as Calico and Cilium set it",
                )
            )
    if s.get("net.bridge.bridge-nf-call-iptables") == "0":
        out.append(
            Finding(
                "warning",
                "sysctl",
                snap.node,
                "net.bridge.bridge-nf-call-iptables is 0: traffic between "
                "pods on the same bridge skips iptables (a Service from a pod to a pod on the same node "
                "is not translated back)",
                "sysctl -w net.bridge.bridge-nf-call-iptables=1",
            )
        )
    return out


def check_conntrack(snap: NodeSnapshot) -> list[Finding]:
    t = snap.conntrack
    if t is None or t.max <= 0:
        return []
    out = []
    if t.full:
        out.append(
            Finding(
                "error",
                "conntrack",
                snap.node,
                f"the conntrack table is full ({t.count} of {t.max}): "
                "new connections to and from this node's pods are dropped",
                "raise net.netfilter.nf_conntrack_max (memory: ~300 bytes per entry), shorten "
                "nf_conntrack_tcp_timeout_established, or find the pod that opens so many connections",
            )
        )
    elif t.fill > CONNTRACK_WARN:
        out.append(
            Finding(
                "warning",
                "conntrack",
                snap.node,
                f"the conntrack table is {t.fill:.0%} full ({t.count} of {t.max})",
                "raise net.netfilter.nf_conntrack_max before it fills",
            )
        )
    drops = {k: t.stat(k) for k in ("drop", "early_drop", "insert_failed") if t.stat(k)}
    if drops:
        out.append(
            Finding(
                "warning",
                "conntrack",
                snap.node,
                "the kernel dropped connections for want of conntrack "
                "room: " + ", ".join(f"{k} {v}" for k, v in drops.items()),
                "see the conntrack finding above; the counters only grow, so compare over time",
            )
        )
    return out


def check_mtu(view: ClusterView, node: NodeInfo, snap: NodeSnapshot) -> list[Finding]:
    underlay = snap.link_with_ip(node.ip)
    if underlay is None:
        return [
            Finding(
                "error",
                "mtu",
                node.name,
                f"no interface holds the node's address {node.ip}",
                "the lease's PublicIP must be an address of the node (agent --public-ip)",
            )
        ]
    want, out = pod_mtu(view, snap, underlay.mtu), []
    vx = snap.links.get(view.vxlan_device)
    if view.backend == "vxlan":
        if vx is None:
            out.append(
                Finding(
                    "error",
                    "overlay",
                    node.name,
                    f"there is no {view.vxlan_device}: the node cannot send to or receive from other nodes' pods",
                    "restart minikubenet-agent (it creates it)",
                )
            )
        elif vx.mtu != want:
            out.append(
                Finding(
                    "error",
                    "mtu",
                    node.name,
                    f"{view.vxlan_device} has MTU {vx.mtu}, but the underlay "
                    f"{underlay.name} has {underlay.mtu}: it must be {want} (VXLAN adds {VXLAN_OVERHEAD} "
                    "bytes)",
                    f"ip link set {view.vxlan_device} mtu {want}",
                )
            )
    br = snap.links.get(view.bridge)
    if br is not None and br.mtu != want:
        out.append(
            Finding(
                "error",
                "mtu",
                node.name,
                f"{view.bridge} has MTU {br.mtu}, the pod MTU here is {want}",
                f"ip link set {view.bridge} mtu {want}",
            )
        )
    for link in sorted(snap.links.values(), key=lambda dev: dev.name):
        if link.master == view.bridge and link.kind == "veth" and link.mtu != want:
            out.append(
                Finding(
                    "error",
                    "mtu",
                    node.name,
                    f"pod veth {link.name} ({link.alias or 'unmarked'}) has MTU "
                    f"{link.mtu}, the pod MTU here is {want}: that pod's large packets are dropped "
                    "or fragmented",
                    f"recreate the pod (its MTU comes from the CNI result), or "
                    f"ip link set {link.name} mtu {want} and the same inside the pod",
                )
            )
    return out


def check_ipam(view: ClusterView, node: NodeInfo, snap: NodeSnapshot) -> list[Finding]:
    out = []
    marks = {
        link.alias: link
        for link in snap.links.values()
        if link.alias and link.alias.startswith(MARK_PREFIX) and link.kind == "veth"
    }
    records = [r for r in view.ip_records if r.node == node.name or (node.subnet and r.ip in node.subnet)]
    wanted_marks = set()
    for r in records:
        mark = ownership_mark(r.container_id, r.ifname)
        wanted_marks.add(mark)
        if mark not in marks:
            out.append(
                Finding(
                    "error",
                    "ipam",
                    node.name,
                    f"IP record {r.ip} ({r.pod}, container {r.container_id}) "
                    f"has no interface on {node.name}: the address is leaked",
                    "let the runtime's CNI GC release it, or delete the pod (CNI DEL is safe to repeat)",
                )
            )
    for mark, link in sorted(marks.items()):
        if mark not in wanted_marks:
            out.append(
                Finding(
                    "error",
                    "ipam",
                    node.name,
                    f"interface {link.name} ({mark}) has no IP record: a pod "
                    "plumbed without an address in etcd (or its record was deleted)",
                    "delete that pod (CNI DEL removes the veth), then create it again",
                )
            )
    return out


def check_overlay(view: ClusterView, node: NodeInfo, snap: NodeSnapshot) -> list[Finding]:
    """The routes, neighbours and FDB entries the leases call for, against the kernel's."""
    others = [lease for lease in view.leases if lease.public_ip != node.ip]
    out = []
    dev = view.vxlan_device
    underlay = snap.link_with_ip(node.ip)
    # the networks the node's underlay device is on: a lease there is on our segment
    segment = [a.network for a in snap.addresses.get(underlay.name, [])] if underlay else []
    routes: set[tuple] = {(r.dst, r.gateway, r.dev) for r in snap.routes}
    want_routes: set[tuple] = set()
    plain = [lease for lease in others if view.backend != "vxlan" or _direct(view, lease, segment)]
    if view.backend == "vxlan":
        neigh = {(n.ip, (n.mac or "").lower()) for n in snap.neighbours if n.dev == dev and n.permanent}
        fdb = {(f.mac.lower(), f.dst) for f in snap.fdb if f.dev == dev and f.dst is not None}
        want_neigh, want_fdb = set(), set()
        for lease in others:
            if lease in plain:
                continue  # DirectRouting: a plain route, checked below
            gw = lease.subnet.network_address
            mac = (lease.vtep_mac or "").lower()
            want_neigh.add((gw, mac))
            want_fdb.add((mac, lease.public_ip))
            want_routes.add((lease.subnet, gw, dev))
            if (lease.subnet, gw, dev) not in routes:
                out.append(_missing(node, f"route {lease.subnet} via {gw} dev {dev} onlink", lease.subnet))
            if (gw, mac) not in neigh:
                out.append(_missing(node, f"neighbour {gw} lladdr {mac} on {dev}", lease.subnet))
            if (mac, lease.public_ip) not in fdb:
                out.append(_missing(node, f"FDB entry {mac} dst {lease.public_ip} on {dev}", lease.subnet))
        for ip, mac in sorted(neigh - want_neigh):
            out.append(_stray(node, f"neighbour {ip} lladdr {mac} on {dev}"))
        for mac, dst in sorted(fdb - want_fdb, key=str):
            out.append(_stray(node, f"FDB entry {mac} dst {dst} on {dev}"))
    # host-gw, bgp, vxlan's DirectRouting: a plain route via the lease's node. With bgp a
    # route via a router (an address that is no node: a routed underlay's ToR, which BGP
    # chose as next hop) is right too; where it goes from there is the router's business
    # (`minikubenet trace` follows it where the router can be read).
    for lease in plain:
        r = next((r for r in snap.routes if r.dst == lease.subnet), None)
        if r is not None and r.gateway is not None and _via_router(view, r.gateway):
            want_routes.add((r.dst, r.gateway, r.dev))
            continue
        want_routes.add((lease.subnet, lease.public_ip, underlay.name if underlay else None))
        if r is None or r.gateway != lease.public_ip:
            out.append(_missing(node, f"route {lease.subnet} via {lease.public_ip}", lease.subnet))
    overlay_devs = {dev} if view.backend == "vxlan" else set()
    overlay_devs |= {d for _, _, d in want_routes if d is not None}
    for r in snap.routes:
        if (
            r.gateway is not None
            and r.dev in overlay_devs
            and r.dst.subnet_of(view.pod_network)
            and (r.dst, r.gateway, r.dev) not in want_routes
        ):
            out.append(_stray(node, f"route {r.dst} via {r.gateway} dev {r.dev}"))
    return out


def _direct(view: ClusterView, lease, segment: list) -> bool:
    """vxlan with DirectRouting: a lease on our own segment gets a plain route, no tunnel."""
    return view.direct_routing and any(lease.public_ip in net for net in segment)


def _via_router(view: ClusterView, gateway) -> bool:
    return view.backend == "bgp" and view.node_by_ip(gateway) is None


def _missing(node: NodeInfo, what: str, subnet) -> Finding:
    return Finding(
        "error",
        "overlay",
        node.name,
        f"missing {what}: {node.name}'s pods cannot reach {subnet}",
        "the agent puts it back within its resync period; if it does not, restart minikubenet-agent "
        f"on {node.name} and read its log",
    )


def _stray(node: NodeInfo, what: str) -> Finding:
    return Finding(
        "error",
        "overlay",
        node.name,
        f"stray {what}: no lease calls for it, so traffic to it goes to a node that is gone",
        "the agent removes entries no lease calls for within its resync period; if it stays, delete it by hand",
    )


def render(findings: list[Finding], view: ClusterView, nodes: list[str] | None = None) -> str:
    checked = sorted(set(nodes) if nodes else set(view.snapshots) | set(view.unreadable))
    lines = [
        f"doctor: {len(checked)} node(s) ({', '.join(checked)}), backend {view.backend}, pod network {view.pod_network}"
    ]
    if not findings:
        lines.append("no problems found (mtu, conntrack, ipam, leases, overlay, sysctls, etcd)")
    for f in findings:
        where = f"[{f.node}] " if f.node else ""
        lines.append(f"{f.severity.upper():7} {f.check:9} {where}{f.text}\n{'':17}fix: {f.fix}")
    errors = sum(1 for f in findings if f.severity == "error")
    lines.append(f"{errors} error(s), {len(findings) - errors} warning(s)")
    return "\n".join(lines)
