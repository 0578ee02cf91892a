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
import os
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
    def from_args(cls, args) -> "TLSFiles":
        return cls(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile)

    def argv(self) -> list[str]:
        """The flags that pass these files to a minikubenet command or daemon."""
        return [a for flag, path in (("--etcd-cafile", self.ca), ("--etcd-certfile", self.cert),
                                     ("--etcd-keyfile", self.key)) if path for a in (flag, path)]

    def env(self, endpoints: str) -> dict[str, str]:
        """Environment for etcdctl (ETCDCTL_*) and our CLI (MINIKUBENET_ETCD_*)."""
        out = {"ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": endpoints, "MINIKUBENET_ETCD_ENDPOINTS": endpoints}
        for name, path, ours in (("CACERT", self.ca, "CAFILE"), ("CERT", self.cert, "CERTFILE"),
                                 ("KEY", self.key, "KEYFILE")):
            if path:
                out[f"ETCDCTL_{name}"] = path
                out[f"MINIKUBENET_ETCD_{ours}"] = path
        return out


def add_etcd_tls_options(parser) -> None:
    """--etcd-cafile, --etcd-certfile, --etcd-keyfile (flannel's names) on ``parser``."""
    parser.add_argument("--etcd-cafile", default=os.environ.get("MINIKUBENET_ETCD_CAFILE") or None,
                        help="CA of etcd's certificate (default $MINIKUBENET_ETCD_CAFILE)")
    parser.add_argument("--etcd-certfile", default=os.environ.get("MINIKUBENET_ETCD_CERTFILE") or None,
                        help="client certificate for etcd; its CN is the etcd user (default $MINIKUBENET_ETCD_CERTFILE)")
    parser.add_argument("--etcd-keyfile", default=os.environ.get("MINIKUBENET_ETCD_KEYFILE") or None,
                        help="key of the client certificate (default $MINIKUBENET_ETCD_KEYFILE)")


@dataclass
class SubnetLeaseRecord:
    """A node's lease as stored under ``<prefix>/subnets/<net>-<len>``."""
    subnet: ipaddress.IPv4Network
    public_ip: str
    backend_type: str
    backend_data: dict
    lease_id: int = 0        # the etcd lease holding the key (0 = no TTL: a reservation)
    raw: bytes = b""
    problem: str = ""        # why the document is malformed ("" = well formed); its fields are then empty

    def attrs_json(self) -> str:
        return json.dumps({"PublicIP": self.public_ip, "BackendType": self.backend_type,
                           "BackendData": self.backend_data})

    @classmethod
    def from_kv(cls, key: str, value: bytes, lease_id: int) -> "SubnetLeaseRecord | None":
        """The record at ``key`` (None if the key is not a lease). A malformed document
        still gives a record, with ``problem`` set: the subnet stays taken, and the
        consumer decides how to report it (the overlay skips it, logged once)."""
        subnet = subnet_from_key(key)
        if subnet is None:
            return None
        try:
            doc = json.loads(value)
        except ValueError:
            doc = None
        problem = ""
        if not isinstance(doc, dict):
            problem = "not a JSON object"
        else:
            wrong = [f"{name} must be {what}" for name, kind, what in
                     (("PublicIP", str, "a string"), ("BackendType", str, "a string"),
                      ("BackendData", dict, "an object"))
                     if doc.get(name) is not None and not isinstance(doc[name], kind)]
            problem = "; ".join(wrong)
        if problem:
            return cls(subnet=subnet, public_ip="", backend_type="", backend_data={}, lease_id=lease_id,
                       raw=value, problem=problem)
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
            code = e.code() if isinstance(e, grpc.RpcError) and callable(getattr(e, "code", None)) else None
            if code in _REFUSED:
                raise StoreForbidden(f"etcd at {self.endpoints_text} refused {fn.__name__}: {detail} "
                                     "(the client certificate's etcd user has no role for these keys)") from None
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
    def create_pod_ip(self, subnet, ip, record: bytes) -> bool:
        key = self.layout.pod_ip(subnet, ip)
        t = self.client.transactions
        ok, _ = self.client.transaction(compare=[t.version(key) == 0], success=[t.put(key, record)], failure=[])
        return ok

    @_wrap_errors
    def replace_pod_ip(self, subnet, ip, record: bytes, new_record: bytes) -> bool:
        """Rewrite ``ip``'s record only if it still holds ``record`` (a claim marked complete
        never brings back a record that a DEL released meanwhile)."""
        key = self.layout.pod_ip(subnet, ip)
        t = self.client.transactions
        ok, _ = self.client.transaction(compare=[t.value(key) == record], success=[t.put(key, new_record)],
                                        failure=[])
        return ok

    @_wrap_errors
    def delete_pod_ip(self, subnet, ip, record: bytes) -> bool:
        """Release ``ip`` only if it still holds ``record`` (never free someone else's IP)."""
        key = self.layout.pod_ip(subnet, ip)
        t = self.client.transactions
        ok, _ = self.client.transaction(compare=[t.value(key) == record], success=[t.delete(key)], failure=[])
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
