"""The MTU pitfall, reproduced: pods that believe in 1500 on a 1450 overlay.

VXLAN adds 50 bytes to every frame (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet
14), so on a 1500-byte underlay a pod may send at most 1450-byte packets. If the pod's
interface says 1500, TCP advertises an MSS of 1460 and sends full-size segments with
the DF bit set. The node cannot put them into ``flannel.1`` (MTU 1450) and answers
with ICMP "fragmentation needed" (type 3, code 4), which is how Path MTU Discovery
tells the sender to send smaller. Firewalls that drop *all* ICMP also drop that
message. Then:

- small packets (pings, the HTTP request, the TCP handshake) still get through;
- the first full-size segment is dropped, the sender never learns why, retransmits
  the same size, and the transfer stalls: the classic "the connection opens but the
  page never loads".

``run`` shows both setups side by side on a running lab: pods at 1500 with ICMP
frag-needed dropped on the nodes, then the correct 1450 setup. It always restores the
lab afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

from minikubenet.lab import probes
from minikubenet.lab.topology import POD_PORT
from minikubenet.linux.named_netns import run as sh
from minikubenet.pod_network import host_veth_name

DROP_RULE = [
    "-p",
    "icmp",
    "--icmp-type",
    "fragmentation-needed",
    "-m",
    "comment",
    "--comment",
    "minikubenet mtu pitfall: a firewall dropping PMTUD messages",
    "-j",
    "DROP",
]


@dataclass
class Outcome:
    setup: str
    small_ping: bool
    big_ping: bool
    transfer: str


def _set_pod_mtu(lab, pod, mtu: int) -> None:
    node = lab.topo.node(pod.node)
    sh(["ip", "-n", pod.netns, "link", "set", "eth0", "mtu", str(mtu)])
    sh(["ip", "-n", node.netns, "link", "set", host_veth_name(pod.container_id, "eth0"), "mtu", str(mtu)])
    sh(["ip", "-n", pod.netns, "route", "flush", "cache"])  # forget any learned path MTU


def _icmp_filter(lab, add: bool) -> None:
    for node in lab.topo.nodes:
        for chain in ("OUTPUT", "FORWARD"):
            check = sh(["ip", "netns", "exec", node.netns, "iptables", "-w", "-C", chain] + DROP_RULE, check=False)
            if add and check.returncode != 0:
                sh(["ip", "netns", "exec", node.netns, "iptables", "-w", "-I", chain, "1"] + DROP_RULE)
            elif not add and check.returncode == 0:
                sh(["ip", "netns", "exec", node.netns, "iptables", "-w", "-D", chain] + DROP_RULE)


def _measure(lab, setup: str, src, dst, dst_ip: str, pod_mtu: int) -> Outcome:
    small = probes.ping(src.netns, dst_ip, size=56)
    big = probes.ping(src.netns, dst_ip, size=pod_mtu - 28, dont_fragment=True)
    try:
        seconds = probes.transfer(src.netns, dst_ip, POD_PORT, 1 << 20, timeout=4.0)
        transfer = f"1 MB in {seconds * 1000:.0f} ms"
    except probes.ProbeFailed as e:
        transfer = f"stalled ({e.__cause__ or 'timed out'})" if "timed out" in str(e) else f"failed: {e}"
    return Outcome(setup, small, big, transfer)


def run(lab, say=print) -> list[Outcome]:
    if lab.topo.backend != "vxlan" or len(lab.topo.nodes) < 2:
        raise ValueError("the MTU pitfall needs a vxlan lab with at least two nodes")
    src, dst = lab.topo.nodes[0].pods[0], lab.topo.nodes[1].pods[0]
    dst_ip = lab.pods()[dst.name]["ip"]
    overlay_mtu = lab.topo.mtu - 50
    outcomes = []
    try:
        for pod in (src, dst):
            _set_pod_mtu(lab, pod, lab.topo.mtu)
        _icmp_filter(lab, add=True)
        outcomes.append(
            _measure(lab, f"pods at MTU {lab.topo.mtu}, ICMP frag-needed dropped", src, dst, dst_ip, lab.topo.mtu)
        )
    finally:
        _icmp_filter(lab, add=False)
        for pod in (src, dst):
            _set_pod_mtu(lab, pod, overlay_mtu)
    outcomes.append(_measure(lab, f"pods at MTU {overlay_mtu} (underlay - 50)", src, dst, dst_ip, overlay_mtu))
    say(f"{src.name} -> {dst.name} ({dst_ip}) across the VXLAN overlay:")
    say(f"  {'setup':<48} {'ping 56':<8} {'DF ping max':<12} 1 MB TCP transfer")
    for o in outcomes:
        say(f"  {o.setup:<48} {'ok' if o.small_ping else 'LOST':<8} {'ok' if o.big_ping else 'LOST':<12} {o.transfer}")
    return outcomes
