"""The lab's services: pods registered with labels, the endpoints controller, a
``minikubenet-proxy`` on every node, and a check that a Service really balances.

    <lab>-etcd   etcd + the endpoints controller (the lab's "control plane")
    <lab>-n1     agent + minikubenet-proxy (iptables or nftables mode)
    <lab>-n2     agent + minikubenet-proxy            pods carry labels:
    ...                                                 app=web, node=n1, slot=p1

A pod on any node connecting to a ClusterIP goes through *its own* node's rules
(PREROUTING: the proxy runs in the node namespace), is DNATed to one of the service's
pods, possibly on another node, and crosses the overlay to get there.

The lab's etcd is reachable only inside the lab's namespaces (the host namespace has
no route to the underlay), so everything that reads or writes services here runs as
``python -m minikubenet.lab.services OP JSON`` inside the etcd namespace: the same
ServiceStore the CLI uses, over etcd's loopback address, as the lab's root etcd user
(its client certificate in the environment, ``Lab.admin_env``). Each daemon gets its
own certificate: the proxies the proxy user's, the controller the endpoints-controller
user's (store/etcd_rbac.py says which keys each may touch). Processes are started with
the lab's own ``_start``, so ``lab down`` stops them by PID like every other daemon.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from minikubenet.lab import probes
from minikubenet.lab.topology import POD_PORT, PodSpec
from minikubenet.store import etcd_rbac
from minikubenet.waiting import wait_until

HEALTHZ_PORT = 10256
METRICS_PORT = 10249
CONTROLLER_METRICS_PORT = 10262  # the endpoints controller's metrics, in the etcd namespace
UDP_PORT = 5353  # the pods' UDP echo server (udpecho.py)
CHECK_SERVICE = "web"
NAMESPACE = "default"


class ServiceCheckFailed(Exception):
    pass


# --------------------------------------------------------------------------- pods


def pod_labels(pod: PodSpec) -> dict[str, str]:
    """app=web on every pod; node and slot (p1, p2...) to pick pods by place."""
    return {"app": "web", "node": pod.node, "slot": pod.name.rsplit("-", 1)[1]}


def pod_docs(lab) -> list[dict]:
    from minikubenet.k8s_objects import pod_doc

    ips = {name: rec["ip"] for name, rec in lab.pods().items()}
    return [
        pod_doc(
            NAMESPACE,
            p.name,
            ips.get(p.name),
            p.node,
            pod_labels(p),
            ports=[("http", POD_PORT, "TCP"), ("echo", UDP_PORT, "UDP")],
        )
        for p in lab.topo.pods()
    ]


# --------------------------------------------------------------------------- store calls


def store_call(lab, op: str, **kwargs):
    """Run one ServiceStore operation inside the etcd namespace; returns its JSON answer."""
    argv = [
        "ip",
        "netns",
        "exec",
        lab.topo.etcd_netns,
        sys.executable,
        "-m",
        "minikubenet.lab.services",
        op,
        json.dumps(kwargs),
    ]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, **lab.admin_env()})
    if p.returncode != 0:
        raise ServiceCheckFailed(f"{op} failed: {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout)


def _op(op: str, kw: dict):
    """The other side of ``store_call`` (runs in the etcd namespace)."""
    from minikubenet.k8s_objects import endpoints_from_k8s
    from minikubenet.store.etcd import EtcdStore, TLSFiles
    from minikubenet.store.services import ServiceStore

    env = os.environ.get
    etcd = EtcdStore(
        env("MINIKUBENET_ETCD_ENDPOINTS", "http://127.0.0.1:2379").split(","),
        tls=TLSFiles(env("MINIKUBENET_ETCD_CAFILE"), env("MINIKUBENET_ETCD_CERTFILE"), env("MINIKUBENET_ETCD_KEYFILE")),
    )
    store = ServiceStore(etcd)
    try:
        if op == "put-pods":
            for doc in kw["pods"]:
                store.put_pod(doc)
            return {"revision": store.snapshot().revision}
        if op == "delete-pod":
            store.delete_pod(kw["namespace"], kw["name"])
            return {}
        if op == "ensure-namespace":
            # lab/pods.py: a pod's namespace exists as an object, for namespaceSelectors
            from minikubenet.netpol_validation import validate_namespace
            from minikubenet.store.policy_objects import PolicyObjectStore

            objects = PolicyObjectStore(etcd)
            if objects.get_namespace(kw["name"]) is None:
                objects.put_namespace(
                    validate_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": kw["name"]}})
                )
            return {}
        if op == "create-service":
            svc = store.create_service(kw["doc"])
            return {"clusterIP": str(svc.cluster_ip), "ports": [p.node_port for p in svc.ports]}
        if op == "delete-service":
            store.delete_service(kw.get("namespace", NAMESPACE), kw["name"])
            return {}
        if op == "get-service":
            return store.get_service(kw.get("namespace", NAMESPACE), kw["name"])
        if op == "set-pod-ready":
            store.set_pod_ready(kw.get("namespace", NAMESPACE), kw["name"], kw["ready"])
            return {}
        if op == "wait-endpoints":
            # until the controller has written the expected ready IPs; returns the revision
            ns = kw.get("namespace", NAMESPACE)
            want = sorted(kw["ready"]) if "ready" in kw else _ready_pod_ips(store, ns, kw["name"])
            seen: list = [None, 0]

            def written() -> bool:
                seen[:] = store.get_endpoints_at(ns, kw["name"])
                if seen[0] is None:
                    return False
                eps = endpoints_from_k8s(seen[0])
                return sorted({str(e.ip) for es in eps.values() for e in es if e.ready}) == want

            if wait_until(written, kw.get("timeout", 20)):
                return {"revision": seen[1]}
            return {"error": f"endpoints {ns}/{kw['name']} still {seen[0]!r}, want ready {want}"}
        raise SystemExit(f"unknown op {op}")
    finally:
        etcd.close()


def _ready_pod_ips(store, namespace: str, name: str) -> list[str]:
    """The IPs of the ready pods the service selects, as the store has them now."""
    from minikubenet.k8s_objects import selector_matches, service_from_k8s
    from minikubenet.proxy.endpoints_controller import valid_pods

    svc = service_from_k8s(store.get_service(namespace, name))
    pods = valid_pods(store.list_pods()).values()  # as the controller sees them: malformed ones skipped
    return sorted(
        str(p.ip)
        for p in pods
        if p.namespace == namespace and p.ready and p.ip and selector_matches(svc.selector, p.labels)
    )


# --------------------------------------------------------------------------- daemons


def proxy_argv(lab, node, mode: str, extra=()) -> list[str]:
    """The lab's proxies sync faster than kube-proxy's defaults (at most every 0.1 s
    instead of 1 s; a flush check every 5 s instead of 30 s) so tests wait less."""
    return [
        sys.executable,
        "-m",
        "minikubenet.proxy.daemon",
        "--etcd-endpoints",
        lab.topo.etcd_endpoints,
        *lab.etcd_tls(etcd_rbac.PROXY).argv(),
        "--node-name",
        node.name,
        "--mode",
        mode,
        "--min-sync-period",
        "0.1",
        "--sync-period",
        "5",
        "--healthz-bind-address",
        f"0.0.0.0:{HEALTHZ_PORT}",
        "--metrics-bind-address",
        f"127.0.0.1:{METRICS_PORT}",
        *extra,
    ]


def start(lab, mode: str = "iptables") -> None:
    """Register the pods, start the endpoints controller and one proxy per node, and
    wait until every proxy has applied its first sync. Called by ``Lab.up()``."""
    t = lab.topo
    store_call(lab, "put-pods", pods=pod_docs(lab))
    log = os.path.join(lab.dir, "logs", "endpoints-controller.log")
    lab._start(
        t.etcd_netns,
        [
            sys.executable,
            "-m",
            "minikubenet.proxy.endpoints_controller",
            "--etcd-endpoints",
            t.etcd_endpoints,
            *lab.etcd_tls(etcd_rbac.ENDPOINTS_CONTROLLER).argv(),
            "--metrics-bind-address",
            f"127.0.0.1:{CONTROLLER_METRICS_PORT}",
            *_lb_pool_argv(t),
        ],
        log,
        "endpoints-controller",
    )
    for node in t.nodes:
        _service_route(lab, node)
    start_proxies(lab, mode)
    for p in t.pods():
        start_udp_echo(lab, p)
    lab.say(f"  proxies ready ({mode} mode) on {', '.join(n.name for n in t.nodes)}")


def _lb_pool_argv(topo) -> list[str]:
    """LoadBalancer addresses for the controller: part of the underlay (lab/loadbalancer.py)."""
    from minikubenet.lab.topology import lb_pool_spec

    spec = lb_pool_spec(topo.underlay)
    return ["--lb-pool", spec] if spec else []


def _service_route(lab, node, service_cidr: str = "10.96.0.0/12") -> None:
    """A route for the service network in the node namespace, as a real node's default
    route provides: a process *on the node* connecting to a ClusterIP needs some route
    for the address before its OUTPUT chain may DNAT it. (Pods need nothing: their
    packets are DNATed in PREROUTING, before routing.)"""
    subprocess.run(
        ["ip", "-n", node.netns, "route", "replace", service_cidr, "dev", "eth0"], check=True, capture_output=True
    )


def start_proxies(lab, mode: str, nodes=None, extra=()) -> None:
    for node in nodes or lab.topo.nodes:
        log = os.path.join(lab.dir, "logs", f"proxy-{node.name}.log")
        lab._start(node.netns, proxy_argv(lab, node, mode, extra), log, f"proxy {node.name}")
    start_policy_controllers(lab, mode, nodes)
    wait_applied(lab, 0, nodes)
    wait_policy_applied(lab, 0, nodes)


def start_policy_controllers(lab, mode: str, nodes=None) -> None:
    """One NetworkPolicy controller per node (policy/daemon.py), in the proxy's mode."""
    from minikubenet.lab.daemons import policy_argv

    for node in nodes or lab.topo.nodes:
        log = os.path.join(lab.dir, "logs", f"policy-{node.name}.log")
        lab._start(
            node.netns,
            policy_argv(lab.topo.etcd_endpoints, node.name, mode, lab.etcd_tls(etcd_rbac.POLICY)),
            log,
            f"policy {node.name}",
        )


def wait_policy_applied(lab, revision: int, nodes=None, timeout: float = 30.0) -> None:
    """Until every node's policy controller has applied etcd ``revision`` (0: any sync)."""
    from minikubenet.lab.daemons import POLICY_HEALTHZ_PORT

    deadline = time.monotonic() + timeout
    for node in nodes or lab.topo.nodes:

        def applied(node=node) -> bool:
            try:
                h = json.loads(probes.http_get(node.netns, "127.0.0.1", POLICY_HEALTHZ_PORT, "/healthz"))
            except (probes.ProbeFailed, OSError, ValueError):
                return False
            return bool(h["lastUpdated"]) and h["appliedRevision"] >= revision

        if not wait_until(applied, max(0.0, deadline - time.monotonic())):
            from minikubenet.lab.processes import tail

            raise ServiceCheckFailed(
                f"the policy controller on {node.name} has not applied revision {revision}; "
                f"its log ends with:\n{tail(os.path.join(lab.dir, 'logs', f'policy-{node.name}.log'))}"
            )


def proxy_records(lab, nodes=None):
    from minikubenet.lab.processes import ProcessRecord

    names = {f"{what} {n.name}" for n in nodes or lab.topo.nodes for what in ("proxy", "policy")}
    out = []
    for r in lab._load_state().get("processes", []):
        rec = ProcessRecord(**r)
        if rec.what in names and rec.alive():
            out.append(rec)
    return out


def stop_proxies(lab, nodes=None) -> None:
    from minikubenet.lab import processes

    processes.stop([r.pid for r in proxy_records(lab, nodes)])


def restart_proxies(lab, mode: str, extra=()) -> None:
    """Stop every proxy and start them in ``mode``; the new ones remove what the other
    mode left behind."""
    stop_proxies(lab)
    start_proxies(lab, mode, extra=extra)


def start_udp_echo(lab, pod: PodSpec) -> None:
    from minikubenet.lab import udpecho

    log = os.path.join(lab.dir, "logs", f"udp-{pod.name}.log")
    lab._start(
        pod.netns, [sys.executable, "-I", "-S", udpecho.__file__, pod.name, str(UDP_PORT)], log, f"udp {pod.name}"
    )


def healthz(lab, node) -> dict:
    return json.loads(probes.http_get(node.netns, "127.0.0.1", HEALTHZ_PORT, "/healthz"))


def metrics(lab, node) -> str:
    return probes.http_get(node.netns, "127.0.0.1", METRICS_PORT, "/metrics").decode()


def wait_applied(lab, revision: int, nodes=None, timeout: float = 30.0) -> None:
    """Until every proxy's rules reflect etcd ``revision`` (0: any successful sync)."""
    deadline = time.monotonic() + timeout  # one deadline for all the nodes
    for node in nodes or lab.topo.nodes:
        state: list = [None]

        def applied(node=node, state=state) -> bool:
            try:
                state[0] = healthz(lab, node)
            except (probes.ProbeFailed, OSError, ValueError) as e:
                state[0] = e
                return False
            return bool(state[0]["lastUpdated"]) and state[0]["appliedRevision"] >= revision

        if not wait_until(applied, max(0.0, deadline - time.monotonic())):
            from minikubenet.lab.processes import tail

            raise ServiceCheckFailed(
                f"the proxy on {node.name} has not applied revision {revision} "
                f"({state[0]}); its log ends with:\n"
                f"{tail(os.path.join(lab.dir, 'logs', f'proxy-{node.name}.log'))}"
            )


# --------------------------------------------------------------------------- services


def create_service(lab, name: str, selector: dict, ports: list[dict], **spec) -> dict:
    """Create a service and wait until its endpoints are written and every proxy has
    applied them. Returns {"clusterIP": ..., "ports": [nodePorts], "revision": ...}."""
    doc = {"metadata": {"namespace": NAMESPACE, "name": name}, "spec": {"selector": selector, "ports": ports, **spec}}
    answer = store_call(lab, "create-service", doc=doc)
    answer["revision"] = wait_endpoints(lab, name)
    return answer


def wait_endpoints(lab, name: str, ready_ips: list[str] | None = None) -> int:
    """Until the controller has written these ready endpoints (default: the ready pods
    the service selects) and every proxy applied them; returns that write's revision."""
    got = store_call(lab, "wait-endpoints", name=name, **({"ready": ready_ips} if ready_ips is not None else {}))
    if "error" in got:
        raise ServiceCheckFailed(got["error"])
    wait_applied(lab, got["revision"])
    return got["revision"]


def hit(netns: str, ip: str, port: int, n: int, workers: int = 16, timeout: float = 3.0) -> collections.Counter:
    """``n`` separate TCP connections from ``netns`` to ip:port, each reading the pod
    server's whoami answer: how many reached which pod ("<error>" for failures). Each
    connection has its own source port, so the proxy balances each one anew."""

    def one(_):
        try:
            return probes.whoami(netns, ip, port, timeout)["pod"]
        except (probes.ProbeFailed, OSError, ValueError, KeyError):
            return "<error>"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return collections.Counter(pool.map(one, range(n)))


class UdpClient:
    """One UDP socket inside a namespace, connected to ip:port: every ``ask`` sends from
    the same source port, so all its datagrams are one conntrack flow."""

    def __init__(self, netns: str, ip: str, port: int):
        from minikubenet.linux.netns import path_of, socket_in

        self.sock = socket_in(path_of(netns), socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect((ip, port))

    def ask(self, timeout: float = 0.5) -> str | None:
        """The pod that answered, or None (no answer in time)."""
        self.sock.settimeout(timeout)
        try:
            self.sock.send(b"who")
            return json.loads(self.sock.recv(2048))["pod"]
        except (OSError, ValueError, KeyError):
            return None

    def close(self) -> None:
        self.sock.close()


def check_service(lab, connections_per_client: int = 12) -> list[str]:
    """The --check of services: a ClusterIP service over the first pod of every node
    (selector app=web, slot=p1); the other pods (through their node's PREROUTING) and
    every node itself (through OUTPUT) connect to it, and all together they must reach
    every endpoint. (An endpoint is not its own client: reaching yourself through your
    service also needs hairpin mode on the pod's bridge port, checked separately.)"""
    from minikubenet.lab.topology import POD_PORT as port

    t = lab.topo
    endpoints = [n.pods[0] for n in t.nodes if n.pods]
    if not endpoints:
        return ["service check skipped: the lab has no pods"]
    if store_call(lab, "get-service", name=CHECK_SERVICE) is None:
        create_service(
            lab, CHECK_SERVICE, {"app": "web", "slot": "p1"}, [{"name": "http", "port": 80, "targetPort": port}]
        )
    ip = store_call(lab, "get-service", name=CHECK_SERVICE)["spec"]["clusterIP"]
    clients = [(p.name, p.netns) for n in t.nodes for p in n.pods[1:]] + [(n.name, n.netns) for n in t.nodes]

    def from_client(client):
        name, netns = client
        got = hit(netns, ip, 80, connections_per_client, workers=4)
        if got["<error>"]:
            raise ServiceCheckFailed(
                f"{name} -> service {CHECK_SERVICE} ({ip}:80): "
                f"{got['<error>']} of {connections_per_client} connections failed ({dict(got)})"
            )
        return got

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = dict(zip((c[0] for c in clients), pool.map(from_client, clients)))
    reached = set().union(*answers.values())
    missing = {p.name for p in endpoints} - reached
    if missing:
        raise ServiceCheckFailed(
            f"service {CHECK_SERVICE} ({ip}:80): {len(clients) * connections_per_client} "
            f"connections never reached {', '.join(sorted(missing))}"
        )
    lines = [
        f"service {NAMESPACE}/{CHECK_SERVICE} {ip}:80 from {c}: {sum(got.values())} connections to {len(got)} pods"
        for c, got in answers.items()
    ]
    lines.append(
        f"service {NAMESPACE}/{CHECK_SERVICE} {ip}:80: {len(clients) * connections_per_client} connections "
        f"from {len(clients)} pods and nodes reached all {len(endpoints)} endpoints (one pod per node)"
    )
    return lines


if __name__ == "__main__":
    print(json.dumps(_op(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})))
