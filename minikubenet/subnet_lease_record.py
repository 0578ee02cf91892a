"""A node's subnet lease as the cluster agrees on it: which subnet, which node (its
PublicIP), and how to reach the node's pods (the backend type and its data).

This is the domain half of a lease: the record and flannel's JSON document for it
(pkg/subnet: ``LeaseAttrs``, ``{"PublicIP": ..., "BackendType": ..., "BackendData": ...}``).
Where it lives in etcd (the key, the etcd lease holding it) is store/'s business
(``store/etcd.py`` maps a key and a value to a record); the overlay (``overlay/``) and
the subnet choice (``subnet_lease.py``) use the record without knowing about etcd.

A malformed document still gives a record, with ``problem`` set: the subnet stays
taken, and the consumer decides how to report it (the overlay skips it, logged once).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass


@dataclass
class SubnetLeaseRecord:
    """A node's lease as stored under ``<prefix>/subnets/<net>-<len>``."""

    subnet: ipaddress.IPv4Network
    public_ip: str
    backend_type: str
    backend_data: dict
    lease_id: int = 0  # the etcd lease holding the key (0 = no TTL: a reservation)
    raw: bytes = b""
    problem: str = ""  # why the document is malformed ("" = well formed); its fields are then empty

    def attrs_json(self) -> str:
        return json.dumps(
            {"PublicIP": self.public_ip, "BackendType": self.backend_type, "BackendData": self.backend_data}
        )

    @classmethod
    def from_document(cls, subnet: ipaddress.IPv4Network, value: bytes, lease_id: int = 0) -> SubnetLeaseRecord:
        """The record of ``subnet`` whose document is ``value``; a malformed document
        gives a record with ``problem`` set and empty fields."""
        try:
            doc = json.loads(value)
        except ValueError:
            doc = None
        problem = ""
        if not isinstance(doc, dict):
            problem = "not a JSON object"
        else:
            wrong = [
                f"{name} must be {what}"
                for name, kind, what in (
                    ("PublicIP", str, "a string"),
                    ("BackendType", str, "a string"),
                    ("BackendData", dict, "an object"),
                )
                if doc.get(name) is not None and not isinstance(doc[name], kind)
            ]
            problem = "; ".join(wrong)
        if problem:
            return cls(
                subnet=subnet,
                public_ip="",
                backend_type="",
                backend_data={},
                lease_id=lease_id,
                raw=value,
                problem=problem,
            )
        return cls(
            subnet=subnet,
            public_ip=doc.get("PublicIP", ""),
            backend_type=doc.get("BackendType", ""),
            backend_data=doc.get("BackendData") or {},
            lease_id=lease_id,
            raw=value,
        )
