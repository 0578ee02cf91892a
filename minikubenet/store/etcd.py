"""The etcd store: the only code in minikubenet that talks to etcd.

Everything the cluster agrees on lives here (key layout in ``store/keys.py``):

- the network config, read by every agent;
- node subnet leases: created with a compare-and-create transaction
  (``version(key) == 0``, as flannel does) and attached to an etcd lease with a TTL,
  so a node that disappears gives its subnet back when the TTL runs out;
- pod IP records: one key per IP, created with the same compare-and-create, so no two
  ADDs anywhere in the cluster can ever hold one IP; released with a compare on the
  record's value, so a DEL can never free an IP someone else holds now.

Client: ``etcd-sdk-python`` (imports as ``pyetcd``), the maintained fork of ``etcd3``.
Every call is wrapped so that an unreachable etcd becomes one ``StoreUnavailable``
with the endpoints in its message, never a gRPC traceback.

**Several members, and etcd going away** (``FailoverClient``). etcd's own Go client
balances over the members with gRPC's load balancer; from Python there is no such
balancer we can rely on for etcd 3.4, and pyetcd's "failover" only marks a member
failed *after* a request failed and still hands that error to the caller. So the
simplest correct approach, written once here:

- one pyetcd client, i.e. one gRPC channel, per member; all calls go to the *current*
  member until it fails;
- a call that fails because that member is unreachable or not serving (UNAVAILABLE,
  DEADLINE_EXCEEDED, or etcd's "no leader", "leader changed", "raft proposal
  dropped": killed, restarting, an election, a proposal lost with a dead leader) is
  sent again to the next member at once; after a whole round of members failed we
  pause briefly (50 ms, doubling to 500 ms) and go round again. Other errors (a bad
  request, a permission denied) are not retried;
- the retry budget, ``RETRY_FOR_S``, runs from the first round that failed and is
  shared by all callers; while *no* member even accepts a connection (etcd is down)
  it is ``UNREACHABLE_GRACE_S``. Once it is spent, a call fails after one round
  instead of waiting all over again: a CNI ADD answers code 11 within 5 s instead of
  queueing behind other ADDs, and works again as soon as one call succeeds;
- each channel reconnects on a short backoff (``CHANNEL_OPTIONS``): gRPC's default
  starts at 1 s and grows by 1.6x up to 120 s, so an etcd that was down for a while
  used to be noticed many seconds after it came back.

A retried write may have been applied by the first try (the member died after
committing, before answering). Our writes are compare-and-swap transactions, so a
second try would see its own write and report "someone else holds it". Each of them
therefore reads the key back in the transaction's failure branch
(``_put_if``): if it already holds exactly what we meant to write, the write is ours
and counts as done. That is what keeps a member kill during an ADD storm free of
leaked or duplicate IP records.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import grpc
import pyetcd
import pyetcd.exceptions

from minikubenet.network_config import NetworkConfig, parse_config
from minikubenet.store.keys import KeyLayout, subnet_from_key
from minikubenet.subnet_lease_record import SubnetLeaseRecord

log = logging.getLogger(__name__)

DEFAULT_ENDPOINTS = ("http://127.0.0.1:2379",)

# gRPC reconnects a broken channel after a backoff: here 50 ms, growing to at most
# 500 ms (gRPC's defaults: 1 s growing to 120 s). min_reconnect_backoff_ms is gRPC's
# minimum *connect timeout*: a connect attempt may take that long before it counts as
# failed, which matters only for a member that accepts TCP but does not answer yet.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 1000),
]
# The budget: a CNI ADD must answer code 11 within 5 s when etcd cannot serve it.
ATTEMPT_TIMEOUT_S = 1.5  # one request to one member (a write lost with a dead leader hangs)
RETRY_FOR_S = 3.0  # since the first failure, over all members, before StoreUnavailable
UNREACHABLE_GRACE_S = 1.0  # the same when no member even accepts a connection (etcd is down)
PAUSE_S, MAX_PAUSE_S = 0.05, 0.5


class StoreError(Exception):
    pass


class StoreUnavailable(StoreError):
    """etcd could not be reached or did not answer in time."""


class StoreForbidden(StoreError):
    """etcd answered, and refused: our certificate's user has no role allowing this
    (store/etcd_rbac.py), or auth is on and we sent no certificate."""


# gRPC codes etcd uses for "you may not" (etcdserver: permission denied, user name is
# empty, ...): not an outage, retrying will not help
_REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


@dataclass(frozen=True)
class TLSFiles:
    """A client's TLS to etcd: the CA that signed etcd's certificate, and our own
    certificate and key (its Common Name is our etcd user, store/etcd_rbac.py). Taken
    on every command line as flannel's --etcd-cafile/--etcd-certfile/--etcd-keyfile,
    defaulting to $MINIKUBENET_ETCD_CAFILE/_CERTFILE/_KEYFILE."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_args(cls, args) -> TLSFiles:
        return cls(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile)

    def argv(self) -> list[str]:
        """The flags that pass these files to a minikubenet command or daemon."""
        return [
            a
            for flag, path in (("--etcd-cafile", self.ca), ("--etcd-certfile", self.cert), ("--etcd-keyfile", self.key))
            if path
            for a in (flag, path)
        ]

    def env(self, endpoints: str) -> dict[str, str]:
        """Environment for etcdctl (ETCDCTL_*) and our CLI (MINIKUBENET_ETCD_*)."""
        out = {"ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": endpoints, "MINIKUBENET_ETCD_ENDPOINTS": endpoints}
        for name, path, ours in (
            ("CACERT", self.ca, "CAFILE"),
            ("CERT", self.cert, "CERTFILE"),
            ("KEY", self.key, "KEYFILE"),
        ):
            if path:
                out[f"ETCDCTL_{name}"] = path
                out[f"MINIKUBENET_ETCD_{ours}"] = path
        return out


def add_etcd_tls_options(parser) -> None:
    """--etcd-cafile, --etcd-certfile, --etcd-keyfile (flannel's names) on ``parser``."""
    parser.add_argument(
        "--etcd-cafile",
        default=os.environ.get("MINIKUBENET_ETCD_CAFILE") or None,
        help="CA of etcd's certificate (default $MINIKUBENET_ETCD_CAFILE)",
    )
    parser.add_argument(
        "--etcd-certfile",
        default=os.environ.get("MINIKUBENET_ETCD_CERTFILE") or None,
        help="client certificate for etcd; its CN is the etcd user (default $MINIKUBENET_ETCD_CERTFILE)",
    )
    parser.add_argument(
        "--etcd-keyfile",
        default=os.environ.get("MINIKUBENET_ETCD_KEYFILE") or None,
        help="key of the client certificate (default $MINIKUBENET_ETCD_KEYFILE)",
    )


def lease_from_kv(key: str, value: bytes, lease_id: int) -> SubnetLeaseRecord | None:
    """The lease record at ``key`` (None if the key is not a lease): the subnet comes
    from the key, the rest from the document (subnet_lease_record.py)."""
    subnet = subnet_from_key(key)
    if subnet is None:
        return None
    return SubnetLeaseRecord.from_document(subnet, value, lease_id)


def parse_endpoints(endpoints: list[str] | tuple[str, ...]) -> list[tuple[str, int, bool]]:
    """ "http://10.0.0.1:2379,https://h:2379" -> [(host, port, secure), ...]."""
    out = []
    for ep in endpoints:
        for part in ep.split(","):
            part = part.strip()
            if not part:
                continue
            if "://" not in part:
                part = "http://" + part
            u = urllib.parse.urlsplit(part)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError(f"bad etcd endpoint {part!r}: expected http(s)://host:port")
            out.append((u.hostname, u.port or 2379, u.scheme == "https"))
    if not out:
        raise ValueError("no etcd endpoints given")
    return out


def _grpc_error(e: BaseException | None) -> grpc.RpcError | None:
    """The gRPC error behind ``e`` (pyetcd raises its own exception from it)."""
    while e is not None:
        if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
            return e
        e = e.__context__
    return None


# etcd's answers that mean "not done now, ask again" but come with code UNKNOWN (etcd
# maps errors it has no gRPC code for to UNKNOWN: etcdserver/api/v3rpc/util.go)
_NOT_NOW = ("raft proposal dropped", "context deadline exceeded", "leader changed", "no leader", "request timed out")


def _retryable(e: BaseException) -> bool:
    """True for "this member cannot answer now"; False for an answer (a refused request)."""
    if isinstance(
        e,
        (
            pyetcd.exceptions.ConnectionFailedError,
            pyetcd.exceptions.ConnectionTimeoutError,
            pyetcd.exceptions.WatchTimedOut,
            pyetcd.exceptions.NoServerAvailableError,
        ),
    ):
        return True
    rpc = _grpc_error(e)
    if rpc is None:
        return False
    if rpc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return True
    return rpc.code() == grpc.StatusCode.UNKNOWN and any(m in (rpc.details() or "") for m in _NOT_NOW)


def _unreachable(e: BaseException) -> bool:
    """True when no connection to the member could be made at all (nothing was sent)."""
    rpc = _grpc_error(e)
    return rpc is not None and "failed to connect" in (rpc.details() or "")


def _describe(e: BaseException) -> str:
    rpc = _grpc_error(e)
    if rpc is not None:
        first_line = ((rpc.details() or "").splitlines() or [""])[0]
        return f"{rpc.code().name}: {first_line[:200]}"
    return str(e) or type(e).__name__


@dataclass(frozen=True)
class WatchHandle:
    """A watch lives on one member's channel: cancel it there."""

    client: Any  # a pyetcd client
    watch_id: int


class FailoverClient:
    """pyetcd's client API over every member of an etcd cluster (see the module
    docstring): the calls below go to the current member, and to the next one when it
    cannot answer."""

    # the pyetcd calls minikubenet makes; each is retried as described above
    CALLS = frozenset(
        {
            "get",
            "get_response",
            "get_prefix",
            "get_prefix_response",
            "put",
            "delete",
            "transaction",
            "lease",
            "revoke_lease",
            "refresh_lease",
            "get_lease_info",
            "status",
            "members",
        }
    )

    def __init__(
        self,
        members: list[tuple[str, pyetcd.MultiEndpointEtcd3Client]],
        retry_for: float = RETRY_FOR_S,
        unreachable_grace: float = UNREACHABLE_GRACE_S,
    ):
        self._members = members  # [(url, a pyetcd client of that member alone)]
        self.retry_for = retry_for
        self.unreachable_grace = unreachable_grace
        self.transactions = members[0][1].transactions
        self._current = 0
        self._failing_since: float | None = None  # when a round over all members first failed
        self._lock = threading.Lock()

    def _next_after(self, index: int) -> None:
        with self._lock:
            if self._current == index:  # another thread may have moved on already
                self._current = (index + 1) % len(self._members)

    def call(self, name: str, *args, **kwargs):
        """``client.<name>(*args, **kwargs)`` on the current member, failing over.

        The retry budget counts from the first round that failed, shared by every
        caller: once etcd has not answered for ``retry_for`` (or ``unreachable_grace``
        when nobody accepted a connection), a call fails after one round instead of
        waiting all over again, so an ADD gets its code 11 in time."""
        pause = PAUSE_S
        while True:
            round_started = time.monotonic()
            start = self._current
            failures = []
            for step in range(len(self._members)):
                index = (start + step) % len(self._members)
                url, client = self._members[index]
                try:
                    result = getattr(client, name)(*args, **kwargs)
                    if name == "refresh_lease":  # a generator: its errors come when read
                        result = list(result)
                except Exception as e:
                    if not _retryable(e):
                        raise
                    failures.append((url, e))
                    self._next_after(index)
                    continue
                if name == "lease":  # refresh/revoke it through us, too
                    result.etcd_client = self
                self._failing_since = None
                return result
            if self._failing_since is None:
                self._failing_since = round_started
            budget = self.unreachable_grace if all(_unreachable(e) for _, e in failures) else self.retry_for
            left = budget - (time.monotonic() - self._failing_since)
            if left <= 0:
                detail = "; ".join(f"{url}: {_describe(e)}" for url, e in failures)
                urls = ",".join(url for url, _ in self._members)
                raise StoreUnavailable(f"etcd at {urls} did not answer ({name}): {detail}")
            log.debug("no etcd member answered %s; trying again in %.2fs", name, pause)
            time.sleep(min(pause, left))
            pause = min(pause * 2, MAX_PAUSE_S)

    def __getattr__(self, name: str):
        if name in FailoverClient.CALLS:
            return functools.partial(self.call, name)
        raise AttributeError(name)

    def add_watch_prefix_callback(self, prefix: str, callback, **kwargs) -> WatchHandle:
        """Watch ``prefix`` on one member (the current one, or the next that answers)."""
        for _ in range(len(self._members) * 2):
            index = self._current
            client = self._members[index][1]
            try:
                return WatchHandle(client, client.add_watch_prefix_callback(prefix, callback, **kwargs))
            except Exception as e:
                if not _retryable(e):
                    raise
                self._next_after(index)
                last = e
        raise StoreUnavailable(f"no etcd member accepted a watch: {_describe(last)}")

    def cancel_watch(self, handle: WatchHandle) -> None:
        handle.client.cancel_watch(handle.watch_id)

    def close(self) -> None:
        for _, client in self._members:
            client.close()


def _wrap_errors(fn):
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except (pyetcd.exceptions.Etcd3Exception, grpc.RpcError) as e:
            detail = getattr(e, "details", None)
            detail = detail() if callable(detail) else (str(e) or type(e).__name__)
            code = e.code() if isinstance(e, grpc.RpcError) and callable(getattr(e, "code", None)) else None
            if code in _REFUSED:
                raise StoreForbidden(
                    f"etcd at {self.endpoints_text} refused {fn.__name__}: {detail} "
                    "(the client certificate's etcd user has no role for these keys)"
                ) from None
            raise StoreUnavailable(f"etcd at {self.endpoints_text} did not answer ({fn.__name__}): {detail}") from None

    return wrapper


class EtcdStore:
    def __init__(
        self,
        endpoints=DEFAULT_ENDPOINTS,
        layout: KeyLayout | None = None,
        tls: TLSFiles | None = None,
        timeout: float = ATTEMPT_TIMEOUT_S,
        retry_for: float = RETRY_FOR_S,
    ):
        self.layout = layout or KeyLayout()
        parsed = parse_endpoints(list(endpoints))
        self.endpoints_text = ",".join(f"{'https' if s else 'http'}://{h}:{p}" for h, p, s in parsed)
        creds = None
        tls = tls or TLSFiles()
        if any(s for _, _, s in parsed) or tls.ca:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(tls.ca), private_key=_read(tls.key), certificate_chain=_read(tls.cert)
            )
        # Every member gets a client of its own; FailoverClient moves between them.
        # time_retry=0: pyetcd never refuses to use a member because it failed before;
        # when to try which member is FailoverClient's decision alone.
        members = []
        for h, p, _ in parsed:
            ep = pyetcd.Endpoint(h, p, secure=bool(creds), creds=creds, time_retry=0, opts=CHANNEL_OPTIONS)
            members.append(
                (
                    f"{ep.protocol}://{ep.netloc}",
                    pyetcd.MultiEndpointEtcd3Client(endpoints=[ep], timeout=timeout, failover=False),
                )
            )
        self.client = FailoverClient(members, retry_for=retry_for)

    def close(self) -> None:
        self.client.close()

    # -- health ---------------------------------------------------------------------------

    @_wrap_errors
    def ping(self) -> str:
        """The etcd server version; raises StoreUnavailable when nobody answers."""
        return self.client.status().version

    # -- network config ---------------------------------------------------------------------

    @_wrap_errors
    def get_config(self) -> NetworkConfig | None:
        value, _ = self.client.get(self.layout.config)
        return None if value is None else parse_config(value)

    @_wrap_errors
    def get_config_raw(self) -> bytes | None:
        return self.client.get(self.layout.config)[0]

    @_wrap_errors
    def put_config(self, config: NetworkConfig) -> None:
        self.client.put(self.layout.config, config.to_json())

    # -- subnet leases -------------------------------------------------------------------

    @_wrap_errors
    def list_leases(self) -> list[SubnetLeaseRecord]:
        out = []
        for value, meta in self.client.get_prefix(self.layout.subnets):
            rec = lease_from_kv(meta.key.decode(), value, meta.lease_id)
            if rec:
                out.append(rec)
        return out

    @_wrap_errors
    def grant(self, ttl: int):
        return self.client.lease(ttl)

    def _put_if(self, key: str, compare: list, value: bytes | str, lease=None) -> bool:
        """Put ``value`` (on ``lease``) at ``key`` if ``compare`` holds, in one transaction.

        The failure branch reads the key back: when it already holds exactly ``value``
        (on the same lease), this is our own write, applied by an earlier try that
        FailoverClient sent again because its answer was lost, and it counts as done."""
        t = self.client.transactions
        ok, responses = self.client.transaction(
            compare=compare, success=[t.put(key, value, lease=lease)], failure=[t.get(key)]
        )
        if ok:
            return True
        found = responses[0] if responses else []
        want = value.encode() if isinstance(value, str) else value
        lease_id = getattr(lease, "id", lease) or 0
        return any(v == want and meta.lease_id == lease_id for v, meta in found)

    @_wrap_errors
    def create_lease(self, rec: SubnetLeaseRecord, lease) -> bool:
        """Claim ``rec.subnet`` if nobody holds it. True when we got it."""
        key = self.layout.subnet(rec.subnet)
        return self._put_if(key, [self.client.transactions.version(key) == 0], rec.attrs_json(), lease)

    @_wrap_errors
    def replace_lease(self, rec: SubnetLeaseRecord, lease) -> bool:
        """Re-write our own lease (new attributes, new TTL) if it still holds what we saw."""
        key = self.layout.subnet(rec.subnet)
        t = self.client.transactions
        cmp = [t.value(key) == rec.raw] if rec.raw else [t.version(key) == 0]
        return self._put_if(key, cmp, rec.attrs_json(), lease)

    @_wrap_errors
    def refresh(self, lease) -> int:
        """Renew an etcd lease; returns the remaining TTL (0 or less: it is gone)."""
        responses = self.client.refresh_lease(getattr(lease, "id", lease))
        return responses[0].TTL if responses else 0

    @_wrap_errors
    def revoke(self, lease) -> None:
        """Give an etcd lease back now (its keys go with it)."""
        self.client.revoke_lease(getattr(lease, "id", lease))

    @_wrap_errors

    # -- pod IPs -----------------------------------------------------------------------------

    def _by_ip(self, prefix: str) -> dict[ipaddress.IPv4Address, bytes]:
        """The values under ``prefix``, keyed by the IP that ends each key."""
        out = {}
        for value, meta in self.client.get_prefix(prefix):
            try:
                out[ipaddress.IPv4Address(meta.key.decode()[len(prefix) :])] = value
            except ValueError:
                log.warning("ignoring unexpected key %s", meta.key.decode())
        return out

    @_wrap_errors
    def list_pod_ips(self, subnet: ipaddress.IPv4Network) -> dict[ipaddress.IPv4Address, bytes]:
        return self._by_ip(self.layout.ipam_subnet(subnet))

    @_wrap_errors
    def list_all_pod_ips(self) -> dict[str, bytes]:
        return {meta.key.decode(): value for value, meta in self.client.get_prefix(self.layout.ipam)}

    @_wrap_errors
    def list_pod_ip_claims(self, subnet: ipaddress.IPv4Network) -> dict[ipaddress.IPv4Address, bytes]:
        """The claim markers of the subnet: ADDs that have not (yet) finished their pod."""
        return self._by_ip(self.layout.ipam_claims_subnet(subnet))

    @_wrap_errors
    def create_pod_ip(self, subnet, ip, record: bytes, claimed: bool = False) -> bool:
        """Compare-and-create the record; with ``claimed`` its claim marker in the same
        transaction (CNI ADD: the pod is not plumbed yet)."""
        key = self.layout.pod_ip(subnet, ip)
        t = self.client.transactions
        writes = [t.put(key, record)] + ([t.put(self.layout.pod_ip_claim(subnet, ip), record)] if claimed else [])
        ok, responses = self.client.transaction(compare=[t.version(key) == 0], success=writes, failure=[t.get(key)])
        if ok:
            return True
        # the key holds exactly our record: our own write, applied by an earlier try that
        # FailoverClient sent again because its answer was lost (see _put_if)
        found = responses[0] if responses else []
        return any(value == record for value, _meta in found)

    @_wrap_errors
    def complete_pod_ip(self, subnet, ip, record: bytes) -> bool:
        """Delete the claim marker of ``record`` (only that one: the IP may have been
        released and claimed again meanwhile)."""
        key = self.layout.pod_ip_claim(subnet, ip)
        t = self.client.transactions
        ok, _ = self.client.transaction(compare=[t.value(key) == record], success=[t.delete(key)], failure=[])
        return ok

    @_wrap_errors
    def delete_pod_ip(self, subnet, ip, record: bytes) -> bool:
        """Release ``ip`` only if it still holds ``record`` (never free someone else's IP),
        with its claim marker if any (while the record exists, a marker is its own)."""
        key = self.layout.pod_ip(subnet, ip)
        t = self.client.transactions
        ok, _ = self.client.transaction(
            compare=[t.value(key) == record],
            success=[t.delete(key), t.delete(self.layout.pod_ip_claim(subnet, ip))],
            failure=[],
        )
        return ok

    # -- generic, for the CLI and the lab report --------------------------------------------

    @_wrap_errors
    def dump(self, prefix: str) -> list[tuple[str, bytes, int]]:
        return sorted((m.key.decode(), v, m.lease_id) for v, m in self.client.get_prefix(prefix))


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()
