"""Receive packet steering (RPS): which CPUs do the receive-side work of a device.

Why a pod network cares: a packet sent into a veth is "received" by its peer in the
sender's own softirq (veth_xmit -> __netif_rx -> the backlog of the *current* CPU,
net/core/dev.c). So when a pod's TCP stream crosses pod veth -> cni0 -> routing ->
underlay -> the other node's routing -> cni0 -> veth, every hop runs on the CPU that
called send(), while between two real machines the receiving NIC interrupts another
CPU (RSS). On one machine with network namespaces, that makes each extra hop of the pod
path a cost the sending CPU pays alone: on the 2-core lab machine, host-gw pod -> pod
reached 0.80 and VXLAN 0.67 of node -> node (docs/benchmarks.md).

RPS is the kernel's software RSS (Documentation/networking/scaling.rst): a mask in
``/sys/class/net/<dev>/queues/rx-<n>/rps_cpus`` sends each received packet to the
backlog of a CPU from the mask (chosen by flow hash), which processes it from there on.
The lab sets it on every device a node receives on (its underlay port, ``cni0``,
``flannel.1``, each pod's host-side veth) to "every CPU but the first", so the
sender's CPU sends and another CPU receives, as between two machines. It is off by default in
the agent (``--rps-cpus``): on real nodes the NIC's RSS already spreads the work.
"""

from __future__ import annotations

import glob
import os

SYSFS_NET = "/sys/class/net"


class RpsError(Exception):
    pass


def cpu_mask(cpus) -> str:
    """The sysfs spelling of a CPU set: hex, in comma-separated 32-bit groups
    (lib/bitmap.c bitmap_parse), e.g. {1} -> "2", {0..35} -> "f,ffffffff"."""
    bits = 0
    for c in cpus:
        bits |= 1 << c
    if not bits:
        return "0"
    groups = []
    while bits:
        groups.append(bits & 0xFFFFFFFF)
        bits >>= 32
    return ",".join([f"{groups[-1]:x}"] + [f"{g:08x}" for g in reversed(groups[:-1])])


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (cpusets and offline CPUs respected)."""
    return sorted(os.sched_getaffinity(0))


def all_but_first_cpu(cpus: list[int] | None = None) -> str | None:
    """The lab's mask: every usable CPU but the first (which the benchmarks' senders use);
    None on a one-CPU machine (nothing to spread)."""
    cpus = sorted(cpus) if cpus is not None else usable_cpus()
    return cpu_mask(cpus[1:]) if len(cpus) > 1 else None


def check_mask(mask: str) -> str:
    """A mask as the command line gives it: hex groups, or "off" / "" for none."""
    if mask in ("", "off", "0"):
        return "0"
    hexdigits = set("0123456789abcdefABCDEF")
    if not all(g and len(g) <= 8 and set(g) <= hexdigits for g in mask.split(",")):
        raise RpsError(
            f"bad RPS CPU mask {mask!r}: hex digits in comma-separated groups of at most 8, "
            "e.g. 2 (CPU 1) or fe (CPUs 1-7)"
        )
    return mask


def set_rps_cpus(ifname: str, mask: str, sysfs: str = SYSFS_NET) -> int:
    """Write ``mask`` to every receive queue of ``ifname`` (in the network namespace whose
    sysfs is mounted at ``sysfs``: ``ip netns exec`` mounts the namespace's own). Returns
    how many queues were set."""
    queues = sorted(glob.glob(os.path.join(sysfs, ifname, "queues", "rx-*", "rps_cpus")))
    if not queues:
        raise RpsError(
            f"{ifname}: no receive queues under {sysfs}/{ifname}/queues "
            "(no such device in this namespace, or sysfs is another namespace's)"
        )
    for path in queues:
        try:
            with open(path, "w") as f:
                f.write(mask)
        except OSError as e:
            raise RpsError(f"cannot set RPS CPUs {mask} on {ifname} ({path}): {e.strerror}") from None
    return len(queues)
