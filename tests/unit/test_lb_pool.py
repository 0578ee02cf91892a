"""LoadBalancer IP allocation from a pool and the layer-2 announcer choice (pure)."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from minikubenet.k8s_objects import Endpoint, Service, ServicePort
from minikubenet.loadbalancer.pool import PoolError, allocate, announcer, parse_pool

IP = ipaddress.IPv4Address


def lb(name, *ingress, etp="Cluster"):
    return Service(
        "demo",
        name,
        IP("10.96.0.10"),
        (ServicePort("http", "TCP", 80, 8080, 30080),),
        type="LoadBalancer",
        external_traffic_policy=etp,
        load_balancer_ips=tuple(IP(i) for i in ingress),
    )


def test_parse_pool_cidr_and_ranges():
    assert parse_pool("192.168.56.240/30") == [IP("192.168.56.241"), IP("192.168.56.242")]
    assert parse_pool("192.168.56.250-192.168.56.251, 192.168.56.253/32") == [
        IP("192.168.56.250"),
        IP("192.168.56.251"),
        IP("192.168.56.253"),
    ]
    for bad, msg in (("10.0.0.5-10.0.0.1", "ends before it starts"), ("nope", "neither a CIDR"), ("", "empty")):
        with pytest.raises(PoolError, match=msg):
            parse_pool(bad)


def test_allocation_keeps_valid_ips_and_fills_in_name_order():
    pool = parse_pool("192.168.56.240-192.168.56.242")
    services = {
        "demo/b": lb("b", "192.168.56.241"),
        "demo/a": lb("a"),
        "demo/c": lb("c"),
        "demo/plain": dataclasses.replace(lb("plain"), type="ClusterIP"),
    }
    got = allocate(services, pool)
    assert {k: str(a.ip) for k, a in got.items()} == {
        "demo/a": "192.168.56.240",
        "demo/b": "192.168.56.241",
        "demo/c": "192.168.56.242",
    }


def test_exhausted_pool_waits_with_metallbs_message_and_gets_an_ip_when_one_frees():
    pool = parse_pool("192.168.56.240/32")
    services = {"demo/a": lb("a", "192.168.56.240"), "demo/b": lb("b")}
    got = allocate(services, pool)
    assert got["demo/b"].ip is None
    assert got["demo/b"].message == 'Failed to allocate IP for "demo/b": no available IPs'
    del services["demo/a"]
    assert allocate(services, pool)["demo/b"].ip == IP("192.168.56.240")


def test_an_ingress_ip_outside_the_pool_is_replaced_and_said_so():
    pool = parse_pool("192.168.56.240/32")
    got = allocate({"demo/a": lb("a", "10.1.2.3")}, pool)["demo/a"]
    assert got.ip == IP("192.168.56.240") and "10.1.2.3 is not in the address pool" in got.message


def test_two_services_claiming_one_ip_the_first_by_name_keeps_it():
    pool = parse_pool("192.168.56.240-192.168.56.241")
    got = allocate({"demo/b": lb("b", "192.168.56.240"), "demo/a": lb("a", "192.168.56.240")}, pool)
    assert (got["demo/a"].ip, got["demo/b"].ip) == (IP("192.168.56.240"), IP("192.168.56.241"))


def test_announcer_is_one_stable_node_and_fails_over():
    ip, svc = IP("192.168.56.240"), lb("a")
    nodes = ["n1", "n2", "n3"]
    first = announcer(ip, svc, nodes, {})
    assert first in nodes and announcer(ip, svc, list(reversed(nodes)), {}) == first
    second = announcer(ip, svc, [n for n in nodes if n != first], {})
    assert second not in (None, first)


def test_local_policy_announces_only_from_nodes_with_a_ready_local_endpoint():
    ip, svc = IP("192.168.56.240"), lb("a", etp="Local")
    eps = {"demo/a:http": [Endpoint(IP("10.244.2.5"), 8080, "n2"), Endpoint(IP("10.244.3.5"), 8080, "n3", ready=False)]}
    assert announcer(ip, svc, ["n1", "n2", "n3"], eps) == "n2"
    assert announcer(ip, svc, ["n1", "n3"], eps) is None


def test_over_bgp_every_eligible_node_announces_every_ip():
    """MetalLB's BGP mode: no election; with eTP=Local only the nodes with a ready local
    endpoint announce (the routers spread over them), with Cluster every node."""
    from minikubenet.loadbalancer.speaker import my_ips

    services = {"demo/a": lb("a", "192.168.56.240"), "demo/b": lb("b", "192.168.56.241", etp="Local")}
    eps = {"demo/b": {"demo/b:http": [Endpoint(IP("10.244.2.5"), 8080, "n2")]}}
    nodes = ["n1", "n2", "n3"]
    assert my_ips(services, eps, nodes, "n1", "bgp") == {IP("192.168.56.240")}
    assert my_ips(services, eps, nodes, "n2", "bgp") == {IP("192.168.56.240"), IP("192.168.56.241")}
    # layer 2: one node per IP, the same election as before
    arp = [my_ips(services, eps, nodes, n) for n in nodes]
    assert sorted(str(ip) for ips in arp for ip in ips) == ["192.168.56.240", "192.168.56.241"]


# --------------------------------------------------------------------------- the controller, on the in-memory etcd


def test_controller_assigns_waits_and_reassigns_when_an_ip_frees():
    from minikubenet.loadbalancer.controller import reconcile
    from minikubenet.store.services import ServiceStore
    from tests.unit.fake_etcd import fake_etcd_store

    s = ServiceStore(fake_etcd_store())
    pool = parse_pool("192.168.56.240/32")

    def create(name):
        s.create_service(
            {
                "metadata": {"namespace": "demo", "name": name},
                "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], "selector": {"app": name}},
            }
        )

    create("a")
    create("b")
    assert reconcile(s, pool) == 2
    a, b = s.get_service("demo", "a"), s.get_service("demo", "b")
    assert a["status"]["loadBalancer"]["ingress"] == [{"ip": "192.168.56.240"}]
    assert b["status"]["conditions"][0]["message"] == 'Failed to allocate IP for "demo/b": no available IPs'
    assert reconcile(s, pool) == 0  # nothing changed, nothing written
    s.delete_service("demo", "a")
    assert reconcile(s, pool) == 1
    b = s.get_service("demo", "b")
    assert b["status"] == {"loadBalancer": {"ingress": [{"ip": "192.168.56.240"}]}}
