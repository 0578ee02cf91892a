"""The endpoints controller (the one place endpoints are derived) and the ``svc`` /
``get`` command line, against the in-memory etcd."""

from __future__ import annotations

import json

import pytest

from minikubenet.cli import CliError, build_parser
from minikubenet.cli.services import parse_port_spec, parse_selector, service_doc_from_args
from minikubenet.k8s_objects import endpoints_from_k8s, pod_doc
from minikubenet.proxy.endpoints_controller import EndpointsController, desired_endpoints, plan_writes, reconcile_once
from minikubenet.store.services import ObjectPut, ServiceStore
from tests.unit.fake_etcd import fake_etcd_store


def svc_doc(name, selector, ports=None):
    return {
        "metadata": {"namespace": "demo", "name": name},
        "spec": {"selector": selector, "ports": ports or [{"name": "http", "port": 80, "targetPort": "web"}]},
    }


def pod(name, ip, labels, ready=True, node="n1"):
    return pod_doc("demo", name, ip, node, labels, ready, ports=[("web", 8080, "TCP")])


@pytest.fixture
def store():
    s = ServiceStore(fake_etcd_store())
    s.create_service(svc_doc("web", {"app": "web"}))
    for i, ready in ((1, True), (2, True), (3, False)):
        s.put_pod(pod(f"web-{i}", f"10.244.1.{i}", {"app": "web"}, ready))
    s.put_pod(pod("db-1", "10.244.2.1", {"app": "db"}))
    return s


def ready_ips(doc):
    return sorted({str(e.ip) for es in endpoints_from_k8s(doc).values() for e in es if e.ready})


def test_endpoints_are_the_ready_pods_matching_the_selector(store):
    desired = desired_endpoints(store.list_services(), store.list_pods())
    doc = desired["demo/web"]
    assert ready_ips(doc) == ["10.244.1.1", "10.244.1.2"]
    assert [a["ip"] for a in doc["subsets"][0]["notReadyAddresses"]] == ["10.244.1.3"]
    assert doc["subsets"][0]["ports"] == [{"port": 8080, "protocol": "TCP", "name": "http"}]  # named targetPort


def test_reconcile_writes_only_what_changed_and_the_store_accepts_it(store):
    assert reconcile_once(store) == (1, 0)
    assert ready_ips(store.get_endpoints("demo", "web")) == ["10.244.1.1", "10.244.1.2"]
    writes = store.client.revision
    assert reconcile_once(store) == (0, 0) and store.client.revision == writes
    store.set_pod_ready("demo", "web-2", False)
    assert reconcile_once(store) == (1, 0)
    assert ready_ips(store.get_endpoints("demo", "web")) == ["10.244.1.1"]


def test_selectorless_services_keep_hand_written_endpoints_and_orphans_go(store):
    store.create_service(svc_doc("manual", {}))
    store.put_endpoints(
        {
            "metadata": {"namespace": "demo", "name": "manual"},
            "subsets": [{"addresses": [{"ip": "10.244.2.1"}], "ports": [{"name": "http", "port": 5432}]}],
        }
    )
    current = dict(store.list_endpoints(), **{"demo/gone": {"metadata": {"namespace": "demo", "name": "gone"}}})
    puts, deletes = plan_writes(
        store.list_services(), desired_endpoints(store.list_services(), store.list_pods()), current
    )
    assert set(puts) == {"demo/web"} and deletes == ["demo/gone"]


def test_the_controller_follows_the_watch(store):
    c = EndpointsController(store)
    c.deliver(store.snapshot())
    c.reconcile()
    new = pod("web-4", "10.244.1.4", {"app": "web"})
    store.put_pod(new)
    c.deliver(ObjectPut("pods", "demo/web-4", new, store.client.revision))
    assert c.reconcile() == (1, 0)
    assert ready_ips(store.get_endpoints("demo", "web")) == ["10.244.1.1", "10.244.1.2", "10.244.1.4"]


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    "spec, port",
    [
        ("80", {"port": 80, "protocol": "TCP"}),
        ("http=80:8080", {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}),
        ("dns=53/udp", {"name": "dns", "port": 53, "protocol": "UDP"}),
        ("web=80:web@30080", {"name": "web", "port": 80, "targetPort": "web", "protocol": "TCP", "nodePort": 30080}),
        ("x=99999", {"name": "x", "port": 99999, "protocol": "TCP"}),  # range checked by validation
    ],
)
def test_port_specs(spec, port):
    assert parse_port_spec(spec) == port


def test_bad_port_spec_and_selector():
    with pytest.raises(CliError, match="expected \\[NAME=\\]PORT"):
        parse_port_spec("a=b=c:")
    with pytest.raises(CliError, match="expected key=value"):
        parse_selector("app")
    assert parse_selector("app=web, tier=front") == {"app": "web", "tier": "front"}


def test_svc_create_arguments_build_a_kubernetes_service():
    args = build_parser().parse_args(
        [
            "svc",
            "create",
            "web",
            "-n",
            "demo",
            "--port",
            "http=80:8080",
            "--selector",
            "app=web",
            "--session-affinity",
            "ClientIP",
            "--affinity-timeout",
            "60",
            "--type",
            "NodePort",
        ]
    )
    doc = service_doc_from_args(args)
    assert doc["metadata"] == {"namespace": "demo", "name": "web"}
    assert doc["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 60}}
    assert doc["spec"]["type"] == "NodePort" and doc["spec"]["selector"] == {"app": "web"}


def test_svc_create_from_a_file(tmp_path):
    path = tmp_path / "svc.json"
    path.write_text(json.dumps({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}))
    args = build_parser().parse_args(["svc", "create", "-f", str(path), "-n", "demo"])
    assert service_doc_from_args(args)["metadata"] == {"name": "web", "namespace": "demo"}
    path.write_text("{not json")
    with pytest.raises(CliError, match="is not valid JSON"):
        service_doc_from_args(args)
