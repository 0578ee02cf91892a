"""The proxy's model: k8s-shaped Services/Endpoints/Pods in, validated dataclasses out."""

import copy
import ipaddress

import pytest

from minikubenet.k8s_objects import (
    ContainerPort,
    Endpoint,
    Pod,
    Service,
    ServicePort,
    ValidationError,
    derive_endpoints,
    endpoints_from_k8s,
    endpoints_to_k8s,
    pod_from_k8s,
    service_from_k8s,
    service_port_name,
    service_to_k8s,
)
from minikubenet.proxy.model import RenderOptions, ready_endpoints

IP = ipaddress.IPv4Address

WEB = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"namespace": "demo", "name": "web"},
    "spec": {
        "type": "ClusterIP",
        "clusterIP": "10.96.0.20",
        "selector": {"app": "web"},
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
    },
}


def web(**spec):
    doc = copy.deepcopy(WEB)
    doc["spec"].update(spec)
    return doc


def errors_of(doc, **kw) -> list[str]:
    with pytest.raises(ValidationError) as e:
        service_from_k8s(doc, **kw)
    return e.value.errors


def test_parse_a_service():
    svc = service_from_k8s(WEB, service_cidr="10.96.0.0/12")
    assert svc == Service(
        namespace="demo",
        name="web",
        cluster_ip=IP("10.96.0.20"),
        ports=(ServicePort("http", "TCP", 80, 8080),),
        selector={"app": "web"},
    )
    assert svc.port_keys() == ["demo/web:http"]
    assert svc.affinity_timeout == 10800


def test_defaults_follow_the_api_server():
    doc = web(ports=[{"port": 53}])  # protocol TCP, targetPort = port, unnamed
    del doc["spec"]["type"]
    svc = service_from_k8s(doc)
    assert svc.type == "ClusterIP"
    assert svc.ports == (ServicePort("", "TCP", 53, 53),)
    assert svc.port_keys() == ["demo/web"]  # unnamed port: no ":"


def test_round_trip_through_json():
    doc = web(
        type="NodePort",
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
        ports=[
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http-alt", "nodePort": 30080},
            {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053},
        ],
    )
    svc = service_from_k8s(doc)
    assert service_from_k8s(service_to_k8s(svc)) == svc
    assert svc.ports[0].target_port == "http-alt" and svc.affinity_timeout == 60


def test_headless_service_parses_but_is_not_proxied():
    assert service_from_k8s(web(clusterIP="None")).cluster_ip is None


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"clusterIP": "10.96.0.300"}, "spec.clusterIP: '10.96.0.300' is not a valid IPv4 address"),
        ({"clusterIP": ""}, "spec.clusterIP: required"),
        ({"ports": [{"name": "http", "port": 70000}]}, "spec.ports[0].port: 70000 is out of range (1-65535)"),
        ({"ports": [{"name": "http", "port": 0}]}, "spec.ports[0].port: 0 is out of range (1-65535)"),
        ({"ports": [{"name": "http", "port": "80"}]}, "spec.ports[0].port: '80' must be an integer"),
        (
            {"ports": [{"name": "http", "port": 80, "targetPort": 99999}]},
            "spec.ports[0].targetPort: 99999 is out of range (1-65535)",
        ),
        (
            {"ports": [{"name": "http", "port": 80, "targetPort": "not_a-name"}]},
            "spec.ports[0].targetPort: 'not_a-name' is neither a port number nor a valid port name",
        ),
        (
            {"ports": [{"name": "sctp", "protocol": "SCTP", "port": 80}]},
            "spec.ports[0].protocol: unknown protocol 'SCTP' (one of TCP, UDP)",
        ),
        (
            {"ports": [{"name": "a", "protocol": "tcp", "port": 80}]},
            "spec.ports[0].protocol: unknown protocol 'tcp' (one of TCP, UDP)",
        ),
        ({"ports": [{"name": "HTTP", "port": 80}]}, "spec.ports[0].name: 'HTTP' must be a DNS-1123 label"),
        ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}, "spec.ports: duplicate port name 'a'"),
        (
            {"ports": [{"port": 80}, {"name": "b", "port": 81}]},
            "spec.ports: every port must have a name when there is more than one",
        ),
        ({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}, "spec.ports: duplicate port 80/TCP"),
        ({"ports": []}, "spec.ports: at least one port is required"),
        ({"selector": ["app", "web"]}, "spec.selector: must be a map of label key to value, got list"),
        ({"selector": {"bad key!": "web"}}, "spec.selector: 'bad key!' is not a valid label key"),
        ({"selector": {"app": "-web"}}, "spec.selector[app]: '-web' is not a valid label value"),
        (
            {"type": "ExternalName"},
            "spec.type: 'ExternalName' is not supported (one of ClusterIP, NodePort, LoadBalancer)",
        ),
        ({"type": "LoadBalancer"}, "spec.ports[0].nodePort: required for type LoadBalancer"),
        (
            {"externalTrafficPolicy": "Local"},
            "spec.externalTrafficPolicy: 'Local' may only be set for externally-accessible services",
        ),
        (
            {
                "type": "LoadBalancer",
                "loadBalancerSourceRanges": ["10.0.0.0/33"],
                "allocateLoadBalancerNodePorts": False,
            },
            "spec.loadBalancerSourceRanges[0]: '10.0.0.0/33' must be a list of IP ranges",
        ),
        (
            {"loadBalancerSourceRanges": ["10.0.0.0/8"]},
            "spec.loadBalancerSourceRanges: may only be used when `type` is 'LoadBalancer'",
        ),
        (
            {
                "type": "LoadBalancer",
                "ports": [{"name": "a", "port": 80, "nodePort": 30080}],
                "healthCheckNodePort": 30001,
            },
            "spec.healthCheckNodePort: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
        ),
        ({"internalTrafficPolicy": "Nearby"}, "spec.internalTrafficPolicy: unsupported value 'Nearby'"),
        ({"externalIPs": ["1.2.3"]}, "spec.externalIPs[0]: '1.2.3' must be a valid IPv4 address"),
        (
            {"allocateLoadBalancerNodePorts": False},
            "spec.allocateLoadBalancerNodePorts: may only be used when `type` is 'LoadBalancer'",
        ),
        ({"type": "NodePort"}, "spec.ports[0].nodePort: required for type NodePort"),
        (
            {"ports": [{"name": "a", "port": 80, "nodePort": 30080}]},
            "spec.ports[0].nodePort: may only be set when spec.type is NodePort or LoadBalancer",
        ),
        (
            {"type": "NodePort", "ports": [{"name": "a", "port": 80, "nodePort": 8080}]},
            "spec.ports[0].nodePort: 8080 is out of range (30000-32767)",
        ),
        ({"sessionAffinity": "Cookie"}, "spec.sessionAffinity: 'Cookie' is not one of None, ClientIP"),
        (
            {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}},
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is out of range (1-86400)",
        ),
        (
            {"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}}},
            "spec.sessionAffinityConfig: must not be set when sessionAffinity is None",
        ),
    ],
)
def test_validation_messages(change, expected):
    errors = errors_of(web(**change))
    assert any(e.startswith(expected) for e in errors), errors


def test_cluster_ip_outside_the_service_network():
    assert errors_of(web(clusterIP="192.168.1.1"), service_cidr="10.96.0.0/12") == [
        "spec.clusterIP: 192.168.1.1 is outside the service network 10.96.0.0/12"
    ]


def test_bad_names():
    doc = copy.deepcopy(WEB)
    doc["metadata"] = {"namespace": "Demo", "name": "9web"}
    errors = errors_of(doc)
    assert errors[0].startswith("metadata.namespace: 'Demo' must be a DNS-1123 label")
    assert errors[1].startswith("metadata.name: '9web' must be a DNS-1035 label")


def test_every_problem_is_reported_at_once_with_the_object_named():
    with pytest.raises(ValidationError) as e:
        service_from_k8s(web(clusterIP="x", ports=[{"name": "a", "port": -1, "protocol": "ICMP"}]))
    assert len(e.value.errors) == 3
    assert str(e.value).startswith("Service demo/web is invalid:\n  spec.clusterIP:")


def test_node_port_range_is_configurable():
    doc = web(type="NodePort", ports=[{"name": "a", "port": 80, "nodePort": 3001}])
    assert service_from_k8s(doc, node_port_range=(1, 65535)).ports[0].node_port == 3001


# --------------------------------------------------------------------------- endpoints


def test_endpoints_round_trip():
    svc = service_from_k8s(
        web(ports=[{"name": "http", "port": 80, "targetPort": 8080}, {"name": "metrics", "port": 9090}])
    )
    eps = {
        "demo/web:http": [
            Endpoint(IP("10.244.1.5"), 8080, "n1", True, "web-1"),
            Endpoint(IP("10.244.2.5"), 8080, "n2", False, "web-2"),
        ],
        "demo/web:metrics": [Endpoint(IP("10.244.1.5"), 9090, "n1", True, "web-1")],
    }
    assert endpoints_from_k8s(endpoints_to_k8s(svc, eps)) == eps


def test_endpoints_subsets_are_addresses_times_ports():
    doc = {
        "metadata": {"namespace": "kube-system", "name": "kube-dns"},
        "subsets": [
            {
                "addresses": [{"ip": "10.244.1.2"}, {"ip": "10.244.2.2"}],
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            }
        ],
    }
    eps = endpoints_from_k8s(doc)
    assert sorted(eps) == ["kube-system/kube-dns:dns", "kube-system/kube-dns:dns-tcp"]
    assert [str(e) for e in eps["kube-system/kube-dns:dns"]] == ["10.244.1.2:53", "10.244.2.2:53"]


def test_endpoints_with_a_bad_ip():
    doc = {
        "metadata": {"namespace": "a", "name": "b"},
        "subsets": [{"addresses": [{"ip": "10.0.0.256"}], "ports": [{"port": 80}]}],
    }
    with pytest.raises(ValidationError, match=r"subsets\[0\].addresses\[0\].ip: '10.0.0.256'"):
        endpoints_from_k8s(doc)


def test_ready_endpoints_are_sorted_as_strings_like_kube_proxy():
    eps = [
        Endpoint(IP("10.0.0.2"), 80),
        Endpoint(IP("10.0.0.10"), 80),
        Endpoint(IP("10.0.0.3"), 80, ready=False),
        Endpoint(IP("10.0.0.2"), 80),
    ]
    assert [str(e) for e in ready_endpoints(eps)] == ["10.0.0.10:80", "10.0.0.2:80"]


# --------------------------------------------------------------------------- pods


def pod(name, ip, labels, ready=True, node="n1", ports=()):
    return Pod("demo", name, IP(ip) if ip else None, node, labels, ready, tuple(ports))


def test_derive_endpoints_from_matching_pods():
    svc = service_from_k8s(web())
    pods = [
        pod("web-b", "10.244.2.5", {"app": "web", "tier": "x"}, node="n2"),
        pod("web-a", "10.244.1.5", {"app": "web"}),
        pod("web-c", "10.244.3.5", {"app": "web"}, ready=False),
        pod("web-pending", None, {"app": "web"}),
        pod("db", "10.244.1.9", {"app": "db"}),
        Pod("other", "web-x", IP("10.244.1.7"), "n1", {"app": "web"}),
    ]
    eps = derive_endpoints(svc, pods)
    assert eps == {
        "demo/web:http": [
            Endpoint(IP("10.244.1.5"), 8080, "n1", True, "web-a"),
            Endpoint(IP("10.244.2.5"), 8080, "n2", True, "web-b"),
            Endpoint(IP("10.244.3.5"), 8080, "n1", False, "web-c"),
        ]
    }


def test_named_target_port_is_resolved_per_pod():
    svc = service_from_k8s(web(ports=[{"name": "http", "port": 80, "targetPort": "web"}]))
    pods = [
        pod("a", "10.244.1.5", {"app": "web"}, ports=[ContainerPort("web", 8080)]),
        pod("b", "10.244.1.6", {"app": "web"}, ports=[ContainerPort("web", 9090)]),
        pod("c", "10.244.1.7", {"app": "web"}, ports=[ContainerPort("web", 8080, "UDP")]),
    ]
    assert [str(e) for e in derive_endpoints(svc, pods)["demo/web:http"]] == ["10.244.1.5:8080", "10.244.1.6:9090"]


def test_an_empty_selector_selects_nothing():
    svc = service_from_k8s(web(selector={}))
    assert derive_endpoints(svc, [pod("a", "10.244.1.5", {"app": "web"})]) == {"demo/web:http": []}


def test_pod_from_k8s():
    doc = {
        "metadata": {"namespace": "demo", "name": "web-a", "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"ports": [{"name": "web", "containerPort": 8080}]}]},
        "status": {"podIP": "10.244.1.5", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    p = pod_from_k8s(doc)
    assert p == Pod("demo", "web-a", IP("10.244.1.5"), "n1", {"app": "web"}, True, (ContainerPort("web", 8080, "TCP"),))
    doc["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert not pod_from_k8s(doc).ready  # terminating: no new connections


def test_service_port_name_and_mark():
    assert service_port_name("ns1", "svc1", "p80") == "ns1/svc1:p80"
    assert service_port_name("ns1", "svc1", "") == "ns1/svc1"
    assert RenderOptions().masquerade_mark == "0x4000"
    assert RenderOptions(masquerade_bit=15).masquerade_mark == "0x8000"
