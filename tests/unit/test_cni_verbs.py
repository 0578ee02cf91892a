"""The agent's CNI 1.1 logic without a kernel or etcd: GC's valid list, STATUS's codes,
the IPAM mode's result, and reading and extending other plugins' results.

Reference A.4 (abbreviated IPAM result; ``prevResult`` carried through a chain), A.8
(GC: ``cni.dev/valid-attachments``, libcni also sends ``cni.dev/attachments``), A.9
(STATUS: 50 = cannot service ADD, 51 = and existing pods may suffer).
"""

from __future__ import annotations

import ipaddress

import pytest

from minikubenet.agent.cni_handler import CniHandler, NodeState, parse_valid_attachments
from minikubenet.cni import result as cni_result
from minikubenet.cni.shim import CniError
from minikubenet.ipam.allocator import Allocation, Owner
from minikubenet.store.etcd import StoreError

SUBNET = ipaddress.IPv4Network("10.244.7.0/24")


class FakeAllocator:
    """PodIPAllocator's interface over a dict: ip -> Owner."""

    def __init__(self):
        self.held: dict[ipaddress.IPv4Address, Owner] = {}

    def _alloc(self, ip, owner):
        return Allocation(ip, owner, owner.to_record())

    def list(self):
        return [self._alloc(ip, o) for ip, o in sorted(self.held.items())]

    def find(self, cid, ifname):
        return next((a for a in self.list() if (a.owner.container_id, a.owner.ifname) == (cid, ifname)), None)

    def allocate(self, owner, claimed=False):
        found = self.find(owner.container_id, owner.ifname)
        if found:
            return found, False
        ip = next(ip for ip in SUBNET.hosts() if ip not in self.held and ip != SUBNET.network_address + 1)
        self.held[ip] = owner
        return self._alloc(ip, owner), True

    def complete(self, allocation):
        return False

    def release(self, allocation):
        return self.held.pop(allocation.ip, None) is not None


def handler(lease_ok=True, etcd_ok=True) -> tuple[CniHandler, FakeAllocator]:
    alloc = FakeAllocator()

    def ping():
        if not etcd_ok:
            raise StoreError("etcd at http://127.0.0.1:2379 did not answer")

    return CniHandler(NodeState("n1", SUBNET, 1450, alloc, lambda: lease_ok, ping)), alloc


def ipam_request(command, cid="c1", ifname="eth0", network="net", version="1.0.0", **conf):
    return {
        "command": command,
        "mode": "ipam",
        "env": {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_NETNS": "/x"},
        "config": {"cniVersion": version, "name": network, "ipam": {"type": "minikubenet-ipam"}, **conf},
    }


# -- GC's valid list ------------------------------------------------------------------------------------


def test_valid_attachments_under_either_key_are_kept():
    a = {"containerID": "a", "ifname": "eth0"}
    b = {"containerID": "b", "ifname": "net1"}
    assert parse_valid_attachments({"cni.dev/valid-attachments": [a]}) == {("a", "eth0")}
    assert parse_valid_attachments({"cni.dev/attachments": [b]}) == {("b", "net1")}
    assert parse_valid_attachments({"cni.dev/valid-attachments": [a], "cni.dev/attachments": [b]}) == {
        ("a", "eth0"),
        ("b", "net1"),
    }


@pytest.mark.parametrize("value", [[], None])
def test_an_empty_or_null_list_keeps_nothing(value):
    assert parse_valid_attachments({"cni.dev/valid-attachments": value}) == set()


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"cni.dev/valid-attachments": "a"},
        {"cni.dev/valid-attachments": [{"containerID": "a"}]},
        {"cni.dev/valid-attachments": [{"containerID": "a", "ifname": 3}]},
        {"cni.dev/valid-attachments": [], "cni.dev/attachments": [None]},
    ],
)
def test_a_missing_or_malformed_list_is_code_7(config):
    with pytest.raises(CniError) as e:
        parse_valid_attachments(config)
    assert e.value.code == 7


def test_ipam_gc_releases_only_stale_attachments_of_its_network():
    h, alloc = handler()
    for cid in ("keep", "stale"):
        h.handle(ipam_request("ADD", cid))
    h.handle(ipam_request("ADD", "other", network="othernet"))
    h.handle(
        ipam_request(
            "GC", version="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
        )
    )
    assert sorted(o.container_id for o in alloc.held.values()) == ["keep", "other"]


def test_ipam_gc_with_a_bad_list_releases_nothing():
    h, alloc = handler()
    h.handle(ipam_request("ADD", "a"))
    with pytest.raises(CniError):
        h.handle(ipam_request("GC", version="1.1.0", **{"cni.dev/valid-attachments": [{"x": 1}]}))
    assert len(alloc.held) == 1


# -- STATUS -------------------------------------------------------------------------------------------------


def test_status_ready():
    assert handler()[0].handle({"command": "STATUS", "config": {}}) is None


@pytest.mark.parametrize("lease_ok, etcd_ok, code", [(True, False, 50), (False, True, 51), (False, False, 51)])
def test_status_codes(lease_ok, etcd_ok, code):
    with pytest.raises(CniError) as e:
        handler(lease_ok, etcd_ok)[0].handle({"command": "STATUS", "config": {}})
    assert e.value.code == code


# -- the IPAM mode ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_ipam_add_is_the_abbreviated_result(version):
    out = handler()[0].handle(ipam_request("ADD", version=version))
    assert out["cniVersion"] == version
    assert "interfaces" not in out
    (ip,) = out["ips"]
    assert ip["address"] == "10.244.7.2/24" and ip["gateway"] == "10.244.7.1" and "interface" not in ip
    assert ("version" in ip) == (version < "1.0.0")
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.244.7.1"}]


def test_ipam_routes_come_from_the_config_and_bad_ones_are_code_7():
    h, _ = handler()
    req = ipam_request("ADD")
    req["config"]["ipam"]["routes"] = [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.244.7.254"}]
    assert h.handle(req)["routes"] == [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.244.7.254"}]
    req["config"]["ipam"]["routes"] = "0.0.0.0/0"
    with pytest.raises(CniError) as e:
        h.handle(req)
    assert e.value.code == 7


def test_ipam_del_before_add_and_twice_succeed_and_check_needs_the_record():
    h, alloc = handler()
    assert h.handle(ipam_request("DEL", "never")) is None
    out = h.handle(ipam_request("ADD"))
    check = ipam_request("CHECK", prevResult=out)
    assert h.handle(check) is None
    h.handle(ipam_request("DEL"))
    h.handle(ipam_request("DEL"))
    assert alloc.held == {}
    with pytest.raises(CniError) as e:
        h.handle(check)
    assert e.value.code == 100


def test_ipam_del_leaves_another_networks_record_alone():
    h, alloc = handler()
    h.handle(ipam_request("ADD", network="a"))
    h.handle(ipam_request("DEL", network="b"))
    assert len(alloc.held) == 1


def test_check_without_prev_result_is_code_7():
    h, _ = handler()
    h.handle(ipam_request("ADD"))
    with pytest.raises(CniError) as e:
        h.handle(ipam_request("CHECK"))
    assert e.value.code == 7


def test_unknown_mode_is_refused():
    req = ipam_request("ADD")
    req["mode"] = "sidecar"
    with pytest.raises(CniError) as e:
        handler()[0].handle(req)
    assert e.value.code == 7


# -- results of other plugins ------------------------------------------------------------------------------

LOOPBACK = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/run/netns/p"}],
    "ips": [{"interface": 0, "address": "127.0.0.1/8"}],
    "routes": [{"dst": "127.0.0.0/8", "mtu": 65536}],
    "dns": {},
}
OURS = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa:00:00:00:00:01"},
        {"name": "veth1", "mac": "aa:00:00:00:00:02"},
        {"name": "eth0", "mac": "AA:00:00:00:00:03", "sandbox": "/run/netns/p"},
    ],
    "ips": [{"interface": 2, "address": "10.244.7.5/24", "gateway": "10.244.7.1"}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.7.1"}],
    "dns": {"nameservers": ["10.96.0.10"]},
}


def test_merge_appends_ours_and_shifts_our_interface_indexes():
    out = cni_result.merge(LOOPBACK, OURS)
    assert [i["name"] for i in out["interfaces"]] == ["lo", "cni0", "veth1", "eth0"]
    assert out["ips"] == [LOOPBACK["ips"][0], dict(OURS["ips"][0], interface=3)]
    assert out["routes"][0] == {"dst": "127.0.0.0/8", "mtu": 65536}, "unknown route fields kept"
    assert out["dns"] == OURS["dns"]
    assert LOOPBACK["ips"] == [{"interface": 0, "address": "127.0.0.1/8"}], "prevResult not modified"


def test_addresses_and_mac_of_one_interface():
    merged = cni_result.merge(LOOPBACK, OURS)
    assert cni_result.addresses_of(merged, "eth0", "/run/netns/p") == {"10.244.7.5"}
    assert cni_result.addresses_of(merged, "eth0", "/run/netns/other") == set()
    assert cni_result.addresses_of(merged) == {"127.0.0.1", "10.244.7.5"}
    assert cni_result.addresses_of({"ips": [{"address": "10.1.0.2/24"}]}, "eth0", "/x") == {"10.1.0.2"}
    assert cni_result.mac_of(merged, "eth0", "/run/netns/p") == "aa:00:00:00:00:03"
    assert cni_result.mac_of(merged, "eth1", "/run/netns/p") == ""
