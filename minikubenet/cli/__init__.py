"""``minikubenet``: the command line for operators and lab users.

    minikubenet network init --network 10.244.0.0/16 --subnet-len 24 --backend vxlan
    minikubenet network show
    minikubenet install | uninstall
    minikubenet svc create|delete|get|set-endpoints ...
    minikubenet get pods|endpoints|services
    minikubenet lab up [--nodes 3] [--pods-per-node 2] [--backend vxlan] [--check]
    minikubenet lab status | down | exec NODE_OR_POD -- CMD...
    minikubenet trace SRC DST[:PORT] | doctor [--node N]   (--lab NAME in a lab)
    minikubenet deploy check deploy/minikubenet.yaml | secret --pki DIR

One module per command group, each with a ``register(subparsers)`` that adds its
commands; ``common.py`` holds what they share (CliError, the etcd options). A new group
is one module and one line in ``COMMAND_GROUPS``.

Every failure a user can cause ends in one line on stderr and exit code 1 (2 for bad
usage), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from minikubenet.cli import apply, deploy, diagnose, install, lab, network, services
from minikubenet.cli.common import EXIT_ERROR, CliError

__all__ = ["CliError", "build_parser", "main"]

# In the order `minikubenet --help` lists them.
COMMAND_GROUPS = (network, lab, install, services, apply, diagnose, deploy)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minikubenet", description="A minimal, real, Kubernetes-style pod network.")
    sub = p.add_subparsers(dest="group", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from minikubenet.store.etcd import StoreError

    try:
        return args.func(args)
    except (CliError, StoreError) as e:
        print(f"minikubenet: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `... | head`: the reader went away; that is not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
