"""Ownership marks and the start-up repair plan, without a kernel or etcd.

Every interface the agent makes carries ``minikubenet:<container ID>:<ifname>`` as its
alias; ADD refuses a foreign CNI_IFNAME and a node's namespace before changing anything,
and the agent's start turns what a crash during ADD left into "nothing" or "a complete
pod" (agent/reconcile.py).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import replace

import pytest

from minikubenet.agent.cni_handler import Call, CniHandler
from minikubenet.agent.reconcile import plan_repairs
from minikubenet.cni.shim import CniError
from minikubenet.ipam.allocator import Allocation, Owner
from minikubenet.linux import rtnl_batch
from minikubenet.pod_network import (
    IFALIAS_MAX,
    LinkSeen,
    PodLink,
    attachment_macs,
    host_namespace_reason,
    ownership_mark,
    owns,
)

IP = ipaddress.IPv4Address


def test_the_mark_names_container_and_interface():
    assert ownership_mark("abc123", "eth0") == "minikubenet:abc123:eth0"


def test_a_container_id_too_long_for_an_alias_is_hashed_stably():
    long_id = "x" * 400
    mark = ownership_mark(long_id, "eth0")
    assert len(mark.encode()) <= IFALIAS_MAX
    assert mark == ownership_mark(long_id, "eth0") != ownership_mark(long_id + "y", "eth0")
    assert mark.startswith("minikubenet:sha256-") and mark.endswith(":eth0")
    # the longest ID that still fits is written as it is
    fits = "a" * (IFALIAS_MAX - len("minikubenet::eth0"))
    assert ownership_mark(fits, "eth0") == f"minikubenet:{fits}:eth0"


def test_an_alias_decides_and_an_unmarked_device_needs_our_mac():
    mark = ownership_mark("c1", "eth0")
    _, pod_mac = attachment_macs("c1", "eth0")
    assert owns(mark, mark, "aa:aa:aa:aa:aa:aa", pod_mac)
    assert not owns(mark, ownership_mark("c2", "eth0"), pod_mac, pod_mac)  # another's mark, our MAC
    assert owns(mark, "", pod_mac.upper(), pod_mac)  # an agent from before the mark
    assert not owns(mark, "", "aa:bb:cc:dd:ee:ff", pod_mac)
    assert not owns(mark, None, None, pod_mac)


@pytest.mark.parametrize(
    "devices, node",
    [
        ([LinkSeen(1, "lo"), LinkSeen(2, "eth0", "veth", "minikubenet:c1:eth0")], False),
        ([LinkSeen(1, "lo"), LinkSeen(2, "cni0", "bridge")], True),
        ([LinkSeen(1, "lo"), LinkSeen(5, "flannel.1", "vxlan")], True),
        ([LinkSeen(1, "lo"), LinkSeen(2, "eth0", "veth", "minikubenet-node:n2:underlay")], True),
        ([LinkSeen(1, "lo"), LinkSeen(2, "eth0", "veth", "someone's")], False),
    ],
)
def test_a_node_namespace_is_recognised_by_its_devices(devices, node):
    assert (host_namespace_reason(devices) is not None) == node


# -- ADD's refusal, before anything is changed ----------------------------------------------------


def call(cid="new", ifname="eth0"):
    return Call(
        "ADD",
        "main",
        {"CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_NETNS": "/run/netns/p"},
        {"cniVersion": "1.0.0", "name": "net"},
        "/run/netns/p",
    )


def refusal(devices, cid="new"):
    c = call(cid)
    try:
        CniHandler._refuse_foreign(c, PodLink(cid, "eth0", "/run/netns/p", 1450), devices)
    except CniError as e:
        return e
    return None


def test_another_containers_eth0_is_refused_with_the_reference_bridges_words():
    e = refusal([LinkSeen(1, "lo"), LinkSeen(2, "eth0", "veth", ownership_mark("owner", "eth0"))])
    assert e.code == 999 and e.msg == "container veth name provided (eth0) already exists"
    assert "owner" in e.details


def test_an_unmarked_eth0_is_refused():
    assert refusal([LinkSeen(2, "eth0", "veth", "", "aa:bb:cc:dd:ee:ff")]).code == 999


def test_this_attachments_own_leftover_is_not_refused():
    assert refusal([LinkSeen(2, "eth0", "veth", ownership_mark("new", "eth0"))]) is None
    assert refusal([LinkSeen(2, "net1", "veth", ownership_mark("owner", "net1"))]) is None


def test_a_node_namespace_is_refused_even_for_a_free_ifname():
    e = refusal(
        [
            LinkSeen(1, "lo"),
            LinkSeen(2, "eth0", "veth", "minikubenet-node:n2:underlay"),
            LinkSeen(3, "flannel.1", "vxlan"),
        ]
    )
    assert e.code == 8 and "node" in e.msg


# -- the dump parser ------------------------------------------------------------------------------


def rtattr(t, payload):
    data = struct.pack("=HH", 4 + len(payload), t) + payload
    return data + b"\0" * ((-len(data)) % 4)


def test_a_link_dump_message_gives_name_kind_alias_and_mac():
    info = rtattr(rtnl_batch.IFLA_INFO_KIND, b"veth\0")
    body = (
        struct.pack("=BxHiII", 0, 1, 7, 0, 0)
        + rtattr(3, b"eth0\0")
        + rtattr(1, bytes.fromhex("0a1122334455"))
        + rtattr(20, b"minikubenet:c1:eth0\0")
        + rtattr(18 | 0x8000, info)
    )
    msg = struct.pack("=IHHII", 16 + len(body), 16, 2, 1, 0) + body
    assert rtnl_batch.link_seen(msg) == LinkSeen(7, "eth0", "veth", "minikubenet:c1:eth0", "0a:11:22:33:44:55")


# -- the start-up repair plan ---------------------------------------------------------------------

CLAIMED, COMPLETE = True, False


def record(n, claimed):
    o = Owner(f"c{n}", "eth0", node="n1", network="net", netns=f"/run/netns/p{n}")
    a = Allocation(IP(f"10.244.1.{n}"), o, o.to_record())
    CLAIMS[a.ip] = claimed
    return a


CLAIMS: dict = {}


def plan(records, *args):
    return plan_repairs(records, {a.ip for a in records if CLAIMS.get(a.ip)}, *args)


def veth(n):
    return LinkSeen(100 + n, f"veth{n:08x}", "veth", ownership_mark(f"c{n}", "eth0"))


def test_a_claim_without_a_veth_is_released():
    r = plan([record(2, CLAIMED)], [], {}, "n1")
    assert [a.ip for a in r.release] == [IP("10.244.1.2")] and not r.remove and not r.complete


def test_a_half_made_pod_is_removed_and_released():
    r = plan([record(3, CLAIMED)], [veth(3)], {IP("10.244.1.3"): False}, "n1")
    assert r.remove == [veth(3)] and [a.ip for a in r.release] == [IP("10.244.1.3")]


def test_a_complete_pod_with_a_claimed_record_is_marked_complete():
    r = plan([record(4, CLAIMED)], [veth(4)], {IP("10.244.1.4"): True}, "n1")
    assert [a.ip for a in r.complete] == [IP("10.244.1.4")] and not r.remove and not r.release


def test_a_marked_veth_without_a_record_is_removed():
    r = plan([], [veth(5)], {}, "n1")
    assert r.remove == [veth(5)]


def test_complete_records_and_their_pods_are_left_as_they_are():
    r = plan([record(6, COMPLETE), record(7, "")], [veth(6)], {}, "n1")
    assert not (r.remove or r.release or r.complete)


def test_a_pod_that_cannot_be_looked_at_is_left_claimed():
    r = plan([record(8, CLAIMED)], [veth(8)], {IP("10.244.1.8"): None}, "n1")
    assert not (r.remove or r.release or r.complete) and r.left_alone


def test_records_of_another_node_name_keep_their_veths_and_are_not_touched():
    other = replace(record(9, CLAIMED).owner, node="old-name")
    a = Allocation(IP("10.244.1.9"), other, other.to_record())
    r = plan([a], [veth(9)], {}, "n1")
    assert not (r.remove or r.release or r.complete)


def test_a_marked_veth_with_a_record_in_another_subnet_is_kept():
    assert plan([], [veth(5)], {}, "n1", frozenset({ownership_mark("c5", "eth0")})).remove == []


def test_without_the_other_subnets_records_a_veth_without_a_record_is_kept():
    assert plan([], [veth(5)], {}, "n1", None).remove == []
