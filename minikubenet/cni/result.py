"""The CNI success result, and how it is spelled in each cniVersion we speak.

The agent builds one ``Result`` per ADD and encodes it in the version the runtime asked
for (CNI SPEC.md §5 "Success"; libcni converts results the same way):

- 0.3.1 and 0.4.0: each ``ips[]`` entry carries ``"version": "4"``;
- 1.0.0 dropped that field;
- 1.1.0 adds ``mtu`` to ``interfaces[]``.

``ips[].interface`` is an index into ``interfaces[]``. Like the reference ``bridge``
plugin we list ``[bridge, host veth, pod interface]``, so the pod's IP points at index 2.
Empty fields are omitted, as Go's ``omitempty`` tags do.

An IPAM plugin returns the abbreviated form: no ``interfaces``, no ``ips[].interface``
(the main plugin fills those in). A plugin later in a chain receives the result so far
as ``prevResult`` and must output it with its own additions (``merge``); CHECK reads
the cached result back (``addresses_of``, ``mac_of``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""  # the netns path for interfaces inside the pod; empty on the host
    mtu: int = 0


@dataclass
class IPConfig:
    address: str  # "10.244.1.5/24"
    gateway: str = ""
    interface: int | None = None


@dataclass
class Route:
    dst: str
    gw: str = ""


@dataclass
class Result:
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: dict = field(default_factory=dict)


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def encode(result: Result, cni_version: str) -> dict:
    """The result as the JSON object a runtime expects for ``cni_version``."""
    v = _version_tuple(cni_version)
    out: dict = {"cniVersion": cni_version}
    if result.interfaces:
        ifaces = []
        for i in result.interfaces:
            d: dict[str, str | int] = {"name": i.name}
            if i.mac:
                d["mac"] = i.mac
            if i.mtu and v >= (1, 1, 0):
                d["mtu"] = i.mtu
            if i.sandbox:
                d["sandbox"] = i.sandbox
            ifaces.append(d)
        out["interfaces"] = ifaces
    ips = []
    for ip in result.ips:
        d = {}
        if v < (1, 0, 0):
            d["version"] = "4"
        if ip.interface is not None:
            d["interface"] = ip.interface
        d["address"] = ip.address
        if ip.gateway:
            d["gateway"] = ip.gateway
        ips.append(d)
    if ips:
        out["ips"] = ips
    if result.routes:
        out["routes"] = [{"dst": r.dst, **({"gw": r.gw} if r.gw else {})} for r in result.routes]
    out["dns"] = dict(result.dns)
    return out


def decode(doc: dict) -> Result:
    """Parse a result of any version we speak (a ``prevResult``, a cached result)."""
    res = Result()
    for i in doc.get("interfaces") or []:
        res.interfaces.append(
            Interface(
                name=i.get("name", ""),
                mac=i.get("mac", ""),
                sandbox=i.get("sandbox", ""),
                mtu=int(i.get("mtu", 0) or 0),
            )
        )
    for ip in doc.get("ips") or []:
        res.ips.append(
            IPConfig(address=ip.get("address", ""), gateway=ip.get("gateway", ""), interface=ip.get("interface"))
        )
    for r in doc.get("routes") or []:
        res.routes.append(Route(dst=r.get("dst", ""), gw=r.get("gw", "")))
    res.dns = dict(doc.get("dns") or {})
    return res


# -- reading and extending results of other plugins (prevResult) -----------------------------------


def merge(prev: dict, ours: dict) -> dict:
    """``prevResult`` with our interfaces, IPs and routes appended (SPEC §5: a plugin that
    receives a prevResult outputs it, plus its own changes). Our ``ips[].interface``
    indexes shift by the number of interfaces already there; the previous plugin's
    fields stay exactly as they were, unknown ones included."""
    out = dict(prev)
    out["cniVersion"] = ours["cniVersion"]
    offset = len(prev.get("interfaces") or [])
    if ours.get("interfaces"):
        out["interfaces"] = list(prev.get("interfaces") or []) + ours["interfaces"]
    ips = []
    for ip in ours.get("ips") or []:
        ip = dict(ip)
        if "interface" in ip:
            ip["interface"] += offset
        ips.append(ip)
    if ips:
        out["ips"] = list(prev.get("ips") or []) + ips
    if ours.get("routes"):
        out["routes"] = list(prev.get("routes") or []) + ours["routes"]
    if not out.get("dns") and ours.get("dns"):
        out["dns"] = ours["dns"]
    return out


def _interface_indexes(doc: dict, ifname: str | None, sandbox: str | None) -> set[int] | None:
    """Indexes of the interfaces named ``ifname`` (inside ``sandbox`` if given); None = any."""
    if ifname is None:
        return None
    return {
        i
        for i, iface in enumerate(doc.get("interfaces") or [])
        if isinstance(iface, dict)
        and iface.get("name") == ifname
        and (sandbox is None or iface.get("sandbox") == sandbox)
    }


def addresses_of(doc: dict, ifname: str | None = None, sandbox: str | None = None) -> set[str]:
    """The IPs (without prefix) a result gives to interface ``ifname`` in ``sandbox``. With
    no ifname, or for an entry without an interface index (an IPAM result), all of them."""
    wanted = _interface_indexes(doc, ifname, sandbox)
    out = set()
    for ip in doc.get("ips") or []:
        if not isinstance(ip, dict) or not isinstance(ip.get("address"), str):
            continue
        index = ip.get("interface")
        if wanted is None or index is None or index in wanted:
            out.add(ip["address"].split("/")[0])
    return out


def mac_of(doc: dict, ifname: str, sandbox: str) -> str:
    """The MAC a result records for interface ``ifname`` in ``sandbox`` ("" if none)."""
    indexes = sorted(_interface_indexes(doc, ifname, sandbox) or ())
    return (doc["interfaces"][indexes[0]].get("mac") or "").lower() if indexes else ""
