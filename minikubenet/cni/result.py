"""The CNI success result, and how it is spelled in each cniVersion we speak.

The agent builds one ``Result`` per ADD and encodes it in the version the runtime asked
for (CNI SPEC.md §5 "Success"; libcni converts results the same way):

- 0.3.1 and 0.4.0: each ``ips[]`` entry carries ``"version": "4"``;
- 1.0.0 dropped that field;
- 1.1.0 adds ``mtu`` to ``interfaces[]``.

``ips[].interface`` is an index into ``interfaces[]``. Like the reference ``bridge``
plugin we list ``[bridge, host veth, pod interface]``, so the pod's IP points at index 2.
Empty fields are omitted, as Go's ``omitempty`` tags do.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""   # the netns path for interfaces inside the pod; empty on the host
    mtu: int = 0


@dataclass
class IPConfig:
    address: str        # "10.244.1.5/24"
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
            d = {"name": i.name}
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
        res.interfaces.append(Interface(name=i.get("name", ""), mac=i.get("mac", ""),
                                        sandbox=i.get("sandbox", ""), mtu=int(i.get("mtu", 0) or 0)))
    for ip in doc.get("ips") or []:
        res.ips.append(IPConfig(address=ip.get("address", ""), gateway=ip.get("gateway", ""),
                                interface=ip.get("interface")))
    for r in doc.get("routes") or []:
        res.routes.append(Route(dst=r.get("dst", ""), gw=r.get("gw", "")))
    res.dns = dict(doc.get("dns") or {})
    return res
