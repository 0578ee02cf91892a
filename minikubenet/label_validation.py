"""Labels, label selectors and object names, validated as the Kubernetes API server does.

Every object the cluster stores is named and labelled, and NetworkPolicies select pods and
namespaces by label selectors, so these checks sit under every manifest kind
(netpol_validation.py). The rules are apimachinery's (read, not copied):

- a label key is a *qualified name* (``pkg/util/validation`` IsQualifiedName): an optional
  DNS-1123 subdomain prefix and ``/``, then a name of at most 63 characters of
  ``[A-Za-z0-9._-]`` that starts and ends alphanumeric;
- a label value (IsValidLabelValue) is empty or such a name;
- a selector requirement (``apis/meta/v1/validation`` ValidateLabelSelectorRequirement):
  ``In``/``NotIn`` need at least one value, ``Exists``/``DoesNotExist`` take none, any other
  operator is refused; its values are label values.

Errors are collected, never raised one at a time, each as the API server words them:
``<field path>: <reason>: <detail>`` (``field.Error.Error()`` in apimachinery), e.g.
``spec.podSelector.matchExpressions[0].operator: Invalid value: "Within": not a valid
selector operator``, so a person can find the offending line in a long manifest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


# --------------------------------------------------------------------------- error texts


def _shown(value: Any) -> str:
    """A value as field.Invalid prints it: strings quoted, numbers bare."""
    return json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None else repr(value)


def invalid(path: str, value: Any, detail: str) -> str:
    return f"{path}: Invalid value: {_shown(value)}: {detail}"


def required(path: str, detail: str = "") -> str:
    return f"{path}: Required value" + (f": {detail}" if detail else "")


def forbidden(path: str, detail: str) -> str:
    return f"{path}: Forbidden: {detail}"


def not_supported(path: str, value: Any, supported: tuple[str, ...]) -> str:
    return f"{path}: Unsupported value: {_shown(value)}: supported values: " + ", ".join(f'"{s}"' for s in supported)


def wrong_type(path: str, value: Any, expected: str) -> str:
    """What the API server's decoder says for a JSON type mismatch (a list where an object
    belongs): the request never reaches validation there, so the wording is ours."""
    return f"{path}: Invalid value: {_shown(value)}: must be {expected}, not {_json_type(value)}"


def _json_type(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "null"
    return "a string"


def unknown_fields(path: str, obj: Mapping, known: tuple[str, ...]) -> list[str]:
    """kubectl's strict field validation (the default since Kubernetes 1.27): a misspelt
    field (``podselector``) is an error, not silently an empty selector that selects
    every pod."""
    prefix = f"{path}." if path else ""
    return [f'{prefix}{k}: Invalid value: "{k}": unknown field' for k in obj if k not in known]


# --------------------------------------------------------------------------- names


def dns1123_label_errors(value: str) -> list[str]:
    """IsDNS1123Label: namespace names, port names of Services."""
    out = []
    if len(value) > DNS1123_LABEL_MAX:
        out.append(f"must be no more than {DNS1123_LABEL_MAX} characters")
    if not _DNS1123_LABEL.match(value):
        out.append(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
            "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc')"
        )
    return out


def dns1123_subdomain_errors(value: str) -> list[str]:
    """IsDNS1123Subdomain: the names of most objects, NetworkPolicies among them."""
    out = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        out.append(f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters")
    if not _DNS1123_SUBDOMAIN.match(value):
        out.append(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
            "and must start and end with an alphanumeric character (e.g. 'example.com')"
        )
    return out


# --------------------------------------------------------------------------- labels


def label_key_errors(key: Any) -> list[str]:
    """IsQualifiedName."""
    if not isinstance(key, str):
        return ["must be a string"]
    prefix, slash, name = key.rpartition("/")
    out = []
    if slash and not prefix:
        out.append("prefix part must be non-empty")
    elif prefix:
        out += [f"prefix part {m}" for m in dns1123_subdomain_errors(prefix)]
    if not name:
        out.append("name part must be non-empty")
    elif len(name) > DNS1123_LABEL_MAX:
        out.append(f"name part must be no more than {DNS1123_LABEL_MAX} characters")
    elif not _QUALIFIED_NAME.match(name):
        out.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
            "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc')"
        )
    return out


def label_value_errors(value: Any) -> list[str]:
    """IsValidLabelValue."""
    if not isinstance(value, str):
        return ["must be a string"]
    if value == "":
        return []
    out = []
    if len(value) > DNS1123_LABEL_MAX:
        out.append(f"must be no more than {DNS1123_LABEL_MAX} characters")
    if not _QUALIFIED_NAME.match(value):
        out.append(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  "
            "or '12345')"
        )
    return out


def labels_errors(labels: Any, path: str) -> list[str]:
    """ValidateLabels: a map of qualified names to label values."""
    if labels is None:
        return []
    if not isinstance(labels, Mapping):
        return [wrong_type(path, labels, "a map of label keys to values")]
    out = []
    for k, v in labels.items():
        out += [invalid(path, k, m) for m in label_key_errors(k)]
        out += [invalid(f"{path}[{k}]" if isinstance(k, str) else path, v, m) for m in label_value_errors(v)]
    return out


# apimachinery's TotalAnnotationSizeLimitB: keys and values of one object together.
ANNOTATIONS_MAX_BYTES = 256 * 1024


def annotations_errors(annotations: Any, path: str) -> list[str]:
    """ValidateAnnotations: qualified-name keys, string values, 256 KiB in all."""
    if annotations is None:
        return []
    if not isinstance(annotations, Mapping):
        return [wrong_type(path, annotations, "a map of strings")]
    out, size = [], 0
    for k, v in annotations.items():
        out += [invalid(path, k, m) for m in label_key_errors(k)]
        if not isinstance(v, str):
            out.append(wrong_type(f"{path}[{k}]", v, "a string"))
        else:
            size += len(str(k).encode()) + len(v.encode())
    if size > ANNOTATIONS_MAX_BYTES:
        out.append(f"{path}: Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes")
    return out


# --------------------------------------------------------------------------- selectors


def selector_errors(selector: Any, path: str) -> list[str]:
    """ValidateLabelSelector (values must be valid label values: the API server's default
    for new objects)."""
    if selector is None:
        return []
    if not isinstance(selector, Mapping):
        return [wrong_type(path, selector, "a label selector object")]
    out = unknown_fields(path, selector, ("matchLabels", "matchExpressions"))
    out += labels_errors(selector.get("matchLabels"), f"{path}.matchLabels")
    exprs = selector.get("matchExpressions")
    if exprs is None:
        return out
    if not isinstance(exprs, list):
        return out + [wrong_type(f"{path}.matchExpressions", exprs, "a list")]
    for i, req in enumerate(exprs):
        out += requirement_errors(req, f"{path}.matchExpressions[{i}]")
    return out


def requirement_errors(req: Any, path: str) -> list[str]:
    if not isinstance(req, Mapping):
        return [wrong_type(path, req, "an object with key, operator and values")]
    out = unknown_fields(path, req, ("key", "operator", "values"))
    op, values = req.get("operator"), req.get("values")
    if values is not None and not isinstance(values, list):
        out.append(wrong_type(f"{path}.values", values, "a list of strings"))
        values = []
    values = values or []
    if op in ("In", "NotIn"):
        if not values:
            out.append(required(f"{path}.values", "must be specified when `operator` is 'In' or 'NotIn'"))
    elif op in ("Exists", "DoesNotExist"):
        if values:
            out.append(
                forbidden(f"{path}.values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
            )
    elif op is None:
        out.append(required(f"{path}.operator"))
    else:
        out.append(invalid(f"{path}.operator", op, "not a valid selector operator"))
    key = req.get("key")
    if key is None:
        out.append(required(f"{path}.key"))
    else:
        out += [invalid(f"{path}.key", key, m) for m in label_key_errors(key)]
    for j, v in enumerate(values):
        out += [invalid(f"{path}.values[{j}]", v, m) for m in label_value_errors(v)]
    return out
