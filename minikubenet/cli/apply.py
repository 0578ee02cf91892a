"""``minikubenet apply -f`` and ``minikubenet delete -f``: standard Kubernetes manifests
(Namespace, Service, NetworkPolicy) into and out of etcd, as ``kubectl`` does it.

    minikubenet apply -f policies.yaml [-n NS]      YAML or JSON, several documents; '-': stdin
    minikubenet delete -f policies.yaml [-n NS]

``-n`` is the namespace of documents that name none (kubectl's context namespace). A bad
document anywhere in the file: every problem with its field path, exit code 1, nothing
stored (manifests.py). ``minikubenet get netpol|ns`` (cli/services.py) lists them.
"""

from __future__ import annotations

import os
import sys

from minikubenet.cli.common import CliError, etcd_options, open_store


def _stores(args):
    from minikubenet.store.policy_objects import PolicyObjectStore
    from minikubenet.store.services import ServiceStore

    etcd = open_store(args)
    try:
        return PolicyObjectStore(etcd), ServiceStore(etcd, args.service_cidr)
    except ValueError as e:
        raise CliError(f"--service-cidr: {e}") from None


def _read(args, full: bool):
    from minikubenet import manifests

    try:
        docs = manifests.load_documents(manifests.read_file(args.file), args.file)
        if not docs:
            raise CliError(f"no objects passed to {'apply' if full else 'delete'} ({args.file} is empty)")
        return manifests.parse_manifests(docs, args.namespace, full=full)
    except manifests.ManifestError as e:
        raise CliError(f"refused, nothing stored:\n{e}") from None


def cmd_apply(args) -> int:
    from minikubenet import manifests

    found = _read(args, full=True)
    try:
        lines = manifests.apply(found, *_stores(args))
    except manifests.ManifestError as e:
        raise CliError(f"refused, nothing stored:\n{e}") from None
    for line in lines:
        print(line)
    return 0


def cmd_delete(args) -> int:
    from minikubenet import manifests

    found = _read(args, full=False)
    try:
        deleted, missing = manifests.delete(found, *_stores(args))
    except manifests.ManifestError as e:
        raise CliError(str(e)) from None
    for line in deleted:
        print(line)
    for line in missing:
        print(f"Error from server (NotFound): {line}", file=sys.stderr)
    return 1 if missing else 0


def register(sub) -> None:
    from minikubenet.store.services import DEFAULT_SERVICE_CIDR

    for name, func, text in (
        ("apply", cmd_apply, "create or update the objects of Kubernetes manifests"),
        ("delete", cmd_delete, "delete the objects Kubernetes manifests name"),
    ):
        p = sub.add_parser(name, help=f"{text} (Namespace, Service, NetworkPolicy)")
        etcd_options(p)
        p.add_argument(
            "-f",
            "--filename",
            dest="file",
            required=True,
            help="a YAML or JSON file with one or more documents ('-': stdin)",
        )
        p.add_argument(
            "-n", "--namespace", default="default", help="the namespace of documents that name none (default: default)"
        )
        p.add_argument(
            "--service-cidr",
            default=os.environ.get("MINIKUBENET_SERVICE_CIDR", DEFAULT_SERVICE_CIDR),
            help="the service network ClusterIPs are allocated from",
        )
        p.set_defaults(func=func)
