"""``subnet.env``: what the node agent tells the rest of the node about its lease.

Same variables as flannel's ``/run/flannel/subnet.env`` (flannel pkg/subnet/subnet.go):

    FLANNEL_NETWORK=10.244.0.0/16
    FLANNEL_SUBNET=10.244.1.1/24     # the gateway address with the subnet's prefix
    FLANNEL_MTU=1450
    FLANNEL_IPMASQ=true

The file is written to a temporary name and renamed over the old one, so a reader
never sees half a file; it is 0600 in a 0700 directory (private_files.py). The agent
reads its previous file at start to ask for the same subnet back (flannel PR #752); a
``FLANNEL_MTU`` outside 68–65535 makes that file invalid, like a missing variable.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from minikubenet import private_files
from minikubenet.cni.shim import MTU_RANGE


@dataclass(frozen=True)
class SubnetEnv:
    network: ipaddress.IPv4Network
    subnet: ipaddress.IPv4Network
    mtu: int
    ipmasq: bool

    def render(self) -> str:
        gw = self.subnet.network_address + 1
        return (
            f"FLANNEL_NETWORK={self.network}\n"
            f"FLANNEL_SUBNET={gw}/{self.subnet.prefixlen}\n"
            f"FLANNEL_MTU={self.mtu}\n"
            f"FLANNEL_IPMASQ={'true' if self.ipmasq else 'false'}\n"
        )


def parse(text: str) -> SubnetEnv:
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    missing = [k for k in ("FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ") if k not in values]
    if missing:
        raise ValueError(f"subnet.env is missing {', '.join(missing)}")
    mtu = int(values["FLANNEL_MTU"])
    if not MTU_RANGE[0] <= mtu <= MTU_RANGE[1]:
        raise ValueError(f"FLANNEL_MTU={mtu} is outside {MTU_RANGE[0]}-{MTU_RANGE[1]}")
    return SubnetEnv(
        network=ipaddress.IPv4Network(values["FLANNEL_NETWORK"]),
        subnet=ipaddress.IPv4Interface(values["FLANNEL_SUBNET"]).network,
        mtu=mtu,
        ipmasq=values["FLANNEL_IPMASQ"].lower() == "true",
    )


def read(path: str) -> SubnetEnv | None:
    """The previous file, or None when there is none or it cannot be parsed."""
    try:
        with open(path) as f:
            return parse(f.read())
    except (OSError, ValueError):
        return None


def write(path: str, env: SubnetEnv) -> None:
    """Atomically replace ``path`` (private_files.write_atomic: temp file, fsync, rename)."""
    private_files.make_dir(os.path.dirname(path) or ".")
    private_files.write_atomic(path, env.render())
