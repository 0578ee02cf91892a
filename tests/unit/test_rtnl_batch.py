"""minikubenet.linux.rtnl_batch, the pure part: framing and parsing of rtnetlink messages.
(Sending batches to a real kernel: tests/netns/test_rtnl_batch.py.)"""

from __future__ import annotations

import struct

from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from minikubenet.linux import rtnl_batch


def header(data: bytes) -> tuple:
    return rtnl_batch.NLMSGHDR.unpack_from(data, 0)


def test_a_resent_request_is_the_same_message_with_a_new_sequence_number():
    req = rtnl_batch.create_veth("mkn0", "eth0", 3, 1450, "0a:00:00:00:00:01", "1a:00:00:00:00:01", 5)
    first, again = req.encode(7), req.encode(8)
    assert len(first) == len(again) == header(first)[0]  # nlmsg_len covers exactly the message
    assert header(first)[3] == 7 and header(again)[3] == 8
    assert first[12:] == again[12:]


def test_each_request_asks_for_an_acknowledgement():
    for req in (
        rtnl_batch.get_link("cni0"),
        rtnl_batch.set_up(1),
        rtnl_batch.set_hairpin("v"),
        rtnl_batch.add_address(2, "10.244.1.5", 24),
        rtnl_batch.replace_default_route("10.244.1.1", 2),
    ):
        _len, _type, flags, _seq, _pid = header(req.encode(1))
        assert flags & rtnl_batch.NLM_F_ACK, req.what


def test_link_index_and_mac_are_read_from_a_getlink_answer():
    m = ifinfmsg()
    m["index"] = 42
    m["attrs"] = [("IFLA_IFNAME", "cni0"), ("IFLA_MTU", 1450), ("IFLA_ADDRESS", "0a:58:0a:f4:01:01")]
    m["header"]["type"] = RTM_NEWLINK
    m.encode()
    answer = bytes(m.data)
    assert rtnl_batch.link_index(answer) == 42
    assert rtnl_batch.link_mac(answer) == "0a:58:0a:f4:01:01"


def test_the_route_goes_to_the_main_table_as_iproute2_would_put_it():
    data = rtnl_batch.replace_default_route("10.244.1.1", 2).encode(1)
    family, dst_len, _src, _tos, table, proto, scope, rtype, _flags = struct.unpack_from("=BBBBBBBBI", data, 16)
    assert (family, dst_len, table, proto, scope, rtype) == (2, 0, 254, 3, 0, 1)
