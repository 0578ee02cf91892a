"""Decoding nf_tables notifications (linux/nft_monitor.py): bytes captured from Linux
6.18 (``iptables -t nat -F KUBE-SVC-ABC`` with iptables-nft), and messages built here."""

from __future__ import annotations

import struct

from minikubenet.linux import nft_monitor as M

# One DELRULE (table nat, chain KUBE-SVC-ABC, with the rule's expressions) and the NEWGEN
# that closed the transaction (gen 4, pid 28767, "iptables"), as two datagrams.
CAPTURED_DELRULE = bytes.fromhex(
    "9c000000080a0000020000005f70000002000004080001006e617400110002004b5542452d5356432d414243"
    "000000000c0003000000000000000002600004002c0001000c000100636f756e746572001c0002000c0001"
    "0000000000000000000c0002000000000000000000300001000e000100696d6d6564696174650000001c00"
    "02000800010000000000100002000c00020008000100fffffffb"
)
CAPTURED_NEWGEN = bytes.fromhex(
    "340000000f0a0000020000005f700000000000040800010000000004080002000000705f0d00030069707461626c657300000000"
)


def attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def message(msg: int, family: int, *attrs: bytes, subsys: int = 10) -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), subsys << 8 | msg, 0, 0, 0) + body


# ``iptables -D FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD``
# (iptables-nft 1.8.9, Linux 6.18): match "comment", counter, immediate jump KUBE-FORWARD.
CAPTURED_DELETED_JUMP = bytes.fromhex(
    "d8010000080a000002000000a3300000020000040b00010066696c74657200000c000200464f525741524400"
    "0c0003000000000000000003a00104002c0101000a0001006d617463680000001c0102000c000100636f6d6d"
    "656e74000800020000000000040103006b756265726e6574657320666f7277617264696e672072756c6573"
    + "00"
    * 229
    + "2c0001000c000100636f756e746572001c0002000c00010000000000000000000c0002000000000000000000"
    "440001000e000100696d6d656469617465000000300002000800010000000000240002002000020008000100"
    "fffffffd110002004b5542452d464f525741524400000000"
)


def test_a_captured_delrule_names_its_table_and_chain():
    # its only "immediate" is a RETURN: a rule that jumps nowhere
    assert M.decode(CAPTURED_DELRULE) == [M.ObjectChange("DELRULE", "ip", "nat", "KUBE-SVC-ABC", jumps_to="")]


def test_a_captured_deleted_jump_says_where_it_jumped():
    (change,) = M.decode(CAPTURED_DELETED_JUMP)
    assert change == M.ObjectChange("DELRULE", "ip", "filter", "FORWARD", jumps_to="KUBE-FORWARD")
    ours = lambda chain: chain.startswith("KUBE-")  # noqa: E731
    assert change.may_break_jump({"FORWARD"}, ours)
    assert not change.may_break_jump({"FORWARD"}, lambda chain: chain == "MKN-POLICY")
    assert not change.may_break_jump({"INPUT"}, ours)


def test_a_deleted_rule_without_its_expressions_might_have_been_a_jump():
    change = M.ObjectChange("DELRULE", "ip", "filter", "FORWARD")  # jumps_to None: not said
    assert change.may_break_jump({"FORWARD"}, lambda chain: False)
    assert not M.ObjectChange("NEWRULE", "ip", "filter", "FORWARD", "KUBE-FORWARD").may_break_jump({"FORWARD"}, bool)


def test_a_captured_newgen_names_the_process_that_committed():
    assert M.decode(CAPTURED_NEWGEN) == [M.Generation(gen_id=4, pid=28767, proc_name="iptables")]


def test_several_messages_in_one_datagram_come_out_in_order():
    data = (
        message(9, 2, attr(1, b"minikubenet-proxy\0"), attr(2, b"service-ips\0"))
        + message(14, 2, attr(1, b"minikubenet-proxy\0"), attr(2, b"service-ips\0"))
        + message(5, 2, attr(1, b"minikubenet-proxy\0"), attr(2, b"\0\0\0\0\0\0\0\x07"), attr(3, b"svc-x\0"))
        + message(2, 2, attr(1, b"t\0"))
        + message(15, 0, attr(1, struct.pack(">I", 9)), attr(2, struct.pack(">I", 42)), attr(3, b"nft\0"))
    )
    changes = M.decode(data)
    assert [(c.op, c.table, c.name) for c in changes[:4]] == [
        ("NEWSET", "minikubenet-proxy", "service-ips"),
        ("DELSETELEM", "minikubenet-proxy", "service-ips"),
        ("DELCHAIN", "minikubenet-proxy", "svc-x"),
        ("DELTABLE", "t", ""),
    ]
    assert changes[2].kind == "CHAIN" and changes[2].deletes and not changes[0].deletes
    assert changes[4] == M.Generation(9, 42, "nft")


def test_other_subsystems_errors_and_truncated_data_are_skipped():
    other = message(0, 2, attr(1, b"x\0"), subsys=1)  # ctnetlink, not nf_tables
    error = struct.pack("=IHHII", 20, 2, 0, 0, 0) + b"\0" * 4  # NLMSG_ERROR
    good = message(8, 2, attr(1, b"filter\0"), attr(2, b"KUBE-FORWARD\0"))
    assert M.decode(other + error + good) == [M.ObjectChange("DELRULE", "ip", "filter", "KUBE-FORWARD")]
    assert M.decode(good[:-3]) == []  # cut short: nothing made up
    assert M.decode(b"") == [] and M.decode(b"\x01\x00") == []


def test_own_processes_are_known_by_pid_and_name_and_forgotten_after_a_while():
    now = [100.0]
    own = M.OwnProcesses(keep_s=60, clock=lambda: now[0])
    own.add(4242, "/usr/sbin/iptables-restore")
    assert own.made(M.Generation(1, 4242, "iptables-restor"))  # the kernel's comm: 15 bytes
    assert not own.made(M.Generation(1, 4242, "bash"))  # a recycled pid
    assert not own.made(M.Generation(1, 4243, "iptables-restor"))
    now[0] += 61
    own.add(5000, "nft")  # adding prunes the old ones
    assert not own.made(M.Generation(1, 4242, "iptables-restor"))
    assert own.made(M.Generation(1, 5000, "nft"))
