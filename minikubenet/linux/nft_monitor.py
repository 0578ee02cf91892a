"""Hearing every nf_tables change on this node, as ``nft monitor`` does.

The kernel announces each committed nf_tables transaction to the netlink multicast
group ``NFNLGRP_NFTABLES`` (7) of ``NETLINK_NETFILTER`` sockets
(net/netfilter/nf_tables_api.c, ``nf_tables_commit``): one message per object the
transaction created or deleted (NEWTABLE, DELCHAIN, NEWRULE, DELRULE, NEWSET,
DELSETELEM...), then one ``NFT_MSG_NEWGEN`` that closes the transaction and carries the
new generation id and the **pid and name of the process that committed it**
(``NFTA_GEN_PROC_PID``, ``NFTA_GEN_PROC_NAME``). iptables-nft (Debian's default
``iptables``) is an nf_tables client too, so ``iptables -t nat -F`` shows up here as a
DELRULE per rule in tables ``nat`` and ``filter`` of family ``ip``. iptables-legacy
does not: it uses the old setsockopt interface and sends nothing, which is why the
proxy keeps a periodic check as well.

Each message is a netlink header (``struct nlmsghdr``: length, type, flags, seq, pid;
type = subsystem 10 (NFNL_SUBSYS_NFTABLES) << 8 | NFT_MSG_*), a ``struct nfgenmsg``
(family, version, resource id), and attributes (``struct nlattr``: length, type, value
padded to 4 bytes). For our purpose only a few attributes matter: the table name (attr
1 of every object message), the chain, set or object name, and NEWGEN's pid and name.
A deleted rule also says where it jumped (below): a rule deleted from a built-in chain
such as FORWARD matters to a controller only if it was that controller's jump. That is
small enough to decode here with ``struct``, over a plain ``socket.AF_NETLINK``
socket (stdlib): pyroute2's NFTSocket is built for requests and dumps, and its message
classes for the NEWGEN attributes and for notifications of every object type would be
more code to drive than the decoder below. ``decode`` is pure, and unit-tested on bytes
captured from this kernel.

**Own changes.** The proxy must ignore the transactions its own ``iptables-restore``
and ``nft -f`` children make, or every repair would trigger the next one. A child is
started through ``run()``, which records its pid before the child reads its input (so
before it can commit anything); NEWGEN's pid is then matched against that record
(``OwnProcesses``). The pid alone is not enough: by the time the notification is read,
the short-lived child may have exited and its pid even been reused, so the record is
kept for a minute and also matched by process name.

**Lost notifications.** The socket has a fixed buffer; a burst (our own full sync of
10 000 services is tens of thousands of messages) can overflow it, and the kernel then
says so with ENOBUFS on the next read. The monitor reports that as ``overflow`` and the
consumer checks the kernel directly (it cannot know what it missed).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNL_SUBSYS_NFTABLES = 10
NLMSG_MIN_TYPE = 0x10  # below: NOOP, ERROR, DONE, OVERRUN

# include/uapi/linux/netfilter/nf_tables.h, enum nf_tables_msg_types
MSG_NAMES = {
    0: "NEWTABLE",
    2: "DELTABLE",
    3: "NEWCHAIN",
    5: "DELCHAIN",
    6: "NEWRULE",
    8: "DELRULE",
    9: "NEWSET",
    11: "DELSET",
    12: "NEWSETELEM",
    14: "DELSETELEM",
    15: "NEWGEN",
    18: "NEWOBJ",
    20: "DELOBJ",
    22: "NEWFLOWTABLE",
    24: "DELFLOWTABLE",
    26: "DESTROYTABLE",
    27: "DESTROYCHAIN",
    28: "DESTROYRULE",
    29: "DESTROYSET",
    30: "DESTROYSETELEM",
    31: "DESTROYOBJ",
    32: "DESTROYFLOWTABLE",
}
NFT_MSG_NEWGEN = 15
# Where the object's own name is, per message kind: every object message has the table
# name as attribute 1; a chain's name is NFTA_CHAIN_NAME (3), a rule's chain is
# NFTA_RULE_CHAIN (2), a set's name NFTA_SET_NAME (2), a set element list's set
# NFTA_SET_ELEM_LIST_SET (2), an object's / flowtable's name attribute 2.
_NAME_ATTR = {"CHAIN": 3, "RULE": 2, "SET": 2, "SETELEM": 2, "OBJ": 2, "FLOWTABLE": 2}
NFTA_GEN_ID, NFTA_GEN_PROC_PID, NFTA_GEN_PROC_NAME = 1, 2, 3
# A rule's expressions (NFTA_RULE_EXPRESSIONS, 4) are a list of NFTA_LIST_ELEM (1), each
# {NFTA_EXPR_NAME (1), NFTA_EXPR_DATA (2)}. iptables-nft writes ``-j CHAIN`` as the
# expression "immediate" whose data (NFTA_IMMEDIATE_DATA, 2) holds a verdict
# (NFTA_DATA_VERDICT, 2): {NFTA_VERDICT_CODE (1): NFT_JUMP -3 or NFT_GOTO -4,
# NFTA_VERDICT_CHAIN (2): the chain's name}. The kernel puts the expressions into every
# NEWRULE and DELRULE notification (nf_tables_fill_rule_info).
NFTA_RULE_EXPRESSIONS = 4
NFT_JUMP, NFT_GOTO = -3, -4

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")
_NLATTR = struct.Struct("=HH")

FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


@dataclass(frozen=True)
class ObjectChange:
    """One object a transaction created or deleted: ``op`` is e.g. "DELRULE"."""

    op: str
    family: str
    table: str
    name: str = ""  # chain (of a rule), chain, set or object name; "" for a table
    # a deleted rule's jump or goto target: "" for a rule without one, None when unknown
    # (not a DELRULE, or a message without the rule's expressions)
    jumps_to: str | None = None

    @property
    def kind(self) -> str:  # "RULE", "CHAIN", "SET", "SETELEM", "TABLE"...
        return self.op.removeprefix("NEW").removeprefix("DEL").removeprefix("DESTROY")

    @property
    def deletes(self) -> bool:
        return self.op.startswith(("DEL", "DESTROY"))

    def may_break_jump(self, sources: Collection[str], ours: Callable[[str], bool]) -> bool:
        """Could this change have removed a jump of ours from one of the built-in chains
        ``sources``? One of them deleted, or a rule deleted from one of them that jumped
        to a chain ``ours`` accepts, or whose target the message did not say. Another
        controller moving its own jump (a delete and an insert in FORWARD) is not ours."""
        if not self.deletes or self.name not in sources:
            return False
        return self.kind != "RULE" or self.jumps_to is None or ours(self.jumps_to)


@dataclass(frozen=True)
class Generation:
    """A NEWGEN: the end of one committed transaction, and who committed it."""

    gen_id: int
    pid: int
    proc_name: str


@dataclass
class Transaction:
    """Everything one commit changed, and who committed it (pid 0: unknown, the
    message was lost)."""

    changes: list[ObjectChange] = field(default_factory=list)
    gen: Generation | None = None


def _attrs(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    out = {}
    while offset + _NLATTR.size <= end:
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size:
            break
        out[kind & 0x3FFF] = data[offset + _NLATTR.size : offset + length]  # without NESTED/BYTEORDER flags
        offset += (length + 3) & ~3
    return out


def _attr_list(data: bytes) -> list[tuple[int, bytes]]:
    """A nested attribute's children in order (a list may repeat a type)."""
    out, offset = [], 0
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size or offset + length > len(data):
            break
        out.append((kind & 0x3FFF, data[offset + _NLATTR.size : offset + length]))
        offset += (length + 3) & ~3
    return out


def _jump_target(expressions: bytes) -> str:
    """The chain a rule jumps or goes to (its "immediate" verdict), or ""."""
    for _, elem in _attr_list(expressions):
        expr = dict(_attr_list(elem))
        if _string(expr.get(1)) != "immediate":
            continue
        verdict = dict(_attr_list(dict(_attr_list(dict(_attr_list(expr.get(2, b""))).get(2, b""))).get(2, b"")))
        code = verdict.get(1, b"")
        if len(code) >= 4 and struct.unpack(">i", code[:4])[0] in (NFT_JUMP, NFT_GOTO):
            return _string(verdict.get(2))
    return ""


def _string(value: bytes | None) -> str:
    return value.split(b"\0", 1)[0].decode(errors="replace") if value else ""


def decode(data: bytes) -> list[ObjectChange | Generation]:
    """The nf_tables notifications in one netlink datagram, in order (pure)."""
    out: list[ObjectChange | Generation] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        end = offset + length
        if msg_type >= NLMSG_MIN_TYPE and msg_type >> 8 == NFNL_SUBSYS_NFTABLES:
            family, _version, _res = _NFGENMSG.unpack_from(data, offset + _NLMSGHDR.size)
            attrs = _attrs(data, offset + _NLMSGHDR.size + _NFGENMSG.size, end)
            msg = msg_type & 0xFF
            if msg == NFT_MSG_NEWGEN:
                gen_id = struct.unpack(">I", attrs[NFTA_GEN_ID][:4])[0] if len(attrs.get(NFTA_GEN_ID, b"")) >= 4 else 0
                pid = (
                    struct.unpack(">I", attrs[NFTA_GEN_PROC_PID][:4])[0]
                    if len(attrs.get(NFTA_GEN_PROC_PID, b"")) >= 4
                    else 0
                )
                out.append(Generation(gen_id, pid, _string(attrs.get(NFTA_GEN_PROC_NAME))))
            elif msg in MSG_NAMES:
                op = MSG_NAMES[msg]
                change = ObjectChange(op, FAMILIES.get(family, str(family)), _string(attrs.get(1)))
                name_attr = _NAME_ATTR.get(change.kind)
                jumps_to = None
                if op == "DELRULE" and NFTA_RULE_EXPRESSIONS in attrs:  # (only deletes are asked)
                    jumps_to = _jump_target(attrs[NFTA_RULE_EXPRESSIONS])
                name = _string(attrs.get(name_attr)) if name_attr else ""
                out.append(ObjectChange(op, change.family, change.table, name, jumps_to))
        offset += (length + 3) & ~3
    return out


# --------------------------------------------------------------------------- own processes


class OwnProcesses:
    """The pids of the children we started to change nf_tables, kept ``keep_s`` seconds."""

    def __init__(self, keep_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.keep_s = keep_s
        self.clock = clock
        self._pids: dict[int, tuple[float, str]] = {}  # pid -> (started, comm)
        self._lock = threading.Lock()

    def add(self, pid: int, argv0: str) -> None:
        now = self.clock()
        with self._lock:
            self._pids = {p: v for p, v in self._pids.items() if now - v[0] < self.keep_s}
            self._pids[pid] = (now, os.path.basename(argv0)[:15])  # the kernel's comm is 15 bytes

    def made(self, gen: Generation) -> bool:
        """Was this transaction ours? (Our pid, or a child we started with its name.)"""
        if gen.pid == os.getpid():
            return True
        with self._lock:
            known = self._pids.get(gen.pid)
        if known is None:
            return False
        # a recycled pid would carry another name; an exec'd helper (xtables-nft-multi
        # is a multi-call binary) keeps the name it was called by
        return not gen.proc_name or gen.proc_name == known[1]


OWN = OwnProcesses()


def run(argv: list[str], input_text: str | None = None) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, input=..., capture_output=True, text=True)``, with the
    child's pid recorded in ``OWN`` before it is given its input (so before it can
    commit a transaction)."""
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        OWN.add(p.pid, argv[0])
        out, err = p.communicate(input_text)
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


# --------------------------------------------------------------------------- the monitor


class MonitorUnavailable(Exception):
    pass


class NftMonitor:
    """Reads nf_tables notifications in a thread; calls ``on_transaction(tx)`` for every
    committed transaction, and ``on_overflow()`` when notifications were lost.

    The socket is opened in ``__init__`` (in the caller's network namespace: a netlink
    socket belongs to the namespace it was created in), so a failure is the caller's."""

    def __init__(
        self, on_transaction: Callable[[Transaction], None], on_overflow: Callable[[], None], rcvbuf: int = 8 << 20
    ):
        self.on_transaction = on_transaction
        self.on_overflow = on_overflow
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as e:
            raise MonitorUnavailable(f"cannot open a NETLINK_NETFILTER socket: {e}") from None
        try:
            try:  # root may exceed net.core.rmem_max: fewer overflows during big syncs
                self.sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((0, 0))
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        except OSError as e:
            self.sock.close()
            raise MonitorUnavailable(f"cannot join the nf_tables notification group: {e}") from None
        self.sock.settimeout(0.5)  # wake up to notice stop()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.transactions = 0
        self.overflows = 0

    def start(self) -> NftMonitor:
        self._thread = threading.Thread(target=self._run, name="nft-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self.sock.close()

    def _run(self) -> None:
        pending = Transaction()
        while not self._stop.is_set():
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError as e:
                if self._stop.is_set():
                    break
                if e.errno == errno.ENOBUFS:
                    self.overflows += 1
                    pending = Transaction()  # part of it is lost: the consumer checks the kernel
                    self._call(self.on_overflow)
                    continue
                log.error("nf_tables monitor stopped: %s", e)
                break
            for item in decode(data):
                if isinstance(item, Generation):
                    pending.gen = item
                    self.transactions += 1
                    self._call(self.on_transaction, pending)
                    pending = Transaction()
                else:
                    pending.changes.append(item)

    @staticmethod
    def _call(fn, *args) -> None:
        try:
            fn(*args)
        except Exception:  # a consumer's bug must not end the monitor
            log.exception("nf_tables monitor callback failed")
