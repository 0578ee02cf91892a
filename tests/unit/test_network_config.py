"""minikubenet.network_config: flannel's ``<prefix>/config`` document, parsed and validated.

Reference C.1: SubnetLen defaults to 24, SubnetMin to the *second* subnet of Network,
SubnetMax to the last one; vxlan defaults to VNI 1 and port 8472 (C.4). Every refusal is
a ConfigError whose message names the offending value, so a person can fix it.
"""

import dataclasses
import json
from ipaddress import IPv4Network as N

import pytest

from minikubenet.network_config import (
    ConfigError,
    NetworkConfig,
    check_no_overlap,
    first_leasable,
    make_config,
    parse_config,
)


def doc(**kw) -> str:
    base = {"Network": "10.244.0.0/16"}
    base.update(kw)
    return json.dumps(base)


# -- defaults ------------------------------------------------------------------------------


def test_minimal_config_gets_flannel_defaults_and_vxlan():
    cfg = parse_config(doc())
    assert cfg.network == N("10.244.0.0/16")
    assert cfg.subnet_len == 24
    assert cfg.subnet_min is None and cfg.subnet_max is None
    assert cfg.backend == "vxlan"  # unlike flannel, whose missing Backend means "udp"
    assert cfg.vni == 1
    assert cfg.port == 8472


def test_make_config_writes_the_vxlan_defaults_explicitly():
    cfg = make_config("10.244.0.0/16")
    assert (cfg.subnet_len, cfg.backend, cfg.vni, cfg.port) == (24, "vxlan", 1, 8472)
    assert json.loads(cfg.to_json())["Backend"] == {"Type": "vxlan", "VNI": 1, "Port": 8472}


def test_make_config_host_gw_carries_no_vxlan_options():
    cfg = make_config("10.244.0.0/16", backend="host-gw", vni=7, port=4789)
    assert cfg.backend == "host-gw"
    assert json.loads(cfg.to_json())["Backend"] == {"Type": "host-gw"}


def test_make_config_direct_routing_is_a_backend_option():
    cfg = make_config("10.244.0.0/16", direct_routing=True)
    assert json.loads(cfg.to_json())["Backend"]["DirectRouting"] is True


def test_port_zero_means_the_kernel_default_8472():
    # flannel: Port 0 = the kernel's default VXLAN port (reference C.4)
    cfg = parse_config(doc(Backend={"Type": "vxlan", "Port": 0}))
    assert cfg.port == 8472


@pytest.mark.parametrize("vni, port", [(1, 8472), (42, 4789), (0xFFFFFF, 1), (4096, 65535)])
def test_vni_and_port_in_range_are_kept(vni, port):
    cfg = parse_config(doc(Backend={"Type": "vxlan", "VNI": vni, "Port": port}))
    assert (cfg.vni, cfg.port) == (vni, port)


# -- subnets() -----------------------------------------------------------------------------


def test_subnets_skip_the_first_subnet_like_flannels_subnet_min():
    subs = parse_config(doc()).subnets()
    assert N("10.244.0.0/24") not in subs
    assert subs[0] == N("10.244.1.0/24")
    assert subs[-1] == N("10.244.255.0/24")
    assert len(subs) == 255
    assert first_leasable(N("10.244.0.0/16"), 24) == N("10.244.1.0/24")


@pytest.mark.parametrize(
    "network, subnet_len, first, count",
    [
        ("10.244.0.0/16", 24, "10.244.1.0/24", 255),
        ("10.244.0.0/16", 26, "10.244.0.64/26", 1023),
        ("10.244.0.0/22", 24, "10.244.1.0/24", 3),
        ("10.244.0.0/23", 24, "10.244.1.0/24", 1),  # the smallest network: two subnets, one leasable
        ("10.0.0.0/8", 24, "10.0.1.0/24", 65535),
    ],
)
def test_subnet_counts(network, subnet_len, first, count):
    subs = parse_config(json.dumps({"Network": network, "SubnetLen": subnet_len})).subnets()
    assert subs[0] == N(first)
    assert len(subs) == count
    assert len(set(subs)) == count
    assert all(s.prefixlen == subnet_len and s.subnet_of(N(network)) for s in subs)


def test_subnet_min_and_max_bound_the_range_inclusively():
    cfg = parse_config(doc(SubnetMin="10.244.10.0", SubnetMax="10.244.12.0"))
    assert cfg.subnets() == [N("10.244.10.0/24"), N("10.244.11.0/24"), N("10.244.12.0/24")]


def test_subnet_min_may_name_the_first_subnet_explicitly():
    cfg = parse_config(doc(SubnetMin="10.244.0.0", SubnetMax="10.244.1.0"))
    assert cfg.subnets() == [N("10.244.0.0/24"), N("10.244.1.0/24")]


def test_subnet_min_equal_to_max_gives_one_subnet():
    cfg = parse_config(doc(SubnetMin="10.244.7.0", SubnetMax="10.244.7.0"))
    assert cfg.subnets() == [N("10.244.7.0/24")]


# -- to_json / parse round trip ------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        doc(),
        doc(SubnetLen=26),
        doc(SubnetMin="10.244.4.0", SubnetMax="10.244.9.0"),
        doc(Backend={"Type": "vxlan", "VNI": 4096, "Port": 4789, "DirectRouting": True}),
        doc(Backend={"Type": "host-gw"}),
        json.dumps({"Network": "172.16.0.0/12", "SubnetLen": 20, "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472}}),
    ],
)
def test_to_json_round_trips(text):
    cfg = parse_config(text)
    again = parse_config(cfg.to_json())
    assert again == cfg
    assert again.backend_options == cfg.backend_options  # not part of == (compare=False)
    assert again.subnets() == cfg.subnets()
    assert json.loads(again.to_json()) == json.loads(cfg.to_json())


def test_to_json_uses_flannels_field_names():
    out = json.loads(parse_config(doc(SubnetMin="10.244.4.0", SubnetMax="10.244.9.0")).to_json())
    assert out == {
        "Network": "10.244.0.0/16",
        "SubnetLen": 24,
        "SubnetMin": "10.244.4.0",
        "SubnetMax": "10.244.9.0",
        "Backend": {"Type": "vxlan"},
    }


def test_parse_accepts_bytes_as_read_from_etcd():
    assert parse_config(doc().encode()).network == N("10.244.0.0/16")


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, named",
    [
        # not JSON, not an object
        ("{nope", "not JSON"),
        ('["10.244.0.0/16"]', "JSON object"),
        # Network: not a CIDR, host bits set, missing
        (json.dumps({"Network": "banana"}), "'banana'"),
        (json.dumps({"Network": "10.244.0.0/33"}), "'10.244.0.0/33'"),
        (json.dumps({"Network": "10.244.1.0/16"}), "'10.244.1.0/16'"),  # host bits set
        (json.dumps({"Network": "fd00::/64"}), "'fd00::/64'"),  # IPv4 only
        (json.dumps({}), "Network None"),
        # SubnetLen: not an int, out of range, not larger than the network
        (doc(SubnetLen="24"), "'24'"),
        (doc(SubnetLen=True), "True"),
        (doc(SubnetLen=24.0), "24.0"),
        (doc(SubnetLen=7), "SubnetLen 7"),
        (doc(SubnetLen=31), "SubnetLen 31"),
        (doc(SubnetLen=32), "SubnetLen 32"),
        (doc(SubnetLen=16), "SubnetLen 16"),  # same size as the network
        (json.dumps({"Network": "10.244.0.0/25", "SubnetLen": 24}), "10.244.0.0/25"),  # smaller than a subnet
        (json.dumps({"Network": "10.0.0.0/8", "SubnetLen": 25}), "10.0.0.0/8"),  # > 65536 subnets
        # SubnetMin / SubnetMax
        (doc(SubnetMin="10.244.1.5"), "'10.244.1.5'"),  # not a /24 boundary
        (doc(SubnetMin="10.245.0.0"), "10.245.0.0/24"),  # outside Network
        (doc(SubnetMax="nope"), "'nope'"),
        (doc(SubnetMin="10.244.9.0", SubnetMax="10.244.3.0"), "10.244.9.0/24"),
        # Backend
        (doc(Backend="vxlan"), "Backend"),
        (doc(Backend={"Type": "udp"}), "'udp'"),
        (doc(Backend={"Type": "wireguard"}), "'wireguard'"),
        (doc(Backend={"Type": "VXLAN"}), "'VXLAN'"),
        (doc(Backend={"Type": "vxlan", "VNI": 0}), "VNI 0"),
        (doc(Backend={"Type": "vxlan", "VNI": 2**24}), "VNI 16777216"),
        (doc(Backend={"Type": "vxlan", "VNI": -1}), "VNI -1"),
        (doc(Backend={"Type": "vxlan", "VNI": "1"}), "VNI '1'"),
        (doc(Backend={"Type": "vxlan", "Port": -1}), "Port -1"),
        (doc(Backend={"Type": "vxlan", "Port": 65536}), "Port 65536"),
        (doc(Backend={"Type": "vxlan", "Port": "8472"}), "Port '8472'"),
    ],
)
def test_refusals_name_the_value(text, named):
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert named in str(e.value)


def test_subnet_min_above_max_names_both():
    with pytest.raises(ConfigError, match="SubnetMin 10.244.9.0/24 is above SubnetMax 10.244.3.0/24"):
        parse_config(doc(SubnetMin="10.244.9.0", SubnetMax="10.244.3.0"))


def test_too_small_network_message_names_network_and_subnet_len():
    with pytest.raises(ConfigError) as e:
        parse_config(json.dumps({"Network": "10.244.0.0/24", "SubnetLen": 24}))
    assert "10.244.0.0/24" in str(e.value) and "SubnetLen 24" in str(e.value)


def test_make_config_validates_too():
    with pytest.raises(ConfigError, match="VNI 0"):
        make_config("10.244.0.0/16", vni=0)
    with pytest.raises(ConfigError, match="'10.244.0.1/16'"):
        make_config("10.244.0.1/16")


def test_config_error_is_a_value_error():
    # callers that only know ValueError (argparse type=, the CLI) still catch it
    assert issubclass(ConfigError, ValueError)


def test_a_number_is_not_a_cidr():
    with pytest.raises(ConfigError) as e:
        parse_config(json.dumps({"Network": 167772160}))
    assert "167772160" in str(e.value)


# -- check_no_overlap ----------------------------------------------------------------------


@pytest.mark.parametrize("other", ["10.244.0.0/16", "10.244.7.0/24", "10.0.0.0/8", "10.244.255.255/32"])
def test_overlap_with_the_service_network_is_refused_naming_both(other):
    cfg = parse_config(doc())
    with pytest.raises(ConfigError) as e:
        check_no_overlap(cfg, {"service network": N(other)})
    msg = str(e.value)
    assert "10.244.0.0/16" in msg and other in msg and "service network" in msg


def test_disjoint_networks_are_fine():
    cfg = parse_config(doc())
    check_no_overlap(
        cfg, {"service network": N("10.96.0.0/12"), "underlay": N("172.31.0.0/24"), "neighbour": N("10.245.0.0/16")}
    )


def test_overlap_names_the_offending_one_among_several():
    cfg = parse_config(doc())
    with pytest.raises(ConfigError, match="underlay 10.244.128.0/20"):
        check_no_overlap(cfg, {"service network": N("10.96.0.0/12"), "underlay": N("10.244.128.0/20")})


def test_network_config_is_frozen():
    cfg = parse_config(doc())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.subnet_len = 25  # type: ignore[misc]
    assert cfg == NetworkConfig(network=N("10.244.0.0/16"))
