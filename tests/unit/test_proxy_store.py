"""Services, Endpoints and Pods in the store (minikubenet.store.services) against an
in-memory etcd with etcd's transaction semantics: ClusterIPs are never given twice,
bad input is refused with a clear message and leaves the store untouched."""

from __future__ import annotations

import copy
import ipaddress
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from minikubenet.k8s_objects import ValidationError, pod_doc
from minikubenet.service_allocation import allocatable, pick_cluster_ip
from minikubenet.store.services import NotFound, ServiceConflict, ServiceKeys, ServiceStore
from tests.unit.fake_etcd import fake_etcd_store

WEB = {
    "metadata": {"namespace": "demo", "name": "web"},
    "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
}


def web(name="web", **spec):
    doc = copy.deepcopy(WEB)
    doc["metadata"]["name"] = name
    doc["spec"].update(spec)
    return doc


@pytest.fixture
def store():
    return ServiceStore(fake_etcd_store(), service_cidr="10.96.0.0/24")


def keys_of(store):
    return dict((k, v.value) for k, v in store.client.kv.items())


# --------------------------------------------------------------------------- allocation


def test_a_created_service_gets_a_cluster_ip_from_the_service_network(store):
    svc = store.create_service(web())
    assert svc.cluster_ip in ipaddress.IPv4Network("10.96.0.0/24")
    assert svc.cluster_ip not in (ipaddress.IPv4Address("10.96.0.0"), ipaddress.IPv4Address("10.96.0.255"))
    stored = store.get_service("demo", "web")
    assert stored["spec"]["clusterIP"] == str(svc.cluster_ip)
    assert store.client.get(f"/minikubenet/serviceips/{svc.cluster_ip}")[0] == b"demo/web"


def test_a_requested_cluster_ip_is_honoured_and_never_given_twice(store):
    store.create_service(web(clusterIP="10.96.0.10"))
    before = keys_of(store)
    with pytest.raises(ServiceConflict, match="clusterIP 10.96.0.10 is already allocated to demo/web"):
        store.create_service(web("other", clusterIP="10.96.0.10"))
    assert keys_of(store) == before


def test_a_cluster_ip_outside_the_service_network_is_refused_and_nothing_stored(store):
    with pytest.raises(ValidationError, match="10.97.0.1 is outside the service network 10.96.0.0/24"):
        store.create_service(web(clusterIP="10.97.0.1"))
    assert keys_of(store) == {}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"clusterIP": "10.96.0.300"}, "spec.clusterIP: '10.96.0.300' is not a valid IPv4 address"),
        ({"ports": [{"name": "http", "port": 70000}]}, "spec.ports[0].port: 70000 is out of range"),
        ({"ports": [{"name": "http", "port": 80, "protocol": "SCTP"}]}, "unknown protocol 'SCTP'"),
        ({"selector": {"bad key!": "web"}}, "spec.selector: 'bad key!' is not a valid label key"),
        ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}, "duplicate port name 'a'"),
        ({"type": "NodePort", "ports": [{"name": "a", "port": 80, "nodePort": 80}]}, "nodePort: 80 is out of range"),
        ({"clusterIP": "None"}, "headless services (None) are not supported"),
    ],
)
def test_bad_specs_are_refused_with_the_field_and_nothing_is_stored(store, change, message):
    with pytest.raises(ValidationError) as e:
        store.create_service(web(**change))
    assert message in str(e.value)
    assert str(e.value).startswith("Service demo/web is invalid")
    assert keys_of(store) == {}


def test_every_problem_is_listed_at_once(store):
    with pytest.raises(ValidationError) as e:
        store.create_service(
            web(clusterIP="x", ports=[{"name": "a", "port": -1, "protocol": "ICMP"}], selector={"app": "-bad"})
        )
    assert len(e.value.errors) == 4, e.value.errors


def test_a_second_service_of_the_same_name_is_refused(store):
    first = store.create_service(web())
    with pytest.raises(ServiceConflict, match="a service with this name exists already"):
        store.create_service(web())
    assert store.get_service("demo", "web")["spec"]["clusterIP"] == str(first.cluster_ip)
    assert len(store.client.get_prefix("/minikubenet/serviceips/")) == 1


def test_concurrent_creates_never_share_an_ip(store):
    with ThreadPoolExecutor(max_workers=16) as pool:
        services = list(pool.map(lambda i: store.create_service(web(f"s{i}")), range(120)))
    ips = [s.cluster_ip for s in services]
    assert len(set(ips)) == 120
    held = {
        kv.key.decode().rsplit("/", 1)[1]: kv.value.decode()
        for kv in store.client.kv.values()
        if kv.key.startswith(b"/minikubenet/serviceips/")
    }
    assert held == {str(s.cluster_ip): f"demo/{s.name}" for s in services}


def test_a_full_service_network_says_so():
    store = ServiceStore(fake_etcd_store(), service_cidr="10.96.0.0/29")  # 6 usable addresses
    for i in range(6):
        store.create_service(web(f"s{i}"))
    with pytest.raises(ServiceConflict, match="10.96.0.0/29 is full"):
        store.create_service(web("s6"))


def test_losing_a_race_for_an_ip_picks_another_one(store):
    """Someone takes the IP we picked between our read and our transaction: the
    compare-and-create fails and we pick again, never sharing."""
    client = store.client
    real = client.transaction
    stolen = []

    def racing(compare, success, failure):
        if not stolen:
            ip_key = next(c[2] for c in compare if "/serviceips/" in c[2])
            client.put(ip_key, b"demo/thief")
            stolen.append(ip_key)
        return real(compare, success, failure)

    client.transaction = racing
    svc = store.create_service(web())
    assert f"/minikubenet/serviceips/{svc.cluster_ip}" != stolen[0]
    assert client.get(stolen[0])[0] == b"demo/thief"


def test_pick_cluster_ip_skips_taken_addresses_and_the_ends():
    net = ipaddress.IPv4Network("10.96.0.0/30")
    assert allocatable(net) == (int(net[1]), int(net[2]))
    assert pick_cluster_ip(net, [net[1]]) == net[2]
    assert pick_cluster_ip(net, [net[1], net[2]]) is None


def test_node_ports_are_allocated_and_never_shared(store):
    a = store.create_service(web("a", type="NodePort"))
    assert 30000 <= a.ports[0].node_port <= 32767
    b = store.create_service(web("b", type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 30080}]))
    assert b.ports[0].node_port == 30080
    before = keys_of(store)
    with pytest.raises(ServiceConflict, match="nodePort 30080/TCP is already allocated to demo/b"):
        store.create_service(web("c", type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 30080}]))
    assert keys_of(store) == before
    # the same number over UDP is a different port
    store.create_service(
        web("d", type="NodePort", ports=[{"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30080}])
    )


def test_delete_releases_the_ip_the_node_ports_and_the_endpoints(store):
    svc = store.create_service(web(type="NodePort"))
    store.put_pod(pod_doc("demo", "web-1", "10.244.1.5", "n1", {"app": "web"}))
    store.put_endpoints(endpoints("web", "10.244.1.5", "web-1"))
    store.delete_service("demo", "web")
    assert [k for k in store.client.kv if not k.startswith("/minikubenet/pods/")] == []
    again = store.create_service(web("other", clusterIP=str(svc.cluster_ip)))
    assert again.cluster_ip == svc.cluster_ip
    with pytest.raises(NotFound):
        store.delete_service("demo", "web")


# --------------------------------------------------------------------------- endpoints and pods


def endpoints(name, ip, pod=None, namespace="demo"):
    addr = {"ip": ip, **({"targetRef": {"kind": "Pod", "namespace": namespace, "name": pod}} if pod else {})}
    return {
        "metadata": {"namespace": namespace, "name": name},
        "subsets": [{"addresses": [addr], "ports": [{"name": "http", "port": 8080}]}],
    }


def test_endpoints_on_a_known_pod_are_stored(store):
    store.create_service(web(selector={}))
    store.put_pod(pod_doc("demo", "web-1", "10.244.1.5", "n1", {"app": "web"}))
    store.put_endpoints(endpoints("web", "10.244.1.5", "web-1"))
    store.put_endpoints(endpoints("web", "10.244.1.5"))  # by IP alone
    assert store.get_endpoints("demo", "web")["subsets"][0]["addresses"] == [{"ip": "10.244.1.5"}]


@pytest.mark.parametrize(
    "doc, message",
    [
        (endpoints("web", "10.244.1.9", "web-9"), "targetRef: pod demo/web-9 is unknown"),
        (endpoints("web", "10.244.1.9"), "10.244.1.9 is not the IP of any known pod"),
        (endpoints("web", "10.244.1.6", "web-1"), "10.244.1.6 is not the IP of pod demo/web-1 (10.244.1.5)"),
        (endpoints("nosuch", "10.244.1.5", "web-1"), "no service demo/nosuch"),
        (endpoints("web", "10.244.1.300", "web-1"), "is not a valid IPv4 address"),
    ],
)
def test_endpoints_on_unknown_pods_are_refused_and_nothing_stored(store, doc, message):
    store.create_service(web(selector={}))
    store.put_pod(pod_doc("demo", "web-1", "10.244.1.5", "n1", {"app": "web"}))
    before = keys_of(store)
    with pytest.raises(ValidationError) as e:
        store.put_endpoints(doc)
    assert message in str(e.value)
    assert keys_of(store) == before


def test_pods_with_bad_labels_or_ip_are_refused(store):
    with pytest.raises(ValidationError, match="'-x' is not a valid label value"):
        store.put_pod(pod_doc("demo", "p", "10.244.1.5", "n1", {"app": "-x"}))
    with pytest.raises(ValidationError, match="status.podIP: '10.244.1' is not a valid IPv4 address"):
        store.put_pod(pod_doc("demo", "p", "10.244.1", "n1", {"app": "web"}))
    assert keys_of(store) == {}


def test_pod_readiness_flips(store):
    store.put_pod(pod_doc("demo", "p", "10.244.1.5", "n1", {"app": "web"}))
    store.set_pod_ready("demo", "p", False)
    conditions = store.get_pod("demo", "p")["status"]["conditions"]
    assert conditions == [{"type": "Ready", "status": "False"}]


def test_snapshot_reads_all_kinds_at_one_revision(store):
    store.create_service(web())
    store.put_pod(pod_doc("demo", "p", "10.244.1.5", "n1", {"app": "web"}))
    snap = store.snapshot()
    assert set(snap.services) == {"demo/web"} and set(snap.pods) == {"demo/p"}
    assert snap.revision == store.client.revision


def test_keys_parse_only_objects():
    keys = ServiceKeys()
    assert keys.parse("/minikubenet/services/demo/web") == ("services", "demo", "web")
    assert keys.parse("/minikubenet/serviceips/10.96.0.1") is None
    assert keys.parse("/minikubenet/ipam/10.244.1.0-24/10.244.1.5") is None
    assert keys.parse("/minikubenet/pods/demo") is None


def test_stored_documents_are_kubernetes_shaped(store):
    store.create_service(web(sessionAffinity="ClientIP"))
    doc = json.loads(store.client.get("/minikubenet/services/demo/web")[0])
    assert doc["kind"] == "Service" and doc["apiVersion"] == "v1"
    assert doc["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
