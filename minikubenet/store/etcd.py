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
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import urllib.parse
from dataclasses import dataclass

import grpc
import pyetcd
import pyetcd.exceptions

from minikubenet.network_config import NetworkConfig, parse_config
from minikubenet.store.keys import KeyLayout, subnet_from_key

log = logging.getLogger(__name__)

DEFAULT_ENDPOINTS = ("http://127.0.0.1:2379",)


class StoreError(Exception):
    pass


class StoreUnavailable(StoreError):
    """etcd could not be reached or did not answer in time."""


@dataclass(frozen=True)
class TLSFiles:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass
class SubnetLeaseRecord:
    """A node's lease as stored under ``<prefix>/subnets/<net>-<len>``."""
    subnet: ipaddress.IPv4Network
    public_ip: str
    backend_type: str
    backend_data: dict
    lease_id: int = 0        # the etcd lease holding the key (0 = no TTL: a reservation)
    raw: bytes = b""

    def attrs_json(self) -> str:
        return json.dumps({"PublicIP": self.public_ip, "BackendType": self.backend_type,
                           "BackendData": self.backend_data})

    @classmethod
    def from_kv(cls, key: str, value: bytes, lease_id: int) -> "SubnetLeaseRecord | None":
        subnet = subnet_from_key(key)
        if subnet is None:
            return None
        try:
            doc = json.loads(value)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            log.warning("ignoring unparseable lease %s", key)
            return None
        return cls(subnet=subnet, public_ip=doc.get("PublicIP", ""), backend_type=doc.get("BackendType", ""),
                   backend_data=doc.get("BackendData") or {}, lease_id=lease_id, raw=value)


def parse_endpoints(endpoints: list[str] | tuple[str, ...]) -> list[tuple[str, int, bool]]:
    """"http://10.0.0.1:2379,https://h:2379" -> [(host, port, secure), ...]."""
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


def _wrap_errors(fn):
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except (pyetcd.exceptions.Etcd3Exception, grpc.RpcError) as e:
            detail = getattr(e, "details", None)
            detail = detail() if callable(detail) else (str(e) or type(e).__name__)
            raise StoreUnavailable(f"etcd at {self.endpoints_text} did not answer ({fn.__name__}): {detail}") from None
    return wrapper


class EtcdStore:
    def __init__(self, endpoints=DEFAULT_ENDPOINTS, layout: KeyLayout | None = None,
                 tls: TLSFiles | None = None, timeout: float = 5.0):
        self.layout = layout or KeyLayout()
        parsed = parse_endpoints(list(endpoints))
        self.endpoints_text = ",".join(f"{'https' if s else 'http'}://{h}:{p}" for h, p, s in parsed)
        creds = None
        tls = tls or TLSFiles()
        if any(s for _, _, s in parsed) or tls.ca:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(tls.ca), private_key=_read(tls.key), certificate_chain=_read(tls.cert))
        eps = [pyetcd.Endpoint(h, p, secure=bool(creds), creds=creds, time_retry=2.0) for h, p, _ in parsed]
        self.client = pyetcd.MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout, failover=True)

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
            rec = SubnetLeaseRecord.from_kv(meta.key.decode(), value, meta.lease_id)
            if rec:
                out.append(rec)
        return out

    @_wrap_errors
    def grant(self, ttl: int):
        return self.client.lease(ttl)

    @_wrap_errors
    def create_lease(self, rec: SubnetLeaseRecord, lease) -> bool:
        """Claim ``rec.subnet`` if nobody holds it. True when we got it."""
        key = self.layout.subnet(rec.subnet)
        t = self.client.transactions
        ok, _ = self.client.transaction(compare=[t.version(key) == 0],
                                        success=[t.put(key, rec.attrs_json(), lease=lease)], failure=[])
        return ok

    @_wrap_errors
    def replace_lease(self, rec: SubnetLeaseRecord, lease) -> bool:
        """Re-write our own lease (new attributes, new TTL) if it still holds what we saw."""
        key = self.layout.subnet(rec.subnet)
        t = self.client.transactions
        cmp = [t.value(key) == rec.raw] if rec.raw else [t.version(key) == 0]
        ok, _ = self.client.transaction(compare=cmp, success=[t.put(key, rec.attrs_json(), lease=lease)],
                                        failure=[])
        return ok

    @_wrap_errors
    def refresh(self, lease) -> int:
        """Renew an etcd lease; returns the remaining TTL (0 or less: it is gone)."""
        responses = list(lease.refresh())
        return responses[0].TTL if responses else 0

    @_wrap_errors
    def delete_lease_key(self, subnet: ipaddress.IPv4Network) -> None:
        self.client.delete(self.layout.subnet(subnet))

    # -- pod IPs -----------------------------------------------------------------------------

    @_wrap_errors
    def list_pod_ips(self, subnet: ipaddress.IPv4Network) -> dict[ipaddress.IPv4Address, bytes]:
        prefix = self.layout.ipam_subnet(subnet)
        out = {}
        for value, meta in self.client.get_prefix(prefix):
            try:
                out[ipaddress.IPv4Address(meta.key.decode()[len(prefix):])] = value
            except ValueError:
                log.warning("ignoring unexpected key %s", meta.key.decode())
        return out

    @_wrap_errors
    def list_all_pod_ips(self) -> dict[str, bytes]:
        return {meta.key.decode(): value for value, meta in self.client.get_prefix(self.layout.ipam)}

    @_wrap_errors
    def list_pod_ip_claims(self, subnet: ipaddress.IPv4Network) -> dict[ipaddress.IPv4Address, bytes]:
        """The claim markers of the subnet: ADDs that have not (yet) finished their pod."""
        prefix = self.layout.ipam_claims_subnet(subnet)
        out = {}
        for value, meta in self.client.get_prefix(prefix):
            try:
                out[ipaddress.IPv4Address(meta.key.decode()[len(prefix):])] = value
            except ValueError:
                log.warning("ignoring unexpected key %s", meta.key.decode())
        return out

    @_wrap_errors
    def create_pod_ip(self, subnet, ip, record: bytes, claimed: bool = False) -> bool:
        """Compare-and-create the record; with ``claimed`` its claim marker in the same
        transaction (CNI ADD: the pod is not plumbed yet)."""
        key = self.layout.pod_ip(subnet, ip)
        t = self.client.transactions
        writes = [t.put(key, record)] + ([t.put(self.layout.pod_ip_claim(subnet, ip), record)] if claimed else [])
        ok, _ = self.client.transaction(compare=[t.version(key) == 0], success=writes, failure=[])
        return ok

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
        ok, _ = self.client.transaction(compare=[t.value(key) == record],
                                        success=[t.delete(key), t.delete(self.layout.pod_ip_claim(subnet, ip))],
                                        failure=[])
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
