"""``apply -f`` / ``delete -f`` as a library (minikubenet/manifests.py) over an in-memory
etcd with etcd's transaction semantics: several documents per file, YAML or JSON, all
validated before anything is written; an existing object is updated; a bad document
anywhere leaves the store exactly as it was."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikubenet import manifests
from minikubenet.manifests import ManifestError
from minikubenet.store.policy_objects import PolicyObjectStore
from minikubenet.store.services import ServiceStore
from tests.unit.fake_etcd import fake_etcd_store

FILE = """\
apiVersion: v1
kind: Namespace
metadata:
  name: x
  labels: {ns: x}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: x
spec:
  selector: {pod: a}
  ports:
  - {name: http, port: 80, targetPort: 80}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-80
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 80}]
"""


@pytest.fixture
def stores():
    etcd = fake_etcd_store()
    return PolicyObjectStore(etcd), ServiceStore(etcd, service_cidr="10.96.0.0/24")


def run_apply(stores, text, namespace="default"):
    docs = manifests.load_documents(text, "test.yaml")
    return manifests.apply(manifests.parse_manifests(docs, namespace), *stores)


def snapshot(stores):
    return {k: v.value for k, v in stores[0].client.kv.items()}


def test_apply_stores_every_kind_in_one_transaction(stores):
    objects, services = stores
    before = objects.client.transactions_run
    lines = run_apply(stores, FILE)
    assert lines == [
        "namespace/x created",
        "networkpolicy.networking.k8s.io/deny-all created",
        "service/web created",
        "networkpolicy.networking.k8s.io/allow-80 created",
    ]
    assert objects.client.transactions_run == before + 1
    assert objects.get_namespace("x")["metadata"]["labels"] == {"ns": "x", "kubernetes.io/metadata.name": "x"}
    assert set(objects.list_network_policies()) == {"x/deny-all", "default/allow-80"}
    assert objects.get_network_policy("x", "deny-all")["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    assert "policyTypes" not in objects.get_network_policy("default", "allow-80")["spec"]  # left as given
    assert services.get_service("x", "web")["spec"]["clusterIP"].startswith("10.96.0.")
    assert list(objects.list_namespaces()) == ["x"]
    assert objects.client.get("/minikubenet/networkpolicies/x/deny-all")[0] is not None


def test_apply_again_is_unchanged_and_a_change_updates(stores):
    objects, services = stores
    run_apply(stores, FILE)
    ip = services.get_service("x", "web")["spec"]["clusterIP"]
    assert run_apply(stores, FILE) == [
        "namespace/x unchanged",
        "networkpolicy.networking.k8s.io/deny-all unchanged",
        "service/web unchanged",
        "networkpolicy.networking.k8s.io/allow-80 unchanged",
    ]
    changed = FILE.replace("policyTypes: [Ingress]", "policyTypes: [Ingress, Egress]").replace(
        "- {name: http, port: 80, targetPort: 80}", "- {name: http, port: 8080, targetPort: 80}"
    )
    lines = run_apply(stores, changed)
    assert "networkpolicy.networking.k8s.io/deny-all configured" in lines and "service/web configured" in lines
    assert objects.get_network_policy("x", "deny-all")["spec"]["policyTypes"] == ["Ingress", "Egress"]
    svc = services.get_service("x", "web")["spec"]
    assert svc["clusterIP"] == ip and svc["ports"][0]["port"] == 8080  # the ClusterIP stays


def test_a_service_update_keeps_its_node_ports_and_releases_dropped_ones(stores):
    objects, services = stores
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "np"},
        "spec": {
            "type": "NodePort",
            "selector": {"a": "b"},
            "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}],
        },
    }
    run_apply(stores, json.dumps(svc))
    first = {p["name"]: p["nodePort"] for p in services.get_service("default", "np")["spec"]["ports"]}
    svc["spec"]["ports"] = svc["spec"]["ports"][:1]
    run_apply(stores, json.dumps(svc))
    assert [p["nodePort"] for p in services.get_service("default", "np")["spec"]["ports"]] == [first["a"]]
    claims = [k for k in objects.client.kv if "/nodeports/" in k]
    assert claims == [f"/minikubenet/nodeports/tcp/{first['a']}"]


def test_a_changed_cluster_ip_is_refused(stores):
    run_apply(stores, FILE)
    before = snapshot(stores)
    with pytest.raises(ManifestError, match='spec.clusterIP: Invalid value: "10.96.0.99": field is immutable'):
        run_apply(stores, FILE.replace("selector: {pod: a}", "selector: {pod: a}\n  clusterIP: 10.96.0.99"))
    assert snapshot(stores) == before


def test_two_new_services_in_one_file_get_different_cluster_ips(stores):
    text = "\n---\n".join(
        json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": n}, "spec": {"ports": [{"port": 80}]}})
        for n in ("s1", "s2")
    )
    run_apply(stores, text)
    ips = {stores[1].get_service("default", n)["spec"]["clusterIP"] for n in ("s1", "s2")}
    assert len(ips) == 2


@pytest.mark.parametrize(
    "bad, expected",
    [
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
            'document 5 (Pod p):\n  no matches for kind "Pod" in version "v1"',
        ),
        (
            "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p}\n",
            'no matches for kind "NetworkPolicy" in version "extensions/v1beta1"',
        ),
        ("kind: Namespace\nmetadata: {name: p}\n", "apiVersion: Required value"),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  ingress:\n"
            "  - ports: [{port: 81, endPort: 80}]\n",
            "  spec.ingress[0].ports[0].endPort: Invalid value: 80: must be greater than or equal to `port`",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 70000}]}\n",
            "spec.ports[0].port: 70000 is out of range",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, annotations: {a: 1}}\nspec: {ports: [{port: 80}]}\n",
            "metadata.annotations[a]: Invalid value: 1: must be a string",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, labels: {'-x': y}}\nspec: {ports: [{port: 80}]}\n",
            'metadata.labels: Invalid value: "-x"',
        ),
        ("just a string\n", "document 5 (?):\n  must be an object with apiVersion and kind, got str"),
    ],
)
def test_one_bad_document_stores_nothing(stores, bad, expected):
    before = snapshot(stores)
    with pytest.raises(ManifestError) as e:
        run_apply(stores, FILE + "---\n" + bad)
    assert expected in str(e.value), str(e.value)
    assert snapshot(stores) == before


def test_yaml_syntax_errors_name_the_file_and_line():
    with pytest.raises(ManifestError, match=r"error parsing f.yaml: .*line 2"):
        manifests.load_documents("a: b\n  c: [d\n", "f.yaml")


def test_json_and_lists_are_read():
    doc = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "z"}},
        ],
    }
    found = manifests.parse_manifests(manifests.load_documents(json.dumps(doc)))
    assert [m.name for m in found] == ["y", "z"]


def test_delete_removes_what_the_file_names_and_reports_what_was_missing(stores):
    objects, services = stores
    run_apply(stores, FILE)
    objects.delete_network_policy("default", "allow-80")
    docs = manifests.parse_manifests(manifests.load_documents(FILE), full=False)
    deleted, missing = manifests.delete(docs, *stores)
    assert deleted == [
        'namespace "x" deleted',
        'networkpolicy.networking.k8s.io "deny-all" deleted',
        'service "web" deleted',
    ]
    assert missing == ['networkpolicies.networking.k8s.io "allow-80" not found in namespace "default"']
    left = [k for k in objects.client.kv if not k.startswith("/minikubenet/ipam")]
    assert left == []


def test_a_large_file_is_written_in_transactions_within_etcds_limit(stores):
    objects, _ = stores
    many = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": f"p{i}", "namespace": "x"},
            "spec": {"podSelector": {}},
        }
        for i in range(300)
    ]
    before = snapshot(stores)
    bad = [*many, dict(many[0], metadata={"name": "bad", "namespace": "x"}, spec={"policyTypes": ["Up"]})]
    with pytest.raises(ManifestError, match="document 301"):
        run_apply(stores, json.dumps({"apiVersion": "v1", "kind": "List", "items": bad}))
    assert snapshot(stores) == before
    runs = objects.client.transactions_run
    run_apply(stores, json.dumps({"apiVersion": "v1", "kind": "List", "items": many}))
    assert objects.client.transactions_run == runs + 3  # 128 + 128 + 44 writes
    assert len(objects.list_network_policies("x")) == 300


def test_a_policy_in_a_namespace_that_does_not_exist_is_accepted(stores):
    objects, _ = stores
    doc = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "early", "namespace": "later"},
        "spec": {"podSelector": {}},
    }
    assert run_apply(stores, json.dumps(doc)) == ["networkpolicy.networking.k8s.io/early created"]
    assert objects.get_namespace("later") is None and objects.get_network_policy("later", "early") == doc


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(["v1", "networking.k8s.io/v1", "Namespace", "NetworkPolicy", "Service", "List", "x"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["apiVersion", "kind", "metadata", "name", "namespace", "spec", "items", "labels", "podSelector"]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(docs=st.lists(_values, max_size=3))
def test_parsing_any_documents_is_total(docs):
    text = "\n---\n".join(json.dumps(d) for d in docs)
    try:
        found = manifests.parse_manifests(manifests.load_documents(text))
    except ManifestError as e:
        assert e.problems
    else:
        assert all(m.kind in {"Namespace", "Service", "NetworkPolicy"} for m in found)
    try:
        named = manifests.parse_manifests(manifests.load_documents(text), full=False)  # what delete reads
    except ManifestError as e:
        assert e.problems
    else:
        assert all(isinstance(m.namespace, str) and isinstance(m.name, str) for m in named)


LB = """\
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: x}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""


def test_a_load_balancer_keeps_its_ports_and_its_ingress_ip_when_applied_again(stores):
    """Issue 13's LoadBalancer through apply -f: NodePorts and the health-check NodePort
    allocated and claimed; applying again changes none of them and keeps the ingress IP
    the load-balancer controller wrote into status (apply never writes status)."""
    objects, services = stores
    assert run_apply(stores, LB) == ["service/lb created"]
    first = services.get_service("x", "lb")
    node_port, hc_port = first["spec"]["ports"][0]["nodePort"], first["spec"]["healthCheckNodePort"]
    assert node_port != hc_port
    claims = {k for k in objects.client.kv if "/nodeports/" in k}
    assert claims == {f"/minikubenet/nodeports/tcp/{node_port}", f"/minikubenet/nodeports/tcp/{hc_port}"}
    first["status"] = {"loadBalancer": {"ingress": [{"ip": "192.168.50.10"}]}}  # the LB controller's write
    objects.client.put("/minikubenet/services/x/lb", json.dumps(first))
    assert run_apply(stores, LB) == ["service/lb unchanged"]
    run_apply(stores, LB.replace("targetPort: 8080", "targetPort: 9090"))
    again = services.get_service("x", "lb")
    assert again["spec"]["ports"][0]["nodePort"] == node_port and again["spec"]["healthCheckNodePort"] == hc_port
    assert again["status"] == first["status"] and again["spec"]["ports"][0]["targetPort"] == 9090
    assert {k for k in objects.client.kv if "/nodeports/" in k} == claims


NAMESPACE_X = """\
apiVersion: v1
kind: Namespace
metadata: {name: x}
"""

IN_X_AND_Y = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p1, namespace: x}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p2, namespace: x}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p1, namespace: y}
spec: {podSelector: {}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: y}
spec: {ports: [{port: 80}]}
"""


def test_deleting_a_namespace_deletes_what_is_stored_in_it(stores):
    objects, services = stores
    run_apply(stores, NAMESPACE_X + "---\n" + IN_X_AND_Y)
    x_ip = services.get_service("x", "web")["spec"]["clusterIP"]
    docs = manifests.parse_manifests(manifests.load_documents(NAMESPACE_X), full=False)
    deleted, missing = manifests.delete(docs, *stores)
    assert deleted == ['namespace "x" deleted'] and missing == []  # as kubectl says it
    assert objects.get_namespace("x") is None
    assert sorted(objects.list_network_policies()) == ["y/p1"]  # the other namespace's stays
    assert services.get_service("x", "web") is None and services.get_service("y", "web") is not None
    assert not any(x_ip in k for k in objects.client.kv)  # its ClusterIP claim freed too


def test_a_namespace_that_does_not_exist_deletes_nothing(stores):
    objects, _ = stores
    run_apply(stores, IN_X_AND_Y)  # policies in x, but no Namespace x was ever applied
    docs = manifests.parse_manifests(manifests.load_documents(NAMESPACE_X), full=False)
    deleted, missing = manifests.delete(docs, *stores)
    assert deleted == [] and missing == ['namespaces "x" not found']
    assert sorted(objects.list_network_policies()) == ["x/p1", "x/p2", "y/p1"]


def test_a_service_keeps_its_labels_and_annotations(stores):
    """The API server stores a Service's metadata as given; get shows it back, and a
    change to it alone is an update ("configured"), not "unchanged"."""
    objects, services = stores
    text = (
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: {app: web, tier: front}\n"
        "  annotations: {example.com/owner: team-a, note: free text with spaces}\n"
        "spec: {selector: {app: web}, ports: [{port: 80}]}\n"
    )
    assert run_apply(stores, text) == ["service/web created"]
    meta = services.get_service("default", "web")["metadata"]
    assert meta["labels"] == {"app": "web", "tier": "front"}
    assert meta["annotations"] == {"example.com/owner": "team-a", "note": "free text with spaces"}
    assert run_apply(stores, text) == ["service/web unchanged"]
    assert run_apply(stores, text.replace("tier: front", "tier: back")) == ["service/web configured"]
    assert services.get_service("default", "web")["metadata"]["labels"]["tier"] == "back"
