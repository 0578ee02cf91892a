"""``minikubenet install|uninstall``: the command line of minikubenet/cni/install.py,
which puts the CNI plugins and a conflist where runtimes look and takes them out again.

    minikubenet install [--bin-dir /opt/cni/bin] [--conf-dir /etc/cni/net.d]
                        [--cni-version 1.0.0] [--chain portmap,bandwidth,tuning] [--force]
    minikubenet uninstall
"""

from __future__ import annotations

import sys

from minikubenet.cli.common import CliError
from minikubenet.cni import install as install_lib
from minikubenet.cni import shim
from minikubenet.cni.install import (
    CHAINABLE,
    DEFAULT_BIN_DIR,
    DEFAULT_CNI_VERSION,
    DEFAULT_CONF_DIR,
    DEFAULT_CONF_NAME,
    DEFAULT_NETWORK,
    DEFAULT_STATE_DIR,
    REFERENCE_PLUGIN_DIRS,
    InstallError,
    Options,
    Report,
    install,
    uninstall,
)


def _chain_list(values: list[str] | None) -> tuple[str, ...]:
    out = []
    for v in values or []:
        out += [c.strip() for c in v.split(",") if c.strip()]
    return tuple(dict.fromkeys(out))


def _sysctl_pairs(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    pairs = []
    for v in values or []:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise InstallError(f"--sysctl {v!r}: expected KEY=VALUE, e.g. net.core.somaxconn=1024")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def options_from_args(args) -> Options:
    return Options(
        bin_dir=args.bin_dir,
        conf_dir=args.conf_dir,
        conf_name=args.conf_name,
        state_dir=args.state_dir,
        network=args.network,
        cni_version=args.cni_version,
        agent_socket=args.agent_socket,
        chain=_chain_list(args.chain),
        sysctls=_sysctl_pairs(args.sysctl),
        interpreter=args.python,
        invocation_log=args.log_invocations or "",
        plugin_dirs=tuple(args.plugin_dir or REFERENCE_PLUGIN_DIRS),
    )


def _print_report(report: Report) -> None:
    for line in report.lines:
        print(line)
    for w in report.warnings:
        print(f"minikubenet: warning: {w}", file=sys.stderr)


def cmd_install(args) -> int:
    try:
        report = install(options_from_args(args), force=args.force, dry_run=args.dry_run)
    except (InstallError, OSError) as e:
        raise CliError(f"install: {e}") from None
    _print_report(report)
    return 0


def cmd_uninstall(args) -> int:
    try:
        report = uninstall(args.state_dir, force=args.force, dry_run=args.dry_run)
    except (InstallError, OSError) as e:
        raise CliError(f"uninstall: {e}") from None
    _print_report(report)
    return 0 if report.ok else 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "install",
        help="put the CNI plugins and a conflist where runtimes look",
        description=install_lib.__doc__.split("\n\n")[0],
    )
    p.add_argument("--bin-dir", default=DEFAULT_BIN_DIR, help=f"CNI bin dir (default {DEFAULT_BIN_DIR})")
    p.add_argument("--conf-dir", default=DEFAULT_CONF_DIR, help=f"CNI conf dir (default {DEFAULT_CONF_DIR})")
    p.add_argument("--conf-name", default=DEFAULT_CONF_NAME, help=f"(default {DEFAULT_CONF_NAME})")
    p.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"where the record of installed files lives (default {DEFAULT_STATE_DIR})",
    )
    p.add_argument("--network", default=DEFAULT_NETWORK, help="the conflist's network name")
    p.add_argument("--cni-version", default=DEFAULT_CNI_VERSION, choices=shim.SUPPORTED_VERSIONS)
    p.add_argument(
        "--agent-socket",
        default=shim.DEFAULT_AGENT_SOCKET,
        help="the node agent's socket, written into the conflist and the binaries",
    )
    p.add_argument(
        "--chain",
        action="append",
        metavar="PLUGIN[,PLUGIN]",
        help=f"reference plugins to run after ours, in order: {', '.join(CHAINABLE)}",
    )
    p.add_argument("--sysctl", action="append", metavar="KEY=VALUE", help="for the tuning plugin")
    p.add_argument(
        "--python",
        help="interpreter for the #! line (default: /usr/bin/python3 if it is 3.9+, else the real one behind this venv)",
    )
    p.add_argument(
        "--plugin-dir", action="append", help="where else to look for chained plugins (default /usr/lib/cni)"
    )
    p.add_argument(
        "--log-invocations",
        metavar="FILE",
        help="debug aid: the plugins append one JSON line per call (what the runtime sent)",
    )
    p.add_argument("--force", action="store_true", help="replace foreign files (kept for uninstall)")
    p.add_argument("--dry-run", action="store_true", help="print what would be done")
    p.set_defaults(func=cmd_install)

    u = subparsers.add_parser("uninstall", help="remove exactly what `install` wrote")
    u.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    u.add_argument("--force", action="store_true", help="also remove files changed since install")
    u.add_argument("--dry-run", action="store_true")
    u.set_defaults(func=cmd_uninstall)
