"""Malformed documents in etcd cost exactly themselves: a Pod, a Service, an Endpoints
object and a subnet lease that do not parse are skipped by every watch consumer (the
endpoints controller, every proxy, every agent's overlay), each is logged once with its
key and counted in a metric, and every other service keeps its endpoints and rules.

Reproduces observed problem 5 of the "Safe to install" issue: ``{"metadata":"oops"}``
under the pods prefix used to stop the endpoints controller with an AttributeError
("reconcile failed" every second), and with it the Endpoints of every service.
"""

from __future__ import annotations

import time

import pytest

from minikubenet.lab import daemons, probes
from minikubenet.lab import services as S
from minikubenet.waiting import wait_until
from tests.conftest import running_lab
from tests.faults.conftest import report

BAD = {
    "pod": ("/minikubenet/pods/default/oops", '{"metadata":"oops"}'),
    "pod-status": ("/minikubenet/pods/default/bad-status", '{"metadata":{"name":"bad-status"},"status":"x"}'),
    "service": ("/minikubenet/services/default/broken", '{"metadata":{"name":"broken"},"spec":"x"}'),
    # (of a service without a selector: the controller leaves those endpoints alone)
    "endpoints": ("/minikubenet/endpoints/default/manual", '{"subsets":[1]}'),
    "lease": ("/coreos.com/network/subnets/10.244.250.0-24", '{"PublicIP":5,"BackendData":"x"}'),
    "lease-json": ("/coreos.com/network/subnets/10.244.251.0-24", "not json at all"),
}


@pytest.fixture(scope="module")
def lab(lab_root):
    """Name: lab. Scope: module. A 2-node lab, 2 pods per node; removed in teardown."""
    with running_lab(lab_root, nodes=2, pods_per_node=2) as lab:
        yield lab


def put(lab, key: str, value: str) -> None:
    lab.etcdctl("put", key, value)


def metric(text: str, name: str, **labels) -> float:
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.split(" ")[0] == want)


def controller_metrics(lab) -> str:
    return probes.http_get(lab.topo.etcd_netns, "127.0.0.1", S.CONTROLLER_METRICS_PORT, "/metrics").decode()


def agent_metrics(lab, node) -> str:
    return probes.http_get(node.netns, str(node.ip), daemons.AGENT_METRICS_PORT, "/metrics").decode()


def wait_for(check, timeout: float = 15.0) -> bool:
    return bool(wait_until(check, timeout, interval=0.1))


def test_malformed_objects_are_skipped_once_counted_and_everything_else_served(lab):
    before = S.create_service(
        lab, "before", {"app": "web", "slot": "p1"}, [{"name": "http", "port": 80, "targetPort": 8080}]
    )
    S.store_call(
        lab,
        "create-service",
        doc={
            "metadata": {"namespace": "default", "name": "manual"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        },
    )
    for key, value in BAD.values():
        put(lab, key, value)
    # a service created after the bad documents still gets its endpoints and rules on every node
    t0 = time.monotonic()
    after = S.create_service(
        lab, "after", {"app": "web", "slot": "p2"}, [{"name": "http", "port": 80, "targetPort": 8080}]
    )
    report(
        "service created next to malformed objects",
        f"endpoints written and applied on every node in {time.monotonic() - t0:.2f} s",
    )
    # a pod change is still followed: n2-p1 not ready -> out of "before"'s endpoints
    S.store_call(lab, "set-pod-ready", name="n2-p1", ready=False)
    S.wait_endpoints(lab, "before", [lab.pod_ips["n1-p1"]])
    S.store_call(lab, "set-pod-ready", name="n2-p1", ready=True)
    S.wait_endpoints(lab, "before", sorted([lab.pod_ips["n1-p1"], lab.pod_ips["n2-p1"]]))
    client = next(p for p in lab.topo.pods() if p.name == "n1-p2")
    for svc in (before, after):
        assert probes.http_get(client.netns, svc["clusterIP"], 80, "/", timeout=3)
    ctl = controller_metrics(lab)
    assert wait_for(lambda: metric(controller_metrics(lab), "minikubenet_malformed_objects", kind="pods") == 2)
    assert metric(ctl, "minikubenet_malformed_objects", kind="services") == 1
    for node in lab.topo.nodes:
        text = S.metrics(lab, node)
        assert metric(text, "minikubenet_malformed_objects", kind="services") == 1, node.name
        assert metric(text, "minikubenet_malformed_objects", kind="endpoints") == 1, node.name
        assert wait_for(
            lambda node=node: metric(agent_metrics(lab, node), "minikubenet_malformed_objects", kind="leases") == 2
        )

    time.sleep(2.5)  # more than enough passes of every loop: nothing is logged again
    logs = {
        name: open(f"{lab.dir}/logs/{name}.log").read()
        for name in ["endpoints-controller"] + [f"{d}-{n.name}" for n in lab.topo.nodes for d in ("proxy", "agent")]
    }
    assert "reconcile failed" not in logs["endpoints-controller"]
    for what in ("default/oops", "default/bad-status", "default/broken"):
        assert (
            logs["endpoints-controller"].count(f"malformed pods {what}")
            + logs["endpoints-controller"].count(f"malformed services {what}")
            == 1
        ), what
    for n in lab.topo.nodes:
        assert logs[f"proxy-{n.name}"].count("malformed services default/broken") == 1
        assert logs[f"proxy-{n.name}"].count("malformed endpoints default/manual") == 1
        assert logs[f"agent-{n.name}"].count("malformed leases 10.244.250.0/24") == 1
        assert logs[f"agent-{n.name}"].count("malformed leases 10.244.251.0/24") == 1
        assert "Traceback" not in logs[f"agent-{n.name}"] + logs[f"proxy-{n.name}"]
    # pod-to-pod across nodes still works: the overlay kept every good lease
    a, b = (p for p in lab.topo.pods() if p.name in ("n1-p1", "n2-p1"))
    assert probes.http_get(a.netns, lab.pod_ips[b.name], 8080, "/", timeout=3)


def test_fixing_the_objects_clears_the_gauge(lab):
    for key, _ in BAD.values():
        lab.etcdctl("del", key)
    assert wait_for(lambda: metric(controller_metrics(lab), "minikubenet_malformed_objects", kind="pods") == 0)
    node = lab.topo.node("n1")
    assert wait_for(lambda: metric(S.metrics(lab, node), "minikubenet_malformed_objects", kind="services") == 0)
    assert wait_for(lambda: metric(agent_metrics(lab, node), "minikubenet_malformed_objects", kind="leases") == 0)
    assert metric(controller_metrics(lab), "minikubenet_malformed_objects_seen_total", kind="pods") == 2
