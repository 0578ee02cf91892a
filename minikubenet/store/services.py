"""Services, Endpoints and Pods in etcd: the proxy's half of the cluster state.

Kubernetes keeps these objects in etcd behind its API server; minikubenet keeps them
in etcd directly, Kubernetes-shaped (``kubectl get -o json`` would print the same), under
the project prefix::

    /minikubenet/services/<ns>/<name>      a Service (spec.clusterIP always filled in)
    /minikubenet/endpoints/<ns>/<name>     its Endpoints (the endpoints controller writes them)
    /minikubenet/pods/<ns>/<name>          a Pod: labels, node, podIP, Ready condition
    /minikubenet/serviceips/10.96.0.10     who holds a ClusterIP:  "ns/name"
    /minikubenet/nodeports/tcp/30080       who holds a NodePort:   "ns/name"

**A ClusterIP is never given twice.** Like a pod IP (ipam/allocator.py), every
allocated ClusterIP has a key of its own, and a Service is created in ONE etcd
transaction that compares "this service, this IP key and these NodePort keys do not
exist yet" (``version == 0``) and only then writes all of them. Two ``svc create``
racing for the same IP: exactly one transaction succeeds, the other sees the compare
fail. Kubernetes does the same with one bitmap per service range, updated with a
compare-and-swap on its resourceVersion (pkg/registry/core/service/ipallocator); a key
per IP is the etcd-native form of that and needs no read-modify-write of a shared blob.
Deleting a Service removes its IP and NodePort keys in the same transaction.

**Nothing invalid is stored.** Every write validates first (k8s_objects.py collects every
problem with its field path, as the API server does) and raises ``ValidationError``
before any key is touched; a conflict (name exists, IP or NodePort taken) raises
``ServiceConflict`` after the transaction refused to write.

**Reading for a daemon.** ``ObjectWatch`` gives a consistent snapshot of services,
endpoints and pods at one store revision, then every change after it, re-listing
whenever the watch breaks (store/watch.py, the pattern of every Kubernetes informer).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pyetcd.events

from minikubenet.k8s_objects import (
    DEFAULT_NODE_PORT_RANGE,
    Pod,
    Service,
    ValidationError,
    endpoints_from_k8s,
    service_from_k8s,
    service_to_k8s,
    validate_pod,
)
from minikubenet.service_allocation import allocatable, pick_cluster_ip, pick_node_port
from minikubenet.store.etcd import EtcdStore, StoreError, _wrap_errors
from minikubenet.store.keys import KeyLayout
from minikubenet.store.watch import ListWatch

log = logging.getLogger(__name__)

DEFAULT_SERVICE_CIDR = "10.96.0.0/12"  # kube-apiserver --service-cluster-ip-range default
KINDS = ("services", "endpoints", "pods")


class ServiceConflict(StoreError):
    """The object exists already, or an IP or port it asks for belongs to someone else."""


class NotFound(StoreError):
    pass


@dataclass
class ServiceWrite:
    """One Service's part of a transaction: its compares (etcd's "only if") and its
    writes. ``service`` is what will be stored (or deleted); ``created``: it is new."""

    service: Service
    compare: list
    success: list
    created: bool


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class ServiceKeys:
    """The key layout of this module, next to store/keys.py's (same project prefix)."""

    layout: KeyLayout = field(default_factory=KeyLayout)

    def prefix(self, kind: str) -> str:
        """``/minikubenet/services/`` etc.; ``kind`` is one of KINDS."""
        return f"{self.layout.project_prefix}/{kind}/"

    def object(self, kind: str, namespace: str, name: str) -> str:
        return f"{self.prefix(kind)}{namespace}/{name}"

    @property
    def cluster_ips(self) -> str:
        return f"{self.layout.project_prefix}/serviceips/"

    def cluster_ip(self, ip) -> str:
        return f"{self.cluster_ips}{ip}"

    @property
    def node_ports(self) -> str:
        return f"{self.layout.project_prefix}/nodeports/"

    def node_port(self, protocol: str, port: int) -> str:
        return f"{self.node_ports}{protocol.lower()}/{port}"

    def parse(self, key: str) -> tuple[str, str, str] | None:
        """``/minikubenet/pods/demo/web-1`` -> ("pods", "demo", "web-1"); None for any
        other key (pod IP records, allocation keys...)."""
        for kind in KINDS:
            p = self.prefix(kind)
            if key.startswith(p):
                ns, _, name = key[len(p) :].partition("/")
                if ns and name and "/" not in name:
                    return kind, ns, name
        return None


def _dumps(doc: Mapping) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- the store


@dataclass
class Snapshot:
    """Every service, endpoints object and pod, as raw documents keyed "ns/name", at
    store ``revision``."""

    services: dict[str, dict] = field(default_factory=dict)
    endpoints: dict[str, dict] = field(default_factory=dict)
    pods: dict[str, dict] = field(default_factory=dict)
    revision: int = 0

    def of(self, kind: str) -> dict[str, dict]:
        return getattr(self, kind)


class ServiceStore:
    """Services, Endpoints and Pods over an ``EtcdStore`` (whose ``client`` and
    ``layout`` it uses; all etcd errors become ``StoreUnavailable``)."""

    def __init__(
        self,
        store: EtcdStore,
        service_cidr: str = DEFAULT_SERVICE_CIDR,
        node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE,
    ):
        self.store = store
        self.keys = ServiceKeys(store.layout)
        self.service_cidr = ipaddress.IPv4Network(service_cidr)
        self.node_port_range = node_port_range
        allocatable(self.service_cidr)
        # the error wrapper of EtcdStore names the endpoints in its messages
        self.endpoints_text = store.endpoints_text

    @property
    def client(self):
        return self.store.client

    # -- generic reads -------------------------------------------------------------------

    @_wrap_errors
    def _get(self, key: str) -> bytes | None:
        return self.client.get(key)[0]

    @_wrap_errors
    def _list(self, kind: str) -> dict[str, dict]:
        out = {}
        for value, meta in self.client.get_prefix(self.keys.prefix(kind)):
            parsed = self.keys.parse(meta.key.decode())
            doc = _loads(value, meta.key.decode())
            if parsed and doc is not None:
                out[f"{parsed[1]}/{parsed[2]}"] = doc
        return out

    @_wrap_errors
    def snapshot(self) -> Snapshot:
        """Services, endpoints and pods as of one revision: the first range request sets
        the revision, the others read at exactly that revision."""
        snap, revision = Snapshot(), 0
        for kind in KINDS:
            kwargs: dict[str, int] = {"revision": revision} if revision else {}
            response = self.client.get_prefix_response(self.keys.prefix(kind), **kwargs)
            revision = revision or response.header.revision
            for kv in response.kvs:
                parsed = self.keys.parse(kv.key.decode())
                doc = _loads(kv.value, kv.key.decode())
                if parsed and doc is not None:
                    snap.of(kind)[f"{parsed[1]}/{parsed[2]}"] = doc
        snap.revision = revision
        return snap

    # -- services --------------------------------------------------------------------------

    def create_service(self, doc: Mapping) -> Service:
        """Validate, allocate a ClusterIP (unless one is asked for) and NodePorts (unless
        given), and store the Service, all in one transaction. Returns what was stored."""
        doc = json.loads(json.dumps(doc))  # a private copy we may fill in
        if not isinstance(doc, dict):
            raise ValidationError("Service", [f"must be a JSON object, got {type(doc).__name__}"])
        spec = doc.setdefault("spec", {})
        if not isinstance(spec, dict):
            raise ValidationError("Service", ["spec: must be an object"])
        requested_ip = spec.get("clusterIP")
        # Validate everything else first, with a stand-in ClusterIP and NodePorts, so a
        # bad spec is refused before anything is allocated.
        svc = service_from_k8s(
            _with_placeholders(doc, self.service_cidr, self.node_port_range), self.service_cidr, self.node_port_range
        )
        if svc.cluster_ip is None:
            raise ValidationError(f"Service {svc.key}", ["spec.clusterIP: headless services (None) are not supported"])
        for _attempt in range(20):
            ip = ipaddress.IPv4Address(requested_ip) if requested_ip else self._free_cluster_ip()
            candidate = dict(doc, spec=dict(spec, clusterIP=str(ip)))
            candidate["spec"]["ports"] = self._fill_node_ports(spec.get("ports"), svc)
            if svc.health_check_node_port and not spec.get("healthCheckNodePort"):
                # The API server allocates it for LoadBalancer + externalTrafficPolicy
                # Local, from the NodePort range (a TCP port every node listens on).
                candidate["spec"]["healthCheckNodePort"] = self._free_node_port(
                    "TCP", {("tcp", p["nodePort"]) for p in candidate["spec"]["ports"] if p.get("nodePort")}
                )
            final = service_from_k8s(candidate, self.service_cidr, self.node_port_range)
            if self._create_service_txn(final):
                log.info("service %s created: clusterIP %s", final.key, final.cluster_ip)
                return final
            problem = self._why_not_created(final)
            if requested_ip or not problem.startswith("clusterIP"):
                raise ServiceConflict(f"cannot create service {final.key}: {problem}")
            # Someone took the IP we picked between our read and our write: pick again.
        raise ServiceConflict(f"cannot create service {svc.key}: no free ClusterIP after 20 attempts")

    @_wrap_errors
    def _free_cluster_ip(self, also_taken: Iterable[str] = ()) -> ipaddress.IPv4Address:
        """A free ClusterIP; ``also_taken``: claim keys about to be written by the same
        transaction (several new services in one ``apply -f``)."""
        taken = []
        keys = [meta.key.decode() for _, meta in self.client.get_prefix(self.keys.cluster_ips, keys_only=True)]
        for key in keys + [k for k in also_taken if k.startswith(self.keys.cluster_ips)]:
            try:
                taken.append(ipaddress.IPv4Address(key[len(self.keys.cluster_ips) :]))
            except ValueError:
                pass
        ip = pick_cluster_ip(self.service_cidr, taken)
        if ip is None:
            raise ServiceConflict(f"the service network {self.service_cidr} is full")
        return ip

    @_wrap_errors
    def _taken_node_ports(self, also_taken: Iterable[str] = ()) -> set[tuple[str, int]]:
        """(protocol, port) of every NodePort held, plus the claim keys ``also_taken``
        (about to be written by the same transaction: several services in one apply)."""
        taken = set()
        keys = [meta.key.decode() for _, meta in self.client.get_prefix(self.keys.node_ports, keys_only=True)]
        for key in keys + [k for k in also_taken if k.startswith(self.keys.node_ports)]:
            proto, _, number = key[len(self.keys.node_ports) :].partition("/")
            if number.isdigit():
                taken.add((proto, int(number)))
        return taken

    def _free_node_port(self, protocol: str, also_taken: set[tuple[str, int]]) -> int:
        port = pick_node_port(protocol, self._taken_node_ports() | also_taken, self.node_port_range)
        if port is None:
            raise ServiceConflict(f"no free NodePort in {self.node_port_range[0]}-{self.node_port_range[1]}")
        return port

    def _fill_node_ports(self, ports, svc: Service, also_taken: Iterable[str] = ()) -> list:
        ports = [dict(p) for p in ports]
        wants = svc.type == "NodePort" or (svc.type == "LoadBalancer" and svc.allocate_load_balancer_node_ports)
        if not wants or all(p.get("nodePort") for p in ports):
            return ports
        taken = self._taken_node_ports(also_taken)
        taken |= {(p.get("protocol", "TCP").lower(), p["nodePort"]) for p in ports if p.get("nodePort")}
        for p in ports:
            if not p.get("nodePort"):
                p["nodePort"] = pick_node_port(p.get("protocol", "TCP"), taken, self.node_port_range)
                if p["nodePort"] is None:
                    raise ServiceConflict(f"no free NodePort in {self.node_port_range[0]}-{self.node_port_range[1]}")
                taken.add((p.get("protocol", "TCP").lower(), p["nodePort"]))
        return ports

    def _claims(self, svc: Service) -> list[str]:
        """The allocation keys a service holds: its ClusterIP, its NodePorts and its
        health-check NodePort."""
        return (
            [self.keys.cluster_ip(svc.cluster_ip)]
            + [self.keys.node_port(p.protocol, p.node_port) for p in svc.ports if p.node_port]
            + ([self.keys.node_port("TCP", svc.health_check_node_port)] if svc.health_check_node_port else [])
        )

    @_wrap_errors
    def _create_service_txn(self, svc: Service) -> bool:
        t = self.client.transactions
        key = self.keys.object("services", svc.namespace, svc.name)
        owner = svc.key.encode()
        keys = [key] + self._claims(svc)
        ok, _ = self.client.transaction(
            compare=[t.version(k) == 0 for k in keys],
            success=[t.put(key, _dumps(service_to_k8s(svc)))] + [t.put(k, owner) for k in keys[1:]],
            failure=[],
        )
        return ok

    def _why_not_created(self, svc: Service) -> str:
        if self._get(self.keys.object("services", svc.namespace, svc.name)) is not None:
            return "a service with this name exists already"
        holder = self._get(self.keys.cluster_ip(svc.cluster_ip))
        if holder is not None:
            return f"clusterIP {svc.cluster_ip} is already allocated to {holder.decode()}"
        for p in svc.ports:
            if p.node_port:
                holder = self._get(self.keys.node_port(p.protocol, p.node_port))
                if holder is not None:
                    return f"nodePort {p.node_port}/{p.protocol} is already allocated to {holder.decode()}"
        if svc.health_check_node_port:
            holder = self._get(self.keys.node_port("TCP", svc.health_check_node_port))
            if holder is not None:
                return f"healthCheckNodePort {svc.health_check_node_port} is already allocated to {holder.decode()}"
        return "it changed while we wrote it; try again"

    def get_service(self, namespace: str, name: str) -> dict | None:
        raw = self._get(self.keys.object("services", namespace, name))
        return _loads(raw, f"{namespace}/{name}") if raw is not None else None

    def list_services(self) -> dict[str, dict]:
        return self._list("services")

    @_wrap_errors
    def delete_service(self, namespace: str, name: str) -> Service:
        """Delete a service, its endpoints and its IP/NodePort claims, atomically (the
        compare on the service's value makes sure we free exactly what it held)."""
        write = self.plan_delete(namespace, name)
        if write is None:
            raise NotFound(f"service {namespace}/{name} not found")
        ok, _ = self.client.transaction(compare=write.compare, success=write.success, failure=[])
        if not ok:
            raise ServiceConflict(f"service {namespace}/{name} changed while we deleted it; try again")
        return write.service

    # -- apply: a create or update as one part of a larger transaction ----------------------

    @_wrap_errors
    def plan_apply(self, doc: Mapping, reserved: set[str] | None = None) -> ServiceWrite:
        """What ``kubectl apply`` of a Service does, as the compares and writes of one
        transaction (committed by the caller, possibly with other objects'): create it,
        or update the one that exists. On update the ClusterIP stays (it is immutable:
        a different one is refused), a NodePort/LoadBalancer port that names no nodePort
        keeps the one it has, so does the health-check NodePort (kubectl's merge keeps
        fields the live object set), and the load-balancer controller's status stays
        (apply never writes status). New claims
        are checked free by the transaction; dropped ones are released in it.
        ``reserved``: claim keys earlier parts of the same transaction take (updated).
        Raises ValidationError or ServiceConflict; writes nothing."""
        reserved = set() if reserved is None else reserved
        doc = json.loads(json.dumps(doc))
        if not isinstance(doc, dict) or not isinstance(doc.get("spec", {}), dict):
            return self._invalid_shape(doc)
        meta = doc.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        key = self.keys.object("services", meta.get("namespace", "default"), str(meta.get("name")))
        raw = self.client.get(key)[0]
        old = service_from_k8s(json.loads(raw)) if raw is not None else None
        spec = doc.setdefault("spec", {})
        if old is not None:
            what = f"Service {old.key}"
            if spec.get("clusterIP") and spec["clusterIP"] != str(old.cluster_ip):
                raise ValidationError(
                    what, [f"spec.clusterIP: Invalid value: {json.dumps(spec['clusterIP'])}: field is immutable"]
                )
            spec["clusterIP"] = str(old.cluster_ip)
            if spec.get("type") in ("NodePort", "LoadBalancer") and isinstance(spec.get("ports"), list):
                kept = {(p.port, p.protocol): p.node_port for p in old.ports if p.node_port}
                spec["ports"] = [
                    dict(p, nodePort=kept.get((p.get("port"), p.get("protocol", "TCP"))))
                    if isinstance(p, dict)
                    and not p.get("nodePort")
                    and kept.get((p.get("port"), p.get("protocol", "TCP")))
                    else p
                    for p in spec["ports"]
                ]
            if (
                old.health_check_node_port
                and not spec.get("healthCheckNodePort")
                and spec.get("type") == "LoadBalancer"
                and spec.get("externalTrafficPolicy") == "Local"
            ):
                spec["healthCheckNodePort"] = old.health_check_node_port
            if old.load_balancer_ips and spec.get("type") == "LoadBalancer" and "status" not in doc:
                # apply never writes status: the load-balancer controller's ingress IPs stay
                doc["status"] = json.loads(raw).get("status")
        svc = service_from_k8s(
            _with_placeholders(doc, self.service_cidr, self.node_port_range), self.service_cidr, self.node_port_range
        )
        if svc.cluster_ip is None:
            raise ValidationError(f"Service {svc.key}", ["spec.clusterIP: headless services (None) are not supported"])
        ip = spec.get("clusterIP") or str(self._free_cluster_ip(reserved))
        candidate = dict(doc, spec=dict(spec, clusterIP=ip))
        candidate["spec"]["ports"] = self._fill_node_ports(spec.get("ports"), svc, reserved)
        if svc.health_check_node_port and not spec.get("healthCheckNodePort"):
            # as create_service: LoadBalancer + externalTrafficPolicy Local gets a TCP
            # health-check port from the NodePort range
            mine = {("tcp", p["nodePort"]) for p in candidate["spec"]["ports"] if p.get("nodePort")}
            candidate["spec"]["healthCheckNodePort"] = self._free_node_port(
                "TCP", mine | self._taken_node_ports(reserved)
            )
        final = service_from_k8s(candidate, self.service_cidr, self.node_port_range)
        new_claims = self._claims(final)
        old_claims = self._claims(old) if old is not None else []
        for k in new_claims:
            if k in reserved and k not in old_claims:
                raise ServiceConflict(
                    f"cannot apply service {final.key}: {self._claim_text(k)} is taken by "
                    "another service in the same apply"
                )
        t = self.client.transactions
        added = [k for k in new_claims if k not in old_claims]
        compare = ([t.value(key) == raw] if old is not None else [t.version(key) == 0]) + [
            t.version(k) == 0 for k in added
        ]
        success = (
            [t.put(key, _dumps(service_to_k8s(final)))]
            + [t.put(k, final.key.encode()) for k in added]
            + [t.delete(k) for k in old_claims if k not in new_claims]
        )
        reserved.update(new_claims)
        return ServiceWrite(final, compare, success, created=old is None)

    def _claim_text(self, key: str) -> str:
        if key.startswith(self.keys.cluster_ips):
            return f"clusterIP {key[len(self.keys.cluster_ips) :]}"
        proto, _, number = key[len(self.keys.node_ports) :].partition("/")
        return f"nodePort {number}/{proto.upper()}"

    @staticmethod
    def _invalid_shape(doc) -> ServiceWrite:
        raise ValidationError(
            "Service",
            [
                "spec: must be an object"
                if isinstance(doc, dict)
                else f"must be a JSON object, got {type(doc).__name__}"
            ],
        )

    @_wrap_errors
    def plan_delete(self, namespace: str, name: str) -> ServiceWrite | None:
        """Deleting a service as part of a transaction: the service, its endpoints and its
        claims, if its value is still what we read. None: there is no such service."""
        key = self.keys.object("services", namespace, name)
        raw = self.client.get(key)[0]
        if raw is None:
            return None
        svc = service_from_k8s(json.loads(raw))
        t = self.client.transactions
        return ServiceWrite(
            svc,
            [t.value(key) == raw],
            [t.delete(k) for k in [key, self.keys.object("endpoints", namespace, name)] + self._claims(svc)],
            created=False,
        )

    def why_not_applied(self, write: ServiceWrite) -> str:
        """After a transaction with ``write`` in it failed: the likely reason, in words."""
        if write.created:
            return self._why_not_created(write.service)
        return "it changed while we wrote it; try again"

    @_wrap_errors
    def set_load_balancer_ingress(self, namespace: str, name: str, ips: list[str], message: str = "") -> bool:
        """Write status.loadBalancer.ingress (and a status message, e.g. why it waits),
        only if the service is unchanged since we read it: the load-balancer controller's
        compare-and-swap. False when it changed or is gone (the caller looks again)."""
        key = self.keys.object("services", namespace, name)
        raw = self.client.get(key)[0]
        if raw is None:
            return False
        doc = json.loads(raw)
        status: dict = {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]} if ips else {}}
        if message:
            status["conditions"] = [{"type": "LoadBalancerPending", "status": "True", "message": message}]
        if doc.get("status") == status:
            return True
        doc["status"] = status
        t = self.client.transactions
        ok, _ = self.client.transaction(compare=[t.value(key) == raw], success=[t.put(key, _dumps(doc))], failure=[])
        return ok

    # -- endpoints -------------------------------------------------------------------------

    def put_endpoints(self, doc: Mapping, pods: Mapping[str, dict] | None = None) -> dict:
        """Store an Endpoints object written by hand (for a service without a selector)
        or by the endpoints controller. Every address must be a known pod's IP: an
        endpoint on an unknown pod is refused and nothing is stored."""
        meta = doc.get("metadata") or {} if isinstance(doc, Mapping) else {}
        ns, name = meta.get("namespace", "default"), meta.get("name")
        what = f"Endpoints {ns}/{name}"
        if not isinstance(name, str) or not name:
            raise ValidationError(what, ["metadata.name: required"])
        svc_doc = self.get_service(ns, name)
        if svc_doc is None:
            raise ValidationError(what, [f"no service {ns}/{name}: create the service first"])
        endpoints_from_k8s(doc)  # IPs and ports are well formed
        pods = self._list("pods") if pods is None else pods
        errors = check_endpoint_pods(doc, pods)
        if errors:
            raise ValidationError(what, errors)
        self._put(self.keys.object("endpoints", ns, name), doc)
        return dict(doc)

    def get_endpoints(self, namespace: str, name: str) -> dict | None:
        return self.get_endpoints_at(namespace, name)[0]

    @_wrap_errors
    def get_endpoints_at(self, namespace: str, name: str) -> tuple[dict | None, int]:
        """The Endpoints document and the store revision that last wrote it (0: none)."""
        raw, meta = self.client.get(self.keys.object("endpoints", namespace, name))
        if raw is None:
            return None, 0
        return _loads(raw, f"{namespace}/{name}"), meta.mod_revision

    def list_endpoints(self) -> dict[str, dict]:
        return self._list("endpoints")

    @_wrap_errors
    def delete_endpoints(self, namespace: str, name: str) -> None:
        self.client.delete(self.keys.object("endpoints", namespace, name))

    # -- pods ------------------------------------------------------------------------------

    def put_pod(self, doc: Mapping) -> Pod:
        pod = validate_pod(doc)
        self._put(self.keys.object("pods", pod.namespace, pod.name), doc)
        return pod

    def get_pod(self, namespace: str, name: str) -> dict | None:
        raw = self._get(self.keys.object("pods", namespace, name))
        return _loads(raw, f"{namespace}/{name}") if raw is not None else None

    def list_pods(self) -> dict[str, dict]:
        return self._list("pods")

    def set_pod_ready(self, namespace: str, name: str, ready: bool) -> None:
        """Flip the pod's Ready condition (what a failing readiness probe does)."""
        doc = self.get_pod(namespace, name)
        if doc is None:
            raise NotFound(f"pod {namespace}/{name} not found")
        status = doc.setdefault("status", {})
        others = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
        status["conditions"] = others + [{"type": "Ready", "status": "True" if ready else "False"}]
        self.put_pod(doc)

    def mark_pod_terminating(self, namespace: str, name: str, when: str) -> None:
        """Set metadata.deletionTimestamp (RFC 3339): the pod is being deleted but still
        runs its grace period, so the endpoints controller lists it as terminating
        (serving while its Ready condition holds) until it is gone."""
        doc = self.get_pod(namespace, name)
        if doc is None:
            raise NotFound(f"pod {namespace}/{name} not found")
        doc.setdefault("metadata", {})["deletionTimestamp"] = when
        self.put_pod(doc)

    @_wrap_errors
    def delete_pod(self, namespace: str, name: str) -> bool:
        return bool(self.client.delete(self.keys.object("pods", namespace, name)))

    @_wrap_errors
    def _put(self, key: str, doc: Mapping) -> None:
        self.client.put(key, _dumps(doc))


def check_endpoint_pods(doc: Mapping, pods: Mapping[str, dict]) -> list[str]:
    """Every address of an Endpoints object must belong to a known pod: by ``targetRef``
    (the pod must exist and hold that IP) or, without one, by IP."""
    ns = (doc.get("metadata") or {}).get("namespace", "default")
    by_ip = {(p.get("status") or {}).get("podIP"): key for key, p in pods.items()}
    errors = []
    for i, subset in enumerate(doc.get("subsets") or []):
        for field_name in ("addresses", "notReadyAddresses"):
            for j, addr in enumerate(subset.get(field_name) or []):
                path, ip = f"subsets[{i}].{field_name}[{j}]", addr.get("ip")
                ref = addr.get("targetRef")
                if ref:
                    key = f"{ref.get('namespace', ns)}/{ref.get('name')}"
                    pod = pods.get(key)
                    if pod is None:
                        errors.append(f"{path}.targetRef: pod {key} is unknown")
                    elif (pod.get("status") or {}).get("podIP") != ip:
                        errors.append(
                            f"{path}.ip: {ip} is not the IP of pod {key} ({(pod.get('status') or {}).get('podIP')})"
                        )
                elif ip not in by_ip:
                    errors.append(f"{path}.ip: {ip} is not the IP of any known pod")
    return errors


def _with_placeholders(doc: dict, service_cidr: ipaddress.IPv4Network, node_port_range: tuple[int, int]) -> dict:
    """``doc`` with a stand-in clusterIP and nodePorts where they will be allocated, so
    that validation can run before allocation."""
    spec = dict(doc.get("spec") or {})
    if not spec.get("clusterIP"):
        spec["clusterIP"] = str(service_cidr.network_address + 1)
    wants_node_ports = spec.get("type") == "NodePort" or (
        spec.get("type") == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is not False
    )
    if wants_node_ports and isinstance(spec.get("ports"), list):
        given = {p.get("nodePort") for p in spec["ports"] if isinstance(p, Mapping)}
        spare = iter(n for n in range(node_port_range[1], node_port_range[0] - 1, -1) if n not in given)
        spec["ports"] = [
            dict(p, nodePort=p.get("nodePort") or next(spare, None)) if isinstance(p, Mapping) else p
            for p in spec["ports"]
        ]
    if (
        spec.get("type") == "LoadBalancer"
        and spec.get("externalTrafficPolicy") == "Local"
        and not spec.get("healthCheckNodePort")
    ):
        spec["healthCheckNodePort"] = node_port_range[0]  # allocated after validation
    return dict(doc, spec=spec)


def _loads(raw: bytes, where: str) -> dict | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        log.warning("ignoring unparseable object at %s", where)
        return None
    return doc


# --------------------------------------------------------------------------- list and watch


@dataclass(frozen=True)
class ObjectPut:
    kind: str  # "services" | "endpoints" | "pods"
    key: str  # "ns/name"
    doc: dict
    revision: int


@dataclass(frozen=True)
class ObjectDelete:
    kind: str
    key: str
    revision: int


class ObjectWatch(ListWatch):
    """List services, endpoints and pods of a ``ServiceStore``, then watch their three
    prefixes (store/watch.py), in a background thread; ``deliver`` gets a ``Snapshot``
    first, then ``ObjectPut``/``ObjectDelete`` events."""

    name = "object-watch"

    def _prefixes(self) -> tuple[str, ...]:
        # one watch per kind, not one on the project prefix: the proxy and the endpoints
        # controller may read these three prefixes only (store/etcd_rbac.py), and etcd
        # refuses a watch on a range the user cannot read as a whole
        return tuple(self.store.keys.prefix(kind) for kind in KINDS)

    def _list(self) -> Snapshot:
        return self.store.snapshot()

    def _to_update(self, event, header_revision: int):
        key = event.key.decode()
        parsed = self.store.keys.parse(key)
        if parsed is None:
            return None
        kind, ns, name = parsed
        revision = getattr(event, "mod_revision", 0) or header_revision
        if isinstance(event, pyetcd.events.DeleteEvent):
            return ObjectDelete(kind, f"{ns}/{name}", revision)
        doc = _loads(event.value, key)
        return ObjectPut(kind, f"{ns}/{name}", doc, revision) if doc is not None else None
