"""The Kubernetes objects of the service path: Services, their Endpoints, and the Pods behind them.

The domain that the proxy (proxy/), the endpoints controller and the store
(store/services.py) share; it imports none of them. What only the proxy's renderers
use (RenderOptions, kube-proxy's orderings) is in proxy/model.py.

These are Kubernetes-shaped, so the JSON in etcd reads like ``kubectl get -o json``:

    Service   {"metadata": {"namespace": "ns1", "name": "web"},
               "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10",
                        "selector": {"app": "web"},
                        "ports": [{"name": "http", "protocol": "TCP", "port": 80,
                                   "targetPort": 8080}],
                        "sessionAffinity": "None"}}
    Endpoints {"metadata": {...}, "subsets": [{"addresses": [{"ip": "10.244.1.5",
               "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "web-1"}}],
               "notReadyAddresses": [...], "ports": [{"name": "http", "port": 8080}]}]}

The proxy thinks in *service ports*, not services: each port of a Service gets its own
chains and its own endpoint list, keyed by kube-proxy's ``ServicePortName`` string,
``ns/name:port`` (just ``ns/name`` when the port has no name). So endpoints travel as
``{"ns1/web:http": [Endpoint(...), ...]}``; ``derive_endpoints`` builds that map from pods
the way the Kubernetes endpoints controller does (pods in the namespace whose labels match
the selector; the port is the targetPort, by number or by the pod's named container port).

Parsing validates and collects *every* problem with a field path, as the API server does,
so one bad document gives one readable message, never a traceback from deep in a renderer.
The subset modelled: TCP/UDP, ClusterIP/NodePort/LoadBalancer, externalIPs, the
external and internal traffic policies, loadBalancerSourceRanges, ClientIP affinity,
EndpointSlice-style conditions (ready/serving/terminating), IPv4. Headless
services (``clusterIP: None``) parse but are not proxied, as in kube-proxy
(pkg/proxy/util ShouldSkipService).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from minikubenet.label_validation import annotations_errors, labels_errors

PROTOCOLS = ("TCP", "UDP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
TRAFFIC_POLICIES = ("Cluster", "Local")
AFFINITIES = ("None", "ClientIP")
DEFAULT_AFFINITY_TIMEOUT = 10800  # 3 h: core/v1 DefaultClientIPServiceAffinitySeconds
MAX_AFFINITY_TIMEOUT = 86400  # the API server's upper bound (1 day)
DEFAULT_NODE_PORT_RANGE = (30000, 32767)  # kube-apiserver --service-node-port-range

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


class ValidationError(ValueError):
    """A document is invalid. ``errors`` holds one "field.path: what is wrong" per problem."""

    def __init__(self, what: str, errors: Sequence[str]):
        self.what = what
        self.errors = list(errors)
        super().__init__(f"{what} is invalid:\n" + "\n".join(f"  {e}" for e in self.errors))


def _total(kind: str):
    """Make a parser total: any JSON value gives a result or a ``ValidationError``. The
    field checks below name the usual mistakes; a shape they do not expect (a string
    where an object belongs, ``{"metadata": "oops"}``) would otherwise surface as an
    AttributeError or TypeError from deep inside, and stop whoever called us."""

    def wrap(fn):
        @functools.wraps(fn)
        def parse(doc, *args, **kwargs):
            try:
                return fn(doc, *args, **kwargs)
            except ValidationError:
                raise
            except (AttributeError, TypeError, KeyError, ValueError, IndexError) as e:
                raise ValidationError(kind, [f"malformed document ({type(e).__name__}: {e})"]) from None

        return parse

    return wrap


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ServicePort:
    name: str  # "" is allowed only when the service has a single port
    protocol: str  # "TCP" | "UDP"
    port: int  # the port on the ClusterIP
    target_port: int | str  # the pod's port: a number, or a named container port
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    cluster_ip: ipaddress.IPv4Address | None  # None: headless, not proxied
    ports: tuple[ServicePort, ...]
    type: str = "ClusterIP"
    selector: Mapping[str, str] = field(default_factory=dict)
    session_affinity: str = "None"
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_ips: tuple[ipaddress.IPv4Address, ...] = ()
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    load_balancer_ips: tuple[ipaddress.IPv4Address, ...] = ()  # status.loadBalancer.ingress
    load_balancer_source_ranges: tuple[ipaddress.IPv4Network, ...] = ()
    health_check_node_port: int | None = None
    allocate_load_balancer_node_ports: bool = True
    # metadata the proxy does not read but `apply` must keep and `get` show back, as the
    # API server stores them
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    # The traffic-policy predicates of kube-proxy's BaseServicePortInfo (pkg/proxy/
    # serviceport.go), which every renderer decision below rests on.

    @property
    def externally_accessible(self) -> bool:
        """Reachable from outside the cluster: a NodePort, an LB IP or an external IP."""
        return any(p.node_port for p in self.ports) or bool(self.load_balancer_ips) or bool(self.external_ips)

    @property
    def external_policy_local(self) -> bool:
        """eTP=Local only counts for NodePort and LoadBalancer services
        (pkg/api/v1/service ExternalPolicyLocal); a ClusterIP with externalIPs is Cluster."""
        return self.type in ("NodePort", "LoadBalancer") and self.external_traffic_policy == "Local"

    @property
    def internal_policy_local(self) -> bool:
        return self.internal_traffic_policy == "Local"

    @property
    def uses_cluster_endpoints(self) -> bool:
        return not self.internal_policy_local or (self.externally_accessible and not self.external_policy_local)

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or (self.externally_accessible and self.external_policy_local)

    def port_key(self, port: ServicePort) -> str:
        """kube-proxy's ServicePortName.String(): the key of this port's endpoint list."""
        return service_port_name(self.namespace, self.name, port.name)

    def port_keys(self) -> list[str]:
        return [self.port_key(p) for p in self.ports]


@dataclass(frozen=True)
class Endpoint:
    ip: ipaddress.IPv4Address
    port: int
    node_name: str = ""
    ready: bool = True
    pod_name: str = ""
    # EndpointSlice conditions (discovery/v1): ready implies serving; a pod being deleted
    # is terminating, not ready, and serving while its readiness probe still passes.
    serving: bool | None = None  # None: same as ready (Endpoints objects lack it)
    terminating: bool = False

    @property
    def is_serving(self) -> bool:
        return self.ready if self.serving is None else self.serving

    def __str__(self) -> str:
        # kube-proxy's BaseEndpointInfo.String(): hashed into the KUBE-SEP name and used
        # as the sort key of a service's endpoints, so it must be exactly "IP:port".
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ContainerPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    ip: ipaddress.IPv4Address | None  # None until the CNI plugin gave it one
    node_name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True
    container_ports: tuple[ContainerPort, ...] = ()
    serving: bool | None = None  # the Ready condition alone, deletion aside (None: = ready)
    terminating: bool = False  # metadata.deletionTimestamp is set


def service_port_name(namespace: str, name: str, port_name: str) -> str:
    """``ns/name:port``, or ``ns/name`` for an unnamed port (pkg/proxy ServicePortName.String)."""
    return f"{namespace}/{name}:{port_name}" if port_name else f"{namespace}/{name}"


# --------------------------------------------------------------------------- Service JSON


@_total("Service")
def service_from_k8s(
    doc: Mapping,
    service_cidr: str | ipaddress.IPv4Network | None = None,
    node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE,
) -> Service:
    """Parse and validate a k8s-shaped Service. Raises ``ValidationError`` listing every
    problem. With ``service_cidr``, a ClusterIP outside it is an error (the API server
    allocates ClusterIPs from --service-cluster-ip-range; an IP outside it would be
    routed somewhere else before any node could rewrite it)."""
    meta, spec = _section(doc, "metadata"), _section(doc, "spec")
    errors: list[str] = []
    namespace = _name(meta, "namespace", DNS1123_LABEL, "a DNS-1123 label", errors, default="default")
    name = _name(meta, "name", _DNS1035_LABEL, "a DNS-1035 label (lower case, starting with a letter)", errors)
    what = f"Service {namespace}/{name}"
    if not isinstance(spec, Mapping):
        raise ValidationError(what, ["spec: must be an object"])

    svc_type = spec.get("type", "ClusterIP")
    if svc_type not in SERVICE_TYPES:
        errors.append(f"spec.type: {svc_type!r} is not supported (one of {', '.join(SERVICE_TYPES)})")
    cluster_ip = _cluster_ip(spec.get("clusterIP"), service_cidr, errors)
    allocate = spec.get("allocateLoadBalancerNodePorts")
    if allocate is not None and (svc_type != "LoadBalancer" or not isinstance(allocate, bool)):
        errors.append(
            "spec.allocateLoadBalancerNodePorts: may only be used when `type` is 'LoadBalancer'"
            if svc_type != "LoadBalancer"
            else f"spec.allocateLoadBalancerNodePorts: {allocate!r} must be a boolean"
        )
    allocate = allocate is not False
    ports = _ports(spec.get("ports"), svc_type, node_port_range, errors, allocate)
    selector = _selector(spec.get("selector", {}), errors)
    affinity, timeout = _affinity(spec, errors)
    external_ips = _ip_list(spec.get("externalIPs"), "spec.externalIPs", errors)
    lb_ips = _load_balancer_ingress(doc.get("status"), svc_type, errors)
    ranges = _source_ranges(spec.get("loadBalancerSourceRanges"), svc_type, errors)
    etp, itp, hc_port = _traffic_policies(spec, svc_type, bool(external_ips), node_port_range, errors)
    errors += labels_errors(meta.get("labels"), "metadata.labels")
    errors += annotations_errors(meta.get("annotations"), "metadata.annotations")
    if errors:
        raise ValidationError(what, errors)
    return Service(
        namespace=namespace,
        name=name,
        cluster_ip=cluster_ip,
        ports=tuple(ports),
        type=svc_type,
        selector=selector,
        session_affinity=affinity,
        affinity_timeout=timeout,
        external_ips=external_ips,
        external_traffic_policy=etp,
        internal_traffic_policy=itp,
        load_balancer_ips=lb_ips,
        load_balancer_source_ranges=ranges,
        health_check_node_port=hc_port,
        allocate_load_balancer_node_ports=allocate,
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
    )


def service_to_k8s(svc: Service) -> dict:
    ports = []
    for p in svc.ports:
        d: dict = {"protocol": p.protocol, "port": p.port, "targetPort": p.target_port}
        if p.name:
            d = {"name": p.name, **d}
        if p.node_port is not None:
            d["nodePort"] = p.node_port
        ports.append(d)
    spec: dict = {
        "type": svc.type,
        "clusterIP": str(svc.cluster_ip) if svc.cluster_ip else "None",
        "ports": ports,
        "selector": dict(svc.selector),
        "sessionAffinity": svc.session_affinity,
    }
    if svc.session_affinity == "ClientIP":
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": svc.affinity_timeout}}
    if svc.external_ips:
        spec["externalIPs"] = [str(ip) for ip in svc.external_ips]
    if svc.type in ("NodePort", "LoadBalancer") or svc.external_ips:
        spec["externalTrafficPolicy"] = svc.external_traffic_policy
    spec["internalTrafficPolicy"] = svc.internal_traffic_policy
    if svc.type == "LoadBalancer":
        spec["allocateLoadBalancerNodePorts"] = svc.allocate_load_balancer_node_ports
        if svc.load_balancer_source_ranges:
            spec["loadBalancerSourceRanges"] = [str(n) for n in svc.load_balancer_source_ranges]
    if svc.health_check_node_port:
        spec["healthCheckNodePort"] = svc.health_check_node_port
    metadata: dict = {"namespace": svc.namespace, "name": svc.name}
    if svc.labels:
        metadata["labels"] = dict(svc.labels)
    if svc.annotations:
        metadata["annotations"] = dict(svc.annotations)
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}
    if svc.type == "LoadBalancer":
        doc["status"] = {"loadBalancer": {"ingress": [{"ip": str(ip)} for ip in svc.load_balancer_ips]}}
    return doc


def _section(doc: Mapping, key: str) -> Mapping:
    if not isinstance(doc, Mapping):
        raise ValidationError("document", [f"must be a JSON object, got {type(doc).__name__}"])
    value = doc.get(key) or {}
    if not isinstance(value, Mapping):
        raise ValidationError("document", [f"{key}: must be an object, got {type(value).__name__}"])
    return value


def _name(
    meta: Mapping, key: str, pattern: re.Pattern, what: str, errors: list[str], default: str | None = None
) -> str:
    value = meta.get(key, default)
    if not isinstance(value, str) or not value:
        errors.append(f"metadata.{key}: required")
        return "?"
    if len(value) > 63 or not pattern.match(value):
        errors.append(f"metadata.{key}: {value!r} must be {what} of at most 63 characters")
    return value


def _cluster_ip(value, service_cidr, errors: list[str]) -> ipaddress.IPv4Address | None:
    if value == "None":
        return None  # headless: DNS hands out pod IPs directly, no proxying
    if not value:
        errors.append("spec.clusterIP: required (minikubenet does not allocate ClusterIPs)")
        return None
    try:
        ip = ipaddress.IPv4Address(value)
    except (ipaddress.AddressValueError, ValueError):
        errors.append(f"spec.clusterIP: {value!r} is not a valid IPv4 address")
        return None
    if service_cidr is not None and ip not in ipaddress.IPv4Network(service_cidr):
        errors.append(f"spec.clusterIP: {ip} is outside the service network {service_cidr}")
    return ip


def _port_number(value, path: str, errors: list[str], lo: int = 1, hi: int = 65535) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(f"{path}: {value!r} must be an integer")
        return None
    if not lo <= value <= hi:
        errors.append(f"{path}: {value} is out of range ({lo}-{hi})")
        return None
    return value


def _ports(
    raw, svc_type: str, node_port_range: tuple[int, int], errors: list[str], allocate_lb_node_ports: bool = True
) -> list[ServicePort]:
    if not isinstance(raw, list) or not raw:
        errors.append("spec.ports: at least one port is required")
        return []
    ports = [
        p
        for i, item in enumerate(raw)
        if (p := _port(item, i, svc_type, node_port_range, errors, allocate_lb_node_ports))
    ]
    _check_port_uniqueness(ports, len(raw), errors)
    return ports


def _port(
    item,
    i: int,
    svc_type: str,
    node_port_range: tuple[int, int],
    errors: list[str],
    allocate_lb_node_ports: bool = True,
) -> ServicePort | None:
    path = f"spec.ports[{i}]"
    if not isinstance(item, Mapping):
        errors.append(f"{path}: must be an object")
        return None
    n = len(errors)
    name = item.get("name", "") or ""
    if name and (not isinstance(name, str) or len(name) > 63 or not DNS1123_LABEL.match(name)):
        errors.append(f"{path}.name: {name!r} must be a DNS-1123 label (lower case letters, digits, '-')")
    protocol = item.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        errors.append(f"{path}.protocol: unknown protocol {protocol!r} (one of {', '.join(PROTOCOLS)})")
    port = _port_number(item.get("port"), f"{path}.port", errors)
    # An absent (or 0) targetPort means "the same as port", as in the API server.
    target = _target_port(item.get("targetPort") or port, f"{path}.targetPort", errors) if port is not None else None
    node_port = _node_port(
        item.get("nodePort"), svc_type, node_port_range, f"{path}.nodePort", errors, allocate_lb_node_ports
    )
    if len(errors) > n or port is None or target is None:
        return None
    return ServicePort(name=name, protocol=protocol, port=port, target_port=target, node_port=node_port)


def _target_port(value, path: str, errors: list[str]) -> int | str | None:
    if isinstance(value, str) and not value.isdigit():
        # A named port: resolved per pod against its container ports (IANA_SVC_NAME syntax).
        if len(value) > 15 or not _IANA_SVC_NAME.match(value) or "--" in value or not re.search("[a-z]", value):
            errors.append(f"{path}: {value!r} is neither a port number nor a valid port name")
            return None
        return value
    if isinstance(value, str):
        value = int(value)
    return _port_number(value, path, errors)


def _node_port(
    value,
    svc_type: str,
    node_port_range: tuple[int, int],
    path: str,
    errors: list[str],
    allocate_lb_node_ports: bool = True,
) -> int | None:
    if svc_type not in ("NodePort", "LoadBalancer"):
        if value:
            errors.append(f"{path}: may only be set when spec.type is NodePort or LoadBalancer")
        return None
    if value is None and svc_type == "LoadBalancer" and not allocate_lb_node_ports:
        return None  # allocateLoadBalancerNodePorts: false, the LB reaches pods directly
    if value is None:
        errors.append(f"{path}: required for type {svc_type} (the store allocates one on create)")
        return None
    return _port_number(value, path, errors, *node_port_range)


def _check_port_uniqueness(ports: list[ServicePort], total: int, errors: list[str]) -> None:
    names = [p.name for p in ports]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"spec.ports: duplicate port name {dup!r}" if dup else "spec.ports: more than one unnamed port")
    if total > 1 and "" in names:
        errors.append("spec.ports: every port must have a name when there is more than one")
    seen: set = set()
    for p in ports:
        if (p.port, p.protocol) in seen:
            errors.append(f"spec.ports: duplicate port {p.port}/{p.protocol}")
        seen.add((p.port, p.protocol))
    node_ports = [(p.node_port, p.protocol) for p in ports if p.node_port is not None]
    for np, proto in sorted({x for x in node_ports if node_ports.count(x) > 1}):
        errors.append(f"spec.ports: duplicate nodePort {np}/{proto}")


def _selector(raw, errors: list[str]) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        errors.append(f"spec.selector: must be a map of label key to value, got {type(raw).__name__}")
        return {}
    for k, v in raw.items():
        if not valid_label_key(k):
            errors.append(f"spec.selector: {k!r} is not a valid label key")
        if not isinstance(v, str) or (v and (len(v) > 63 or not LABEL_NAME.match(v))):
            errors.append(f"spec.selector[{k}]: {v!r} is not a valid label value")
    return dict(raw)


def valid_label_key(key) -> bool:
    if not isinstance(key, str) or not key:
        return False
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        return False
    return len(name) <= 63 and bool(LABEL_NAME.match(name))


def _affinity(spec: Mapping, errors: list[str]) -> tuple[str, int]:
    affinity = spec.get("sessionAffinity", "None") or "None"
    config = spec.get("sessionAffinityConfig")
    if affinity not in AFFINITIES:
        errors.append(f"spec.sessionAffinity: {affinity!r} is not one of {', '.join(AFFINITIES)}")
        return "None", DEFAULT_AFFINITY_TIMEOUT
    if affinity == "None":
        if config:
            errors.append("spec.sessionAffinityConfig: must not be set when sessionAffinity is None")
        return affinity, DEFAULT_AFFINITY_TIMEOUT
    timeout = ((config or {}).get("clientIP") or {}).get("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
    timeout = _port_number(
        timeout, "spec.sessionAffinityConfig.clientIP.timeoutSeconds", errors, 1, MAX_AFFINITY_TIMEOUT
    )
    return affinity, timeout or DEFAULT_AFFINITY_TIMEOUT


def _ip_list(raw, path: str, errors: list[str]) -> tuple[ipaddress.IPv4Address, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append(f"{path}: must be a list of IP addresses")
        return ()
    out = []
    for i, value in enumerate(raw):
        try:
            out.append(ipaddress.IPv4Address(value))
        except (ipaddress.AddressValueError, ValueError):
            errors.append(f"{path}[{i}]: {value!r} must be a valid IPv4 address")
    return tuple(out)


def _load_balancer_ingress(status, svc_type: str, errors: list[str]) -> tuple[ipaddress.IPv4Address, ...]:
    """status.loadBalancer.ingress[].ip: written by the load-balancer controller, read by
    kube-proxy only for type LoadBalancer (LoadBalancerVIPs; a stale status on a service
    changed to another type is ignored, as kube-proxy's newBaseServiceInfo does)."""
    if not isinstance(status, Mapping):
        return ()
    ingress = (status.get("loadBalancer") or {}).get("ingress") or []
    if not isinstance(ingress, list):
        errors.append("status.loadBalancer.ingress: must be a list")
        return ()
    ips = _ip_list(
        [i.get("ip") for i in ingress if isinstance(i, Mapping) and i.get("ip")], "status.loadBalancer.ingress", errors
    )
    return ips if svc_type == "LoadBalancer" else ()


def _source_ranges(raw, svc_type: str, errors: list[str]) -> tuple[ipaddress.IPv4Network, ...]:
    """loadBalancerSourceRanges, as the API server validates them (validateLoadBalancer
    SourceRanges): LoadBalancer only, each a CIDR after trimming spaces."""
    if not raw:
        return ()
    if svc_type != "LoadBalancer":
        errors.append("spec.loadBalancerSourceRanges: may only be used when `type` is 'LoadBalancer'")
        return ()
    if not isinstance(raw, list):
        errors.append("spec.loadBalancerSourceRanges: must be a list of CIDRs")
        return ()
    out = []
    for i, value in enumerate(raw):
        try:
            out.append(ipaddress.IPv4Network(str(value).strip(), strict=False))
        except ValueError:
            errors.append(
                f"spec.loadBalancerSourceRanges[{i}]: {value!r} must be a list of IP ranges. "
                "For example, 10.240.0.0/24,10.250.0.0/24"
            )
    return tuple(out)


def _traffic_policies(
    spec: Mapping, svc_type: str, has_external_ips: bool, node_port_range: tuple[int, int], errors: list[str]
) -> tuple[str, str, int | None]:
    """externalTrafficPolicy, internalTrafficPolicy and healthCheckNodePort, with the API
    server's rules (validateServiceExternalTrafficPolicy and friends)."""
    external = svc_type in ("NodePort", "LoadBalancer") or has_external_ips
    etp = spec.get("externalTrafficPolicy") or ""
    if etp and not external:
        errors.append(f"spec.externalTrafficPolicy: {etp!r} may only be set for externally-accessible services")
    elif etp and etp not in TRAFFIC_POLICIES:
        errors.append(f"spec.externalTrafficPolicy: unsupported value {etp!r} (one of Cluster, Local)")
    itp = spec.get("internalTrafficPolicy") or "Cluster"
    if itp not in TRAFFIC_POLICIES:
        errors.append(f"spec.internalTrafficPolicy: unsupported value {itp!r} (one of Cluster, Local)")
    hc = spec.get("healthCheckNodePort")
    if hc:
        if svc_type != "LoadBalancer" or etp != "Local":
            errors.append(
                "spec.healthCheckNodePort: may only be set when `type` is 'LoadBalancer' "
                "and `externalTrafficPolicy` is 'Local'"
            )
            hc = None
        else:
            hc = _port_number(hc, "spec.healthCheckNodePort", errors, *node_port_range)
    return (etp if etp in TRAFFIC_POLICIES else "Cluster"), (itp if itp in TRAFFIC_POLICIES else "Cluster"), hc or None


# --------------------------------------------------------------------------- Endpoints JSON


def endpoints_to_k8s(svc: Service, endpoints_by_port: Mapping[str, Sequence[Endpoint]]) -> dict:
    """A v1 Endpoints object: one subset per service port (valid k8s, if not the most
    compact form the endpoints controller would write)."""
    subsets = []
    for p in svc.ports:
        eps = endpoints_by_port.get(svc.port_key(p), [])
        if not eps:
            continue
        port = {"port": eps[0].port, "protocol": p.protocol, **({"name": p.name} if p.name else {})}
        subset: dict = {"ports": [port]}
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            addrs = [_address_to_k8s(e, svc.namespace) for e in eps if e.ready is ready]
            if addrs:
                subset[key] = addrs
        subsets.append(subset)
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"namespace": svc.namespace, "name": svc.name},
        "subsets": subsets,
    }


def _address_to_k8s(ep: Endpoint, namespace: str) -> dict:
    d: dict = {"ip": str(ep.ip)}
    if ep.node_name:
        d["nodeName"] = ep.node_name
    if ep.pod_name:
        d["targetRef"] = {"kind": "Pod", "namespace": namespace, "name": ep.pod_name}
    if ep.terminating or ep.is_serving != ep.ready:
        # EndpointSlice's endpoint.conditions, carried per address (v1 Endpoints has no
        # place for them; kube-proxy reads them from EndpointSlices).
        d["conditions"] = {"ready": ep.ready, "serving": ep.is_serving, "terminating": ep.terminating}
    return d


@_total("Endpoints")
def endpoints_from_k8s(doc: Mapping) -> dict[str, list[Endpoint]]:
    """A v1 Endpoints object -> ``{service-port key: [Endpoint]}``. Each subset is the
    cross product of its addresses and its ports, as in the Kubernetes API."""
    meta = _section(doc, "metadata")
    namespace, name = meta.get("namespace", "default"), meta.get("name", "?")
    what, errors = f"Endpoints {namespace}/{name}", cast(list[str], [])
    out: dict[str, list[Endpoint]] = {}
    for i, subset in enumerate(doc.get("subsets") or []):
        for port in subset.get("ports") or []:
            number = _port_number(port.get("port"), f"subsets[{i}].ports.port", errors)
            key = service_port_name(namespace, name, port.get("name", "") or "")
            for field_name, ready in (("addresses", True), ("notReadyAddresses", False)):
                for j, addr in enumerate(subset.get(field_name) or []):
                    ep = _endpoint(addr, number, ready, f"subsets[{i}].{field_name}[{j}]", errors)
                    if ep:
                        out.setdefault(key, []).append(ep)
    if errors:
        raise ValidationError(what, errors)
    return out


def _endpoint(addr: Mapping, port: int | None, ready: bool, path: str, errors: list[str]) -> Endpoint | None:
    try:
        ip = ipaddress.IPv4Address(addr.get("ip"))
    except (ipaddress.AddressValueError, ValueError):
        errors.append(f"{path}.ip: {addr.get('ip')!r} is not a valid IPv4 address")
        return None
    if port is None:
        return None
    conditions = addr.get("conditions") or {}
    serving = conditions.get("serving")
    return Endpoint(
        ip=ip,
        port=port,
        node_name=addr.get("nodeName", "") or "",
        ready=ready,
        pod_name=(addr.get("targetRef") or {}).get("name", ""),
        serving=serving if isinstance(serving, bool) else None,
        terminating=conditions.get("terminating") is True,
    )


# --------------------------------------------------------------------------- Pods


@_total("Pod")
def pod_from_k8s(doc: Mapping) -> Pod:
    """The few fields of a v1 Pod the proxy needs. Ready means the Ready condition is
    True and the pod is not being deleted (a terminating pod gets no new connections)."""
    meta, spec, status = (doc.get(k) or {} for k in ("metadata", "spec", "status"))
    ip = status.get("podIP")
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    serving = conditions.get("Ready") == "True"
    terminating = bool(meta.get("deletionTimestamp"))
    ready = serving and not terminating
    ports = tuple(
        ContainerPort(name=p.get("name", ""), port=p["containerPort"], protocol=p.get("protocol", "TCP"))
        for c in spec.get("containers") or []
        for p in c.get("ports") or []
    )
    return Pod(
        namespace=meta.get("namespace", "default"),
        name=meta.get("name", ""),
        ip=ipaddress.IPv4Address(ip) if ip else None,
        node_name=spec.get("nodeName", ""),
        labels=dict(meta.get("labels") or {}),
        ready=ready,
        container_ports=ports,
        serving=None if serving == ready else serving,
        terminating=terminating,
    )


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A Service selector is an equality-only label selector; an empty one selects nothing
    (such a service's endpoints are managed by hand)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def resolve_target_port(port: ServicePort, pod: Pod) -> int | None:
    """targetPort by number is used as is; by name it is looked up among the pod's
    container ports of the same protocol (a pod without it does not serve this port)."""
    if isinstance(port.target_port, int):
        return port.target_port
    for cp in pod.container_ports:
        if cp.name == port.target_port and cp.protocol == port.protocol:
            return cp.port
    return None


def derive_endpoints(svc: Service, pods: Iterable[Pod]) -> dict[str, list[Endpoint]]:
    """What the endpoints controller would publish for ``svc``: for every service port, an
    endpoint per pod that matches the selector and has an IP. Pods that are not ready are
    kept with ``ready=False`` (the controller lists them as notReadyAddresses); the
    renderers use ready endpoints only."""
    chosen = [
        p
        for p in pods
        if p.namespace == svc.namespace and p.ip is not None and selector_matches(svc.selector, p.labels)
    ]
    out: dict[str, list[Endpoint]] = {}
    for port in svc.ports:
        eps = out.setdefault(svc.port_key(port), [])
        for pod in sorted(chosen, key=lambda p: p.name):
            number = resolve_target_port(port, pod)
            if number is not None and pod.ip is not None:
                eps.append(
                    Endpoint(
                        ip=pod.ip,
                        port=number,
                        node_name=pod.node_name,
                        ready=pod.ready,
                        pod_name=pod.name,
                        # None: "as ready", the common case, kept implicit
                        serving=None if pod.serving in (None, pod.ready) else pod.serving,
                        terminating=pod.terminating,
                    )
                )
    return out


# --------------------------------------------------------------------------- render options

# --------------------------------------------------------------------------- pod documents


def validate_pod(doc: Mapping) -> Pod:
    """A k8s-shaped Pod with the fields the proxy uses; raises ValidationError."""
    if not isinstance(doc, Mapping):
        raise ValidationError("Pod", [f"must be a JSON object, got {type(doc).__name__}"])
    meta = doc.get("metadata") or {}
    errors = []
    for key in ("namespace", "name"):
        value = meta.get(key, "default" if key == "namespace" else None)
        if not isinstance(value, str) or len(value) > 63 or not DNS1123_LABEL.match(value):
            errors.append(f"metadata.{key}: {value!r} must be a DNS-1123 label")
    labels = meta.get("labels") or {}
    if not isinstance(labels, Mapping):
        errors.append("metadata.labels: must be a map of label key to value")
        labels = {}
    for k, v in labels.items():
        if not valid_label_key(k):
            errors.append(f"metadata.labels: {k!r} is not a valid label key")
        if not isinstance(v, str) or (v and (len(v) > 63 or not LABEL_NAME.match(v))):
            errors.append(f"metadata.labels[{k}]: {v!r} is not a valid label value")
    ip = (doc.get("status") or {}).get("podIP")
    if ip is not None:
        try:
            ipaddress.IPv4Address(ip)
        except (ipaddress.AddressValueError, ValueError):
            errors.append(f"status.podIP: {ip!r} is not a valid IPv4 address")
    what = f"Pod {meta.get('namespace', 'default')}/{meta.get('name', '?')}"
    if errors:
        raise ValidationError(what, errors)
    try:
        return pod_from_k8s(doc)
    except (KeyError, TypeError, ValueError) as e:
        raise ValidationError(what, [f"spec.containers: malformed ({e})"]) from None


def pod_doc(
    namespace: str,
    name: str,
    ip: str | None,
    node_name: str,
    labels: Mapping[str, str],
    ready: bool = True,
    ports: Iterable[tuple[str, int, str]] = (),
) -> dict:
    """Build a Pod document (what a kubelet would report), for the lab and the tests."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": dict(labels)},
        "spec": {
            "nodeName": node_name,
            "containers": [
                {"name": "app", "ports": [{"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports]}
            ],
        },
        "status": {
            **({"podIP": ip} if ip else {}),
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }
