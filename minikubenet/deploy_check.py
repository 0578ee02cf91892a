"""Checking the DaemonSet deployment (deploy/minikubenet.yaml) before it is applied.

The seed deploys calico-node as a privileged, host-network DaemonSet; ours is the same
shape (deploy/README.md). A mistake in such a file shows up late and far away: a pod
stuck in ``ErrImagePull`` or ``CreateContainerConfigError`` on every node, or a CNI
plugin that never appears on the host. This module finds them offline, in two passes:

1. **schema**: every document against the Kubernetes OpenAPI schemas, strict (an
   unknown field is an error), with the schemas the ``kubernetes-validate`` package
   bundles (no cluster, no network). Each finding names the document and the field path
   (``DaemonSet minikubenet-system/minikubenet-node: spec.template.spec.containers[0]:
   'imagee' was unexpected``);
2. **references and shape**: what a schema cannot know: the Namespace, ServiceAccount,
   ConfigMap, Secret and DaemonSet are all there and in one namespace; every image is
   the one ``deploy/build-image.sh`` builds; every Secret and ConfigMap (and key) a pod
   refers to exists; the etcd certificate files the containers name are keys of the
   mounted Secret, and not empty; the pods run with ``hostNetwork`` and ``privileged``
   and mount the host's ``/opt/cni/bin``, ``/etc/cni/net.d`` and ``/run/minikubenet``.

Pure functions over parsed documents; ``minikubenet deploy check FILE`` prints the
findings and exits non-zero when there are any.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from dataclasses import dataclass

from minikubenet import __version__

IMAGE = f"localhost/minikubenet:{__version__}"
KUBERNETES_VERSION = "1.30.0"  # the oldest release still maintained when this was written
NEEDED_KINDS = ("Namespace", "ServiceAccount", "ConfigMap", "Secret", "DaemonSet")
HOST_PATHS = {
    "/opt/cni/bin": "the CNI plugin binaries",
    "/etc/cni/net.d": "the CNI conflist",
    "/run/minikubenet": "the agent's socket and subnet.env",
}
CERT_ENV = ("MINIKUBENET_ETCD_CAFILE", "MINIKUBENET_ETCD_CERTFILE", "MINIKUBENET_ETCD_KEYFILE")


class ManifestError(Exception):
    """The file cannot be read as Kubernetes manifests at all."""


@dataclass(frozen=True)
class Finding:
    where: str  # "DaemonSet minikubenet-system/minikubenet-node"
    path: str  # "spec.template.spec.containers[0].image" ("" for the whole document)
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.path + ': ' if self.path else ''}{self.message}"


def load(text: str, source: str = "<manifests>") -> list[dict]:
    """The documents of ``text`` (empty ones skipped): YAML, or JSON (one object, a
    ``List`` of ``items``, or an array) where PyYAML is not installed (a node's runtime
    environment); ManifestError naming the line of a syntax error, or a document that is
    not a mapping with apiVersion and kind."""
    try:
        import yaml
    except ImportError:
        docs = _load_json(text, source)
    else:
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise ManifestError(f"{source} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
        if len(docs) == 1 and isinstance(docs[0], list):  # a JSON array (JSON is YAML)
            docs = docs[0]
    if len(docs) == 1 and isinstance(docs[0], dict) and docs[0].get("kind") == "List":
        docs = list(docs[0].get("items") or [])
    for i, d in enumerate(docs):
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise ManifestError(f"{source}: document {i + 1} is not a Kubernetes object (no apiVersion/kind)")
    return docs


def _load_json(text: str, source: str) -> list:
    import json

    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ManifestError(
            f"{source} is not JSON ({e}), and reading YAML needs PyYAML: pip install 'minikubenet[deploy]'"
        ) from None
    return doc if isinstance(doc, list) else [doc]


def name_of(doc: dict) -> str:
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')} {ns + '/' if ns else ''}{meta.get('name', '?')}"


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# -- pass 1: the schemas -------------------------------------------------------------------------


def schema_findings(docs: list[dict], version: str = KUBERNETES_VERSION) -> list[Finding]:
    """Every document against Kubernetes ``version``'s schemas, strict. Raises
    ManifestError when kubernetes-validate is not installed."""
    try:
        import kubernetes_validate
    except ImportError:
        raise ManifestError("the schema check needs kubernetes-validate: pip install 'minikubenet[deploy]'") from None
    out = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            out.append(Finding(name_of(doc), _path(e.path), e.message))
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
            out.append(
                Finding(
                    name_of(doc),
                    "",
                    f"no schema for {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes {version}: {e}",
                )
            )
    return out


# -- pass 2: references and shape -----------------------------------------------------------------


def _by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def _meta(doc: dict, key: str):
    meta = doc.get("metadata")
    return meta.get(key) if isinstance(meta, dict) else None


def _secret_values(secret: dict) -> dict[str, bytes | None]:
    """key -> decoded value (None: not valid base64)."""
    out: dict[str, bytes | None] = {}
    for k, v in (secret.get("data") or {}).items():
        try:
            out[k] = base64.b64decode(v or "", validate=True)
        except (binascii.Error, ValueError, TypeError):
            out[k] = None
    for k, v in (secret.get("stringData") or {}).items():
        out[k] = str(v).encode()
    return out


def reference_findings(docs: list[dict], image: str = IMAGE) -> list[Finding]:
    kinds = _by_kind(docs)
    out: list[Finding] = []
    for kind in NEEDED_KINDS:
        if kind not in kinds:
            out.append(
                Finding("manifests", "", f"no {kind}: the deployment needs one (deploy/minikubenet.yaml has it)")
            )
    namespaces = {_meta(d, "name") for d in kinds.get("Namespace", [])}
    for d in docs:
        if d["kind"] != "Namespace" and _meta(d, "namespace") not in namespaces:
            out.append(
                Finding(
                    name_of(d),
                    "metadata.namespace",
                    f"{_meta(d, 'namespace')!r} is not the Namespace these manifests create "
                    f"({', '.join(sorted(n for n in namespaces if n)) or 'none'})",
                )
            )
    secrets = {(_meta(s, "namespace"), _meta(s, "name")): s for s in kinds.get("Secret", [])}
    configmaps = {(_meta(c, "namespace"), _meta(c, "name")): c for c in kinds.get("ConfigMap", [])}
    accounts = {(_meta(a, "namespace"), _meta(a, "name")) for a in kinds.get("ServiceAccount", [])}
    for ds in kinds.get("DaemonSet", []):
        out += _daemonset_findings(ds, image, secrets, configmaps, accounts)
    return out


def _daemonset_findings(ds: dict, image: str, secrets: dict, configmaps: dict, accounts: set) -> list[Finding]:
    where, ns = name_of(ds), _meta(ds, "namespace")
    spec = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
    base = "spec.template.spec"
    out: list[Finding] = []
    if spec.get("hostNetwork") is not True:
        out.append(Finding(where, f"{base}.hostNetwork", "must be true: the agent builds the node's own network"))
    account = spec.get("serviceAccountName")
    if account and (ns, account) not in accounts:
        out.append(
            Finding(where, f"{base}.serviceAccountName", f"ServiceAccount {ns}/{account} is not in the manifests")
        )
    volumes = {v.get("name"): v for v in spec.get("volumes") or [] if isinstance(v, dict)}
    host_paths = {
        ((v.get("hostPath") or {}).get("path") or "").rstrip("/"): n for n, v in volumes.items() if "hostPath" in v
    }
    for path, what in HOST_PATHS.items():
        if path not in host_paths:
            out.append(Finding(where, f"{base}.volumes", f"no hostPath volume for {path} ({what})"))
    for i, v in enumerate(spec.get("volumes") or []):
        secret_name = (v.get("secret") or {}).get("secretName") if isinstance(v, dict) else None
        if secret_name and (ns, secret_name) not in secrets:
            out.append(
                Finding(
                    where,
                    f"{base}.volumes[{i}].secret.secretName",
                    f"Secret {ns}/{secret_name} is missing: the pods would wait in "
                    "ContainerCreating (create it: deploy/README.md)",
                )
            )
    groups = [("initContainers", c) for c in spec.get("initContainers") or []] + [
        ("containers", c) for c in spec.get("containers") or []
    ]
    index = {"initContainers": 0, "containers": 0}
    for group, c in groups:
        path = f"{base}.{group}[{index[group]}]"
        index[group] += 1
        if not isinstance(c, dict):
            continue
        if c.get("image") != image:
            out.append(
                Finding(
                    where,
                    f"{path}.image",
                    f"{c.get('image')!r} is not the image deploy/build-image.sh builds ({image!r}); "
                    "a node without it cannot start the pod (ErrImagePull)",
                )
            )
        if (c.get("securityContext") or {}).get("privileged") is not True:
            out.append(
                Finding(
                    where,
                    f"{path}.securityContext.privileged",
                    "must be true: netlink, iptables and other pods' namespaces need it",
                )
            )
        out += _env_findings(where, path, c, ns, secrets, configmaps, volumes)
        for j, m in enumerate(c.get("volumeMounts") or []):
            if m.get("name") not in volumes:
                out.append(Finding(where, f"{path}.volumeMounts[{j}].name", f"no volume named {m.get('name')!r}"))
    return out


def _env_findings(where: str, path: str, c: dict, ns, secrets: dict, configmaps: dict, volumes: dict) -> list[Finding]:
    out: list[Finding] = []
    env = {e.get("name"): e for e in c.get("env") or [] if isinstance(e, dict)}
    for j, e in enumerate(c.get("env") or []):
        ref = ((e.get("valueFrom") or {}).get("configMapKeyRef")) if isinstance(e, dict) else None
        if ref:
            cm = configmaps.get((ns, ref.get("name")))
            if cm is None:
                out.append(
                    Finding(
                        where,
                        f"{path}.env[{j}].valueFrom.configMapKeyRef",
                        f"ConfigMap {ns}/{ref.get('name')} is missing",
                    )
                )
            elif ref.get("key") not in (cm.get("data") or {}):
                out.append(
                    Finding(
                        where,
                        f"{path}.env[{j}].valueFrom.configMapKeyRef",
                        f"ConfigMap {ns}/{ref.get('name')} has no key {ref.get('key')!r}",
                    )
                )
    # the certificate files must come from a mounted Secret's keys, and hold something
    mounts = [
        (m.get("mountPath", "").rstrip("/"), volumes.get(m.get("name"), {}))
        for m in c.get("volumeMounts") or []
        if isinstance(m, dict)
    ]
    for name in CERT_ENV:
        value = (env.get(name) or {}).get("value")
        if not value:
            continue
        directory, key = posixpath.split(value)
        volume = next((v for mp, v in mounts if mp == directory), None)
        secret_name = ((volume or {}).get("secret") or {}).get("secretName")
        if not secret_name:
            out.append(Finding(where, f"{path}.env", f"{name}={value}: no Secret is mounted at {directory}"))
            continue
        secret = secrets.get((ns, secret_name))
        if secret is None:
            continue  # named once, at the volume
        values = _secret_values(secret)
        if key not in values:
            out.append(Finding(name_of(secret), "data", f"no key {key!r} ({name} of {c.get('name')} reads it)"))
        elif (value := values[key]) is None:
            out.append(Finding(name_of(secret), f"data.{key}", "is not valid base64"))
        elif not value.strip():
            out.append(
                Finding(
                    name_of(secret),
                    f"data.{key}",
                    f"is empty: put the etcd client file there ({name} of {c.get('name')} reads it)",
                )
            )
    return out


def check(
    text: str, source: str = "<manifests>", image: str = IMAGE, version: str = KUBERNETES_VERSION
) -> list[Finding]:
    """Both passes over the manifests in ``text``; every finding, in order, once per field
    (a Secret key two containers read is named once)."""
    docs = load(text, source)
    seen, out = set(), []
    for f in schema_findings(docs, version) + reference_findings(docs, image):
        if (f.where, f.path) not in seen:
            seen.add((f.where, f.path))
            out.append(f)
    return out


SECRET_KEYS = ("ca.crt", "agent.crt", "agent.key", "proxy.crt", "proxy.key")


def secret_manifest(
    files: dict[str, bytes], name: str = "minikubenet-etcd-certs", namespace: str = "minikubenet-system"
) -> dict:
    """The Secret of deploy/minikubenet.yaml holding ``files`` ({key: content})."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in files.items()},
    }
