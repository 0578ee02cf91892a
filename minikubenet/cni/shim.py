#!/usr/bin/env python3
"""The CNI plugin binaries ``minikubenet`` and ``minikubenet-ipam``: a thin, stdlib-only
shim in front of the node agent.

A container runtime runs this file for every pod: the verb and the pod's identity in
``CNI_*`` environment variables, the network config as JSON on stdin, the result as
JSON on stdout (CNI SPEC.md §2 and §5). Everything that needs netlink or etcd happens
in ``minikubenet-agent``, which keeps those connections warm; importing pyroute2 or the
etcd client here would cost 100-200 ms per pod. So this file only:

1. answers VERSION itself;
2. checks what it can check without the agent (environment, JSON, cniVersion, fields
   it cannot honour), with the spec's error codes, exactly as the Go ``skel`` does;
3. forwards the request over the agent's root-only unix socket and prints the answer.

The same file is two plugins (``MODE``):

- ``main``: the interface plugin. The agent allocates the IP *and* plumbs the veth.
- ``ipam``: an IPAM plugin that another main plugin (the reference ``bridge``, say)
  delegates to (SPEC §4). The agent only allocates from the same etcd records and
  returns the abbreviated result: ``ips`` with a gateway and ``routes``, no interfaces.
  Its settings live in the main plugin's ``ipam`` section.

Wire format to the agent (one request per connection): the shim sends one JSON object
``{"command", "mode", "env", "config", "netnsFd"}`` and half-closes; the agent answers
one JSON object, either ``{"result": <result already encoded for the requested
cniVersion>}`` (with ``"warnings": [...]`` for a STATUS that succeeds with a warning,
printed on stderr) or ``{"error": {"code", "msg", "details"}}``.

The pod's namespace travels as an open file descriptor (SCM_RIGHTS) next to its path:
the agent then works on exactly the namespace the runtime meant even when the path
only exists in the runtime's mount namespace (containerd and podman mount
``/run/netns/...`` files there), and a namespace cannot vanish between here and there.

Limits (the agent checks them again): a config of at most ``MAX_CONFIG_BYTES`` (1 MiB),
nesting at most ``MAX_NESTING`` (64) objects and arrays deep, else code 6 "decoding
failure" (as Go's json decoder refuses past its depth limit); an ``mtu`` outside 68–65535
(``MTU_RANGE``) is code 7 "invalid network config"; a request to the agent of at most
``MAX_REQUEST_BYTES``.

Errors go to stdout as the spec's error JSON (libcni reads stdout first,
pkg/invoke/raw_exec.go), with a non-zero exit. Logs, if any, go to stderr.

Start-up time is the plugin's main cost (a runtime pays it for every pod), so this
file must stay stdlib-only and import-light: it runs under ``python3 -I -S`` and
imports only modules written in C. ``import json`` alone pulls in ``re``, ``enum`` and
``functools`` (about 5 ms, and ``socket`` another 3 ms, against 6 ms for the whole
interpreter start), so the shim talks to the C halves directly: ``_json`` (the
scanner and encoder the json package wraps) and ``_socket``. For the same reason it
uses ``posix`` (the C module under ``os``) for files and the environment: ``import os``
costs another 1.2 ms (it pulls in ``_collections_abc``, ``posixpath`` and ``stat``).
"""

import _socket
import posix
import sys
import time

# Limits on what a caller may send (see the module docstring; the agent enforces them too).
MAX_CONFIG_BYTES = 1 << 20  # 1 MiB of network config on stdin
MAX_NESTING = 64  # objects and arrays inside each other
MAX_REQUEST_BYTES = 4 << 20  # one request on the agent's socket
MTU_RANGE = (68, 65535)  # RFC 791's minimum IPv4 MTU .. the largest a veth/bridge takes


# -- JSON with the C accelerator only (what json.loads/json.dumps do underneath) ---------------------
#
# ``_json`` is CPython's private accelerator: its constructors' signatures are not a
# public API and may change in any release. So the fast path is taken only on the
# CPython versions it was checked on (JSON_C_CHECKED) and only if a round trip of a
# sample document gives what the json package gives; otherwise (or with
# MINIKUBENET_SHIM_JSON=stdlib in the environment, which the tests use) the shim uses
# the json package itself: ~5 ms slower per call, never wrong. ``JSON_PATH`` says which.

JSON_C_CHECKED = ((3, 9), (3, 14))  # oldest and newest minor version checked
_SAMPLE = '{"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.5/24"}], "mtu": 1450, "x": null}'


class _DecoderSettings:
    """The attributes _json.make_scanner reads from a json.JSONDecoder, at their defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


def _unencodable(obj):
    raise TypeError("%s is not JSON serializable" % type(obj).__name__)


def _c_json():
    """(scan, encode) over ``_json``, or None when this interpreter is not one the fast
    path was checked on or the accelerator does not behave as expected."""
    if (
        sys.implementation.name != "cpython"
        or not JSON_C_CHECKED[0] <= sys.version_info[:2] <= JSON_C_CHECKED[1]
        or posix.environ.get(b"MINIKUBENET_SHIM_JSON") == b"stdlib"
    ):
        return None
    try:
        import _json

        scan = _json.make_scanner(_DecoderSettings())
        # markers, default, string encoder, indent, key sep, item sep, sort_keys, skipkeys, allow_nan
        encode = _json.make_encoder(
            {}, _unencodable, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True
        )
        value, end = scan(_SAMPLE, 0)
        if end != len(_SAMPLE) or "".join(encode(value, 0)) != _SAMPLE:
            return None
    except Exception:  # a changed private API fails in any way; the fallback is always right
        return None
    return scan, encode


def _stdlib_json():
    """The same two calls over the json package (its pure-Python wrapper of _json)."""
    import json

    decoder = json.JSONDecoder()
    encoder = json.JSONEncoder()

    def scan(text, index):
        return decoder.raw_decode(text, index)

    def encode(value, _level):
        return encoder.iterencode(value)

    return scan, encode


_fast = _c_json()
JSON_PATH = "c" if _fast else "stdlib"
_scan, _encode = _fast or _stdlib_json()


class TooDeep(ValueError):
    """JSON that nests deeper than allowed."""


def too_deep(value, limit=MAX_NESTING):
    """Objects and arrays nested more than ``limit`` deep (``{}`` is 1)? Iterative."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))
    return False


def json_loads(data, max_nesting=MAX_NESTING):
    """json.loads for bytes or str. Raises ValueError (JSONDecodeError, TooDeep) if malformed."""
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    text = text.strip(" \t\n\r")
    # A document with fewer brackets than the limit cannot nest deeper than it (every
    # config a runtime really sends): only a larger one is measured, after parsing. The
    # C scanner guards its own recursion (RecursionError near sys.getrecursionlimit()),
    # so 200 000 "[" fail quickly instead of overflowing the stack.
    measure = text.count("[") + text.count("{") > max_nesting
    value = end = None
    try:
        value, end = _scan(text, 0)
    except RecursionError:
        raise TooDeep("JSON nests deeper than %d levels" % max_nesting) from None
    except (StopIteration, ValueError, SystemError):
        # The C scanner describes a syntax error with json.decoder.JSONDecodeError, which
        # it only finds if the json package is loaded: without it, it fails with a
        # SystemError. Bad input is rare, so let the json package parse it again and say
        # where it is wrong (its 5 ms are paid only here).
        pass
    if end != len(text):
        import json

        value = json.loads(text)  # raises (the document is malformed), with the place
    if measure and too_deep(value, max_nesting):
        raise TooDeep("JSON nests deeper than %d levels" % max_nesting)
    return value


def json_dumps(value):
    """json.dumps with its default settings: the same text, byte for byte."""
    return "".join(_encode(value, 0))


SUPPORTED_VERSIONS = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"
AGENT_TIMEOUT_S = 120.0
CONNECT_PATIENCE_S = 10.0

# `minikubenet install` rewrites these three lines in the copy it installs
# (install.py, ``BAKED``): a runtime calls plugins with a bare environment, so what
# the installed binary must know is written into it.
MODE = "main"  # "main" or "ipam"
DEFAULT_AGENT_SOCKET = "/run/minikubenet/agent.sock"
INVOCATION_LOG = ""  # a file: one JSON line per call (debug aid)

# Error codes, CNI SPEC.md "Error" section.
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENVIRONMENT = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_INVALID_NETNS = 8  # libcni's ErrInvalidNetNS (not in the spec's table)
ERR_TRY_AGAIN_LATER = 11
ERR_NOT_AVAILABLE = 50
ERR_NOT_AVAILABLE_DEGRADED = 51

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

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


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


def valid_name(s):
    """SPEC §1/§2 for a network name and CNI_CONTAINERID: a letter or digit first, then
    letters, digits, '_', '.' or '-' (ASCII only)."""
    return isinstance(s, str) and s != "" and s[0] not in "_.-" and all(c in _NAME_CHARS for c in s)


def check_version(config, command):
    """The requested cniVersion must be one we speak (exact match, as skel requires)."""
    version = config.get("cniVersion")
    if version is None:
        # skel treats a missing cniVersion as 0.1.0, which nobody supports any more.
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            "config has no cniVersion; this plugin supports %s" % ", ".join(SUPPORTED_VERSIONS),
        )
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            "config version %r is not one of %s" % (version, ", ".join(SUPPORTED_VERSIONS)),
        )
    minimum = MIN_VERSION.get(command)
    if minimum and version_tuple(version) < version_tuple(minimum):
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            "config version does not allow %s" % command,
            "%s needs cniVersion >= %s, config has %s" % (command, minimum, version),
        )
    return version


def check_env(command, env):
    missing = [k for k in REQUIRED_ENV[command] if not env.get(k)]
    if missing:
        raise CniError(ERR_INVALID_ENVIRONMENT, "required env variables [%s] missing" % ",".join(missing))
    cid = env.get("CNI_CONTAINERID", "")
    if cid and not valid_name(cid):
        raise CniError(
            ERR_INVALID_ENVIRONMENT,
            "invalid CNI_CONTAINERID %r" % cid,
            "it must start with a letter or digit, then letters, digits, '_', '.' or '-'",
        )
    ifname = env.get("CNI_IFNAME", "")
    if ifname and (len(ifname) > 15 or ifname in (".", "..") or any(c in ifname for c in "/: \t\n")):
        raise CniError(
            ERR_INVALID_ENVIRONMENT,
            "invalid CNI_IFNAME %r" % ifname,
            "an interface name has at most 15 characters and no '/', ':' or whitespace",
        )


def open_netns(command, env, keep=True):
    """An fd of the pod's network namespace for the agent, or None (DEL: it may be gone).
    An IPAM plugin touches no namespace: it only checks that the path exists."""
    netns = env.get("CNI_NETNS", "")
    if not netns:
        return None
    try:
        fd = posix.open(netns, posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError as e:
        if command in ("ADD", "CHECK"):
            raise CniError(
                ERR_INVALID_ENVIRONMENT,
                "CNI_NETNS %s does not exist" % netns,
                "%s; the runtime must create the network namespace before calling the plugin" % (e.strerror or e),
            ) from None
        return None
    if keep:
        return fd
    posix.close(fd)
    return None


def read_config(stdin, limit=MAX_CONFIG_BYTES):
    """At most ``limit`` bytes; more is refused unread (libcni ignores the EPIPE)."""
    try:
        raw = stdin.read(limit + 1)
    except OSError as e:
        raise CniError(ERR_IO, "failed to read network config from stdin", str(e)) from None
    if len(raw) > limit:
        raise CniError(
            ERR_DECODE,
            "failed to decode network config",
            "the network config is larger than %d bytes (this plugin's limit)" % limit,
        )
    return raw


def parse_config(raw):
    try:
        config = json_loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # TooDeep is a ValueError
        raise CniError(ERR_DECODE, "failed to decode network config", str(e)) from None
    if not isinstance(config, dict):
        raise CniError(ERR_DECODE, "failed to decode network config", "expected a JSON object")
    return config


def check_config(config, mode):
    """Validate what we use; return the agent's socket path. Unknown keys pass (SPEC §1)."""
    name = config.get("name")
    if not name:
        raise CniError(ERR_INVALID_CONFIG, "missing network name")
    if not valid_name(name):
        raise CniError(
            ERR_INVALID_CONFIG,
            "invalid network name %r" % (name,),
            "it must start with a letter or digit, then letters, digits, '_', '.' or '-'",
        )
    ipam = config.get("ipam")
    if mode == "main" and ipam:
        # A well-known field we cannot honour: the agent allocates pod IPs itself.
        raise CniError(
            ERR_UNSUPPORTED_FIELD,
            "unsupported field ipam=%s" % json_dumps(ipam),
            "minikubenet allocates pod IPs itself and does not delegate to an IPAM plugin; "
            "remove the ipam section (other main plugins can use minikubenet-ipam)",
        )
    if mode == "ipam" and not isinstance(ipam, dict):
        raise CniError(
            ERR_INVALID_CONFIG,
            "missing ipam section",
            'minikubenet-ipam reads its settings from the main plugin\'s "ipam" object',
        )
    sock = (ipam or {}).get("agentSocket") if mode == "ipam" else None
    if sock is None:
        sock = config.get("agentSocket", DEFAULT_AGENT_SOCKET)
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise CniError(ERR_INVALID_CONFIG, "agentSocket must be an absolute path, got %r" % (sock,))
    return sock


def check_mtu(config, command):
    """``mtu`` is an integer in MTU_RANGE (code 7). Only for ADD and CHECK: DEL, GC and
    STATUS must work with any config."""
    if command not in ("ADD", "CHECK") or "mtu" not in config:
        return
    mtu = config["mtu"]
    low, high = MTU_RANGE
    if type(mtu) is not int or not low <= mtu <= high:
        raise CniError(
            ERR_INVALID_CONFIG,
            "invalid mtu %s" % json_dumps(mtu),
            "mtu must be an integer from %d (the smallest IPv4 MTU, RFC 791) to %d" % (low, high),
        )


def connect(s, sock_path, patience_s=CONNECT_PATIENCE_S):
    """Connect, waiting a little while the agent's listen queue is full: with a timeout
    set, a unix-socket connect fails at once with EAGAIN when many pods start together."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return s.connect(sock_path)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def ask_agent(sock_path, request, netns_fd=None, unreachable_code=ERR_TRY_AGAIN_LATER):
    """One request, one answer. Any failure to reach the agent is 'try again later'
    (for STATUS: 'not available', the spec's code for exactly that)."""
    data = json_dumps(request).encode()
    if len(data) > MAX_REQUEST_BYTES:
        raise CniError(
            ERR_DECODE,
            "request too large for the agent",
            "%d bytes with the CNI_* environment; the agent reads at most %d" % (len(data), MAX_REQUEST_BYTES),
        )
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(AGENT_TIMEOUT_S)
    chunks = []
    try:
        try:
            connect(s, sock_path)
            if netns_fd is None:
                s.sendall(data)
            else:  # the first byte carries the namespace fd (SCM_RIGHTS)
                s.sendmsg([data[:1]], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, netns_fd.to_bytes(4, sys.byteorder))])
                s.sendall(data[1:])
            s.shutdown(_socket.SHUT_WR)
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as e:
            raise CniError(
                unreachable_code,
                "minikubenet agent unreachable",
                "%s: %s (is minikubenet-agent running on this node?)" % (sock_path, e.strerror or e),
            ) from None
    finally:
        s.close()
    try:
        answer = json_loads(b"".join(chunks))
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise CniError(
            unreachable_code, "minikubenet agent gave no answer", "%s closed the connection without a reply" % sock_path
        )
    return answer


def log_invocation(env, command, config, code, started):
    """Append one JSON line about this call to INVOCATION_LOG (what runtimes really send)."""
    if not INVOCATION_LOG:
        return
    line = {
        "time": round(time.time(), 3),
        "ms": round((time.monotonic() - started) * 1000, 1),
        "mode": MODE,
        "command": command,
        "exit": code,
        "env": {k: v for k, v in env.items() if k.startswith("CNI_")},
        "cniVersion": config.get("cniVersion") if isinstance(config, dict) else None,
        "prevResult": isinstance(config, dict) and "prevResult" in config,
        "runtimeConfig": config.get("runtimeConfig") if isinstance(config, dict) else None,
    }
    try:
        fd = posix.open(INVOCATION_LOG, posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | posix.O_CLOEXEC, 0o600)
        try:
            posix.write(fd, (json_dumps(line) + "\n").encode())
        finally:
            posix.close(fd)
    except OSError:
        pass  # a debug aid must never fail a pod


def handle(env, stdin, stdout, command, seen):
    """Everything after VERSION: read, check, forward, print. ``seen["config"]`` keeps
    the parsed config for the error's cniVersion and the invocation log."""
    config = seen["config"] = parse_config(read_config(stdin))
    cni_version = check_version(config, command)
    sock_path = check_config(config, MODE)
    check_mtu(config, command)
    check_env(command, env)
    netns_fd = open_netns(command, env, keep=MODE == "main")
    try:
        request = {
            "command": command,
            "mode": MODE,
            "config": config,
            "netnsFd": netns_fd is not None,
            "env": {k: v for k, v in env.items() if k.startswith("CNI_")},
        }
        unreachable = ERR_NOT_AVAILABLE if command == "STATUS" else ERR_TRY_AGAIN_LATER
        answer = ask_agent(sock_path, request, netns_fd, unreachable)
    finally:
        if netns_fd is not None:
            posix.close(netns_fd)
    if "error" in answer:
        err = answer["error"] if isinstance(answer["error"], dict) else {"msg": str(answer["error"])}
        raise CniError(err.get("code", 999), err.get("msg", "agent error"), err.get("details", ""))
    for warning in answer.get("warnings") or ():
        sys.stderr.write("minikubenet: warning: %s\n" % warning)  # STATUS: e.g. conntrack table 95 % full
    if answer.get("result") is not None:
        stdout.write(json_dumps(answer["result"]))
    return cni_version


def run(env, stdin, stdout):
    """Dispatch one invocation. Returns the process exit code."""
    started = time.monotonic()
    command = env.get("CNI_COMMAND", "")
    seen = {"config": None}
    code = 0
    try:
        if not command:
            raise CniError(ERR_INVALID_ENVIRONMENT, "required env variables [CNI_COMMAND] missing")
        if command not in VERBS:
            raise CniError(ERR_INVALID_ENVIRONMENT, "unknown CNI_COMMAND: %s" % command)
        if command == "VERSION":
            # skel ignores stdin for VERSION and answers with its current version.
            stdout.write(json_dumps({"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}))
        else:
            handle(env, stdin, stdout, command, seen)
    except CniError as e:
        config = seen["config"] or {}
        version = config.get("cniVersion")
        stdout.write(json_dumps(e.to_json(version if isinstance(version, str) else CURRENT_VERSION)))
        code = 1
    log_invocation(env, command, seen["config"], code, started)
    return code


def environment():
    """os.environ as a plain dict: posix.environ holds bytes, decoded here the way os
    does it (the file system encoding, undecodable bytes kept as surrogates)."""
    enc = sys.getfilesystemencoding()
    return {k.decode(enc, "surrogateescape"): v.decode(enc, "surrogateescape") for k, v in posix.environ.items()}


def main(mode=None):
    global MODE
    if mode:
        MODE = mode
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    code = run(environment(), stdin, sys.stdout)
    sys.stdout.flush()
    return code


def exit_now(code):
    """End the process without the interpreter's teardown (module cleanup, a last garbage
    collection: ~1 ms of every call). Nothing here needs it: the socket and the
    namespace fd are closed already, and the answer is flushed here."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        code = code or ERR_IO
    posix._exit(code)


if __name__ == "__main__":
    exit_now(main())
