"""The health-check NodePorts: how a load balancer learns which nodes have endpoints.

With ``externalTrafficPolicy: Local`` a node forwards external traffic only to pods on
itself, so a load balancer must not send to a node without one. Kubernetes gives each
such service a ``healthCheckNodePort``; on every node kube-proxy answers HTTP there
(pkg/proxy/healthcheck/service_health.go):

    200  {"service": {...}, "localEndpoints": 2, "serviceProxyHealthy": true}
    503  when the node has no local ready endpoint, or the proxy itself is unhealthy

and the load balancer (here: the L2 announcer, tests, curl) takes the nodes that say
200. The count is of ready endpoints on this node, summed over the service's ports
(kube-proxy's EndpointsMap.LocalReadyEndpoints). The ports are opened in filter
KUBE-NODEPORTS by the iptables renderer ("health check node port" ACCEPT).

The pure half (counts, responses) is testable without sockets; ``ServiceHealthServer``
owns one listener per port, opens and closes them as services come and go, and reports
a port it cannot bind (already taken) instead of failing the sync, as kube-proxy logs
its "FailedToStartServiceHealthcheck" event and carries on.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from minikubenet.k8s_objects import Endpoint, Service

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- pure

def health_check_ports(services: Mapping[str, Service]) -> dict[str, int]:
    """"ns/name" -> healthCheckNodePort, for the services that need one here (LoadBalancer
    with the Local external policy; validation guarantees the rest do not have one)."""
    return {k: s.health_check_node_port for k, s in services.items()
            if s.health_check_node_port and s.external_policy_local}


def local_ready_endpoints(services: Mapping[str, Service],
                          endpoints: Mapping[str, Mapping[str, Sequence[Endpoint]]],
                          node_name: str) -> dict[str, int]:
    """"ns/name" -> ready endpoints on this node, over all the service's ports."""
    return {key: sum(1 for eps in endpoints.get(key, {}).values() for e in eps
                     if e.ready and node_name and e.node_name == node_name)
            for key in services}


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: str


def health_response(namespace: str, name: str, local_endpoints: int, proxy_healthy: bool) -> Response:
    """kube-proxy's answer, byte for byte: its body is a tab-indented JSON text (a Go
    template after dedent), and its header X-Load-Balancing-Endpoint-Weight carries the
    count for load balancers that weigh nodes by it."""
    body = ("{\n"
            '\t"service": {\n'
            f'\t\t"namespace": "{namespace}",\n'
            f'\t\t"name": "{name}"\n'
            "\t},\n"
            f'\t"localEndpoints": {local_endpoints},\n'
            f'\t"serviceProxyHealthy": {"true" if proxy_healthy else "false"}\n'
            "}")
    status = 200 if local_endpoints and proxy_healthy else 503
    return Response(status, (("Content-Type", "application/json"),
                             ("X-Content-Type-Options", "nosniff"),
                             ("X-Load-Balancing-Endpoint-Weight", str(local_endpoints))), body)


# --------------------------------------------------------------------------- the listeners

class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_PortServer"

    def do_GET(self) -> None:        # noqa: N802 (http.server's naming)
        owner = self.server.owner
        namespace, _, name = self.server.service_key.partition("/")
        r = health_response(namespace, name, owner.count(self.server.service_key), owner.proxy_healthy())
        data = r.body.encode()
        self.send_response(r.status)
        for k, v in r.headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args) -> None:    # noqa: A002 (http.server's signature)
        pass                                          # a load balancer polls every few seconds


class _PortServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, service_key: str, owner: "ServiceHealthServer", host: str):
        self.service_key, self.owner = service_key, owner
        super().__init__((host, port), _Handler)


class ServiceHealthServer:
    """One HTTP listener per health-check port, kept in step with the services."""

    def __init__(self, node_name: str, proxy_healthy: Callable[[], bool] = lambda: True, host: str = ""):
        self.node_name, self.proxy_healthy, self.host = node_name, proxy_healthy, host
        self._lock = threading.Lock()
        self._servers: dict[str, _PortServer] = {}      # "ns/name" -> its listener
        self._counts: dict[str, int] = {}
        self.failures: dict[str, str] = {}               # "ns/name" -> why its port is not served

    def count(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key, 0)

    def update(self, services: Mapping[str, Service],
               endpoints: Mapping[str, Mapping[str, Sequence[Endpoint]]]) -> dict[str, str]:
        """Open/close listeners for the current services, refresh the counts. Returns
        {"ns/name": problem} for ports that could not be opened (retried next time)."""
        wanted = health_check_ports(services)
        counts = local_ready_endpoints({k: services[k] for k in wanted}, endpoints, self.node_name)
        with self._lock:
            self._counts = counts
        for key in [k for k, srv in self._servers.items() if wanted.get(k) != srv.server_address[1]]:
            self._close(key)
        failures = {}
        for key, port in sorted(wanted.items()):
            if key in self._servers:
                continue
            try:
                srv = _PortServer(port, key, self, self.host)
            except OSError as e:
                # kube-proxy: "node %s failed to start healthcheck %q on port %d: %v"
                failures[key] = f"node {self.node_name} failed to start healthcheck {key!r} on port {port}: {e.strerror or e}"
                if self.failures.get(key) != failures[key]:
                    log.error("%s", failures[key])
                continue
            threading.Thread(target=srv.serve_forever, name=f"healthcheck-{port}", daemon=True).start()
            self._servers[key] = srv
            log.info("health check for %s on port %d", key, port)
        self.failures = failures
        return failures

    def ports(self) -> dict[str, int]:
        return {k: s.server_address[1] for k, s in self._servers.items()}

    def _close(self, key: str) -> None:
        srv = self._servers.pop(key)
        srv.shutdown()
        srv.server_close()

    def close(self) -> None:
        for key in list(self._servers):
            self._close(key)


def port_is_free(port: int, host: str = "") -> bool:
    """Whether a TCP port can be bound here (for a friendlier message up front)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
