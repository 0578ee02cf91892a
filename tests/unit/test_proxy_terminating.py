"""Endpoint conditions end to end in the pure layers: a pod being deleted becomes a
terminating endpoint (EndpointSlice conditions ready/serving/terminating), the
Endpoints document carries it, and the proxy falls back to it as kube-proxy does."""

from __future__ import annotations

import ipaddress

from minikubenet.k8s_objects import Endpoint, Service, ServicePort, endpoints_from_k8s, pod_doc
from minikubenet.proxy.endpoints_controller import reconcile_once
from minikubenet.proxy.model import categorize_endpoints
from minikubenet.store.services import ServiceStore
from tests.unit.fake_etcd import fake_etcd_store

IP = ipaddress.IPv4Address


def store_with_pods(*pods):
    s = ServiceStore(fake_etcd_store())
    s.create_service({"metadata": {"namespace": "demo", "name": "web"},
                      "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
    for name, ip, ready in pods:
        s.put_pod(pod_doc("demo", name, ip, "n1", {"app": "web"}, ready))
    return s


def endpoints(s):
    return endpoints_from_k8s(s.get_endpoints("demo", "web"))["demo/web:http"]


def test_a_pod_being_deleted_is_terminating_and_serving_while_ready():
    s = store_with_pods(("web-1", "10.244.1.1", True), ("web-2", "10.244.1.2", True))
    s.mark_pod_terminating("demo", "web-2", "2026-12-05T03:00:00Z")
    reconcile_once(s)
    doc = s.get_endpoints("demo", "web")
    assert doc["subsets"][0]["notReadyAddresses"] == [{
        "ip": "10.244.1.2", "nodeName": "n1", "targetRef": {"kind": "Pod", "namespace": "demo", "name": "web-2"},
        "conditions": {"ready": False, "serving": True, "terminating": True}}]
    by_ip = {str(e.ip): e for e in endpoints(s)}
    assert by_ip["10.244.1.1"].ready and not by_ip["10.244.1.1"].terminating
    assert (by_ip["10.244.1.2"].ready, by_ip["10.244.1.2"].is_serving, by_ip["10.244.1.2"].terminating) == \
        (False, True, True)


def test_a_terminating_pod_whose_probe_fails_is_not_serving():
    s = store_with_pods(("web-1", "10.244.1.1", False))
    s.mark_pod_terminating("demo", "web-1", "2026-12-05T03:00:00Z")
    reconcile_once(s)
    (ep,) = endpoints(s)
    assert (ep.ready, ep.is_serving, ep.terminating) == (False, False, True)


SVC = Service("demo", "web", IP("10.96.0.10"), (ServicePort("http", "TCP", 80, 8080),))


def ep(ip, node="n1", ready=True, serving=None, terminating=False):
    return Endpoint(IP(ip), 8080, node, ready, serving=serving, terminating=terminating)


def test_cluster_policy_uses_ready_endpoints_while_any_exist():
    cat = categorize_endpoints(SVC, [ep("10.0.0.1"), ep("10.0.0.2", ready=False, serving=True, terminating=True)], "n1")
    assert [str(e.ip) for e in cat.cluster] == ["10.0.0.1"]


def test_cluster_policy_falls_back_to_serving_terminating_only():
    eps = [ep("10.0.0.2", ready=False, serving=True, terminating=True),
           ep("10.0.0.3", ready=False, serving=False, terminating=True),
           ep("10.0.0.4", ready=False)]                    # not ready, not terminating: never
    cat = categorize_endpoints(SVC, eps, "n1")
    assert [str(e.ip) for e in cat.cluster] == ["10.0.0.2"] and cat.has_any


def test_nothing_serving_means_no_endpoints():
    cat = categorize_endpoints(SVC, [ep("10.0.0.3", ready=False, serving=False, terminating=True)], "n1")
    assert cat.cluster == () and not cat.has_any


# --------------------------------------------------------------------------- LoadBalancer in the store

def lb(name="lb", **spec):
    return {"metadata": {"namespace": "demo", "name": name},
            "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}], **spec}}


def test_load_balancer_gets_node_ports_and_a_health_check_port_when_local():
    s = ServiceStore(fake_etcd_store())
    svc = s.create_service(lb(externalTrafficPolicy="Local"))
    assert svc.ports[0].node_port and svc.health_check_node_port
    assert svc.health_check_node_port != svc.ports[0].node_port
    assert s.create_service(lb("plain")).health_check_node_port is None
    no_np = s.create_service(lb("direct", allocateLoadBalancerNodePorts=False))
    assert no_np.ports[0].node_port is None
    s.delete_service("demo", "lb")       # frees the health-check port's claim too
    again = s.create_service(lb("lb2", externalTrafficPolicy="Local", healthCheckNodePort=svc.health_check_node_port))
    assert again.health_check_node_port == svc.health_check_node_port


def test_a_health_check_port_already_taken_is_refused_and_nothing_is_written():
    import pytest
    from minikubenet.store.services import ServiceConflict
    s = ServiceStore(fake_etcd_store())
    first = s.create_service(lb(externalTrafficPolicy="Local"))
    with pytest.raises(ServiceConflict, match=f"healthCheckNodePort {first.health_check_node_port} is already allocated to demo/lb"):
        s.create_service(lb("other", externalTrafficPolicy="Local", healthCheckNodePort=first.health_check_node_port))
    assert s.get_service("demo", "other") is None


def test_ingress_status_is_written_by_compare_and_swap():
    s = ServiceStore(fake_etcd_store())
    s.create_service(lb())
    assert s.set_load_balancer_ingress("demo", "lb", ["192.168.56.240"])
    from minikubenet.k8s_objects import service_from_k8s
    assert service_from_k8s(s.get_service("demo", "lb")).load_balancer_ips == (IP("192.168.56.240"),)
    assert s.set_load_balancer_ingress("demo", "lb", [], message="no available IPs")
    assert s.get_service("demo", "lb")["status"]["conditions"][0]["message"] == "no available IPs"
    assert not s.set_load_balancer_ingress("demo", "gone", ["192.168.56.241"])


# --------------------------------------------------------------------------- svc create flags

def test_svc_create_flags_become_service_fields_and_pass_validation():
    from minikubenet.cli import build_parser
    from minikubenet.cli.services import service_doc_from_args
    from minikubenet.k8s_objects import service_from_k8s
    args = build_parser().parse_args([
        "svc", "create", "web", "--port", "http=80:8080@30080", "--selector", "app=web", "--type", "LoadBalancer",
        "--external-ip", "192.168.56.50", "--external-traffic-policy", "Local", "--internal-traffic-policy", "Local",
        "--load-balancer-source-range", "192.168.56.0/24,10.1.0.0/16", "--health-check-node-port", "30999",
        "--cluster-ip", "10.96.0.50"])
    doc = service_doc_from_args(args)
    svc = service_from_k8s(doc, "10.96.0.0/12")
    assert (svc.type, svc.external_traffic_policy, svc.internal_traffic_policy) == ("LoadBalancer", "Local", "Local")
    assert [str(i) for i in svc.external_ips] == ["192.168.56.50"]
    assert [str(n) for n in svc.load_balancer_source_ranges] == ["192.168.56.0/24", "10.1.0.0/16"]
    assert svc.health_check_node_port == 30999
    direct = build_parser().parse_args(["svc", "create", "d", "--port", "80", "--type", "LoadBalancer",
                                        "--no-allocate-load-balancer-node-ports", "--cluster-ip", "10.96.0.51"])
    assert service_from_k8s(service_doc_from_args(direct)).ports[0].node_port is None


def test_svc_create_refuses_local_policy_on_a_cluster_ip_service(capsys):
    from minikubenet.cli import main
    rc = main(["svc", "create", "web", "--port", "80", "--external-traffic-policy", "Local",
               "--etcd-endpoints", "http://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert rc != 0 and "externalTrafficPolicy: 'Local' may only be set for externally-accessible services" in err
    assert "Traceback" not in err
