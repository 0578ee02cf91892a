"""The health-check NodePort server's pure half: kube-proxy's response shape and the
local count. (The listeners: tests/netns/test_proxy_healthcheck_server.py.)"""

from __future__ import annotations

import ipaddress
import json

from minikubenet.k8s_objects import Endpoint, Service, ServicePort
from minikubenet.proxy.healthcheck import health_response, local_ready_endpoints

IP = ipaddress.IPv4Address


def lb_local(hc_port):
    return Service("ns1", "svc1", IP("172.30.1.1"), (ServicePort("p80", "TCP", 80, 80, 30080),),
                   type="LoadBalancer", external_traffic_policy="Local", health_check_node_port=hc_port)


def test_body_is_kube_proxys_text():
    """service_health.go ServeHTTP: a dedented Go template, tab-indented."""
    r = health_response("ns1", "svc1", 2, True)
    assert r.status == 200
    assert r.body == '{\n\t"service": {\n\t\t"namespace": "ns1",\n\t\t"name": "svc1"\n\t},\n' \
                     '\t"localEndpoints": 2,\n\t"serviceProxyHealthy": true\n}'
    assert json.loads(r.body) == {"service": {"namespace": "ns1", "name": "svc1"},
                                  "localEndpoints": 2, "serviceProxyHealthy": True}
    assert ("X-Load-Balancing-Endpoint-Weight", "2") in r.headers
    assert health_response("ns1", "svc1", 0, True).status == 503
    assert health_response("ns1", "svc1", 3, False).status == 503


def test_count_is_ready_endpoints_on_this_node_over_all_ports():
    svc = lb_local(30000)
    eps = {"ns1/svc1": {"ns1/svc1:p80": [Endpoint(IP("10.0.0.1"), 80, "n1"), Endpoint(IP("10.0.0.2"), 80, "n2"),
                                         Endpoint(IP("10.0.0.3"), 80, "n1", ready=False, serving=True, terminating=True)],
                        "ns1/svc1:p81": [Endpoint(IP("10.0.0.1"), 81, "n1")]}}
    assert local_ready_endpoints({"ns1/svc1": svc}, eps, "n1") == {"ns1/svc1": 2}
    assert local_ready_endpoints({"ns1/svc1": svc}, eps, "n3") == {"ns1/svc1": 0}
