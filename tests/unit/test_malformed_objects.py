"""One malformed object in etcd costs that object only: the endpoints controller, the
proxy and the agent's overlay controller skip it, log it once with its key, count it,
and serve every other object (malformed.py)."""

from __future__ import annotations

import ipaddress
import json
import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from minikubenet.k8s_objects import ValidationError, endpoints_from_k8s, pod_from_k8s, service_from_k8s
from minikubenet.malformed import MalformedObjects
from minikubenet.overlay.controller import OverlayController, VxlanBackend
from minikubenet.proxy.daemon import ProxyState
from minikubenet.proxy.endpoints_controller import EndpointsController
from minikubenet.store.etcd import lease_from_kv
from minikubenet.store.services import ObjectPut, Snapshot
from tests.unit.test_proxy_endpoints import pod, ready_ips, store, svc_doc  # noqa: F401 (fixture)

BAD = [
    {"metadata": "oops"},
    {"spec": "x"},
    {"status": {"podIP": "x"}},
    {"subsets": [1]},
    {"subsets": "x"},
    {"metadata": {"name": 5}},
    [],
    "s",
    7,
    None,
    {"spec": {"ports": [1]}},
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "metadata",
                    "spec",
                    "status",
                    "subsets",
                    "ports",
                    "name",
                    "namespace",
                    "ip",
                    "port",
                    "podIP",
                    "labels",
                    "containers",
                    "conditions",
                    "addresses",
                    "clusterIP",
                    "selector",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_every_parser_gives_a_result_or_a_validation_error_for_any_json(doc):
    for parse in (pod_from_k8s, service_from_k8s, endpoints_from_k8s):
        try:
            parse(doc)
        except ValidationError:
            pass


def test_the_tracker_logs_each_bad_version_once_and_counts_it(caplog):
    bad = MalformedObjects(logging.getLogger("t"))
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(5):
            bad.skip("pods", "demo/x", ValueError("metadata: must be an object"))
        bad.skip("pods", "demo/x", ValueError("spec: must be an object"))  # a new bad version
        bad.skip("services", "demo/y", ValueError("nope"))
    assert sum("demo/x" in r.message for r in caplog.records) == 2
    assert 'minikubenet_malformed_objects{kind="pods"} 1' in "\n".join(bad.current.lines())
    assert bad.seen.get(kind="pods") == 2 and bad.seen.get(kind="services") == 1
    bad.keep_only("pods", [])  # deleted
    assert bad.skipped() == [("services", "demo/y")]
    assert 'minikubenet_malformed_objects{kind="pods"} 0' in "\n".join(bad.current.lines())


def test_a_malformed_pod_leaves_every_service_its_endpoints(store, caplog):  # noqa: F811
    store.create_service(svc_doc("db", {"app": "db"}))
    store.client.put(store.keys.object("pods", "demo", "oops"), json.dumps({"metadata": "oops"}).encode())
    store.client.put(store.keys.object("pods", "demo", "bad-status"), b'{"status": "x", "metadata": {"name": "b"}}')
    c = EndpointsController(store)
    c.state = store.snapshot()
    with caplog.at_level(logging.INFO, logger="minikubenet.endpoints"):
        assert c.reconcile() == (2, 0)
        c.state.pods["demo/web-9"] = pod("web-9", "10.244.1.9", {"app": "web"})
        c.reconcile()
        c.reconcile()
    assert ready_ips(store.get_endpoints("demo", "web")) == ["10.244.1.1", "10.244.1.2", "10.244.1.9"]
    assert ready_ips(store.get_endpoints("demo", "db")) == ["10.244.2.1"]
    said = [r.message for r in caplog.records if "malformed" in r.message]
    assert len(said) == 2 and any("demo/oops" in m for m in said) and any("demo/bad-status" in m for m in said)
    assert 'minikubenet_malformed_objects{kind="pods"} 2' in c.metrics.render()


def test_a_malformed_service_is_skipped_and_the_others_keep_their_endpoints(store, caplog):  # noqa: F811
    store.client.put(store.keys.object("services", "demo", "broken"), b'{"metadata": "oops", "spec": []}')
    c = EndpointsController(store)
    c.state = store.snapshot()
    with caplog.at_level(logging.WARNING, logger="minikubenet.endpoints"):
        c.reconcile()
        c.reconcile()
    assert ready_ips(store.get_endpoints("demo", "web")) == ["10.244.1.1", "10.244.1.2"]
    assert sum("demo/broken" in r.message for r in caplog.records) == 1


def test_the_proxy_skips_malformed_services_and_endpoints_once(caplog):
    svc = {
        "metadata": {"namespace": "ns", "name": "web"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }
    eps = {
        "metadata": {"namespace": "ns", "name": "web"},
        "subsets": [{"addresses": [{"ip": "10.244.1.2"}], "ports": [{"name": "http", "port": 8080}]}],
    }
    state = ProxyState()
    with caplog.at_level(logging.WARNING, logger="minikubenet.proxy"):
        state.deliver(
            Snapshot(
                services={"ns/web": svc, "ns/bad": {"metadata": "oops"}},
                endpoints={"ns/web": eps, "ns/bad": {"subsets": [1]}},
                revision=5,
            )
        )
        state.deliver(
            Snapshot(
                services={"ns/web": svc, "ns/bad": {"metadata": "oops"}},
                endpoints={"ns/web": eps, "ns/bad": {"subsets": [1]}},
                revision=6,
            )
        )
        state.deliver(ObjectPut("services", "ns/bad2", {"spec": "x"}, 7))
    assert set(state.services) == {"ns/web"} and set(state.endpoints) == {"ns/web"}
    said = [r.message for r in caplog.records if "malformed" in r.message]
    assert len(said) == 3
    assert state.bad.seen.get(kind="services") == 2 and state.bad.seen.get(kind="endpoints") == 1


def lease(subnet, doc):
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return lease_from_kv(f"/coreos.com/network/subnets/{subnet.replace('/', '-')}", raw, 0)


def test_malformed_lease_documents_give_a_record_with_the_problem():
    assert lease("10.244.1.0/24", b"oops").problem == "not a JSON object"
    assert lease("10.244.1.0/24", {"PublicIP": 5}).problem == "PublicIP must be a string"
    assert lease("10.244.1.0/24", {"BackendData": "x"}).problem == "BackendData must be an object"
    assert lease("10.244.1.0/24", {"PublicIP": "172.31.0.12", "BackendType": "vxlan"}).problem == ""


class FakeKernel:
    def __init__(self):
        self.applied = []

    def apply_plan(self, plan):
        self.applied.append(str(plan.subnet))


def test_the_overlay_programs_every_good_lease_and_skips_a_malformed_one_once(caplog):
    kernel = FakeKernel()
    c = OverlayController(
        store=None,
        own_subnet=ipaddress.IPv4Network("10.244.9.0/24"),
        backend=VxlanBackend(),
        make_kernel=lambda: kernel,
    )
    good = {
        "PublicIP": "172.31.0.12",
        "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"},
    }
    records = [
        lease("10.244.1.0/24", b"{not json"),
        lease("10.244.2.0/24", good),
        lease("10.244.3.0/24", dict(good, BackendData=["x"])),
        lease("10.244.4.0/24", dict(good, PublicIP="172.31.0.14")),
    ]
    with caplog.at_level(logging.WARNING, logger="minikubenet.overlay.controller"):
        c.apply_events(c.cache.resync(records))
        assert sorted(str(p.subnet) for p in c.wanted()) == ["10.244.2.0/24", "10.244.4.0/24"]
        c.wanted()
    assert kernel.applied == ["10.244.2.0/24", "10.244.4.0/24"]
    said = [r.message for r in caplog.records if "malformed" in r.message]
    assert len(said) == 2 and any("10.244.1.0/24" in m for m in said)
    assert c.bad.seen.get(kind="leases") == 2
    c.apply_events(c.cache.resync(records[1:2] + records[3:]))  # the bad ones deleted
    assert c.bad.skipped() == []
