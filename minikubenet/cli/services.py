"""``minikubenet svc`` and ``minikubenet get``: Services, Endpoints and Pods from the
command line.

    minikubenet svc create web --selector app=web --port http=80:8080 [--type NodePort]
                               [--port dns=53/udp] [--port http=80:8080@30080]
                               [--cluster-ip 10.96.0.10] [--session-affinity ClientIP]
    minikubenet svc create -f web.json           a k8s-shaped Service document
    minikubenet svc delete web
    minikubenet svc get [web] [-o json]
    minikubenet svc set-endpoints -f eps.json    for a service without a selector
    minikubenet get pods | endpoints | services [-n NS] [-o json]

``--port [NAME=]PORT[:TARGET][/PROTO][@NODEPORT]``: PORT on the ClusterIP, TARGET on the
pod (a number or a named container port; default PORT), PROTO tcp or udp, NODEPORT for
type NodePort (allocated when left out). A bad spec, a ClusterIP outside the service
network or already taken: one message listing every problem, exit code 1, nothing stored.
"""

from __future__ import annotations

import json
import os
import re
import sys

from minikubenet.cli.common import CliError, etcd_options, open_store
from minikubenet.k8s_objects import ValidationError, endpoints_from_k8s
from minikubenet.store.services import DEFAULT_SERVICE_CIDR, NotFound, ServiceConflict, ServiceStore

_PORT_SPEC = re.compile(
    r"^(?:(?P<name>[^=]+)=)?(?P<port>[^:/@]+)(?::(?P<target>[^/@]+))?"
    r"(?:/(?P<proto>[A-Za-z]+))?(?:@(?P<node_port>\d+))?$"
)


def parse_port_spec(spec: str) -> dict:
    """ "http=80:8080/tcp@30080" -> a k8s ServicePort; the values are checked later,
    together with everything else, by the Service validation."""
    m = _PORT_SPEC.match(spec)
    if not m:
        raise CliError(f"--port {spec!r}: expected [NAME=]PORT[:TARGET][/PROTO][@NODEPORT]")
    port: dict = {"port": _int_or_str(m["port"]), "protocol": (m["proto"] or "tcp").upper()}
    if m["name"]:
        port["name"] = m["name"]
    if m["target"]:
        port["targetPort"] = _int_or_str(m["target"])
    if m["node_port"]:
        port["nodePort"] = int(m["node_port"])
    return port


def _int_or_str(v: str):
    return int(v) if v.isdigit() else v


def parse_selector(text: str) -> dict:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, eq, v = part.partition("=")
        if not eq:
            raise CliError(f"--selector {text!r}: expected key=value[,key=value]")
        out[k] = v
    return out


def service_doc_from_args(args) -> dict:
    if args.file:
        doc = _read_json(args.file)
        if args.name or args.port or args.selector:
            raise CliError("give either -f FILE or NAME with --port/--selector, not both")
        if isinstance(doc, dict):
            doc.setdefault("metadata", {}).setdefault("namespace", args.namespace)
        return doc
    if not args.name:
        raise CliError("give a service NAME (or -f FILE)")
    if not args.port:
        raise CliError("give at least one --port")
    spec: dict = {
        "type": args.type,
        "ports": [parse_port_spec(p) for p in args.port],
        "selector": parse_selector(args.selector or ""),
        "sessionAffinity": args.session_affinity,
    }
    if args.cluster_ip:
        spec["clusterIP"] = args.cluster_ip
    if args.session_affinity == "ClientIP" and args.affinity_timeout:
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": args.affinity_timeout}}
    spec.update(_external_spec(args))
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": args.namespace, "name": args.name},
        "spec": spec,
    }


def _external_spec(args) -> dict:
    """The LoadBalancer / traffic-policy flags as Service spec fields; checked, like the
    rest, by the Service validation (k8s_objects.service_from_k8s)."""
    spec: dict = {}
    if args.external_ip:
        spec["externalIPs"] = [ip for arg in args.external_ip for ip in arg.split(",") if ip]
    if args.external_traffic_policy:
        spec["externalTrafficPolicy"] = args.external_traffic_policy
    if args.internal_traffic_policy:
        spec["internalTrafficPolicy"] = args.internal_traffic_policy
    if args.load_balancer_source_range:
        spec["loadBalancerSourceRanges"] = [r for arg in args.load_balancer_source_range for r in arg.split(",") if r]
    if args.health_check_node_port:
        spec["healthCheckNodePort"] = args.health_check_node_port
    if args.no_allocate_load_balancer_node_ports:
        spec["allocateLoadBalancerNodePorts"] = False
    return spec


def _external_ips(doc: dict) -> str:
    """kubectl's EXTERNAL-IP column: ingress IPs and externalIPs; <pending> for a
    LoadBalancer still waiting for an address."""
    spec, status = doc.get("spec") or {}, doc.get("status") or {}
    ips = [i.get("ip") for i in (status.get("loadBalancer") or {}).get("ingress") or [] if isinstance(i, dict)]
    ips += spec.get("externalIPs") or []
    if ips:
        return ",".join(str(ip) for ip in ips if ip)
    return "<pending>" if spec.get("type") == "LoadBalancer" else "<none>"


def _read_json(path: str):
    try:
        with sys.stdin if path == "-" else open(path) as f:
            return json.load(f)
    except OSError as e:
        raise CliError(f"cannot read {path}: {e}") from None
    except ValueError as e:
        raise CliError(f"{path} is not valid JSON: {e}") from None


def _services(args) -> ServiceStore:
    try:
        return ServiceStore(open_store(args), args.service_cidr)
    except ValueError as e:
        raise CliError(f"--service-cidr: {e}") from None


def _refusal(e: Exception) -> CliError:
    return CliError(f"refused, nothing stored: {e}")


# --------------------------------------------------------------------------- svc


def cmd_svc_create(args) -> int:
    doc = service_doc_from_args(args)
    try:
        svc = _services(args).create_service(doc)
    except (ValidationError, ServiceConflict) as e:
        raise _refusal(e) from None
    ports = ", ".join(
        f"{p.port}/{p.protocol}" + (f" (nodePort {p.node_port})" if p.node_port else "") for p in svc.ports
    )
    print(f"service/{svc.name} created in {svc.namespace}: clusterIP {svc.cluster_ip}, {ports}")
    return 0


def cmd_svc_delete(args) -> int:
    try:
        svc = _services(args).delete_service(args.namespace, args.name)
    except (NotFound, ServiceConflict) as e:
        raise CliError(str(e)) from None
    print(f"service/{svc.name} deleted from {svc.namespace} (clusterIP {svc.cluster_ip} released)")
    return 0


def cmd_svc_set_endpoints(args) -> int:
    doc = _read_json(args.file)
    if isinstance(doc, dict):
        doc.setdefault("metadata", {}).setdefault("namespace", args.namespace)
    try:
        _services(args).put_endpoints(doc)
    except ValidationError as e:
        raise _refusal(e) from None
    print(f"endpoints/{doc['metadata'].get('name')} stored")
    return 0


def cmd_svc_get(args) -> int:
    store = _services(args)
    docs = store.list_services()
    if args.name:
        key = f"{args.namespace}/{args.name}"
        if key not in docs:
            raise CliError(f"service {key} not found")
        docs = {key: docs[key]}
    elif not args.all_namespaces:
        docs = {k: d for k, d in docs.items() if k.startswith(args.namespace + "/")}
    if args.output == "json":
        print(json.dumps(list(docs.values()), indent=2))
        return 0
    rows = [("NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "SELECTOR", "AFFINITY")]
    for key, doc in sorted(docs.items()):
        spec = doc.get("spec", {})
        ports = ",".join(
            f"{p['port']}" + (f":{p['nodePort']}" if p.get("nodePort") else "") + f"/{p.get('protocol', 'TCP')}"
            for p in spec.get("ports", [])
        )
        sel = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items())) or "<none>"
        rows.append(
            (
                *key.split("/", 1),
                spec.get("type", ""),
                spec.get("clusterIP", ""),
                _external_ips(doc),
                ports,
                sel,
                spec.get("sessionAffinity", "None"),
            )
        )
    _table(rows)
    return 0


# --------------------------------------------------------------------------- get

_POLICY_KINDS = {
    "netpol": "networkpolicies",
    "networkpolicy": "networkpolicies",
    "networkpolicies": "networkpolicies",
    "ns": "namespaces",
    "namespace": "namespaces",
    "namespaces": "namespaces",
}


def cmd_get(args) -> int:
    if args.kind in _POLICY_KINDS:
        return cmd_get_policy_objects(args, _POLICY_KINDS[args.kind])
    store = _services(args)
    kind = {
        "pods": "pods",
        "pod": "pods",
        "po": "pods",
        "endpoints": "endpoints",
        "ep": "endpoints",
        "services": "services",
        "service": "services",
        "svc": "services",
    }[args.kind]
    if kind == "services":
        args.name = None
        return cmd_svc_get(args)
    docs = store.list_pods() if kind == "pods" else store.list_endpoints()
    if not args.all_namespaces:
        docs = {k: d for k, d in docs.items() if k.startswith(args.namespace + "/")}
    if args.output == "json":
        print(json.dumps(list(docs.values()), indent=2))
        return 0
    if kind == "pods":
        rows: list[tuple[str, ...]] = [("NAMESPACE", "NAME", "READY", "IP", "NODE", "LABELS")]
        for key, doc in sorted(docs.items()):
            status = doc.get("status") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
            labels = ",".join(f"{k}={v}" for k, v in sorted(((doc.get("metadata") or {}).get("labels") or {}).items()))
            rows.append(
                (
                    *key.split("/", 1),
                    "1/1" if ready else "0/1",
                    status.get("podIP", "<none>"),
                    (doc.get("spec") or {}).get("nodeName", ""),
                    labels or "<none>",
                )
            )
    else:
        rows = [("NAMESPACE", "NAME", "ENDPOINTS", "NOT READY")]
        for key, doc in sorted(docs.items()):
            try:
                eps = endpoints_from_k8s(doc)
            except ValidationError as e:
                rows.append((*key.split("/", 1), f"<invalid: {e.errors[0]}>", ""))
                continue
            ready_ips = sorted({str(e) for es in eps.values() for e in es if e.ready})
            not_ready = sorted({str(e) for es in eps.values() for e in es if not e.ready})
            rows.append((*key.split("/", 1), _some(ready_ips), _some(not_ready)))
    _table(rows)
    return 0


def cmd_get_policy_objects(args, kind: str) -> int:
    """``get netpol`` and ``get ns``, as kubectl prints them (no AGE: we keep no timestamps)."""
    from minikubenet.store.policy_objects import PolicyObjectStore

    store = PolicyObjectStore(open_store(args))
    if kind == "namespaces":
        docs = store.list_namespaces()
        if args.output == "json":
            print(json.dumps(list(docs.values()), indent=2))
            return 0
        rows = [("NAME", "STATUS", "LABELS")]
        for name, doc in sorted(docs.items()):
            labels = (doc.get("metadata") or {}).get("labels") or {}
            rows.append((name, "Active", ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"))
        _table(rows)
        return 0
    docs = store.list_network_policies(None if args.all_namespaces else args.namespace)
    if args.output == "json":
        print(json.dumps(list(docs.values()), indent=2))
        return 0
    header = ("NAMESPACE", "NAME", "POD-SELECTOR") if args.all_namespaces else ("NAME", "POD-SELECTOR")
    table: list[tuple[str, ...]] = [header]
    for key, doc in sorted(docs.items()):
        selector = format_selector((doc.get("spec") or {}).get("podSelector"))
        table.append((*key.split("/", 1), selector) if args.all_namespaces else (key.split("/", 1)[1], selector))
    _table(table)
    return 0


def format_selector(selector) -> str:
    """apimachinery's FormatLabelSelector: "pod=a,ns in (x,y),!gone", "<none>" for empty."""
    if not selector:
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for req in selector.get("matchExpressions") or []:
        key, op, values = req.get("key"), req.get("operator"), ",".join(req.get("values") or [])
        parts.append(
            {
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
                "Exists": f"{key}",
                "DoesNotExist": f"!{key}",
            }.get(op, f"{key} {op} ({values})")
        )
    return ",".join(parts) or "<none>"


def _some(items: list[str], n: int = 3) -> str:
    """kubectl's "a,b,c + 2 more..." """
    if not items:
        return "<none>"
    more = f" + {len(items) - n} more..." if len(items) > n else ""
    return ",".join(items[:n]) + more


def _table(rows) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())


# --------------------------------------------------------------------------- parser


def _common(p) -> None:
    etcd_options(p)
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument(
        "--service-cidr",
        default=os.environ.get("MINIKUBENET_SERVICE_CIDR", DEFAULT_SERVICE_CIDR),
        help="the service network ClusterIPs are allocated from",
    )


def register(sub) -> None:
    svc = sub.add_parser("svc", help="services: create, delete, get").add_subparsers(dest="cmd", required=True)
    create = svc.add_parser("create", help="create a service (a ClusterIP is allocated)")
    _common(create)
    create.add_argument("name", nargs="?")
    create.add_argument("-f", "--file", help="a k8s-shaped Service JSON document ('-': stdin)")
    create.add_argument("--port", action="append", default=[], metavar="[NAME=]PORT[:TARGET][/PROTO][@NODEPORT]")
    create.add_argument("--selector", help="key=value[,key=value]: the pods behind the service")
    create.add_argument("--type", default="ClusterIP", help="ClusterIP, NodePort or LoadBalancer")
    create.add_argument("--cluster-ip", help="ask for this ClusterIP (default: allocate one)")
    create.add_argument("--session-affinity", default="None", help="None or ClientIP")
    create.add_argument("--affinity-timeout", type=int, help="ClientIP affinity timeout in seconds (default 10800)")
    create.add_argument(
        "--external-ip",
        action="append",
        default=[],
        metavar="IP[,IP]",
        help="spec.externalIPs: also answer on these addresses",
    )
    create.add_argument(
        "--external-traffic-policy",
        choices=["Cluster", "Local"],
        help="Local: NodePort/LB traffic only to this node's pods, client address kept",
    )
    create.add_argument(
        "--internal-traffic-policy",
        choices=["Cluster", "Local"],
        help="Local: ClusterIP traffic only to the sending node's pods",
    )
    create.add_argument(
        "--load-balancer-source-range",
        action="append",
        default=[],
        metavar="CIDR[,CIDR]",
        help="LoadBalancer: only these clients may use the ingress IP",
    )
    create.add_argument(
        "--health-check-node-port", type=int, help="LoadBalancer with Local policy: this port (default: allocated)"
    )
    create.add_argument(
        "--no-allocate-load-balancer-node-ports",
        action="store_true",
        help="LoadBalancer without NodePorts (allocateLoadBalancerNodePorts: false)",
    )
    create.set_defaults(func=cmd_svc_create)

    delete = svc.add_parser("delete", help="delete a service, its endpoints, its ClusterIP")
    _common(delete)
    delete.add_argument("name")
    delete.set_defaults(func=cmd_svc_delete)

    get = svc.add_parser("get", help="list services")
    _common(get)
    get.add_argument("name", nargs="?")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-o", "--output", choices=["table", "json"], default="table")
    get.set_defaults(func=cmd_svc_get)

    eps = svc.add_parser("set-endpoints", help="store hand-written Endpoints (services without a selector)")
    _common(eps)
    eps.add_argument("-f", "--file", required=True)
    eps.set_defaults(func=cmd_svc_set_endpoints)

    g = sub.add_parser("get", help="list pods, endpoints, services, network policies or namespaces")
    _common(g)
    g.add_argument(
        "kind", choices=["pods", "pod", "po", "endpoints", "ep", "services", "service", "svc", *_POLICY_KINDS]
    )
    g.add_argument("-A", "--all-namespaces", action="store_true")
    g.add_argument("-o", "--output", choices=["table", "json"], default="table")
    g.set_defaults(func=cmd_get)
