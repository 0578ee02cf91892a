#!/usr/bin/env python3
"""The CNI plugin binary ``minikubenet``: a thin, stdlib-only shim in front of the node agent.

A container runtime runs this file for every pod: the verb and the pod's identity in
``CNI_*`` environment variables, the network config as JSON on stdin, the result as
JSON on stdout (CNI SPEC.md §2 and §5). Everything that needs netlink or etcd happens
in ``minikubenet-agent``, which keeps those connections warm; importing pyroute2 or the
etcd client here would cost 100-200 ms per pod. So this file only:

1. answers VERSION itself;
2. checks what it can check without the agent (environment, JSON, cniVersion), with
   the spec's error codes, exactly as the Go ``skel`` package does;
3. forwards the request over the agent's root-only unix socket and prints the answer.

Wire format to the agent (one request per connection): the shim sends one JSON object
``{"command", "env", "config"}`` and half-closes; the agent answers one JSON object,
either ``{"result": <result already encoded for the requested cniVersion>}`` or
``{"error": {"code", "msg", "details"}}``.

Errors go to stdout as the spec's error JSON (libcni reads stdout first,
pkg/invoke/raw_exec.go), with a non-zero exit. Logs, if any, go to stderr.

It must stay stdlib-only and import-light: it runs under ``python3 -I -S``.
"""

import json
import os
import re
import socket
import sys

SUPPORTED_VERSIONS = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"
DEFAULT_AGENT_SOCKET = "/run/minikubenet/agent.sock"
AGENT_TIMEOUT_S = 120.0

# Error codes, CNI SPEC.md "Error" section.
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENVIRONMENT = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_NOT_AVAILABLE = 50

VERBS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

# What each verb needs in the environment. The spec makes CNI_NETNS optional on DEL
# (a runtime may have removed the namespace already; ctr even sends it empty).
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": (),
    "STATUS": (),
}

# CHECK arrived in 0.4.0, GC and STATUS in 1.1.0 (skel refuses them for older configs).
MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

# \Z, not $: "$" would also accept a trailing newline.
CONTAINER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")  # SPEC.md §2, CNI_CONTAINERID
NETWORK_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")  # SPEC.md §1, "name"


class CniError(Exception):
    """An error the spec knows: printed as ``{"code", "msg", "details"}`` on stdout."""

    def __init__(self, code, msg, details=""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version=CURRENT_VERSION):
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_tuple(v):
    return tuple(int(p) for p in v.split("."))


def check_version(config, command):
    """The requested cniVersion must be one we speak (exact match, as skel requires)."""
    version = config.get("cniVersion")
    if version is None:
        # skel treats a missing cniVersion as 0.1.0, which nobody supports any more.
        raise CniError(ERR_INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       "config has no cniVersion; this plugin supports %s" % ", ".join(SUPPORTED_VERSIONS))
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       "config version %r is not one of %s" % (version, ", ".join(SUPPORTED_VERSIONS)))
    minimum = MIN_VERSION.get(command)
    if minimum and version_tuple(version) < version_tuple(minimum):
        raise CniError(ERR_INCOMPATIBLE_VERSION, "config version does not allow %s" % command,
                       "%s needs cniVersion >= %s, config has %s" % (command, minimum, version))
    return version


def check_env(command, env):
    missing = [k for k in REQUIRED_ENV[command] if not env.get(k)]
    if missing:
        raise CniError(ERR_INVALID_ENVIRONMENT, "required env variables [%s] missing" % ",".join(missing))
    cid = env.get("CNI_CONTAINERID", "")
    if cid and not CONTAINER_ID_RE.match(cid):
        raise CniError(ERR_INVALID_ENVIRONMENT, "invalid CNI_CONTAINERID %r" % cid,
                       "it must start with a letter or digit, then letters, digits, '_', '.' or '-'")
    ifname = env.get("CNI_IFNAME", "")
    if ifname and (len(ifname) > 15 or ifname in (".", "..") or any(c in ifname for c in "/: \t\n")):
        raise CniError(ERR_INVALID_ENVIRONMENT, "invalid CNI_IFNAME %r" % ifname,
                       "an interface name has at most 15 characters and no '/', ':' or whitespace")
    netns = env.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK") and not os.path.exists(netns):
        raise CniError(ERR_INVALID_ENVIRONMENT, "CNI_NETNS %s does not exist" % netns,
                       "the runtime must create the network namespace before calling the plugin")


def parse_config(raw):
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(ERR_DECODE, "failed to decode network config", str(e))
    if not isinstance(config, dict):
        raise CniError(ERR_DECODE, "failed to decode network config", "expected a JSON object")
    return config


def check_config(config):
    name = config.get("name")
    if not name:
        raise CniError(ERR_INVALID_CONFIG, "missing network name")
    if not isinstance(name, str) or not NETWORK_NAME_RE.match(name):
        raise CniError(ERR_INVALID_CONFIG, "invalid network name %r" % (name,),
                       "it must start with a letter or digit, then letters, digits, '_', '.' or '-'")
    sock = config.get("agentSocket", DEFAULT_AGENT_SOCKET)
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise CniError(ERR_INVALID_CONFIG, "agentSocket must be an absolute path, got %r" % (sock,))
    return sock


def ask_agent(sock_path, request):
    """One request, one answer. Any failure to reach the agent is 'try again later'."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(AGENT_TIMEOUT_S)
    try:
        try:
            s.connect(sock_path)
            s.sendall(json.dumps(request).encode())
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as e:
            raise CniError(ERR_TRY_AGAIN_LATER, "minikubenet agent unreachable",
                           "%s: %s (is minikubenet-agent running on this node?)" % (sock_path, e.strerror or e))
    finally:
        s.close()
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("error", {}), dict):
        raise CniError(ERR_TRY_AGAIN_LATER, "minikubenet agent gave no usable answer",
                       "%s closed the connection without a reply object" % sock_path)
    return answer


def run(env, stdin, stdout):
    """Dispatch one invocation. Returns the process exit code."""
    command = env.get("CNI_COMMAND", "")
    cni_version = CURRENT_VERSION
    try:
        if not command:
            raise CniError(ERR_INVALID_ENVIRONMENT, "required env variables [CNI_COMMAND] missing")
        if command not in VERBS:
            raise CniError(ERR_INVALID_ENVIRONMENT, "unknown CNI_COMMAND: %s" % command)
        if command == "VERSION":
            # skel ignores stdin for VERSION and answers with its current version.
            stdout.write(json.dumps({"cniVersion": CURRENT_VERSION,
                                     "supportedVersions": list(SUPPORTED_VERSIONS)}))
            return 0
        try:
            raw = stdin.read()
        except OSError as e:
            raise CniError(ERR_IO, "failed to read network config from stdin", str(e))
        config = parse_config(raw)
        if config.get("cniVersion") in SUPPORTED_VERSIONS:
            cni_version = config["cniVersion"]   # errors are spelled in a version the runtime speaks
        check_version(config, command)
        sock_path = check_config(config)
        check_env(command, env)
        request = {"command": command, "config": config,
                   "env": {k: v for k, v in env.items() if k.startswith("CNI_")}}
        answer = ask_agent(sock_path, request)
        if "error" in answer:
            err = answer["error"]
            raise CniError(err.get("code", 999), err.get("msg", "agent error"), err.get("details", ""))
        if answer.get("result") is not None:
            stdout.write(json.dumps(answer["result"]))
        return 0
    except CniError as e:
        stdout.write(json.dumps(e.to_json(cni_version)))
        return 1


def main():
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    code = run(os.environ, stdin, sys.stdout)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
