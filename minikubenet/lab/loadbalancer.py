"""The lab's LoadBalancer check (part of ``lab up --check``): a client that is not a
node reaches a service through its ingress IP, and keeps its own address.

    <lab>-sw  br0 ── <lab>-n1 (.11) ── <lab>-n2 (.12) ── ... ── <lab>-cl (.200, the client)

1. The endpoints controller (started with ``--lb-pool``, the underlay's .240-.247)
   gives the service ``lb`` (type LoadBalancer, externalTrafficPolicy Local, one pod on
   the first node behind it) an ingress IP.
2. The layer-2 speaker runs once on every node: the election puts the IP on the one
   node with a local endpoint, which answers ARP for it (gratuitous ARP sent).
3. The client connects to ingress-IP:80; the pod's server reports the peer address it
   saw, which must be the client's own (no masquerade with the Local policy).
4. The health-check NodePort says 200 on that node and 503 on every other (no local
   endpoint there), in kube-proxy's JSON.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time

from minikubenet.lab import probes
from minikubenet.lab import services as lab_services
from minikubenet.lab.services import NAMESPACE, ServiceCheckFailed, store_call
from minikubenet.lab.topology import POD_PORT, lb_pool_spec
from minikubenet.linux.netns import path_of, socket_in
from minikubenet.store import etcd_rbac
from minikubenet.waiting import wait_until

LB_SERVICE = "lb"
CLIENT_HOST = 200  # the client's host number on the underlay


def client_netns(lab) -> str:
    return f"{lab.topo.name}-cl"


def ensure_client(lab) -> tuple[str, str]:
    """A namespace on the underlay switch that is not a node (no agent, no proxy)."""
    ns, ip = client_netns(lab), lab.topo.underlay[CLIENT_HOST]
    if not os.path.exists(f"/run/netns/{ns}"):
        lab._netns(ns)
        lab._plug(ns, "cl", ip)
    return ns, str(ip)


def http_status(netns: str, ip: str, port: int, timeout: float = 3.0) -> tuple[int, str]:
    """(status, body) of GET / from inside ``netns``; any status, unlike probes.http_get."""
    s = socket_in(path_of(netns), socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        s.sendall(f"GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    except OSError as e:
        raise ServiceCheckFailed(f"{netns} -> {ip}:{port}: {e}") from None
    finally:
        s.close()
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    return int(head.split()[1]), body


def announce_mode(lab) -> str:
    """How the lab's nodes announce LB IPs: over BGP to the client network with the bgp
    backend (lab/bgp_client.py), else by answering ARP."""
    return "bgp" if lab._bgp_client_ip() else "arp"


def run_speakers(lab, nodes=None) -> None:
    """One pass of the speaker on every node taking part (default: all; the proxy
    user's certificate: it only reads services and endpoints)."""
    t = lab.topo
    members = list(nodes or t.nodes)
    names = ",".join(n.name for n in members)
    for node in members:
        argv = [
            "ip",
            "netns",
            "exec",
            node.netns,
            sys.executable,
            "-m",
            "minikubenet.loadbalancer.speaker",
            "--once",
            "--node-name",
            node.name,
            "--nodes",
            names,
            "--iface",
            "eth0",
            "--announce",
            announce_mode(lab),
            "--etcd-endpoints",
            t.etcd_endpoints,
            *lab.etcd_tls(etcd_rbac.PROXY).argv(),
        ]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise ServiceCheckFailed(f"speaker on {node.name} failed: {p.stderr.strip()[-1000:]}")


def connect_latency(netns: str, targets: dict[str, str], port: int, rounds: int = 40) -> dict[str, float]:
    """Median TCP connect() time (microseconds) from ``netns`` to each target, the
    targets alternating connection by connection so a slow moment hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, ip in targets.items():
            s = socket_in(path_of(netns), socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2.0)
            try:
                t = time.perf_counter()
                s.connect((ip, port))
                times[name].append((time.perf_counter() - t) * 1e6)
            except OSError:
                pass
            finally:
                s.close()
    return {name: statistics.median(ts) for name, ts in times.items() if ts}


def check_load_balancer(lab, timeout: float = 20.0) -> list[str]:
    t = lab.topo
    if not lb_pool_spec(t.underlay):
        return ["load-balancer check skipped: the underlay is smaller than a /24"]
    first = t.nodes[0]
    if not first.pods:
        return ["load-balancer check skipped: the first node has no pods"]
    pod = first.pods[0]
    client, client_ip = ensure_client(lab)
    if store_call(lab, "get-service", name=LB_SERVICE) is None:
        lab_services.create_service(
            lab,
            LB_SERVICE,
            lab_services.pod_labels(pod),
            [{"name": "http", "port": 80, "targetPort": POD_PORT}],
            type="LoadBalancer",
            externalTrafficPolicy="Local",
        )
    doc: dict = {}

    def has_ingress() -> bool:
        doc.update(store_call(lab, "get-service", name=LB_SERVICE) or {})
        return bool(((doc.get("status") or {}).get("loadBalancer") or {}).get("ingress"))

    if not wait_until(has_ingress, timeout):
        raise ServiceCheckFailed(f"service {LB_SERVICE} got no ingress IP: status {doc.get('status')!r}")
    lb_ip = doc["status"]["loadBalancer"]["ingress"][0]["ip"]
    hc_port = doc["spec"]["healthCheckNodePort"]
    run_speakers(lab)
    learned = ""
    if announce_mode(lab) == "bgp":
        route: dict = {}

        def client_learned() -> bool:
            found = [r for r in _routes(client, "proto", "bird") if r.get("dst") == lb_ip]
            route.update(found[0] if found else {})
            return bool(found)

        if not wait_until(client_learned, timeout):
            raise ServiceCheckFailed(f"the client network learned no BGP route to {lb_ip} (see `lab status`)")
        if route.get("gateway") != str(first.ip):
            raise ServiceCheckFailed(
                f"the client's BGP route to {lb_ip} goes via {route.get('gateway')}; want {first.ip} ({first.name}, "
                "the only node with a local endpoint: externalTrafficPolicy Local)"
            )
        learned = f"; announced over BGP by {first.name} alone, the client learned {lb_ip}/32 via {first.ip}"

    answer: dict = {}

    def reached() -> bool:
        try:
            answer.update(probes.whoami(client, lb_ip, 80, timeout=1.0))
            return True
        except (probes.ProbeFailed, OSError, ValueError):
            return False

    started = time.monotonic()
    if not wait_until(reached, timeout):
        raise ServiceCheckFailed(f"client {client_ip} -> {lb_ip}:80 (service {LB_SERVICE}): no answer")
    elapsed = time.monotonic() - started
    if answer.get("pod") != pod.name or answer.get("client") != client_ip:
        raise ServiceCheckFailed(
            f"client {client_ip} -> {lb_ip}:80: answered by {answer.get('pod')} seeing "
            f"{answer.get('client')}; want {pod.name} seeing the client's own address"
        )
    lines = [
        f"service {NAMESPACE}/{LB_SERVICE} (LoadBalancer, externalTrafficPolicy Local) ingress {lb_ip}:80 "
        f"from {client} ({client_ip}, not a node): pod {pod.name} saw the client's own address "
        f"(reachable after {elapsed:.1f}s){learned}"
    ]
    # Through the ingress IP vs the ClusterIP of the same service, from a pod on another
    # node (its own node's rules DNAT both; issue 13: ingress <= 1.1 x ClusterIP).
    other = next((n.pods[0] for n in t.nodes[1:] if n.pods), None)
    if other is not None:
        lat = connect_latency(other.netns, {"ingress": lb_ip, "cluster": doc["spec"]["clusterIP"]}, 80)
        if len(lat) == 2:
            lines.append(
                f"connect latency from {other.name}: ingress {lat['ingress']:.0f} us, ClusterIP "
                f"{lat['cluster']:.0f} us (ratio {lat['ingress'] / lat['cluster']:.2f}, median of 40 each)"
            )
    for node in t.nodes:
        node_ip, want = str(node.ip), 200 if node is first else 503

        def status_is(node_ip=node_ip, want=want) -> bool:
            try:
                return http_status(client, node_ip, hc_port, timeout=1.0)[0] == want
            except ServiceCheckFailed:
                return False

        if not wait_until(status_is, timeout):
            got = http_status(client, node_ip, hc_port)
            raise ServiceCheckFailed(f"health check {node.name} {node_ip}:{hc_port}: {got[0]}, want {want}")
        body = json.loads(http_status(client, node_ip, hc_port)[1])
        lines.append(f"health check {node.name} {node_ip}:{hc_port}: {want}, localEndpoints {body['localEndpoints']}")
    return lines


def _routes(netns: str, *selector: str) -> list[dict]:
    p = subprocess.run(["ip", "-n", netns, "-j", "route", "show", *selector], capture_output=True, text=True)
    return json.loads(p.stdout or "[]")
