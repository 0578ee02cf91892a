"""Where everything lives in etcd: the key layout, in one place.

Flannel-compatible where flannel has a key (flannel pkg/subnet/etcd/registry.go):

    /coreos.com/network/config                      the network config (network_config.py)
    /coreos.com/network/subnets/10.244.1.0-24       a node's subnet lease (flannel's JSON)

Our own records sit under one project prefix, default ``/minikubenet``:

    /minikubenet/ipam/10.244.1.0-24/10.244.1.5      one key per pod IP: who holds it
    /minikubenet/ipam-claims/10.244.1.0-24/10.244.1.5  while CNI ADD plumbs the pod: the
                                                    same record, deleted once the pod is
                                                    complete (agent/reconcile.py)

Keeping pod IPs under their node subnet makes "all IPs of this node" one prefix read.
Both prefixes are configurable, so several clusters can share one etcd.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DEFAULT_NETWORK_PREFIX = "/coreos.com/network"
DEFAULT_PROJECT_PREFIX = "/minikubenet"

_SUBNET_KEY_RE = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)$")


def subnet_to_key_part(subnet: ipaddress.IPv4Network) -> str:
    """10.244.1.0/24 -> "10.244.1.0-24" (flannel's MakeSubnetKey)."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def subnet_from_key(key: str) -> ipaddress.IPv4Network | None:
    m = _SUBNET_KEY_RE.search(key)
    if not m:
        return None
    try:
        return ipaddress.IPv4Network(f"{m.group(1)}/{m.group(2)}")
    except ValueError:  # "10.0.0.1-24", "999.0.0.0-24": not a subnet, not ours to parse
        return None


@dataclass(frozen=True)
class KeyLayout:
    network_prefix: str = DEFAULT_NETWORK_PREFIX
    project_prefix: str = DEFAULT_PROJECT_PREFIX

    def __post_init__(self):
        for p in (self.network_prefix, self.project_prefix):
            if not p.startswith("/") or p.endswith("/"):
                raise ValueError(f"etcd prefix {p!r} must start with '/' and not end with one")

    @property
    def config(self) -> str:
        return f"{self.network_prefix}/config"

    @property
    def subnets(self) -> str:
        return f"{self.network_prefix}/subnets/"

    def subnet(self, subnet: ipaddress.IPv4Network) -> str:
        return f"{self.subnets}{subnet_to_key_part(subnet)}"

    @property
    def ipam(self) -> str:
        return f"{self.project_prefix}/ipam/"

    def ipam_subnet(self, subnet: ipaddress.IPv4Network) -> str:
        return f"{self.ipam}{subnet_to_key_part(subnet)}/"

    def pod_ip(self, subnet: ipaddress.IPv4Network, ip: ipaddress.IPv4Address) -> str:
        return f"{self.ipam_subnet(subnet)}{ip}"

    # A claim marker lives beside the record, not in it: the record is written once and
    # never rewritten, so its exact bytes stay valid for the compare-and-delete of a DEL.
    @property
    def ipam_claims(self) -> str:
        return f"{self.project_prefix}/ipam-claims/"

    def ipam_claims_subnet(self, subnet: ipaddress.IPv4Network) -> str:
        return f"{self.ipam_claims}{subnet_to_key_part(subnet)}/"

    def pod_ip_claim(self, subnet: ipaddress.IPv4Network, ip: ipaddress.IPv4Address) -> str:
        return f"{self.ipam_claims_subnet(subnet)}{ip}"
