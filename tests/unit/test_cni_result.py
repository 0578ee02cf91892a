"""minikubenet.cni.result: the ADD result, spelled for each cniVersion we speak.

Reference A.1/A.4/A.10: 0.3.1 and 0.4.0 put ``"version": "4"`` in every ``ips[]`` entry,
1.0.0 dropped it, 1.1.0 added ``interfaces[].mtu``. ``ips[].interface`` is an index into
``interfaces[]``: with ``[bridge, host veth, pod interface]`` the pod's IP points at 2.
Empty fields are left out, as Go's ``omitempty`` does.
"""

import json

import pytest

from minikubenet.cni.result import Interface, IPConfig, Result, Route, decode, encode

ALL_VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def bridge_result() -> Result:
    """What ADD returns for a pod on a node with subnet 10.244.1.0/24 (reference A.4)."""
    return Result(
        interfaces=[
            Interface("cni0", mac="aa:bb:cc:00:00:01", mtu=1450),
            Interface("veth1234abcd", mac="aa:bb:cc:00:00:02", mtu=1450),
            Interface("eth0", mac="aa:bb:cc:00:00:03", sandbox="/var/run/netns/blue", mtu=1450),
        ],
        ips=[IPConfig("10.244.1.5/24", gateway="10.244.1.1", interface=2)],
        routes=[Route("10.244.0.0/16"), Route("0.0.0.0/0", gw="10.244.1.1")],
        dns={"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]},
    )


@pytest.mark.parametrize(
    "version, has_ip_version", [("0.3.1", True), ("0.4.0", True), ("1.0.0", False), ("1.1.0", False)]
)
def test_ips_version_field_only_before_1_0_0(version, has_ip_version):
    out = encode(bridge_result(), version)
    assert out["cniVersion"] == version
    (ip,) = out["ips"]
    if has_ip_version:
        assert ip["version"] == "4"  # a string, as in the 0.4.0 Go type
    else:
        assert "version" not in ip


@pytest.mark.parametrize("version, has_mtu", [("0.3.1", False), ("0.4.0", False), ("1.0.0", False), ("1.1.0", True)])
def test_interface_mtu_only_from_1_1_0(version, has_mtu):
    out = encode(bridge_result(), version)
    for iface in out["interfaces"]:
        if has_mtu:
            assert iface["mtu"] == 1450
        else:
            assert "mtu" not in iface


def test_full_1_1_0_result_matches_the_spec_shape():
    assert encode(bridge_result(), "1.1.0") == {
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa:bb:cc:00:00:01", "mtu": 1450},
            {"name": "veth1234abcd", "mac": "aa:bb:cc:00:00:02", "mtu": 1450},
            {"name": "eth0", "mac": "aa:bb:cc:00:00:03", "mtu": 1450, "sandbox": "/var/run/netns/blue"},
        ],
        "ips": [{"interface": 2, "address": "10.244.1.5/24", "gateway": "10.244.1.1"}],
        "routes": [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]},
    }


def test_full_0_3_1_result_as_flannels_manifest_version_gets_it():
    assert encode(bridge_result(), "0.3.1") == {
        "cniVersion": "0.3.1",
        "interfaces": [
            {"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
            {"name": "veth1234abcd", "mac": "aa:bb:cc:00:00:02"},
            {"name": "eth0", "mac": "aa:bb:cc:00:00:03", "sandbox": "/var/run/netns/blue"},
        ],
        "ips": [{"version": "4", "interface": 2, "address": "10.244.1.5/24", "gateway": "10.244.1.1"}],
        "routes": [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]},
    }


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_ip_interface_index_points_at_the_pod_interface(version):
    out = encode(bridge_result(), version)
    idx = out["ips"][0]["interface"]
    assert out["interfaces"][idx]["name"] == "eth0"
    assert out["interfaces"][idx]["sandbox"] == "/var/run/netns/blue"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_interface_index_zero_is_kept(version):
    # index 0 is falsy in Python but a valid index (loopback's result uses it)
    r = Result(interfaces=[Interface("lo", sandbox="/run/netns/x")], ips=[IPConfig("127.0.0.1/8", interface=0)])
    assert encode(r, version)["ips"][0]["interface"] == 0


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_ipam_style_result_without_interface_index(version):
    # the "abbreviated" IPAM result has no interfaces and no ips[].interface (reference A.4)
    r = Result(ips=[IPConfig("10.244.1.5/24", gateway="10.244.1.1")])
    out = encode(r, version)
    assert "interfaces" not in out
    assert "interface" not in out["ips"][0]


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_empty_fields_are_omitted(version):
    r = Result(interfaces=[Interface("cni0")], ips=[IPConfig("10.244.1.5/24")], routes=[Route("0.0.0.0/0")])
    out = encode(r, version)
    assert out["interfaces"] == [{"name": "cni0"}]  # no mac, sandbox, mtu
    assert "gateway" not in out["ips"][0]
    assert out["routes"] == [{"dst": "0.0.0.0/0"}]  # no gw
    # Go's omitempty cannot drop a struct, so Go plugins print "dns": {}; either way nothing in it
    assert out.get("dns", {}) == {}


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_empty_result_has_no_lists(version):
    out = encode(Result(), version)
    assert out["cniVersion"] == version
    for key in ("interfaces", "ips", "routes"):
        assert key not in out
    assert out.get("dns", {}) == {}


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_encoded_result_is_json_serialisable(version):
    assert json.loads(json.dumps(encode(bridge_result(), version))) == encode(bridge_result(), version)


@pytest.mark.parametrize("version", ["1.1.0"])
def test_decode_round_trips_the_newest_version(version):
    r = bridge_result()
    assert decode(encode(r, version)) == r
    assert decode(json.loads(json.dumps(encode(r, version)))) == r


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_decode_round_trips_older_versions_except_the_mtu_they_cannot_carry(version):
    r = bridge_result()
    back = decode(encode(r, version))
    assert [i.mtu for i in back.interfaces] == [0, 0, 0]
    for i in r.interfaces:
        i.mtu = 0
    assert back == r


def test_decode_ignores_the_old_ips_version_field_and_re_encodes_cleanly():
    prev = {
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/p"}],
        "ips": [{"version": "4", "interface": 0, "address": "10.244.1.9/24", "gateway": "10.244.1.1"}],
    }
    r = decode(prev)
    assert r.ips == [IPConfig("10.244.1.9/24", gateway="10.244.1.1", interface=0)]
    assert encode(r, "1.0.0")["ips"] == [{"interface": 0, "address": "10.244.1.9/24", "gateway": "10.244.1.1"}]


def test_decode_tolerates_missing_and_null_fields():
    assert decode({}) == Result()
    assert decode({"cniVersion": "1.0.0", "interfaces": None, "ips": None, "routes": None, "dns": None}) == Result()
    assert decode({"interfaces": [{"name": "eth0", "mtu": None}]}).interfaces == [Interface("eth0")]
