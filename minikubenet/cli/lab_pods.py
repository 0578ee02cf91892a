"""``minikubenet lab pod ...`` and ``minikubenet lab probe``: pods with a namespace, labels
and named ports in a running lab, and the reachability matrix between them (the view
of the upstream network-policy e2e tests).

    minikubenet lab pod add a --namespace x --node n1 --labels pod=a --ports 80/TCP,81/TCP,80/UDP,81/UDP
    minikubenet lab pod delete x/a
    minikubenet lab pod list
    minikubenet lab exec x/a -- ip addr
    minikubenet lab probe [--ports 80/TCP,81/TCP] [--namespaces x,y,z]

(lab/pods.py makes the pods, lab/reachability.py probes and prints.)
"""

from __future__ import annotations

import os

from minikubenet.cli.common import NAME_HELP, CliError


def _lab(name):
    from minikubenet.lab.cluster import LAB_ROOT, Lab, LabError

    try:
        # MINIKUBENET_LAB_ROOT: the tests' labs live in a temporary directory
        return Lab.existing(name, root=os.environ.get("MINIKUBENET_LAB_ROOT", LAB_ROOT))
    except LabError as e:
        raise CliError(str(e)) from None


def cmd_pod_add(args) -> int:
    from minikubenet.lab import pods
    from minikubenet.lab.cluster import LabError

    try:
        ports = pods.parse_ports(args.ports)
        labels = pods.parse_labels(args.labels or "")
        pod = pods.add_pod(_lab(args.name), args.namespace, args.pod, args.node, labels, ports)
    except (pods.PodSpecError, LabError) as e:
        raise CliError(str(e)) from None
    served = ", ".join(f"{p.name}={p.spec}" for p in pod.ports)
    print(f"pod/{pod.name} created in {pod.namespace} on {pod.node}: IP {pod.ip}, serving {served}")
    return 0


def cmd_pod_delete(args) -> int:
    from minikubenet.lab import pods

    try:
        pod = pods.delete_pod(_lab(args.name), args.pod)
    except pods.PodSpecError as e:
        raise CliError(str(e)) from None
    print(f"pod/{pod.name} deleted from {pod.namespace}")
    return 0


def cmd_pod_list(args) -> int:
    print_lab_pods(_lab(args.name))
    return 0


def print_lab_pods(lab) -> None:
    from minikubenet.lab import pods

    rows = [("NAMESPACE", "NAME", "NODE", "IP", "LABELS", "PORTS")]
    for p in sorted(pods.list_pods(lab), key=lambda p: p.key):
        rows.append(
            (
                p.namespace,
                p.name,
                p.node,
                p.ip or "-",
                ",".join(f"{k}={v}" for k, v in sorted(p.labels.items())) or "<none>",
                ",".join(f"{q.name}={q.spec}" for q in p.ports),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def cmd_probe(args) -> int:
    from minikubenet.lab import pods, reachability

    try:
        ports = reachability.parse_port_list(args.ports)
    except ValueError as e:
        raise CliError(str(e)) from None
    chosen = sorted(pods.list_pods(_lab(args.name)), key=lambda p: p.key)
    if args.namespaces:
        wanted = set(args.namespaces.split(","))
        chosen = [p for p in chosen if p.namespace in wanted]
    if not chosen:
        raise CliError("no pods to probe: make some with `lab pod add`")
    keys = [p.key for p in chosen]
    for number, proto in ports:
        observed = reachability.probe(chosen, number, proto, timeout=args.timeout)
        print(f"{number}/{proto}:")
        print(reachability.pretty(keys, reachability.marks(observed)))
        print()
    return 0


def register_lab(lab_sub) -> None:
    """Add ``pod`` and ``probe`` to ``minikubenet lab`` (cli/lab.py calls this)."""
    pod = lab_sub.add_parser("pod", help="pods with a namespace, labels and ports (for network policies)")
    pod_sub = pod.add_subparsers(dest="pod_cmd", required=True)
    add = pod_sub.add_parser("add", help="create a pod through the CNI plugin, serving every given port")
    add.add_argument("--name", default="mkn", help=NAME_HELP)
    add.add_argument("pod", help="the pod's name (a DNS-1123 label)")
    add.add_argument("--namespace", "-n", default="default", help="its Kubernetes namespace (default: default)")
    add.add_argument("--node", required=True, help="the node it runs on (n1, n2, ...)")
    add.add_argument("--labels", help="k=v[,k=v...]")
    add.add_argument(
        "--ports",
        default="80/TCP,81/TCP,80/UDP,81/UDP",
        help="[NAME=]PORT/PROTO,... (default 80/TCP,81/TCP,80/UDP,81/UDP; an unnamed port is "
        "named serve-<port>-<proto>)",
    )
    add.set_defaults(func=cmd_pod_add)
    delete = pod_sub.add_parser("delete", help="delete a pod made with `lab pod add`")
    delete.add_argument("--name", default="mkn", help=NAME_HELP)
    delete.add_argument("pod", help="NS/NAME")
    delete.set_defaults(func=cmd_pod_delete)
    listing = pod_sub.add_parser("list", help="the pods made with `lab pod add`")
    listing.add_argument("--name", default="mkn", help=NAME_HELP)
    listing.set_defaults(func=cmd_pod_list)

    probe = lab_sub.add_parser("probe", help="the reachability matrix between the `lab pod add` pods")
    probe.add_argument("--name", default="mkn", help=NAME_HELP)
    probe.add_argument("--ports", default="80/TCP,81/TCP", help="PORT/PROTO,... (default 80/TCP,81/TCP)")
    probe.add_argument("--namespaces", help="only pods of these namespaces (comma-separated)")
    probe.add_argument("--timeout", type=float, default=1.0, help="seconds per connection attempt (default 1)")
    probe.set_defaults(func=cmd_probe)
