"""minikubenet.linux.rtnl_batch against a real kernel, in a throwaway namespace."""

from __future__ import annotations

import socket
import subprocess

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from minikubenet.linux import rtnl_batch
from minikubenet.linux.netns import path_of, socket_in


def rtnl_socket(netns: str) -> socket.socket:
    return socket_in(path_of(netns), socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)


def test_a_batch_gets_every_answer_and_applies_in_order(netns):
    subprocess.run(
        ["ip", "-n", netns, "link", "add", "mknbatch0", "type", "veth", "peer", "name", "mknbatch1"], check=True
    )
    subprocess.run(["ip", "-n", netns, "link", "set", "mknbatch1", "up"], check=True)
    sock = rtnl_socket(netns)
    try:
        lo, dummy = rtnl_batch.send_batch(sock, [rtnl_batch.get_link("lo"), rtnl_batch.get_link("mknbatch0")])
        assert rtnl_batch.link_index(lo) == 1
        assert rtnl_batch.link_mac(lo) == "00:00:00:00:00:00"
        index = rtnl_batch.link_index(dummy)
        answers = rtnl_batch.send_batch(
            sock,
            [
                rtnl_batch.set_up(index, "mknbatch0"),
                rtnl_batch.add_address(index, "10.77.0.2", 24, "mknbatch0"),
                rtnl_batch.replace_default_route("10.77.0.1", index),
            ],
        )  # needs the address's subnet: order matters
        assert answers == [None, None, None]
    finally:
        sock.close()
    shown = subprocess.run(["ip", "-n", netns, "-4", "route", "show", "default"], capture_output=True, text=True).stdout
    assert "default via 10.77.0.1 dev mknbatch0" in shown
    addrs = subprocess.run(
        ["ip", "-n", netns, "-4", "addr", "show", "mknbatch0"], capture_output=True, text=True
    ).stdout
    assert "inet 10.77.0.2/24" in addrs


def test_a_failing_request_is_named_and_the_others_still_answer(netns):
    sock = rtnl_socket(netns)
    try:
        with pytest.raises(NetlinkError) as e:
            rtnl_batch.send_batch(
                sock,
                [
                    rtnl_batch.set_up(1, "lo"),
                    rtnl_batch.add_address(9999, "10.77.0.2", 24, "nosuchdev"),
                    rtnl_batch.get_link("lo"),
                ],
            )
        assert "add address 10.77.0.2/24 to nosuchdev" in str(e.value)
        # the socket is still in step: the next batch reads its own answers only
        [lo] = rtnl_batch.send_batch(sock, [rtnl_batch.get_link("lo")])
        assert rtnl_batch.link_index(lo) == 1
    finally:
        sock.close()


def test_a_link_dump_names_kind_alias_and_mac_and_a_missing_ok_get_answers_none(netns):
    subprocess.run(
        [
            "ip",
            "-n",
            netns,
            "link",
            "add",
            "mkndump0",
            "address",
            "0a:11:22:33:44:55",
            "type",
            "veth",
            "peer",
            "name",
            "mkndump1",
        ],
        check=True,
    )
    subprocess.run(["ip", "-n", netns, "link", "set", "mkndump0", "alias", "minikubenet:c1:eth0"], check=True)
    sock = rtnl_socket(netns)
    try:
        seen = {d.name: d for d in rtnl_batch.dump_links(sock)}
        assert seen["mkndump0"].kind == "veth" and seen["mkndump0"].alias == "minikubenet:c1:eth0"
        assert seen["mkndump0"].mac == "0a:11:22:33:44:55" and seen["lo"].alias == ""
        # a batch with an absent device that may be absent: None, and the rest still answers
        lo, missing = rtnl_batch.send_batch(
            sock, [rtnl_batch.get_link("lo"), rtnl_batch.get_link("nosuchdev", missing_ok=True)]
        )
        assert rtnl_batch.link_index(lo) == 1 and missing is None
        # the alias rides on a by-name request (how the pod end gets its mark)
        rtnl_batch.send_batch(sock, [rtnl_batch.set_up_by_name("mkndump1", alias="minikubenet:c1:eth1")])
        assert (
            rtnl_batch.link_seen(rtnl_batch.send_batch(sock, [rtnl_batch.get_link("mkndump1")])[0]).alias
            == "minikubenet:c1:eth1"
        )
    finally:
        sock.close()
        subprocess.run(["ip", "-n", netns, "link", "del", "mkndump0"], check=False)
