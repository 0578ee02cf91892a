"""minikubenet.store.keys: the etcd key layout.

Flannel's keys where flannel has one (reference C.1): ``<prefix>/config`` and
``<prefix>/subnets/<ip>-<len>`` with the default prefix ``/coreos.com/network``. Our
own records (pod IPs) sit under a project prefix, default ``/minikubenet``.
"""

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest

from minikubenet.store.keys import (
    DEFAULT_NETWORK_PREFIX,
    DEFAULT_PROJECT_PREFIX,
    KeyLayout,
    subnet_from_key,
    subnet_to_key_part,
)


def test_default_layout_is_flannels():
    k = KeyLayout()
    assert DEFAULT_NETWORK_PREFIX == "/coreos.com/network"
    assert k.config == "/coreos.com/network/config"
    assert k.subnets == "/coreos.com/network/subnets/"
    assert k.subnet(N("10.244.1.0/24")) == "/coreos.com/network/subnets/10.244.1.0-24"
    # the example key from flannel's docs (reference C.1)
    assert k.subnet(N("10.5.52.0/24")) == "/coreos.com/network/subnets/10.5.52.0-24"


def test_pod_ips_live_under_the_project_prefix_and_their_node_subnet():
    k = KeyLayout()
    assert DEFAULT_PROJECT_PREFIX == "/minikubenet"
    assert k.ipam == "/minikubenet/ipam/"
    assert k.ipam_subnet(N("10.244.1.0/24")) == "/minikubenet/ipam/10.244.1.0-24/"
    assert k.pod_ip(N("10.244.1.0/24"), A("10.244.1.5")) == "/minikubenet/ipam/10.244.1.0-24/10.244.1.5"


def test_all_ips_of_one_node_are_one_prefix_and_do_not_match_a_sibling_subnet():
    k = KeyLayout()
    # 10.244.1.0-24 must not be a prefix of 10.244.1.0-25 or 10.244.10.0-24 keys
    p = k.ipam_subnet(N("10.244.1.0/24"))
    assert not k.pod_ip(N("10.244.10.0/24"), A("10.244.10.2")).startswith(p)
    assert not k.pod_ip(N("10.244.1.0/25"), A("10.244.1.2")).startswith(p)
    assert k.pod_ip(N("10.244.1.0/24"), A("10.244.1.2")).startswith(p)


def test_network_and_project_keys_never_overlap():
    k = KeyLayout()
    assert not k.ipam.startswith(k.subnets) and not k.subnets.startswith(k.ipam)
    assert not k.config.startswith(k.subnets)


@pytest.mark.parametrize(
    "network_prefix, project_prefix",
    [
        ("/clusterA/network", "/clusterA/mkn"),
        ("/x", "/y"),
        ("/coreos.com/network", "/lab-t3f9a1"),
    ],
)
def test_custom_prefixes(network_prefix, project_prefix):
    k = KeyLayout(network_prefix=network_prefix, project_prefix=project_prefix)
    assert k.config == f"{network_prefix}/config"
    assert k.subnet(N("10.244.3.0/24")) == f"{network_prefix}/subnets/10.244.3.0-24"
    assert k.pod_ip(N("10.244.3.0/24"), A("10.244.3.9")) == f"{project_prefix}/ipam/10.244.3.0-24/10.244.3.9"


@pytest.mark.parametrize(
    "kw",
    [
        {"network_prefix": ""},
        {"network_prefix": "/"},
        {"network_prefix": "coreos.com/network"},
        {"network_prefix": "/coreos.com/network/"},
        {"project_prefix": ""},
        {"project_prefix": "minikubenet"},
        {"project_prefix": "/minikubenet/"},
    ],
)
def test_invalid_prefixes_are_refused_naming_the_prefix(kw):
    (value,) = kw.values()
    with pytest.raises(ValueError) as e:
        KeyLayout(**kw)
    assert repr(value) in str(e.value)


@pytest.mark.parametrize(
    "subnet, part",
    [
        ("10.244.1.0/24", "10.244.1.0-24"),
        ("10.244.0.64/26", "10.244.0.64-26"),
        ("172.16.0.0/12", "172.16.0.0-12"),
    ],
)
def test_subnet_key_part_round_trips(subnet, part):
    assert subnet_to_key_part(N(subnet)) == part
    assert subnet_from_key(f"/coreos.com/network/subnets/{part}") == N(subnet)
    assert subnet_from_key(KeyLayout().subnet(N(subnet))) == N(subnet)


@pytest.mark.parametrize(
    "key",
    [
        "/coreos.com/network/config",
        "/coreos.com/network/subnets/",
        "/coreos.com/network/subnets/10.244.1.0",
        "/coreos.com/network/subnets/10.244.1.0/24",
        "/minikubenet/ipam/10.244.1.0-24/10.244.1.5",  # a pod IP key is not a subnet key
    ],
)
def test_subnet_from_key_returns_none_for_other_keys(key):
    assert subnet_from_key(key) is None


@pytest.mark.parametrize(
    "key",
    [
        "/coreos.com/network/subnets/10.244.1.5-24",  # host bits set
        "/coreos.com/network/subnets/999.244.1.0-24",  # not an address
        "/coreos.com/network/subnets/10.244.1.0-33",  # not a prefix length
    ],
)
def test_subnet_from_key_returns_none_for_malformed_subnet_keys(key):
    assert subnet_from_key(key) is None
