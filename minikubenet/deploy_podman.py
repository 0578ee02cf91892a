"""Running the DaemonSet's containers with podman, on a node without Kubernetes.

What a kubelet does with deploy/minikubenet.yaml's pod spec, done with ``podman run``
so the same image and the same container spec can run on a plain node (the VM tier, a
lab host): each container becomes one ``podman run`` whose options are read from the
spec, nothing added and nothing left out:

    image, command, args         -> IMAGE, --entrypoint, arguments; ``$(VAR)`` in command
                                    and args expanded from the container's env, as the
                                    kubelet does (kubelet: expansion.MappingFuncFor)
    env: value, fieldRef         -> -e NAME=VALUE (spec.nodeName: the node's name)
         configMapKeyRef         -> -e NAME=<the ConfigMap's value>
    volumeMounts + hostPath      -> -v HOSTPATH:MOUNTPATH[:ro][,rslave for HostToContainer];
                                    DirectoryOrCreate / FileOrCreate made first
    volumeMounts + secret        -> the Secret's keys written into a directory (mode 0700,
                                    files ``defaultMode``), mounted read-only
    hostNetwork: true            -> --network host (or ``network=``: a lab node's netns)
    privileged: true             -> --privileged
    initContainers               -> run first, to completion (``--rm``), in order
    containers                   -> ``-d --restart always``, named <prefix>-<name>

Anything in the spec this module does not translate (another volume type, envFrom, a
probe) is refused with its field path, never silently dropped. ``plan`` is pure; the
CLI (``minikubenet deploy podman``) carries it out.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

TRANSLATED_CONTAINER_FIELDS = {
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "securityContext",
    "volumeMounts",
    "resources",
}
TRANSLATED_POD_FIELDS = {
    "serviceAccountName",
    "automountServiceAccountToken",
    "hostNetwork",
    "dnsPolicy",
    "priorityClassName",
    "tolerations",
    "terminationGracePeriodSeconds",
    "initContainers",
    "containers",
    "volumes",
}


class PodmanPlanError(Exception):
    """The spec holds something that cannot be run with podman as it is; names the field."""


@dataclass(frozen=True)
class Run:
    name: str
    init: bool  # run to completion before the next
    argv: tuple[str, ...]  # podman run ... (without the leading "podman")


@dataclass
class Plan:
    directories: list[str] = field(default_factory=list)  # hostPath DirectoryOrCreate
    files: list[str] = field(default_factory=list)  # hostPath FileOrCreate
    secret_files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # path -> (content, mode)
    runs: list[Run] = field(default_factory=list)


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\$")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables are replaced, undefined ones
    are left as they are, ``$$`` is a literal ``$``."""
    return _VAR.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def _find(docs: list[dict], kind: str, namespace, name) -> dict | None:
    for d in docs:
        meta = d.get("metadata") or {}
        if d.get("kind") == kind and meta.get("name") == name and meta.get("namespace") == namespace:
            return d
    return None


def plan(
    docs: list[dict],
    node_name: str,
    secret_root: str,
    prefix: str = "minikubenet",
    network: str = "host",
    host_root: str = "",
) -> Plan:
    """The podman runs for the (first) DaemonSet of ``docs`` on node ``node_name``;
    Secrets are written under ``secret_root/<secret name>``. ``host_root`` (tests, a lab
    node): every hostPath is taken below this directory instead of the host's ``/``;
    ``network``: ``host``, or ``ns:/run/netns/<node>`` for a lab node."""
    ds = next((d for d in docs if d.get("kind") == "DaemonSet"), None)
    if ds is None:
        raise PodmanPlanError("no DaemonSet in the manifests")
    ns = (ds.get("metadata") or {}).get("namespace")
    pod = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
    base = "spec.template.spec"
    for key in pod:
        if key not in TRANSLATED_POD_FIELDS:
            raise PodmanPlanError(f"{base}.{key}: not translated to podman (see minikubenet/deploy_podman.py)")
    if pod.get("hostNetwork") is not True:
        raise PodmanPlanError(f"{base}.hostNetwork: only a host-network pod runs here")
    out = Plan()
    volumes: dict[str, tuple[str, str]] = {}  # name -> (host path, kind)
    for i, v in enumerate(pod.get("volumes") or []):
        name = v.get("name")
        if "hostPath" in v:
            path, kind = host_root.rstrip("/") + v["hostPath"].get("path"), v["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                out.directories.append(path)
            elif kind == "FileOrCreate":
                out.files.append(path)
            volumes[name] = (path, "hostPath")
        elif "secret" in v:
            secret_name = v["secret"].get("secretName")
            secret = _find(docs, "Secret", ns, secret_name)
            if secret is None:
                raise PodmanPlanError(f"{base}.volumes[{i}].secret.secretName: Secret {ns}/{secret_name} is missing")
            mode = v["secret"].get("defaultMode", 0o644)
            directory = f"{secret_root.rstrip('/')}/{secret_name}"
            for key, value in (secret.get("data") or {}).items():
                out.secret_files[f"{directory}/{key}"] = (base64.b64decode(value or ""), mode)
            for key, value in (secret.get("stringData") or {}).items():
                out.secret_files[f"{directory}/{key}"] = (str(value).encode(), mode)
            volumes[name] = (directory, "secret")
        else:
            raise PodmanPlanError(f"{base}.volumes[{i}]: only hostPath and secret volumes are translated")
    groups = [("initContainers", True, c) for c in pod.get("initContainers") or []] + [
        ("containers", False, c) for c in pod.get("containers") or []
    ]
    index = {"initContainers": 0, "containers": 0}
    for group, init, c in groups:
        path = f"{base}.{group}[{index[group]}]"
        index[group] += 1
        out.runs.append(
            Run(c.get("name"), init, tuple(_run_argv(c, path, docs, ns, node_name, volumes, prefix, network, init)))
        )
    return out


def _env(c: dict, path: str, docs: list[dict], ns, node_name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for j, e in enumerate(c.get("env") or []):
        name = e.get("name")
        if "value" in e:
            env[name] = expand(str(e["value"]), env)
            continue
        source = e.get("valueFrom") or {}
        if (source.get("fieldRef") or {}).get("fieldPath") == "spec.nodeName":
            env[name] = node_name
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            cm = _find(docs, "ConfigMap", ns, ref.get("name"))
            if cm is None or ref.get("key") not in (cm.get("data") or {}):
                raise PodmanPlanError(
                    f"{path}.env[{j}]: ConfigMap {ns}/{ref.get('name')} key {ref.get('key')!r} is missing"
                )
            env[name] = cm["data"][ref["key"]]
        else:
            raise PodmanPlanError(f"{path}.env[{j}].valueFrom: only spec.nodeName and configMapKeyRef are translated")
    return env


def _run_argv(
    c: dict, path: str, docs, ns, node_name: str, volumes: dict, prefix: str, network: str, init: bool
) -> list[str]:
    for key in c:
        if key not in TRANSLATED_CONTAINER_FIELDS:
            raise PodmanPlanError(f"{path}.{key}: not translated to podman (see minikubenet/deploy_podman.py)")
    env = _env(c, path, docs, ns, node_name)
    argv = ["run", "--name", f"{prefix}-{c.get('name')}", f"--network={network}"]
    argv += ["--rm"] if init else ["-d", "--restart=always"]
    if (c.get("securityContext") or {}).get("privileged"):
        argv.append("--privileged")
    for name, value in env.items():
        argv += ["-e", f"{name}={value}"]
    for j, m in enumerate(c.get("volumeMounts") or []):
        if m.get("name") not in volumes:
            raise PodmanPlanError(f"{path}.volumeMounts[{j}].name: no volume named {m.get('name')!r}")
        host, kind = volumes[m["name"]]
        options = ["ro"] if m.get("readOnly") or kind == "secret" else []
        if m.get("mountPropagation") == "HostToContainer":
            options.append("rslave")
        elif m.get("mountPropagation") == "Bidirectional":
            options.append("rshared")
        argv += ["-v", f"{host}:{m.get('mountPath')}" + (":" + ",".join(options) if options else "")]
    command = [expand(x, env) for x in c.get("command") or []]
    if command:
        argv += ["--entrypoint", command[0]]
    argv.append(str(c.get("image")))
    argv += command[1:] + [expand(x, env) for x in c.get("args") or []]
    return argv
