"""Chain names, computed exactly as kube-proxy computes them.

iptables chain names are at most 28 characters, so kube-proxy cannot spell a service's
name into its chain. It hashes instead (pkg/proxy/iptables/proxier.go, portProtoHash):

    KUBE-SVC-  + base32(sha256(servicePortName + protocol))[:16]
    KUBE-SEP-  + base32(sha256(servicePortName + protocol + "IP:port"))[:16]

where servicePortName is ``ns/name:port`` (``ns/name`` for an unnamed port) and protocol
is lower case. Nothing separates the parts: "ns1/svc1:p80" + "tcp" hashes the string
"ns1/svc1:p80tcp". The names are stable, so the same service gets the same chain on
every node and across restarts, and "which chain is this?" is answered by the rule
comments (``-m comment --comment "ns1/svc1:p80 cluster IP"``).

nftables has no such length limit (256), so kube-proxy's nftables mode spells the name
out and adds 8 characters of the same hash, which keeps near-identical names apart at a
glance (pkg/proxy/nftables/proxier.go, hashAndTruncate):

    service-ULMVA6XW-ns1/svc1/tcp/p80
    endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
"""

from __future__ import annotations

import base64
import hashlib

# iptables prefixes (kube-proxy's const block).
SVC_PREFIX = "KUBE-SVC-"  # a service port's dispatcher: picks an endpoint (Cluster policy)
SVL_PREFIX = "KUBE-SVL-"  # the same over this node's endpoints only (Local policy)
EXT_PREFIX = "KUBE-EXT-"  # entry for "external" traffic (NodePort, LB, external IP)
FW_PREFIX = "KUBE-FW-"  # loadBalancerSourceRanges: allowed sources go on to EXT
SEP_PREFIX = "KUBE-SEP-"  # one endpoint: hairpin masquerade + DNAT
SERVICE_CHAIN_PREFIXES = (SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX, SEP_PREFIX)

IPTABLES_CHAIN_MAX = 28
NFT_NAME_MAX = 256
_NFT_PREFIX_MAX = 16  # longest prefix, hyphen included
_NFT_BASE_MAX = NFT_NAME_MAX - _NFT_PREFIX_MAX  # 240, kube-proxy's chainNameBaseLengthMax


def _b32sha256(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()


def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """16 characters of base32(sha256(servicePortName + protocol)); protocol lower case."""
    return _b32sha256(service_port_name + protocol.lower())[:16]


def service_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-SVC-<hash>: load-balances across the service port's endpoints."""
    return SVC_PREFIX + port_proto_hash(service_port_name, protocol)


def external_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-EXT-<hash>: NodePort traffic enters here; it is marked for masquerade
    (with Cluster traffic policy the endpoint may be on another node) and sent to SVC."""
    return EXT_PREFIX + port_proto_hash(service_port_name, protocol)


def local_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-SVL-<hash>: like SVC, over the endpoints on this node (a Local policy)."""
    return SVL_PREFIX + port_proto_hash(service_port_name, protocol)


def firewall_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-FW-<hash>: LB-IP traffic from an allowed source range goes on to EXT."""
    return FW_PREFIX + port_proto_hash(service_port_name, protocol)


def endpoint_chain(service_port_name: str, protocol: str, endpoint: str) -> str:
    """KUBE-SEP-<hash of servicePortName + protocol + "IP:port">: DNAT to one endpoint.
    Also the name of the endpoint's ``-m recent`` list for ClientIP affinity."""
    return SEP_PREFIX + _b32sha256(service_port_name + protocol.lower() + endpoint)[:16]


def is_service_chain(name: str) -> bool:
    """True for per-service chains, the only ones a sync may delete when stale
    (kube-proxy isServiceChainName): never a fixed chain, never anyone else's."""
    return name.startswith(SERVICE_CHAIN_PREFIXES)


# --------------------------------------------------------------------------- nftables

NFT_SERVICE_PREFIX = "service-"
NFT_EXTERNAL_PREFIX = "external-"
NFT_ENDPOINT_PREFIX = "endpoint-"
NFT_LOCAL_PREFIX = "local-"  # Local traffic policy: this node's endpoints only
NFT_FIREWALL_PREFIX = "firewall-"  # loadBalancerSourceRanges
NFT_AFFINITY_PREFIX = "affinity-"


def hash_and_truncate(name: str) -> str:
    """``HASH8-name``, cut to fit nftables' limit with "..." (never happens for IPv4)."""
    name = _b32sha256(name)[:8] + "-" + name
    if len(name) > _NFT_BASE_MAX:
        name = name[: _NFT_BASE_MAX - 3] + "..."
    return name


def nft_service_base(namespace: str, name: str, protocol: str, port_name: str) -> str:
    """``HASH8-ns/svc/proto/port``: "/" separates the parts because it may appear in an
    nftables chain name but never in a Kubernetes name (servicePortChainNameBase)."""
    return hash_and_truncate(f"{namespace}/{name}/{protocol.lower()}/{port_name}")


def nft_endpoint_base(namespace: str, name: str, protocol: str, port_name: str, ip: str, port: int) -> str:
    """``HASH8-ns/svc/proto/port__IP/port`` (servicePortEndpointChainNameBase)."""
    return hash_and_truncate(f"{namespace}/{name}/{protocol.lower()}/{port_name}__{ip}/{port}")


def nft_is_service_chain(name: str) -> bool:
    """Per-service nft chains always contain "/", fixed ones never do (isServiceChainName)."""
    return "/" in name


def nft_is_affinity_set(name: str) -> bool:
    return name.startswith(NFT_AFFINITY_PREFIX)
