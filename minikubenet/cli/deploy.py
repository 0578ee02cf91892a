"""``minikubenet deploy check|secret``: the DaemonSet deployment of deploy/ (README
"Deploying as a DaemonSet").

    minikubenet deploy check deploy/minikubenet.yaml [--image NAME] [--kubernetes-version 1.30.0]
    minikubenet deploy secret --pki DIR > secret.yaml     # the etcd client certificates as the Secret
    minikubenet deploy podman FILE [--dry-run] [--down]   # its containers with podman, without Kubernetes

``check`` validates offline (deploy_check.py): the Kubernetes schemas, then the
references between the documents, the image name and the Secret's contents; it prints
one line per finding and exits 1 when there is any.
"""

from __future__ import annotations

import json
import os

from minikubenet.cli.common import CliError


def cmd_deploy_check(args) -> int:
    from minikubenet import deploy_check

    try:
        with open(args.file) as f:
            text = f.read()
    except OSError as e:
        raise CliError(f"cannot read {args.file}: {e.strerror}") from None
    try:
        findings = deploy_check.check(text, args.file, image=args.image, version=args.kubernetes_version)
    except deploy_check.ManifestError as e:
        raise CliError(str(e)) from None
    for finding in findings:
        print(f"{args.file}: {finding}")
    if findings:
        raise CliError(f"{args.file}: {len(findings)} problem{'s' if len(findings) != 1 else ''} (above)")
    print(f"{args.file}: ok (Kubernetes {args.kubernetes_version} schemas, references, image {args.image})")
    return 0


def cmd_deploy_secret(args) -> int:
    from minikubenet import deploy_check

    files = {}
    for key in deploy_check.SECRET_KEYS:
        path = os.path.join(args.pki, key)
        try:
            with open(path, "rb") as f:
                files[key] = f.read()
        except OSError as e:
            raise CliError(
                f"cannot read {path}: {e.strerror} (python -m minikubenet.etcd_tls {args.pki} "
                "--member ETCD_IP makes every file)"
            ) from None
    # JSON is YAML: kubectl apply -f takes it as it is
    print(json.dumps(deploy_check.secret_manifest(files, namespace=args.namespace), indent=2))
    return 0


def register(sub) -> None:
    from minikubenet.deploy_check import IMAGE, KUBERNETES_VERSION

    p = sub.add_parser("deploy", help="the DaemonSet deployment (deploy/minikubenet.yaml)")
    dsub = p.add_subparsers(dest="deploy_cmd", required=True)
    c = dsub.add_parser("check", help="validate the manifests offline: schemas, references, image, Secret")
    c.add_argument("file")
    c.add_argument("--image", default=IMAGE, help=f"the image every container must use (default {IMAGE})")
    c.add_argument(
        "--kubernetes-version",
        default=KUBERNETES_VERSION,
        help=f"schemas of this release (default {KUBERNETES_VERSION})",
    )
    c.set_defaults(func=cmd_deploy_check)
    s = dsub.add_parser("secret", help="print the etcd client certificates of a PKI directory as the Secret")
    s.add_argument("--pki", required=True, help="a directory with ca.crt, agent.crt/.key, proxy.crt/.key")
    s.add_argument("--namespace", default="minikubenet-system")
    s.set_defaults(func=cmd_deploy_secret)
    register_podman(dsub)


def cmd_deploy_podman(args) -> int:
    import shlex
    import subprocess

    from minikubenet import deploy_check, deploy_podman

    try:
        with open(args.file) as f:
            docs = deploy_check.load(f.read(), args.file)
        plan = deploy_podman.plan(docs, args.node_name, args.secret_root, args.prefix, args.network, args.host_root)
    except OSError as e:
        raise CliError(f"cannot read {args.file}: {e.strerror}") from None
    except (deploy_check.ManifestError, deploy_podman.PodmanPlanError) as e:
        raise CliError(f"{args.file}: {e}") from None
    podman = shlex.split(args.podman)
    extra = [x for opt in args.run_opt for x in shlex.split(opt)]
    names = [f"{args.prefix}-{r.name}" for r in plan.runs]
    if args.down:
        for name in reversed(names):
            subprocess.run([*podman, "rm", "-f", "-t", "5", name], capture_output=True)
            print(f"removed {name}")
        return 0
    runs = [(r, [*podman, r.argv[0], *extra, *r.argv[1:]]) for r in plan.runs]
    if args.dry_run:
        for d in plan.directories:
            print(f"mkdir -p {d}")
        for path in plan.files:
            print(f"touch {path}")
        for path, (_, mode) in plan.secret_files.items():
            print(f"write {path} (mode {mode:o})")
        for _, argv in runs:
            print(shlex.join(argv))
        return 0
    for d in plan.directories:
        os.makedirs(d, exist_ok=True)
    for path in plan.files:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "a").close()
    for path, (content, mode) in plan.secret_files.items():
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(path, mode)
    for run, argv in runs:
        name = f"{args.prefix}-{run.name}"
        subprocess.run([*podman, "rm", "-f", "-t", "5", name], capture_output=True)  # a rerun replaces
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        except FileNotFoundError:
            raise CliError(f"`{podman[0]}` is not installed") from None
        if p.returncode != 0:
            raise CliError(
                f"{'init container' if run.init else 'container'} {run.name} failed "
                f"({p.returncode}): {(p.stdout + p.stderr).strip()[-1500:]}"
            )
        print(f"{'ran' if run.init else 'started'} {name}")
    return 0


def register_podman(dsub) -> None:
    p = dsub.add_parser("podman", help="run the DaemonSet's containers with podman on this node, from the same spec")
    p.add_argument("file")
    p.add_argument("--node-name", default=os.uname().nodename, help="what spec.nodeName gives (default: hostname)")
    p.add_argument(
        "--secret-root",
        default="/run/minikubenet-secrets",
        help="Secrets are written below this directory (0700), one directory per Secret",
    )
    p.add_argument("--prefix", default="minikubenet", help="container names: PREFIX-<container>")
    p.add_argument("--network", default="host", help="host (what hostNetwork means), or ns:/run/netns/NAME")
    p.add_argument("--host-root", default="", help="take every hostPath below this directory (tests, labs)")
    p.add_argument("--podman", default="podman", help="the podman command, with global options")
    p.add_argument(
        "--run-opt",
        action="append",
        default=[],
        help="extra `podman run` options this host needs (e.g. --ulimit ...); repeatable",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be run")
    p.add_argument("--down", action="store_true", help="remove the containers instead")
    p.set_defaults(func=cmd_deploy_podman)
