"""``kubectl apply -f`` for minikubenet: standard Kubernetes manifests in, objects in etcd.

A manifest file holds one or more documents (YAML separated by ``---``, or JSON; a
``kind: List`` is unpacked as kubectl does). Three kinds are understood, each with the
apiVersion the API server serves it under:

    v1                      Namespace       netpol_validation.validate_namespace
    v1                      Service         proxy/model.py service_from_k8s (through
                                            store/services.py: ClusterIP and NodePorts)
    networking.k8s.io/v1    NetworkPolicy   netpol_validation.validate_network_policy

Applying is two steps, so that a bad document anywhere in a file stores nothing:

1. ``plan``: parse every document, validate every one (collecting every problem of every
   document with its field path) and work out each Service's allocation, reading etcd
   but writing nothing;
2. ``commit``: write all of it in one etcd transaction (store/policy_objects.py), which
   also checks that no Service changed and no ClusterIP/NodePort was taken meanwhile.

Applying an object that exists replaces it ("configured"; "unchanged" when it is the
same), as ``kubectl apply`` does for a whole object; a Service keeps its ClusterIP and
NodePorts. ``delete`` removes the objects a file names, and says which did not exist.
Deleting a Namespace also deletes what is stored in it - its NetworkPolicies and its
Services (with their Endpoints and ClusterIP/NodePort claims) - as Kubernetes' namespace
controller does; Pods are the runtime's (lab pods: ``lab pod delete``) and stay. A
policy may name a namespace that does not exist yet, as in Kubernetes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from minikubenet.k8s_objects import ValidationError, service_to_k8s
from minikubenet.label_validation import dns1123_label_errors
from minikubenet.netpol_validation import NETWORKING_V1, validate_namespace, validate_network_policy

# (apiVersion, kind) -> the resource name kubectl prints ("networkpolicy.networking.k8s.io/x created")
KINDS = {
    ("v1", "Namespace"): "namespace",
    ("v1", "Service"): "service",
    (NETWORKING_V1, "NetworkPolicy"): "networkpolicy.networking.k8s.io",
}


class ManifestError(Exception):
    """A file could not be read or parsed, or documents in it are invalid: one line per
    problem. Nothing was stored."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Manifest:
    """One document of a file, checked. ``doc`` is what will be stored (for a Service:
    what was given; its allocation happens in the plan)."""

    index: int  # 1-based position in the file
    kind: str
    namespace: str  # "" for a Namespace
    name: str
    doc: dict

    @property
    def ref(self) -> str:
        """kubectl's "networkpolicy.networking.k8s.io/deny-all"."""
        return f"{KINDS[(self.doc['apiVersion'], self.kind)]}/{self.name}"

    @property
    def identity(self) -> tuple[str, str, str]:
        return self.kind, self.namespace, self.name


# --------------------------------------------------------------------------- reading files


def load_documents(text: str, source: str = "-") -> list[Any]:
    """Every document of a YAML or JSON text (JSON is YAML), empty ones dropped and
    ``kind: List`` unpacked. Raises ManifestError on a syntax error, with its line."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        docs = [d for d in yaml.load_all(text, Loader=loader) if d is not None]
    except yaml.YAMLError as e:
        raise ManifestError([f"error parsing {source}: {_one_line(e)}"]) from None
    out: list[Any] = []
    for d in docs:
        if isinstance(d, Mapping) and d.get("kind") == "List" and isinstance(d.get("items"), list):
            out += d["items"]
        else:
            out.append(d)
    return out


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def read_file(path: str) -> str:
    import sys

    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError([f"cannot read {path}: {e}"]) from None


# --------------------------------------------------------------------------- validation


def parse_manifests(docs: list[Any], default_namespace: str = "default", full: bool = True) -> list[Manifest]:
    """Check every document; raise ManifestError naming each bad one (by its position,
    kind and name) with every problem in it. ``full=False`` (for delete): only what
    identifies the object. A document given twice: the later one wins, as if applied in
    order."""
    problems: list[str] = []
    found: dict[tuple[str, str, str], Manifest] = {}
    for i, doc in enumerate(docs, 1):
        try:
            m = _manifest(i, doc, default_namespace, full)
        except ValidationError as e:
            problems.append(f"document {i} ({e.what}):")
            problems += [f"  {err}" for err in e.errors]
            continue
        found.pop(m.identity, None)
        found[m.identity] = m
    if problems:
        raise ManifestError(problems)
    return list(found.values())


def _manifest(i: int, doc: Any, default_namespace: str, full: bool) -> Manifest:
    if not isinstance(doc, Mapping):
        raise ValidationError("?", [f"must be an object with apiVersion and kind, got {type(doc).__name__}"])
    api, kind = doc.get("apiVersion"), doc.get("kind")
    if not api or not kind:
        raise ValidationError(
            str(kind or "?"),
            [f"{'apiVersion' if not api else 'kind'}: Required value: a manifest must say its apiVersion and kind"],
        )
    if not isinstance(api, str) or not isinstance(kind, str) or (api, kind) not in KINDS:
        known = ", ".join(f"{k} {a}" for a, k in KINDS)
        name = doc.get("metadata", {}).get("name") if isinstance(doc.get("metadata"), Mapping) else None
        raise ValidationError(
            f"{kind} {name}" if name else str(kind),
            [f'no matches for kind "{kind}" in version "{api}" (minikubenet knows {known})'],
        )
    meta = doc.get("metadata")
    if isinstance(meta, Mapping) and kind != "Namespace" and not meta.get("namespace"):
        doc = {**doc, "metadata": {**meta, "namespace": default_namespace}}
    if kind == "Namespace":
        checked = validate_namespace(doc) if full else _identity_only(doc, "Namespace")
    elif kind == "NetworkPolicy":
        checked = validate_network_policy(doc, default_namespace) if full else _identity_only(doc, kind)
    else:
        checked = _identity_only(doc, kind)  # a Service is checked in the plan, with its allocation
    meta = checked["metadata"]
    return Manifest(i, kind, meta.get("namespace", "") if kind != "Namespace" else "", meta["name"], checked)


def _identity_only(doc: Mapping, kind: str) -> dict:
    """For delete: only what names the object must be right."""
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str) or not meta.get("name"):
        raise ValidationError(kind, ["metadata.name: Required value: name or generateName is required"])
    ns = meta.get("namespace", "")
    if kind != "Namespace" and (not isinstance(ns, str) or dns1123_label_errors(ns)):
        raise ValidationError(
            f"{kind} {meta['name']}", [f"metadata.namespace: Invalid value: {json.dumps(ns)}: must be a DNS-1123 label"]
        )
    return json.loads(json.dumps(doc))


# --------------------------------------------------------------------------- apply and delete


def apply(manifests: list[Manifest], objects, services) -> list[str]:
    """Store ``manifests`` (``objects``: a PolicyObjectStore, ``services``: a
    ServiceStore), all or nothing. Returns kubectl's lines ("namespace/x created").
    Raises ManifestError (invalid, nothing stored) or the stores' errors."""
    from minikubenet.store.policy_objects import ObjectWrite
    from minikubenet.store.services import ServiceConflict

    writes, service_writes, lines, problems = [], [], [], []
    reserved: set[str] = set()
    existing = _existing(manifests, objects)
    for m in manifests:
        if m.kind == "Service":
            try:
                w = services.plan_apply(m.doc, reserved)
            except (ValidationError, ServiceConflict) as e:
                problems.append(f"document {m.index} (Service {m.namespace}/{m.name}):")
                problems += [f"  {err}" for err in getattr(e, "errors", [str(e)])]
                continue
            old = services.get_service(m.namespace, m.name)
            service_writes.append(w)
            lines.append(f"{m.ref} {_verb(old, service_to_k8s(w.service))}")
            continue
        writes.append(ObjectWrite(_key(objects, m), m.doc))
        lines.append(f"{m.ref} {_verb(existing.get(m.identity), m.doc)}")
    if problems:
        raise ManifestError(problems)
    result = objects.commit(writes, service_writes)
    if result is not True:
        raise ManifestError(
            [
                f"service {result.service.key}: {services.why_not_applied(result)}; the file was not applied "
                "(apply it again)"
            ]
        )
    return lines


def _key(objects, m: Manifest) -> str:
    return objects.namespace_key(m.name) if m.kind == "Namespace" else objects.policy_key(m.namespace, m.name)


def _existing(manifests: list[Manifest], objects) -> dict[tuple[str, str, str], dict]:
    """The stored Namespaces and NetworkPolicies by identity: one range read per kind
    instead of one read per document (a file may hold thousands of policies)."""
    out: dict[tuple[str, str, str], dict] = {}
    kinds = {m.kind for m in manifests}
    if "Namespace" in kinds:
        out.update({("Namespace", "", name): d for name, d in objects.list_namespaces().items()})
    if "NetworkPolicy" in kinds:
        for key, d in objects.list_network_policies().items():
            ns, _, name = key.partition("/")
            out[("NetworkPolicy", ns, name)] = d
    return out


def _verb(old: Mapping | None, new: Mapping) -> str:
    if old is None:
        return "created"
    return "unchanged" if _canonical(old) == _canonical(new) else "configured"


def _canonical(doc: Mapping) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


PLURALS = {
    "namespace": "namespaces",
    "service": "services",
    "networkpolicy.networking.k8s.io": "networkpolicies.networking.k8s.io",
}


def delete(manifests: list[Manifest], objects, services) -> tuple[list[str], list[str]]:
    """Delete the objects ``manifests`` name, in one transaction. Returns (kubectl's
    "deleted" lines, "not found" lines); objects that do not exist are skipped."""
    from minikubenet.store.policy_objects import ObjectWrite

    writes, service_writes, lines, missing = [], [], [], []
    existing = _existing(manifests, objects)
    for m in manifests:
        resource = KINDS[(m.doc["apiVersion"], m.kind)]
        if m.kind == "Service":
            w = services.plan_delete(m.namespace, m.name)
            exists = w is not None
            if w is not None:
                service_writes.append(w)
        else:
            exists = m.identity in existing
            if exists:
                writes.append(ObjectWrite(_key(objects, m), None))
        if exists:
            lines.append(f'{resource} "{m.name}" deleted')
        else:
            where = f' in namespace "{m.namespace}"' if m.namespace else ""
            missing.append(f'{PLURALS[resource]} "{m.name}" not found{where}')
    gone = [m.name for m in manifests if m.kind == "Namespace" and m.identity in existing]
    contents, content_services = _namespace_contents(gone, {m.identity for m in manifests}, objects, services)
    # the Namespaces last: etcd's transactions are split at 128 operations (policy_objects
    # commit), and a crash between two leaves the Namespace there, so running the same
    # delete again finishes the job instead of leaving orphans in a namespace that is gone
    namespace_keys = {objects.namespace_key(n) for n in gone}
    writes = (
        [w for w in writes if w.key not in namespace_keys] + contents + [w for w in writes if w.key in namespace_keys]
    )
    result = objects.commit(writes, service_writes + content_services)
    if result is not True:
        raise ManifestError(
            [f"service {result.service.key} changed while we deleted it; nothing was deleted, try again"]
        )
    return lines, missing


def _namespace_contents(namespaces: list[str], named: set[tuple[str, str, str]], objects, services):
    """What deleting ``namespaces`` also deletes (Kubernetes' namespace controller): their
    NetworkPolicies (ObjectWrites) and Services (ServiceWrites), minus what the file names
    itself (``named``: identities already being deleted)."""
    from minikubenet.store.policy_objects import ObjectWrite

    writes, service_writes = [], []
    for ns in namespaces:
        for key in sorted(objects.list_network_policies(ns)):
            name = key.partition("/")[2]
            if ("NetworkPolicy", ns, name) not in named:
                writes.append(ObjectWrite(objects.policy_key(ns, name), None))
    if namespaces:
        for key in sorted(services.list_services()):
            ns, _, name = key.partition("/")
            if ns in namespaces and ("Service", ns, name) not in named:
                w = services.plan_delete(ns, name)
                if w is not None:
                    service_writes.append(w)
    return writes, service_writes
