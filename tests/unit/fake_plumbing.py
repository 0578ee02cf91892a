"""linux/pod_plumbing.py's interface over dicts: a node's devices and its pods'
namespaces, in memory, with a step that can be made to fail (as tests/unit/fake_etcd.py
stands in for etcd and test_overlay_plan.py's FakeKernel for the overlay's kernel).

It keeps the real plumbing's contracts: a device by our name with another owner's mark
is ``NotOurs`` and left alone, a namespace that is not there is ``NetnsNotFound``,
``detach`` removes only what carries the attachment's mark and is repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minikubenet.linux.netns import NetnsNotFound
from minikubenet.linux.pod_plumbing import AttachedMacs, NotOurs
from minikubenet.pod_network import MARK_PREFIX, LinkSeen, attachment_macs, ownership_mark, owns

BRIDGE_MAC = "aa:00:00:00:00:01"


@dataclass
class Device:
    name: str
    kind: str = "veth"
    alias: str = ""
    mac: str = ""
    up: bool = False
    addresses: set = field(default_factory=set)  # {"10.244.7.2/24"}
    gateway: str | None = None  # the default route's


class FakePod:
    def __init__(self, netns: str, plumbing: FakePodPlumbing):
        self.netns, self.plumbing, self.closed = netns, plumbing, False

    def close(self) -> None:
        self.closed = True
        self.plumbing.open_handles.discard(self)


class Boom(Exception):
    """The failure a test injects at one step."""


class FakePodPlumbing:
    STEPS = ("open_pod", "survey", "create_pair", "configure_pod", "detach", "inspect")

    def __init__(self, bridge: str = "cni0"):
        self.node: dict[str, Device] = {bridge: Device(bridge, "bridge", mac=BRIDGE_MAC)}
        self.pods: dict[str, dict[str, Device]] = {}  # netns path -> name -> device
        self.fail: dict[str, BaseException] = {}  # step -> what it raises
        self.calls: list[str] = []
        self.open_handles: set[FakePod] = set()

    # -- test helpers
    def add_pod(self, netns: str, *devices: Device) -> None:
        self.pods[netns] = {"lo": Device("lo", "", up=True)} | {d.name: d for d in devices}

    def veths(self) -> list[str]:
        """Every veth end there is, node and pods: ``name`` or ``netns:name``."""
        out = [d.name for d in self.node.values() if d.kind == "veth"]
        out += [f"{ns}:{d.name}" for ns, devs in self.pods.items() for d in devs.values() if d.kind == "veth"]
        return sorted(out)

    def _step(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise self.fail[name]

    def _pod(self, netns: str | None) -> dict[str, Device]:
        if netns not in self.pods:
            raise NetnsNotFound(f"network namespace {netns}: No such file or directory")
        return self.pods[netns]

    # -- the interface
    def open_pod(self, netns: str) -> FakePod:
        self._step("open_pod")
        self._pod(netns)
        handle = FakePod(netns, self)
        self.open_handles.add(handle)
        return handle

    def survey(self, pod: FakePod) -> list[LinkSeen]:
        self._step("survey")
        return [LinkSeen(i + 1, d.name, d.kind, d.alias, d.mac) for i, d in enumerate(self._pod(pod.netns).values())]

    def create_pair(self, link) -> AttachedMacs:
        self._step("create_pair")
        if link.bridge not in self.node:
            raise RuntimeError(f"bridge {link.bridge} does not exist on this node")
        host_mac, pod_mac = attachment_macs(link.container_id, link.ifname)
        pod = self._pod(link.netns)
        taken = self.node.get(link.host_veth)
        if taken is not None:
            if not owns(link.mark, taken.alias, taken.mac, host_mac):
                raise NotOurs(f"{link.host_veth} already exists on the node and is not this attachment's")
            del self.node[link.host_veth]  # a leftover of this attachment: both ends go
            if pod.get(link.ifname) is not None and pod[link.ifname].alias == link.mark:
                del pod[link.ifname]
        there = pod.get(link.ifname)
        if there is not None:
            if not owns(link.mark, there.alias, there.mac, pod_mac):
                raise NotOurs(f"container veth name provided ({link.ifname}) already exists")
            del pod[link.ifname]
        self.node[link.host_veth] = Device(link.host_veth, alias=link.mark, mac=host_mac, up=True)
        pod[link.ifname] = Device(link.ifname, alias=link.mark, mac=pod_mac)
        return AttachedMacs(BRIDGE_MAC, host_mac, pod_mac)

    def configure_pod(self, plan, pod: FakePod) -> None:
        self._step("configure_pod")
        dev = self._pod(pod.netns)[plan.link.ifname]
        dev.up = True
        dev.addresses.add(str(plan.address))
        dev.gateway = str(plan.gateway)

    def detach(self, container_id: str, ifname: str, host_veth: str, netns: str | None) -> list[str]:
        self._step("detach")
        mark = ownership_mark(container_id, ifname)
        host_mac, pod_mac = attachment_macs(container_id, ifname)
        left = []
        dev = self.node.get(host_veth)
        if dev is not None:
            if owns(mark, dev.alias, dev.mac, host_mac):
                del self.node[host_veth]
                for devs in self.pods.values():  # deleting one end of a veth deletes both
                    if devs.get(ifname) is not None and devs[ifname].alias == mark:
                        del devs[ifname]
                return left
            left.append(f"node device {host_veth} carries {dev.alias or 'no mark'!r}, not {mark!r}")
        if netns in self.pods:
            dev = self.pods[netns].get(ifname)
            if dev is not None:
                if owns(mark, dev.alias, dev.mac, pod_mac):
                    del self.pods[netns][ifname]
                else:
                    left.append(f"{ifname} in {netns} carries {dev.alias or 'no mark'!r}, not {mark!r}")
        return left

    def inspect(self, plan) -> list[str]:
        self._step("inspect")
        want = plan.link
        problems = [] if want.host_veth in self.node else [f"host veth {want.host_veth} is missing"]
        dev = self.pods.get(want.netns, {}).get(want.ifname)
        if dev is None:
            return problems + [f"interface {want.ifname} is missing in {want.netns}"]
        if str(plan.address) not in dev.addresses:
            problems.append(f"{want.ifname} lacks address {plan.address}")
        return problems

    def pod_mac(self, netns: str, ifname: str) -> str | None:
        dev = self._pod(netns).get(ifname)
        return dev.mac if dev else None

    def marked_host_veths(self) -> list[LinkSeen]:
        return [
            LinkSeen(i, d.name, d.kind, d.alias, d.mac)
            for i, d in enumerate(self.node.values())
            if d.kind == "veth" and d.alias.startswith(MARK_PREFIX)
        ]

    def delete_marked(self, device: LinkSeen) -> bool:
        dev = self.node.get(device.name)
        if dev is None or dev.alias != device.alias:
            return False
        del self.node[device.name]
        for devs in self.pods.values():
            devs.pop(next((n for n, d in devs.items() if d.alias == device.alias), ""), None)
        return True

    def is_complete(self, plan) -> bool | None:
        want = plan.link
        if want.netns not in self.pods:
            return None
        dev = self.pods[want.netns].get(want.ifname)
        return bool(
            dev
            and dev.alias == want.mark
            and dev.up
            and str(plan.address) in dev.addresses
            and dev.gateway == str(plan.gateway)
        )

    def close(self) -> None:
        pass
