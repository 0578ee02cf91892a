"""Capturing frames on the lab's underlay, to see what really crosses the wire.

A raw ``AF_PACKET`` socket is opened inside the switch namespace, bound to one node's
switch port, so it sees every frame that node sends or receives on the underlay. The
socket is created in the namespace (linux/netns.socket_in) and read from this process;
scapy then decodes the bytes (``Ether(frame)``): for VXLAN that is
Ether / IP (node to node) / UDP 8472 / VXLAN (VNI) / Ether / IP (pod to pod).

scapy is imported only here, for tests and tools; nothing on a hot path uses it.
"""

from __future__ import annotations

import socket
import threading

from minikubenet.linux.netns import path_of, socket_in
from minikubenet.waiting import wait_until

ETH_P_ALL = 0x0003


class Capture:
    """Collect frames on ``ifname`` in ``netns`` in a background thread until stopped."""

    def __init__(self, netns: str, ifname: str):
        self.sock = socket_in(path_of(netns), socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.2)
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture-{ifname}", daemon=True)

    def __enter__(self) -> Capture:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.frames.append(self.sock.recv(65535))
            except socket.timeout:
                continue
            except OSError:
                return

    def decoded(self):
        from scapy.layers.l2 import Ether

        return [Ether(f) for f in self.frames]


def vxlan_packets(frames, port: int = 8472):
    """The decoded frames that are VXLAN: (outer IP, outer UDP, VXLAN, inner IP) tuples."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import bind_layers

    bind_layers(UDP, VXLAN, dport=port)  # scapy knows 4789; flannel uses the kernel's old 8472
    out = []
    for pkt in frames:
        if UDP in pkt and pkt[UDP].dport == port:
            pkt = pkt.__class__(bytes(pkt))  # re-dissect with the binding in place
            if VXLAN in pkt and IP in pkt[VXLAN]:
                out.append((pkt[IP], pkt[UDP], pkt[VXLAN], pkt[VXLAN][IP]))
    return out


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Have the captured frames come in? (minikubenet/waiting.py's loop)"""
    return bool(wait_until(predicate, timeout, interval))
