"""NetworkPolicy and Namespace objects: validated and completed as the API server does.

What ``kubectl apply`` sends is checked here before anything is stored
(store/policy_objects.py keeps them; manifests.py reads the files). The rules follow
kubernetes ``pkg/apis/networking/validation`` (ValidateNetworkPolicy, ...Spec, ...Port,
...Peer, ValidateIPBlock) and ``pkg/apis/core/validation`` ValidateNamespace, read and
rewritten here; label and selector rules are in label_validation.py. What the API
server *accepts*, we accept, also where it looks odd:

- an ``ipBlock.cidr`` with host bits set (``192.168.1.5/24``): ParseCIDRSloppy keeps the
  network; the upstream e2e tests write their CIDRs that way;
- an absent ``podSelector`` (the Go struct decodes it as ``{}``: every pod of the namespace);
- a policy in a namespace that does not exist (there is no referential check; it is
  enforced once pods appear there);
- ``policyTypes`` left out: stored as given; the implied default (Ingress, plus Egress
  when there are egress rules) is the policy model's business, as upstream's defaulting
  is a separate step from validation.

The one thing the API server *adds*: every Namespace carries the label
``kubernetes.io/metadata.name: <its name>`` (set on every write, whatever was given;
pkg/registry/core/namespace/strategy.go), so a ``namespaceSelector`` can pick a
namespace by name.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from minikubenet.k8s_objects import ValidationError
from minikubenet.label_validation import (
    annotations_errors,
    dns1123_label_errors,
    dns1123_subdomain_errors,
    forbidden,
    invalid,
    labels_errors,
    not_supported,
    required,
    selector_errors,
    unknown_fields,
    wrong_type,
)

NETWORKING_V1 = "networking.k8s.io/v1"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
PROTOCOLS = ("TCP", "UDP", "SCTP")
POLICY_TYPES = ("Ingress", "Egress")
PORT_NAME_MAX = 15  # IANA_SVC_NAME (RFC 6335)
_PORT_NAME_CHARS = re.compile(r"[-a-z0-9]+\Z")
_TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec", "status")


# --------------------------------------------------------------------------- object metadata


def _meta_errors(meta: Any, namespaced: bool, name_rule) -> list[str]:
    """ValidateObjectMeta, the parts an applied manifest can get wrong."""
    if not isinstance(meta, Mapping):
        return [wrong_type("metadata", meta, "an object")]
    out = []
    name = meta.get("name")
    if not name:
        out.append(required("metadata.name", "name or generateName is required"))
    elif not isinstance(name, str):
        out.append(wrong_type("metadata.name", name, "a string"))
    else:
        out += [invalid("metadata.name", name, m) for m in name_rule(name)]
    ns = meta.get("namespace")
    if namespaced:
        if not isinstance(ns, str):
            out.append(wrong_type("metadata.namespace", ns, "a string"))
        else:
            out += [invalid("metadata.namespace", ns, m) for m in dns1123_label_errors(ns)]
    elif ns:
        out.append(forbidden("metadata.namespace", "not allowed on this type"))
    out += labels_errors(meta.get("labels"), "metadata.labels")
    out += annotations_errors(meta.get("annotations"), "metadata.annotations")
    return out


def _what(kind: str, doc: Mapping) -> str:
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        meta = {}
    name = meta.get("name") or "?"
    return f"{kind} {meta['namespace']}/{name}" if meta.get("namespace") else f"{kind} {name}"


# --------------------------------------------------------------------------- Namespace


def validate_namespace(doc: Mapping) -> dict:
    """A v1 Namespace, checked; returns the document to store (a copy), with the
    ``kubernetes.io/metadata.name`` label set. Raises ValidationError."""
    if not isinstance(doc, Mapping):
        raise ValidationError("Namespace", [wrong_type("", doc, "an object")])
    errors = unknown_fields("", doc, _TOP_LEVEL)
    errors += _meta_errors(doc.get("metadata"), namespaced=False, name_rule=dns1123_label_errors)
    spec = doc.get("spec")
    if spec is not None and not isinstance(spec, Mapping):
        errors.append(wrong_type("spec", spec, "an object"))
    if errors:
        raise ValidationError(_what("Namespace", doc), errors)
    out = copy.deepcopy(dict(doc))
    name = out["metadata"]["name"]
    out["metadata"] = {
        **out["metadata"],
        "labels": {**(out["metadata"].get("labels") or {}), NAMESPACE_NAME_LABEL: name},
    }
    return out


# --------------------------------------------------------------------------- NetworkPolicy


def validate_network_policy(doc: Mapping, default_namespace: str = "default") -> dict:
    """A networking.k8s.io/v1 NetworkPolicy, checked; returns the document to store (a
    copy; ``metadata.namespace`` filled in with ``default_namespace`` when absent, as
    kubectl does from its context). Raises ValidationError listing every problem."""
    if not isinstance(doc, Mapping):
        raise ValidationError("NetworkPolicy", [wrong_type("", doc, "an object")])
    out = copy.deepcopy(dict(doc))
    meta = out.get("metadata")
    if isinstance(meta, Mapping) and not meta.get("namespace"):
        out["metadata"] = {**meta, "namespace": default_namespace}
    errors = unknown_fields("", out, _TOP_LEVEL)
    errors += _meta_errors(out.get("metadata"), namespaced=True, name_rule=dns1123_subdomain_errors)
    errors += spec_errors(out.get("spec"), "spec")
    if errors:
        raise ValidationError(_what("NetworkPolicy", out), errors)
    return out


def spec_errors(spec: Any, path: str) -> list[str]:
    """ValidateNetworkPolicySpec."""
    if spec is None:
        return []
    if not isinstance(spec, Mapping):
        return [wrong_type(path, spec, "an object")]
    out = unknown_fields(path, spec, ("podSelector", "ingress", "egress", "policyTypes"))
    out += selector_errors(spec.get("podSelector"), f"{path}.podSelector")
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        rules = spec.get(direction)
        if rules is None:
            continue
        if not isinstance(rules, list):
            out.append(wrong_type(f"{path}.{direction}", rules, "a list of rules"))
            continue
        for i, rule in enumerate(rules):
            out += _rule_errors(rule, f"{path}.{direction}[{i}]", peers)
    out += _policy_types_errors(spec.get("policyTypes"), f"{path}.policyTypes")
    return out


def _rule_errors(rule: Any, path: str, peers_field: str) -> list[str]:
    if rule is None:
        return []  # `- {}` and `-` are both the rule that allows everything
    if not isinstance(rule, Mapping):
        return [wrong_type(path, rule, "an object")]
    out = unknown_fields(path, rule, ("ports", peers_field))
    for name, check in (("ports", port_errors), (peers_field, peer_errors)):
        items = rule.get(name)
        if items is None:
            continue
        if not isinstance(items, list):
            out.append(wrong_type(f"{path}.{name}", items, "a list"))
            continue
        for j, item in enumerate(items):
            out += check(item, f"{path}.{name}[{j}]")
    return out


def _policy_types_errors(types: Any, path: str) -> list[str]:
    if types is None:
        return []
    if not isinstance(types, list):
        return [wrong_type(path, types, "a list")]
    if len(types) > len(POLICY_TYPES):
        return [invalid(path, types, "may not specify more than two policyTypes")]
    return [not_supported(f"{path}[{i}]", t, POLICY_TYPES) for i, t in enumerate(types) if t not in POLICY_TYPES]


def port_errors(port: Any, path: str) -> list[str]:
    """ValidateNetworkPolicyPort: protocol, a port by number or name, endPort."""
    if not isinstance(port, Mapping):
        return [wrong_type(path, port, "an object")]
    out = unknown_fields(path, port, ("protocol", "port", "endPort"))
    protocol = port.get("protocol")
    if protocol is not None and protocol not in PROTOCOLS:
        out.append(not_supported(f"{path}.protocol", protocol, PROTOCOLS))
    number, end = port.get("port"), port.get("endPort")
    if end is not None and (isinstance(end, bool) or not isinstance(end, int)):
        out.append(wrong_type(f"{path}.endPort", end, "an integer"))
        end = None
    if number is None:
        if end is not None:
            out.append(invalid(f"{path}.endPort", end, "may not be specified when `port` is not specified"))
    elif isinstance(number, bool) or not isinstance(number, (int, str)):
        out.append(wrong_type(f"{path}.port", number, "a port number or name"))
    elif isinstance(number, int):
        out += [invalid(f"{path}.port", number, m) for m in port_number_errors(number)]
        if end is not None:
            if end < number:
                out.append(invalid(f"{path}.endPort", end, "must be greater than or equal to `port`"))
            out += [invalid(f"{path}.endPort", end, m) for m in port_number_errors(end)]
    else:
        if end is not None:
            out.append(invalid(f"{path}.endPort", end, "may not be specified when `port` is non-numeric"))
        out += [invalid(f"{path}.port", number, m) for m in port_name_errors(number)]
    return out


def port_number_errors(n: int) -> list[str]:
    """IsValidPortNum."""
    return [] if 1 <= n <= 65535 else ["must be between 1 and 65535, inclusive"]


def port_name_errors(name: str) -> list[str]:
    """IsValidPortName (IANA_SVC_NAME): what a container port's name must be, so also what
    a policy may name. Note "80" as a string is a *name* and not a valid one."""
    out = []
    if len(name) > PORT_NAME_MAX:
        out.append(f"must be no more than {PORT_NAME_MAX} characters")
    if not _PORT_NAME_CHARS.match(name):
        out.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if "--" in name:
        out.append("must not contain consecutive hyphens")
    if not re.search("[a-z]", name):
        out.append("must contain at least one letter (a-z)")
    if name.startswith("-") or name.endswith("-"):
        out.append("must not begin or end with a hyphen")
    return out


def peer_errors(peer: Any, path: str) -> list[str]:
    """ValidateNetworkPolicyPeer: at least one of podSelector and namespaceSelector (both:
    AND), or an ipBlock alone. ``podSelector: {}`` counts as given (it selects all pods);
    ``podSelector: null`` does not."""
    if not isinstance(peer, Mapping):
        return [wrong_type(path, peer, "an object")]
    out = unknown_fields(path, peer, ("podSelector", "namespaceSelector", "ipBlock"))
    selectors = 0
    for name in ("podSelector", "namespaceSelector"):
        if peer.get(name) is not None:
            selectors += 1
            out += selector_errors(peer[name], f"{path}.{name}")
    block = peer.get("ipBlock")
    if block is not None:
        out += ip_block_errors(block, f"{path}.ipBlock")
    if selectors == 0 and block is None:
        out.append(required(path, "must specify a peer"))
    elif selectors and block is not None:
        out.append(forbidden(path, "may not specify both ipBlock and another peer"))
    return out


def ip_block_errors(block: Any, path: str) -> list[str]:
    """ValidateIPBlock: cidr required and a CIDR (host bits may be set); every except a
    strict subset of it (inside it, and a longer prefix)."""
    if not isinstance(block, Mapping):
        return [wrong_type(path, block, "an object")]
    out = unknown_fields(path, block, ("cidr", "except"))
    cidr = block.get("cidr")
    if not cidr:
        return out + [required(f"{path}.cidr")]
    net = parse_cidr(cidr)
    if net is None:
        return out + [invalid(f"{path}.cidr", cidr, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")]
    excepts = block.get("except")
    if excepts is None:
        return out
    if not isinstance(excepts, list):
        return out + [wrong_type(f"{path}.except", excepts, "a list of CIDRs")]
    for i, text in enumerate(excepts):
        sub = parse_cidr(text)
        if sub is None:
            out.append(
                invalid(f"{path}.except[{i}]", text, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")
            )
        elif sub.version != net.version or sub.prefixlen <= net.prefixlen or sub.network_address not in net:
            out.append(invalid(f"{path}.except[{i}]", text, "must be a strict subset of `cidr`"))
    return out


def parse_cidr(text: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """Go's ParseCIDR, sloppy about host bits: "10.0.0.5/24" -> 10.0.0.0/24. The prefix
    length is required ("10.0.0.5" alone is not a CIDR)."""
    if not isinstance(text, str) or "/" not in text:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
