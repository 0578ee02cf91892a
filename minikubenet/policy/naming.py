"""Names of the policy controller's chains and sets, hashed like kube-proxy's.

iptables chain names are at most 28 characters, so (as proxy/naming.py does for
services, after kube-proxy's portProtoHash) a name is a prefix plus 16 characters of
base32(sha256(what it stands for)); the rule comments spell the policy out:

    MKN-POLICY                  the entry, jumped to from FORWARD
    MKN-PI-<hash(ns/pod)>       ingress of one isolated local pod
    MKN-PE-<hash(ns/pod)>       egress of one isolated local pod
    MKN-NP-<hash(ns/name/dir)>  the rules of one policy in one direction

nftables names may be 256 characters long, so they read like kube-proxy's nftables
mode: ``HASH8-`` then the name itself (proxy/naming.py hash_and_truncate).
"""

from __future__ import annotations

import base64
import functools
import hashlib

from minikubenet.proxy.naming import hash_and_truncate

POLICY_CHAIN = "MKN-POLICY"
POD_INGRESS_PREFIX = "MKN-PI-"
POD_EGRESS_PREFIX = "MKN-PE-"
POLICY_PREFIX = "MKN-NP-"
PREFIXES = (POD_INGRESS_PREFIX, POD_EGRESS_PREFIX, POLICY_PREFIX)


@functools.lru_cache(maxsize=1 << 16)  # a sync names every chain again: mostly the same names
def _hash16(text: str) -> str:
    # the first 10 bytes are the first 16 base32 characters (5 bytes -> 8 characters):
    # the same name as encoding the whole digest and cutting, at a fraction of the cost
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[:10]).decode()


@functools.lru_cache(maxsize=1 << 16)
def _hashed(name: str) -> str:
    """``HASH8-name``: proxy/naming.py hash_and_truncate, without its full-digest encoding."""
    if len(name) > 200:
        return hash_and_truncate(name)
    return base64.b32encode(hashlib.sha256(name.encode()).digest()[:5]).decode() + "-" + name


def pod_chain(pod_key: str, direction: str) -> str:
    return (POD_INGRESS_PREFIX if direction == "Ingress" else POD_EGRESS_PREFIX) + _hash16(pod_key)


def policy_chain(policy_key: str, direction: str) -> str:
    return POLICY_PREFIX + _hash16(f"{policy_key}/{direction.lower()}")


def is_ours(chain: str) -> bool:
    """A chain this controller made and may delete (never anyone else's)."""
    return chain == POLICY_CHAIN or chain.startswith(PREFIXES)


# --------------------------------------------------------------------------- nftables


def nft_policy_chain(policy_key: str, direction: str) -> str:
    return "policy-" + _hashed(f"{policy_key}/{direction.lower()}")


def nft_group_chain(direction: str, policy_keys) -> str:
    """The chain of one combination of policies isolating some pods (pods isolated by
    the same policies share it): ``ingress-pods-HASH16``, the hash of the policy names."""
    return f"{direction.lower()}-pods-" + _hash16(",".join(policy_keys))


def nft_peers_set(policy_key: str, direction: str, rule: int) -> str:
    return "peers-" + _hashed(f"{policy_key}/{direction.lower()}/{rule}")


def nft_named_set(policy_key: str, direction: str, rule: int) -> str:
    return "named-" + _hashed(f"{policy_key}/{direction.lower()}/{rule}")
