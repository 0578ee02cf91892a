"""Installing minikubenet the way every CNI plugin is installed: binaries into a CNI bin
dir, a conflist into a CNI conf dir.

    minikubenet install [--bin-dir /opt/cni/bin] [--conf-dir /etc/cni/net.d]
                        [--cni-version 1.0.0] [--chain portmap,bandwidth,tuning] [--force]
    minikubenet uninstall

What a runtime (containerd, CRI-O, podman, kubelet via its runtime) finds afterwards:

- ``<bin-dir>/minikubenet`` and ``<bin-dir>/minikubenet-ipam``: cni/shim.py, one file
  each. A runtime executes them with a bare environment (no PATH, no VIRTUAL_ENV), so
  each file carries what it needs: a ``#!`` line naming a real interpreter binary (the
  distribution's python3, which starts fastest, ``plugin_interpreter``) with ``-I -S``
  (isolated, no site-packages: the shim is stdlib-only, and a pyenv or virtualenv
  wrapper would add ~110 ms per pod), the constants ``MODE``,
  ``DEFAULT_AGENT_SOCKET`` and ``INVOCATION_LOG`` rewritten (``BAKED``), and next to
  that source its bytecode, compiled at install time by that same interpreter, so a
  pod does not pay for compiling the shim (``PLUGIN_TEMPLATE``).
- ``<conf-dir>/10-minikubenet.conflist``: our plugin first, then the reference plugins
  asked for with ``--chain``, each declaring the capabilities a runtime fills in
  (``portMappings`` for portmap, ``bandwidth`` for bandwidth). Runtimes that load one
  config (containerd, ctr) take the first file in lexical order: ``10-`` sorts early,
  and ``install`` warns when another file sorts before ours.

The install step in one paragraph: read shim.py; replace the one line ``NAME = ...`` of
each ``BAKED`` constant (a regex per name, anchored at the line start; install fails if
a line is missing, so renaming one in shim.py cannot go unnoticed); compile the result
with the plugin's own interpreter (bytecode is per minor version, so it is made by the
binary that will run it); write ``#!interpreter -IS``, the source and the marshalled code.
At run time the plugin executes the bytecode if the interpreter's magic number still
matches and compiles the source otherwise (after a Python upgrade: slower, still right).
The shim's private ``_json`` fast path has its own version check and stdlib fallback
(shim.py, ``JSON_PATH``). Measured with this machine's /usr/bin/python3 3.11, median of
5 rounds of 200 calls: 6.8 ms per plugin call with the fast path, 13.4 ms with the json
package (tests/unit/test_shim_json_paths.py checks both give the same answers).

Ownership: ``<state-dir>/install.json`` records every file written and its sha256.
``install`` overwrites only files it wrote and nobody changed since; any other file
at a target path is foreign and is left alone unless ``--force``, which first saves
it under ``<state-dir>/backup/``. Running ``install`` again with the same options
changes nothing. ``uninstall`` removes exactly the recorded files that are still as
written, puts back what ``--force`` replaced, and keeps (and reports) a file someone
edited since.

Planning is pure (``plan_install`` returns what would be written and why); applying it
is a few file operations. ``--dry-run`` prints the plan.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

from minikubenet import private_files
from minikubenet.cni import shim

PLUGIN_NAME = "minikubenet"
IPAM_PLUGIN_NAME = "minikubenet-ipam"
DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_CONF_NAME = "10-minikubenet.conflist"
DEFAULT_STATE_DIR = "/var/lib/minikubenet"
DEFAULT_NETWORK = "minikubenet"
DEFAULT_CNI_VERSION = "1.0.0"
REFERENCE_PLUGIN_DIRS = ("/usr/lib/cni",)  # Debian's containernetworking-plugins
MANIFEST = "install.json"
MAX_SHEBANG = 255  # Linux reads at most 256 bytes of a #! line

# The chained reference plugins we know how to configure, with the capabilities a
# runtime should fill in for them (CONVENTIONS.md "Well-known capabilities").
CHAINABLE = {
    "portmap": {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
    "bandwidth": {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    "tuning": {"type": "tuning"},
}

# Constants of shim.py that the installed copy gets rewritten (see the shim's header).
BAKED = ("MODE", "DEFAULT_AGENT_SOCKET", "INVOCATION_LOG")


class InstallError(Exception):
    pass


# -- what to write ---------------------------------------------------------------------------------


def base_interpreter() -> str:
    """The real interpreter binary behind this (possibly virtual) environment."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


SYSTEM_PYTHON = "/usr/bin/python3"
SHIM_MIN_PYTHON = (3, 9)  # what shim.py's syntax and modules need


@functools.cache
def plugin_interpreter() -> str:
    """The interpreter the plugin's ``#!`` line names by default: the distribution's
    ``/usr/bin/python3`` when it is recent enough, else ``base_interpreter()``.

    A runtime starts the plugin once per pod, so start-up is what matters, and the shim
    is stdlib-only, so any Python 3.9+ that has the C modules it imports runs it (on
    Debian ``_json`` comes with libpython3.X-stdlib, not python3-minimal: the probe
    imports them). Distribution builds link most C modules (``_socket``, ``posix``) into
    the interpreter binary; a pyenv or source build loads them as shared objects and
    starts about 1 ms slower (7.5 against 6.4 ms here, ``bench/cni_add_del.py``)."""
    try:
        p = subprocess.run(
            [SYSTEM_PYTHON, "-I", "-S", "-c", "import sys, posix, _json, _socket; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        version = tuple(int(x) for x in p.stdout.split())
    except (OSError, ValueError, subprocess.SubprocessError):
        version = ()
    if p.returncode == 0 and len(version) == 2 and version >= SHIM_MIN_PYTHON:
        # Named as is, not resolved: after an upgrade to another minor version the plugin
        # still starts, and compiles its source instead of the stale bytecode.
        return SYSTEM_PYTHON
    return base_interpreter()


def baked_source(mode: str = "main", agent_socket: str = shim.DEFAULT_AGENT_SOCKET, invocation_log: str = "") -> str:
    """shim.py without its ``#!`` line, with the ``BAKED`` constants set."""
    with open(shim.__file__) as f:
        body = f.read()
    if body.startswith("#!"):
        body = body.split("\n", 1)[1]
    values = {"MODE": mode, "DEFAULT_AGENT_SOCKET": agent_socket, "INVOCATION_LOG": invocation_log}
    for name in BAKED:
        line = f"{name} = {values[name]!r}"
        # a replacement string, its backslashes doubled: re.subn reads them as escapes
        body, n = re.subn(rf"^{name} = .*$", line.replace("\\", "\\\\"), body, count=1, flags=re.M)
        if n != 1:
            raise InstallError(f"cannot bake {name} into the plugin: shim.py has no `{name} = ...` line")
    return body


# Run by the target interpreter: bytecode belongs to one Python minor version.
# optimize=2 drops the docstrings (and asserts; the shim has none): nothing reads them at
# run time, and every byte of the embedded bytecode is parsed again on every call.
_COMPILE = (
    "import marshal, sys\nfrom importlib.util import MAGIC_NUMBER\n"
    "code = compile(sys.stdin.read(), sys.argv[1], 'exec', optimize=2)\n"
    "sys.stdout.buffer.write(MAGIC_NUMBER + marshal.dumps(code))\n"
)


def compile_with(interpreter: str, source: str, filename: str) -> tuple[bytes, bytes]:
    """(magic number, marshalled code object) of ``source``, made by ``interpreter``."""
    try:
        p = subprocess.run(
            [interpreter, "-I", "-S", "-c", _COMPILE, filename], input=source.encode(), capture_output=True, timeout=60
        )
    except OSError as e:
        raise InstallError(f"cannot run the interpreter {interpreter}: {e.strerror or e}") from None
    if p.returncode != 0 or len(p.stdout) < 5:
        raise InstallError(f"{interpreter} could not compile the plugin: {p.stderr.decode(errors='replace')[-300:]}")
    return p.stdout[:4], p.stdout[4:]


PLUGIN_TEMPLATE = """#!{interpreter} -IS
# The minikubenet CNI plugin ({mode} mode), written by `minikubenet install`. Its readable
# source is minikubenet/cni/shim.py; _SOURCE is that file with this installation's
# settings baked in, _BYTECODE the same compiled by the interpreter named above (which
# saves compiling it again on every call: ~2 ms of the ~10 ms a call costs), in hex: a
# bytes literal of it would be 3 times its size, full of escapes, and slower to parse.
# The source is compiled instead when the interpreter's bytecode format differs.
import marshal, sys
_MAGIC = {magic!r}
_SOURCE = {source!r}
_BYTECODE = {code_hex!r}
exec(marshal.loads(bytes.fromhex(_BYTECODE))
     if getattr(sys.modules.get("_frozen_importlib_external"), "MAGIC_NUMBER", None) == _MAGIC
     else compile(_SOURCE, __file__, "exec"))
"""


def render_plugin(
    interpreter: str | None = None,
    mode: str = "main",
    agent_socket: str = shim.DEFAULT_AGENT_SOCKET,
    invocation_log: str = "",
    filename: str = PLUGIN_NAME,
) -> str:
    """The installed plugin: a ``#!`` line naming the real interpreter, then the baked
    shim as source and as that interpreter's bytecode."""
    interpreter = interpreter or plugin_interpreter()
    if len(interpreter) + 6 > MAX_SHEBANG or any(c.isspace() for c in interpreter):
        raise InstallError(
            f"interpreter path {interpreter!r} cannot go on a #! line (too long, or it contains whitespace)"
        )
    source = baked_source(mode, agent_socket, invocation_log)
    magic, code = compile_with(interpreter, source, filename)
    return PLUGIN_TEMPLATE.format(interpreter=interpreter, mode=mode, magic=magic, source=source, code_hex=code.hex())


def render_conflist(
    network: str = DEFAULT_NETWORK,
    cni_version: str = DEFAULT_CNI_VERSION,
    agent_socket: str = shim.DEFAULT_AGENT_SOCKET,
    chain: tuple[str, ...] = (),
    sysctls: dict[str, str] | None = None,
) -> dict:
    plugins = [{"type": PLUGIN_NAME, "agentSocket": agent_socket}]
    for name in chain:
        conf = json.loads(json.dumps(CHAINABLE[name]))
        if name == "tuning" and sysctls:
            conf["sysctl"] = dict(sysctls)
        plugins.append(conf)
    return {"cniVersion": cni_version, "name": network, "plugins": plugins}


@dataclass(frozen=True)
class Options:
    bin_dir: str = DEFAULT_BIN_DIR
    conf_dir: str = DEFAULT_CONF_DIR
    conf_name: str = DEFAULT_CONF_NAME
    state_dir: str = DEFAULT_STATE_DIR
    network: str = DEFAULT_NETWORK
    cni_version: str = DEFAULT_CNI_VERSION
    agent_socket: str = shim.DEFAULT_AGENT_SOCKET
    chain: tuple[str, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    interpreter: str | None = None
    invocation_log: str = ""
    plugin_dirs: tuple[str, ...] = REFERENCE_PLUGIN_DIRS

    def validate(self) -> None:
        if self.cni_version not in shim.SUPPORTED_VERSIONS:
            raise InstallError(f"cniVersion {self.cni_version} is not one of {', '.join(shim.SUPPORTED_VERSIONS)}")
        if not shim.valid_name(self.network):
            raise InstallError(
                f"network name {self.network!r}: a letter or digit first, then letters, digits, '_', '.' or '-'"
            )
        for path, what in (
            (self.agent_socket, "--agent-socket"),
            (self.bin_dir, "--bin-dir"),
            (self.conf_dir, "--conf-dir"),
            (self.state_dir, "--state-dir"),
        ):
            if not os.path.isabs(path):
                raise InstallError(f"{what} must be an absolute path, got {path!r}")
        if "/" in self.conf_name or not self.conf_name.endswith((".conflist", ".conf", ".json")):
            raise InstallError(f"--conf-name {self.conf_name!r}: a file name ending in .conflist")
        unknown = [c for c in self.chain if c not in CHAINABLE]
        if unknown:
            raise InstallError(f"cannot chain {', '.join(unknown)}: one of {', '.join(CHAINABLE)}")
        if self.sysctls and "tuning" not in self.chain:
            raise InstallError("--sysctl needs the tuning plugin in the chain (--chain tuning)")


@dataclass(frozen=True)
class Planned:
    """One file to write. ``action``: create, update (ours, changed options), unchanged,
    foreign (someone else's: refused), or replace (someone else's, with --force)."""

    path: str
    content: bytes
    mode: int
    action: str


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def desired_files(opts: Options) -> list[tuple[str, bytes, int]]:
    files = []
    for name, mode in ((PLUGIN_NAME, "main"), (IPAM_PLUGIN_NAME, "ipam")):
        path = os.path.join(opts.bin_dir, name)
        text = render_plugin(opts.interpreter, mode, opts.agent_socket, opts.invocation_log, filename=path)
        files.append((path, text.encode(), 0o755))
    conf = render_conflist(opts.network, opts.cni_version, opts.agent_socket, opts.chain, dict(opts.sysctls))
    files.append((os.path.join(opts.conf_dir, opts.conf_name), (json.dumps(conf, indent=2) + "\n").encode(), 0o644))
    return files


def classify(path: str, content: bytes, manifest: dict, force: bool) -> str:
    current = _read(path)
    if current is None:
        return "create"
    if current == content:
        return "unchanged"
    recorded = manifest.get("files", {}).get(path)
    if recorded and recorded["sha256"] == sha256(current):
        return "update"
    return "replace" if force else "foreign"


def plan_install(opts: Options, manifest: dict, force: bool = False) -> list[Planned]:
    opts.validate()
    return [
        Planned(path, content, mode, classify(path, content, manifest, force))
        for path, content, mode in desired_files(opts)
    ]


# -- checks that look around ------------------------------------------------------------------------


def find_plugin(name: str, dirs: tuple[str, ...]) -> str | None:
    for d in dirs:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def plugin_versions(path: str) -> list[str]:
    """Ask a plugin which cniVersions it speaks (the VERSION verb, as libcni does)."""
    p = subprocess.run(
        [path], input=b'{"cniVersion": "0.4.0"}', env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=10
    )
    try:
        return list(json.loads(p.stdout).get("supportedVersions", []))
    except (ValueError, AttributeError):
        return []


def chain_problems(opts: Options) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the chained plugins: missing, or not speaking our cniVersion."""
    errors, warnings = [], []
    for name in opts.chain:
        path = find_plugin(name, (opts.bin_dir,) + tuple(opts.plugin_dirs))
        if path is None:
            warnings.append(
                f"chained plugin {name!r} is not in {opts.bin_dir} (or {', '.join(opts.plugin_dirs)}): "
                "install it before pods start"
            )
            continue
        versions = plugin_versions(path)
        if opts.cni_version not in versions:
            errors.append(
                f"{path} speaks cniVersion {', '.join(versions) or '?'}, not {opts.cni_version}: "
                "every plugin in a chain must accept the conflist's cniVersion"
            )
    return errors, warnings


def earlier_configs(opts: Options) -> list[str]:
    """Config files a one-config runtime would load instead of ours (lexically first)."""
    try:
        names = os.listdir(opts.conf_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith((".conf", ".conflist", ".json")) and n < opts.conf_name)


# -- the manifest ---------------------------------------------------------------------------------------


def manifest_path(state_dir: str) -> str:
    return os.path.join(state_dir, MANIFEST)


def load_manifest(state_dir: str) -> dict:
    raw = _read(manifest_path(state_dir))
    if raw is None:
        return {"files": {}}
    try:
        doc = json.loads(raw)
        if isinstance(doc.get("files"), dict):
            return doc
    except (ValueError, AttributeError):
        pass
    raise InstallError(f"{manifest_path(state_dir)} is not a minikubenet install manifest")


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)  # /opt/cni/bin and friends: 0755, not private
    private_files.write_atomic(path, data, mode)


def save_manifest(state_dir: str, manifest: dict) -> None:
    _write_atomic(manifest_path(state_dir), (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(), 0o600)


def _backup_path(state_dir: str, path: str) -> str:
    return os.path.join(state_dir, "backup", sha256(path.encode())[:16] + "-" + os.path.basename(path))


# -- install and uninstall ---------------------------------------------------------------------------


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ok: bool = True


def install(opts: Options, force: bool = False, dry_run: bool = False) -> Report:
    manifest = load_manifest(opts.state_dir)
    plan = plan_install(opts, manifest, force)
    errors, warnings = chain_problems(opts)
    report = Report(warnings=warnings)
    foreign = [p.path for p in plan if p.action == "foreign"]
    if foreign:
        errors.append(
            "not ours, left alone (pass --force to replace; the original is kept for uninstall): " + ", ".join(foreign)
        )
    if errors and not force:
        raise InstallError("; ".join(errors))
    report.warnings += [
        f"{name} in {opts.conf_dir} sorts before {opts.conf_name}: runtimes that load only "
        "the first config (containerd, ctr) will use it, not minikubenet"
        for name in earlier_configs(opts)
    ]
    for p in plan:
        report.lines.append(f"{p.action:<9} {p.path}")
        if dry_run or p.action == "unchanged":
            if not dry_run:
                _remember(manifest, p)
            continue
        if p.action == "replace":
            backup = _backup_path(opts.state_dir, p.path)
            _write_atomic(backup, _read(p.path) or b"", 0o600)
            entry = manifest["files"].setdefault(p.path, {})
            entry["backup"], entry["backup_mode"] = backup, os.stat(p.path).st_mode & 0o7777
        _write_atomic(p.path, p.content, p.mode)
        _remember(manifest, p)
    if not dry_run:
        manifest["options"] = {
            "bin_dir": opts.bin_dir,
            "conf_dir": opts.conf_dir,
            "network": opts.network,
            "cni_version": opts.cni_version,
            "chain": list(opts.chain),
            "agent_socket": opts.agent_socket,
        }
        save_manifest(opts.state_dir, manifest)
    return report


def _remember(manifest: dict, p: Planned) -> None:
    entry = manifest["files"].setdefault(p.path, {})
    entry["sha256"] = sha256(p.content)


def uninstall(state_dir: str = DEFAULT_STATE_DIR, force: bool = False, dry_run: bool = False) -> Report:
    manifest = load_manifest(state_dir)
    report = Report()
    if not manifest["files"]:
        report.lines.append(f"nothing recorded in {manifest_path(state_dir)}: nothing to remove")
        return report
    kept = {}
    for path, entry in sorted(manifest["files"].items()):
        current = _read(path)
        if current is not None and sha256(current) != entry["sha256"] and not force:
            report.lines.append(f"kept      {path} (changed since install; --force removes it)")
            kept[path] = entry
            report.ok = False
            continue
        backup = entry.get("backup")
        saved = _read(backup) if backup else None
        if backup and saved is not None:
            report.lines.append(f"restored  {path} (the file install --force replaced)")
            if not dry_run:
                _write_atomic(path, saved, entry.get("backup_mode", 0o644))
                os.unlink(backup)
        elif current is None:
            report.lines.append(f"gone      {path} (already removed)")
        else:
            report.lines.append(f"removed   {path}")
            if not dry_run:
                os.unlink(path)
    if dry_run:
        return report
    if kept:
        save_manifest(state_dir, {"files": kept})
    else:
        os.unlink(manifest_path(state_dir))
        for d in (os.path.join(state_dir, "backup"), state_dir):
            try:
                os.rmdir(d)
            except OSError:
                pass
    return report


def install_plugin_binary(bin_dir: str, name: str = PLUGIN_NAME, mode: str = "main") -> str:
    """Write one plugin into ``bin_dir`` atomically, unrecorded (the lab's own scratch
    bin dir); returns its path."""
    path = os.path.join(bin_dir, name)
    _write_atomic(path, render_plugin(mode=mode, filename=path).encode(), 0o755)
    return path
