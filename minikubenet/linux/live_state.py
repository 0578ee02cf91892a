"""Reading a node's live network state, for ``minikubenet trace`` and ``doctor``.

Both tools answer questions about what the kernel holds *now*, not what a plan says it
should hold: the links and their MTUs and marks, addresses, the main routing table, the
neighbour and FDB entries of the VXLAN device, the service proxy's live ruleset, the
conntrack table and the sysctls that decide forwarding. This module reads all of that for
one node into a ``NodeSnapshot`` (plain data; minikubenet/diagnose/ walks it, purely).

A node is a network namespace (the lab's ``<lab>-n1``) or, on a real node, the host's
own namespace (``netns=None``). The reads go through the iproute2 tools' JSON output
(``ip -j``, ``bridge -j``) and ``ip netns exec`` for files under /proc/sys and the rule
dumps: each tool enters the namespace in its own process, so nothing here moves a
thread of ours (see linux/netns.py), and several nodes can be read in parallel.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass, field

from minikubenet.linux import conntrack_table

PROXY_NFT_TABLE = ("ip", "minikubenet-proxy")  # proxy/nft_render.py TABLE
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter",
    "net.bridge.bridge-nf-call-iptables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_count",
)


class NodeUnreadable(Exception):
    """The node's namespace is gone (the node is down) or its tools cannot run."""


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    mtu: int
    kind: str  # "vxlan", "bridge", "veth", "" (a physical or unknown device)
    master: str | None  # the bridge it is plugged into
    alias: str | None  # our ownership mark lives here
    up: bool
    mac: str | None
    vxlan_vni: int | None = None


@dataclass(frozen=True)
class RouteEntry:
    dst: ipaddress.IPv4Network
    dev: str | None
    gateway: ipaddress.IPv4Address | None
    onlink: bool
    protocol: str  # "kernel", "boot", "static", "bird", ...
    kind: str = "unicast"  # "unicast", "blackhole", "unreachable", "prohibit", "local"


@dataclass(frozen=True)
class NeighEntry:
    dev: str
    ip: ipaddress.IPv4Address
    mac: str | None
    permanent: bool


@dataclass(frozen=True)
class FdbEntry:
    dev: str
    mac: str
    dst: ipaddress.IPv4Address | None


@dataclass
class NodeSnapshot:
    node: str
    netns: str | None
    links: dict[str, Link] = field(default_factory=dict)
    addresses: dict[str, list[ipaddress.IPv4Interface]] = field(default_factory=dict)
    routes: list[RouteEntry] = field(default_factory=list)
    neighbours: list[NeighEntry] = field(default_factory=list)
    fdb: list[FdbEntry] = field(default_factory=list)
    iptables_nat: str | None = None  # iptables-save -t nat
    nft_proxy: str | None = None  # nft list table ip minikubenet-proxy
    sysctls: dict[str, str] = field(default_factory=dict)
    conntrack: conntrack_table.ConntrackTable | None = None

    def local_ips(self) -> set[ipaddress.IPv4Address]:
        return {a.ip for addrs in self.addresses.values() for a in addrs}

    def link_with_ip(self, ip: ipaddress.IPv4Address) -> Link | None:
        for name, addrs in self.addresses.items():
            if any(a.ip == ip for a in addrs):
                return self.links.get(name)
        return None


def _in(netns: str | None, argv: list[str]) -> list[str]:
    return (["ip", "netns", "exec", netns] if netns else []) + argv


def _run(netns: str | None, argv: list[str], check: bool = True) -> str | None:
    try:
        p = subprocess.run(_in(netns, argv), capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        return None  # the tool is not installed: that part stays unknown
    except subprocess.TimeoutExpired:
        raise NodeUnreadable(f"{' '.join(argv)} did not answer in 20 s") from None
    if p.returncode != 0:
        if netns and "Cannot open network namespace" in p.stderr:
            raise NodeUnreadable(f"network namespace {netns} does not exist (is the node down?)")
        if check:
            raise NodeUnreadable(f"{' '.join(argv)} failed: {p.stderr.strip()[:200]}")
        return None
    return p.stdout


def _ip_json(netns: str | None, *args: str) -> list[dict]:
    out = _run(None, ["ip", *(["-n", netns] if netns else []), "-j", *args])
    return json.loads(out or "[]")


def read_links(netns: str | None) -> dict[str, Link]:
    links = {}
    for d in _ip_json(netns, "-d", "link", "show"):
        info = d.get("linkinfo") or {}
        kind = info.get("info_kind", "")
        vni = (info.get("info_data") or {}).get("id") if kind == "vxlan" else None
        links[d["ifname"]] = Link(
            name=d["ifname"],
            index=d["ifindex"],
            mtu=d.get("mtu", 0),
            kind=kind,
            master=d.get("master"),
            alias=d.get("ifalias"),
            up="UP" in (d.get("flags") or []),
            mac=d.get("address"),
            vxlan_vni=vni,
        )
    return links


def read_addresses(netns: str | None) -> dict[str, list[ipaddress.IPv4Interface]]:
    out: dict[str, list[ipaddress.IPv4Interface]] = {}
    for d in _ip_json(netns, "-4", "addr", "show"):
        out[d["ifname"]] = [
            ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
            for a in d.get("addr_info", [])
            if a.get("family") == "inet"
        ]
    return out


def read_routes(netns: str | None) -> list[RouteEntry]:
    routes = []
    for d in _ip_json(netns, "-4", "route", "show", "table", "main"):
        dst = d.get("dst", "default")
        net = ipaddress.IPv4Network("0.0.0.0/0" if dst == "default" else dst if "/" in dst else f"{dst}/32")
        gw = d.get("gateway")
        routes.append(
            RouteEntry(
                dst=net,
                dev=d.get("dev"),
                gateway=ipaddress.IPv4Address(gw) if gw else None,
                onlink="onlink" in (d.get("flags") or []),
                protocol=str(d.get("protocol", "boot")),
                kind=d.get("type", "unicast"),
            )
        )
    return routes


def read_neighbours(netns: str | None) -> list[NeighEntry]:
    out = []
    for d in _ip_json(netns, "-4", "neigh", "show"):
        try:
            ip = ipaddress.IPv4Address(d["dst"])
        except (KeyError, ValueError):
            continue
        out.append(
            NeighEntry(
                dev=d.get("dev", ""), ip=ip, mac=d.get("lladdr"), permanent="PERMANENT" in (d.get("state") or [])
            )
        )
    return out


def read_fdb(netns: str | None, devices: list[str]) -> list[FdbEntry]:
    out = []
    for dev in devices:
        text = _run(netns, ["bridge", "-j", "fdb", "show", "dev", dev], check=False)
        for d in json.loads(text or "[]"):
            dst = d.get("dst")
            try:
                out.append(FdbEntry(dev=dev, mac=d["mac"], dst=ipaddress.IPv4Address(dst) if dst else None))
            except (KeyError, ValueError):
                continue
    return out


def read_sysctls(netns: str | None, keys=SYSCTLS, extra_devices: tuple[str, ...] = ()) -> dict[str, str]:
    """Each key's value as the node sees it; a key the kernel does not have (a module not
    loaded) is left out. ``extra_devices``: their ``rp_filter`` too (a device name may
    contain dots, so paths are built, not derived from the key)."""
    pairs = [(k, "/proc/sys/" + k.replace(".", "/")) for k in keys]
    pairs += [(f"net.ipv4.conf.{d}.rp_filter", f"/proc/sys/net/ipv4/conf/{d}/rp_filter") for d in extra_devices]
    # one process for all of them: "path=value" lines, missing files skipped
    script = "for f in " + " ".join(path for _, path in pairs) + "; do [ -r $f ] && echo $f=$(cat $f); done; true"
    out = _run(netns, ["sh", "-c", script]) or ""
    key_of = {path: key for key, path in pairs}
    values = {}
    for line in out.splitlines():
        path, _, value = line.partition("=")
        if path in key_of:
            values[key_of[path]] = value.strip()
    return values


def read_conntrack(netns: str | None, sysctls: dict[str, str]) -> conntrack_table.ConntrackTable | None:
    if "net.netfilter.nf_conntrack_count" not in sysctls:
        return None
    stat = _run(netns, ["cat", "/proc/net/stat/nf_conntrack"], check=False) or ""
    return conntrack_table.ConntrackTable(
        count=int(sysctls["net.netfilter.nf_conntrack_count"]),
        max=int(sysctls.get("net.netfilter.nf_conntrack_max", "0")),
        stats=conntrack_table.parse_stat(stat),
    )


def read_proxy_rules(netns: str | None) -> tuple[str | None, str | None]:
    """(iptables-save -t nat, nft list table ip minikubenet-proxy); None where there is none."""
    ipt = _run(netns, ["iptables-save", "-t", "nat"], check=False)
    nft = _run(netns, ["nft", "list", "table", *PROXY_NFT_TABLE], check=False)
    return (ipt if ipt and "KUBE-SERVICES" in ipt else None), nft


def conntrack_flows(netns: str | None, dst: str, port: int | None, proto: str) -> list[str]:
    """``conntrack -L`` lines of flows to ``dst`` (the original direction), or []."""
    argv = ["conntrack", "-L", "-p", proto, "--orig-dst", dst] + (["--dport", str(port)] if port else [])
    out = _run(netns, argv, check=False) or ""
    return [line for line in out.splitlines() if line.strip() and not line.startswith("conntrack")]


def read_node(node: str, netns: str | None) -> NodeSnapshot:
    """Everything trace and doctor read of one node."""
    if netns:
        _run(None, ["ip", "netns", "exec", netns, "true"])  # NodeUnreadable when the node is gone
    snap = NodeSnapshot(node=node, netns=netns)
    snap.links = read_links(netns)
    snap.addresses = read_addresses(netns)
    snap.routes = read_routes(netns)
    snap.neighbours = read_neighbours(netns)
    snap.fdb = read_fdb(netns, [name for name, link in snap.links.items() if link.kind == "vxlan"])
    snap.iptables_nat, snap.nft_proxy = read_proxy_rules(netns)
    snap.sysctls = read_sysctls(netns, extra_devices=tuple(n for n in ("cni0", "flannel.1") if n in snap.links))
    snap.conntrack = read_conntrack(netns, snap.sysctls)
    return snap


def df_echo(netns: str | None, dst: ipaddress.IPv4Address, size: int, timeout: float = 1.0) -> bool:
    """Send one ICMP echo of exactly ``size`` bytes (the whole IP packet) with DF set from
    the node, built with scapy, and wait for its reply: does a full-size packet cross the
    path without fragmentation? (``ping -M do`` does the same; building the packet
    ourselves shows what is sent, byte for byte.) False also when the node's own route
    refuses the size (EMSGSIZE)."""
    import os
    import select
    import socket
    import time

    from scapy.layers.inet import ICMP, IP  # slow to import: only when probing

    from minikubenet.linux.netns import path_of, socket_in

    ident = os.getpid() & 0xFFFF
    # src 0.0.0.0: the kernel fills in the node's own address (raw(7), IP_HDRINCL); scapy would
    # otherwise pick one from the routes of the namespace it runs in, not the node's
    packet = IP(src="0.0.0.0", dst=str(dst), flags="DF", id=ident) / ICMP(type=8, id=ident, seq=size & 0xFFFF)
    packet = packet / (b"\x00" * (size - len(packet)))
    s = (
        socket_in(path_of(netns), socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        if netns
        else socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    )
    try:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)  # our header, DF and all; the kernel fills src
        try:
            s.sendto(bytes(packet), (str(dst), 0))
        except OSError:
            return False  # EMSGSIZE: bigger than the route's MTU
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            reply = IP(s.recv(65535))
            if (
                reply.src == str(dst)
                and ICMP in reply
                and reply[ICMP].type == 0
                and reply[ICMP].id == ident
                and reply[ICMP].seq == size & 0xFFFF
            ):
                return True
        return False
    finally:
        s.close()
