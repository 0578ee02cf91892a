"""``minikubenet deploy check|secret``: the DaemonSet deployment of deploy/ (README
"Deploying as a DaemonSet").

    minikubenet deploy check deploy/minikubenet.yaml [--image NAME] [--kubernetes-version 1.30.0]
    minikubenet deploy secret --pki DIR > secret.yaml     # the etcd client certificates as the Secret

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
    for f in findings:
        print(f"{args.file}: {f}")
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
            raise CliError(f"cannot read {path}: {e.strerror} (python -m minikubenet.etcd_tls {args.pki} "
                           "--member ETCD_IP makes every file)") from None
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
    c.add_argument("--kubernetes-version", default=KUBERNETES_VERSION,
                   help=f"schemas of this release (default {KUBERNETES_VERSION})")
    c.set_defaults(func=cmd_deploy_check)
    s = dsub.add_parser("secret", help="print the etcd client certificates of a PKI directory as the Secret")
    s.add_argument("--pki", required=True, help="a directory with ca.crt, agent.crt/.key, proxy.crt/.key")
    s.add_argument("--namespace", default="minikubenet-system")
    s.set_defaults(func=cmd_deploy_secret)
