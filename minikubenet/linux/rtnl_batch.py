"""rtnetlink requests in batches: several messages in one datagram, one round trip.

A pod's plumbing is a handful of small requests (create the veth pair, hairpin, links
up, address, default route). Through pyroute2's ``IPRoute`` each one costs 0.2-0.4 ms,
mostly Python (0.9 turns an asyncio loop per request); the kernel's own share is tens
of microseconds, except for creating the veth pair. CNI ADD is on the path of every pod
start, so this module sends them the way ``ip -batch`` could: the kernel reads the
messages of one datagram in order and acknowledges each that asked for it
(``netlink_rcv_skb`` in net/netlink/af_netlink.c: one ``NLMSG_ERROR`` per message,
error 0 on success, after a GET's own answer). One ``send`` and one read of the answers
per batch.

pyroute2's message classes (``ifinfmsg``, ``ifaddrmsg``, ``rtmsg``) still encode every
message; here we only frame them, send them on a plain ``AF_NETLINK`` socket and match
the answers by sequence number. A later message of a batch may name a device an
earlier one created (by ``IFLA_IFNAME``), as the kernel handles them in order.

A message that fails does not stop the kernel from handling the ones after it, so a
batch holds requests that are all undone together when any fails (CNI ADD undoes the
whole attachment). ``send_batch`` raises ``NetlinkError`` for the first failure, naming
the request. A GET in a batch names one object; a dump (NLM_F_DUMP) ends with NLMSG_DONE
and no acknowledgement, so it goes alone: ``dump_links`` reads the few facts CNI ADD needs
about a pod namespace's devices (name, kind, alias, MAC) without pyroute2's decoding.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from minikubenet.pod_network import LinkSeen

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (linux/netlink.h)
NLMSGERR = struct.Struct("=i")  # struct nlmsgerr starts with the (negative) errno
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change (linux/rtnetlink.h)
RTATTR = struct.Struct("=HH")  # len, type
IFLA_ADDRESS, IFLA_IFNAME, IFLA_LINKINFO, IFLA_IFALIAS = 1, 3, 18, 20
IFLA_INFO_KIND = 1
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
REQUEST_ACK = NLM_F_REQUEST | NLM_F_ACK  # a change, or a GET of one object
REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE

RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
IFLA_BRPORT_MODE_HAIRPIN = 1

REPLY_TIMEOUT_S = 10.0
_sequence = itertools.count(1)


@dataclass
class Request:
    """One message; ``what`` it does names it in errors, ``kind`` in timings."""

    kind: str  # "getlink", "veth", "hairpin", "up", "address", "route"
    what: str
    message: Any  # a pyroute2 nlmsg, header type and flags set
    missing_ok: bool = False  # a GET whose object may be absent: answer None, not ENODEV
    _data: bytes | None = None

    def encode(self, seq: int) -> bytes:
        """The message with this sequence number. Encoded once (pyroute2 appends to its
        buffer on every encode()); a resend only patches nlmsg_seq."""
        if self._data is None:
            self.message.encode()
            self._data = bytes(self.message.data)
        data = bytearray(self._data)
        struct.pack_into("=I", data, 8, seq)  # nlmsghdr: len(4) type(2) flags(2) seq(4)
        return bytes(data)


def _request(kind: str, what: str, message, msg_type: int, flags: int) -> Request:
    message["header"]["type"] = msg_type
    message["header"]["flags"] = flags
    return Request(kind, what, message)


# -- the messages a pod attachment needs -------------------------------------------------------


def get_link(name: str, missing_ok: bool = False) -> Request:
    """RTM_GETLINK for one name: the answer is that device's RTM_NEWLINK (``link_index``,
    ``link_seen``); with ``missing_ok`` an absent device answers None instead of failing."""
    m = ifinfmsg()
    m["attrs"] = [("IFLA_IFNAME", name)]
    r = _request("getlink", f"look up {name}", m, RTM_GETLINK, REQUEST_ACK)
    r.missing_ok = missing_ok
    return r


def create_veth(name: str, peer: str, peer_netns_fd: int, mtu: int, mac: str, peer_mac: str, master: int) -> Request:
    """A veth pair in one request: this end a port of bridge ``master`` and up, the
    peer created directly inside another namespace (IFLA_NET_NS_FD in the peer's own
    ifinfomsg, which VETH_INFO_PEER carries). The peer cannot be brought up here: the
    kernel configures it before the pair is linked and veth_open refuses (ENOTCONN)."""
    m = ifinfmsg()
    m["flags"] = m["change"] = IFF_UP
    peer_attrs = [
        ("IFLA_IFNAME", peer),
        ("IFLA_NET_NS_FD", peer_netns_fd),
        ("IFLA_MTU", mtu),
        ("IFLA_ADDRESS", peer_mac),
    ]
    m["attrs"] = [
        ("IFLA_IFNAME", name),
        ("IFLA_MTU", mtu),
        ("IFLA_ADDRESS", mac),
        ("IFLA_MASTER", master),
        (
            "IFLA_LINKINFO",
            {
                "attrs": [
                    ("IFLA_INFO_KIND", "veth"),
                    ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": peer_attrs})]}),
                ]
            },
        ),
    ]
    return _request("veth", f"create veth {name} (peer {peer})", m, RTM_NEWLINK, CREATE)


def set_hairpin(name: str, alias: str | None = None) -> Request:
    """Hairpin mode on a bridge port (``ip link set NAME type bridge_slave hairpin on``),
    and the device's alias if one is given (the ownership mark, pod_network.py).
    Port options are slave data, and an alias is not read when a device is created
    (rtnl_create_link takes neither): both need this second request on the existing
    device, in the same batch."""
    m = ifinfmsg()
    m["attrs"] = (
        [("IFLA_IFNAME", name)]
        + ([("IFLA_IFALIAS", alias)] if alias else [])
        + [
            (
                "IFLA_LINKINFO",
                {
                    "attrs": [
                        ("IFLA_INFO_SLAVE_KIND", "bridge"),
                        ("IFLA_INFO_SLAVE_DATA", {"attrs": [("IFLA_BRPORT_MODE", IFLA_BRPORT_MODE_HAIRPIN)]}),
                    ]
                },
            )
        ]
    )
    return _request("hairpin", f"hairpin on {name}", m, RTM_NEWLINK, REQUEST_ACK)


def set_up_by_name(name: str, alias: str | None = None) -> Request:
    """``ip link set NAME up [alias ALIAS]``: found by name (ifi_index 0 and IFLA_IFNAME,
    rtnl_setlink), so it needs no index looked up first."""
    m = ifinfmsg()
    m["flags"] = m["change"] = IFF_UP
    m["attrs"] = [("IFLA_IFNAME", name)] + ([("IFLA_IFALIAS", alias)] if alias else [])
    return _request("up", f"set {name} up", m, RTM_NEWLINK, REQUEST_ACK)


def set_up(index: int, name: str = "") -> Request:
    m = ifinfmsg()
    m["index"] = index
    m["flags"] = m["change"] = IFF_UP
    return _request("up", f"set {name or f'link {index}'} up", m, RTM_NEWLINK, REQUEST_ACK)


def add_address(index: int, ip: str, prefixlen: int, name: str = "") -> Request:
    """``ip addr add IP/PREFIXLEN dev INDEX`` (IFA_LOCAL and IFA_ADDRESS both the address,
    as iproute2 sends them on a broadcast device)."""
    m = ifaddrmsg()
    m["family"] = socket.AF_INET
    m["prefixlen"] = prefixlen
    m["index"] = index
    m["attrs"] = [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip)]
    return _request("address", f"add address {ip}/{prefixlen} to {name or index}", m, RTM_NEWADDR, CREATE)


def replace_default_route(gateway: str, oif: int) -> Request:
    """``ip route replace default via GATEWAY dev OIF`` in the main table."""
    m = rtmsg()
    m["family"] = socket.AF_INET
    m["table"] = RT_TABLE_MAIN
    m["proto"] = RTPROT_BOOT
    m["scope"] = RT_SCOPE_UNIVERSE
    m["type"] = RTN_UNICAST
    m["attrs"] = [("RTA_GATEWAY", gateway), ("RTA_OIF", oif)]
    return _request("route", f"default route via {gateway}", m, RTM_NEWROUTE, REPLACE)


# -- sending -----------------------------------------------------------------------------------


def open_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in this thread's namespace (or use ``netns.socket_in``)."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)


def send_batch(sock: socket.socket, requests: list[Request]) -> list[bytes | None]:
    """Send all requests in one datagram; wait for every acknowledgement. Returns, per
    request, the answer a GET got (its whole message) or None. Raises ``NetlinkError``
    (code = errno) for the first request that failed."""
    seqs = [next(_sequence) for _ in requests]
    # The kernel answers every message that asks for an ack, but drops a malformed
    # datagram without a word (netlink_rcv_skb): never wait for ever.
    sock.settimeout(REPLY_TIMEOUT_S)
    sock.send(b"".join(r.encode(seq) for r, seq in zip(requests, seqs)))
    position = {seq: i for i, seq in enumerate(seqs)}
    answers: list[bytes | None] = [None] * len(requests)
    errors: dict[int, int] = {}
    pending = set(seqs)
    while pending:
        try:
            data = sock.recv(65536)
        except socket.timeout:  # TimeoutError from 3.10 on
            raise NetlinkError(
                errno.ETIMEDOUT,
                f"no answer from the kernel to: {', '.join(requests[position[s]].what for s in sorted(pending))}",
            ) from None
        offset = 0
        while offset + NLMSGHDR.size <= len(data):
            length, msg_type, _flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
            if length < NLMSGHDR.size:
                break
            if seq in position:
                if msg_type == NLMSG_ERROR:
                    (code,) = NLMSGERR.unpack_from(data, offset + NLMSGHDR.size)
                    if code and not (-code == errno.ENODEV and requests[position[seq]].missing_ok):
                        errors[position[seq]] = -code
                    pending.discard(seq)
                else:
                    answers[position[seq]] = data[offset : offset + length]
            offset += (length + 3) & ~3  # NLMSG_ALIGN
    if errors:
        first = min(errors)
        code = errors[first]
        raise NetlinkError(code, f"{requests[first].what}: {os.strerror(code)}")
    return answers


def link_index(answer: bytes | None) -> int:
    """The interface index in a GETLINK answer (the ifinfomsg after the header)."""
    if not answer:
        raise NetlinkError(errno.ENODEV, "no such device")
    _family, _type, index, _flags, _change = IFINFOMSG.unpack_from(answer, NLMSGHDR.size)
    return index


def link_mac(answer: bytes | None) -> str | None:
    """IFLA_ADDRESS of a GETLINK answer, as aa:bb:cc:dd:ee:ff (walks the rtattrs)."""
    if answer is None:
        return None
    offset = NLMSGHDR.size + IFINFOMSG.size
    while offset + RTATTR.size <= len(answer):
        length, attr_type = RTATTR.unpack_from(answer, offset)
        if length < RTATTR.size:
            break
        if attr_type == IFLA_ADDRESS:
            return answer[offset + RTATTR.size : offset + length].hex(":")
        offset += (length + 3) & ~3  # RTA_ALIGN
    return None


def _attrs(data: bytes, offset: int, end: int):
    """(type, payload) of each rtattr between offset and end."""
    while offset + RTATTR.size <= end:
        length, attr_type = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size:
            break
        yield attr_type & NLA_TYPE_MASK, data[offset + RTATTR.size : offset + length]
        offset += (length + 3) & ~3  # RTA_ALIGN


def link_seen(msg: bytes) -> LinkSeen:
    """Name, kind, alias and MAC of a device from its RTM_NEWLINK message."""
    _family, _type, index, _flags, _change = IFINFOMSG.unpack_from(msg, NLMSGHDR.size)
    seen = {"index": index, "name": "", "kind": "", "alias": "", "mac": ""}
    for attr_type, payload in _attrs(msg, NLMSGHDR.size + IFINFOMSG.size, len(msg)):
        if attr_type == IFLA_IFNAME:
            seen["name"] = payload.rstrip(b"\0").decode(errors="replace")
        elif attr_type == IFLA_IFALIAS:
            seen["alias"] = payload.rstrip(b"\0").decode(errors="replace")
        elif attr_type == IFLA_ADDRESS:
            seen["mac"] = payload.hex(":")
        elif attr_type == IFLA_LINKINFO:
            for info_type, info in _attrs(payload, 0, len(payload)):
                if info_type == IFLA_INFO_KIND:
                    seen["kind"] = info.rstrip(b"\0").decode(errors="replace")
    return LinkSeen(**seen)


def dump_links(sock: socket.socket) -> list[LinkSeen]:
    """Every device of the socket's namespace (``ip link show``), as LinkSeen."""
    seq = next(_sequence)
    sock.settimeout(REPLY_TIMEOUT_S)
    request = bytearray(IFINFOMSG.size)
    header = NLMSGHDR.pack(NLMSGHDR.size + len(request), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    sock.send(header + bytes(request))
    links: list = []
    while True:
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            raise NetlinkError(errno.ETIMEDOUT, "no answer from the kernel to a link dump") from None
        offset = 0
        while offset + NLMSGHDR.size <= len(data):
            length, msg_type, _flags, msg_seq, _pid = NLMSGHDR.unpack_from(data, offset)
            if length < NLMSGHDR.size:
                break
            if msg_seq == seq:
                if msg_type == NLMSG_DONE:
                    return links
                if msg_type == NLMSG_ERROR:
                    (code,) = NLMSGERR.unpack_from(data, offset + NLMSGHDR.size)
                    if code:
                        raise NetlinkError(-code, f"link dump: {os.strerror(-code)}")
                elif msg_type == RTM_NEWLINK:
                    links.append(link_seen(data[offset : offset + length]))
            offset += (length + 3) & ~3
