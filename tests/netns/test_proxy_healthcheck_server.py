"""The health-check NodePort listeners, on loopback with ports the kernel picks: 200/503
as endpoints come and go, listeners that follow the services, a taken port reported
while the other services are still served. (No namespace needed: loopback only.)"""

from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import json
import socket

from minikubenet.k8s_objects import Endpoint, Service, ServicePort
from minikubenet.proxy.healthcheck import ServiceHealthServer

IP = ipaddress.IPv4Address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lb_local(hc_port):
    return Service("ns1", "svc1", IP("172.30.1.1"), (ServicePort("p80", "TCP", 80, 80, 30080),),
                   type="LoadBalancer", external_traffic_policy="Local", health_check_node_port=hc_port)


def get(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/")
    r = c.getresponse()
    return r.status, dict(r.getheaders()), r.read().decode()


def test_server_answers_200_or_503_and_follows_the_services():
    port = free_port()
    svc = lb_local(port)
    server = ServiceHealthServer("n1", host="127.0.0.1")
    try:
        local = {"ns1/svc1": {"ns1/svc1:p80": [Endpoint(IP("10.0.0.1"), 80, "n1")]}}
        assert server.update({"ns1/svc1": svc}, local) == {}
        status, headers, body = get(port)
        assert status == 200 and json.loads(body)["localEndpoints"] == 1
        assert headers["Content-Type"] == "application/json"
        server.update({"ns1/svc1": svc}, {"ns1/svc1": {"ns1/svc1:p80": [Endpoint(IP("10.0.0.2"), 80, "n2")]}})
        status, _, body = get(port)
        assert status == 503 and json.loads(body)["localEndpoints"] == 0
        server.update({"ns1/svc1": dataclasses.replace(svc, external_traffic_policy="Cluster",
                                                       health_check_node_port=None)}, local)
        assert server.ports() == {}
    finally:
        server.close()


def test_a_taken_port_is_reported_and_the_others_still_served():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        other = free_port()
        server = ServiceHealthServer("n1", host="127.0.0.1")
        try:
            services = {"ns1/svc1": lb_local(busy),
                        "ns1/svc2": dataclasses.replace(lb_local(other), name="svc2")}
            problems = server.update(services, {})
            assert list(problems) == ["ns1/svc1"]
            assert f"failed to start healthcheck 'ns1/svc1' on port {busy}" in problems["ns1/svc1"]
            assert get(other)[0] == 503
        finally:
            server.close()
