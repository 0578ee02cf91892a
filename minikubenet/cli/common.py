"""What every ``minikubenet`` command shares: the error a command raises for its user,
the etcd connection options (flannel's flag names) and opening the store from them.

A command raises ``CliError`` for anything the user can fix; ``minikubenet.cli.main``
prints it as one line on stderr with exit code 1 (argparse's usage errors are 2).
Nothing here imports a command module, so every command module can import this one.
"""

from __future__ import annotations

import os
import sys

EXIT_ERROR = 1

NAME_HELP = (
    "the lab's name, the prefix of every namespace it creates: 1-8 lowercase letters "
    "or digits, starting with a letter (default mkn)"
)


class CliError(Exception):
    """A failure the user caused and can fix; printed as one line, exit code 1."""


def etcd_options(p) -> None:
    """--etcd-endpoints/--etcd-prefix/--project-prefix and the TLS files, on one subcommand."""
    p.add_argument(
        "--etcd-endpoints",
        default=os.environ.get("MINIKUBENET_ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
        help="comma-separated etcd URLs (default $MINIKUBENET_ETCD_ENDPOINTS or http://127.0.0.1:2379); "
        "with TLS also --etcd-cafile, --etcd-certfile, --etcd-keyfile",
    )
    p.add_argument("--etcd-prefix", default="/coreos.com/network")
    p.add_argument("--project-prefix", default="/minikubenet")
    from minikubenet.store.etcd import add_etcd_tls_options

    add_etcd_tls_options(p)


def open_store(args):
    """The etcd store the options on ``args`` describe (see ``etcd_options``)."""
    from minikubenet.store.etcd import EtcdStore, TLSFiles
    from minikubenet.store.keys import KeyLayout

    try:
        return EtcdStore(
            args.etcd_endpoints.split(","),
            layout=KeyLayout(args.etcd_prefix, args.project_prefix),
            tls=TLSFiles.from_args(args),
        )
    except (ValueError, OSError) as e:
        raise CliError(f"bad etcd settings: {e}") from None


def prog() -> str:
    """How the user ran us, for hints they can paste (.venv/bin/minikubenet or python -m)."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "minikubenet":
        return os.path.relpath(argv0) if not argv0.startswith("/usr/") else "minikubenet"
    return f"{os.path.relpath(sys.executable)} -m minikubenet"
