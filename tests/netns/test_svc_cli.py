"""``minikubenet svc`` and ``minikubenet get`` against a real etcd (the one-node lab's,
run inside its namespace): services are created with a ClusterIP that is never given
twice, even by concurrent commands; bad input is refused with one clear message, exit
code 1, and nothing stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor


def mkn(lab, *args, stdin=None):
    """The CLI as a user runs it in etcd's namespace: `lab exec etcd -- minikubenet ...`
    (the root etcd user's certificate comes in the environment)."""
    argv = ["ip", "netns", "exec", lab.topo.etcd_netns, sys.executable, "-m", "minikubenet", *args]
    return subprocess.run(
        argv, capture_output=True, text=True, input=stdin, timeout=60, env={**os.environ, **lab.admin_env()}
    )


def keys(lab, prefix="/minikubenet/"):
    out = lab.etcdctl("get", "--prefix", "--keys-only", prefix)
    return sorted(k for k in out.splitlines() if k and "/ipam" not in k and "/pods/" not in k)  # ipam/, ipam-claims/


def test_create_get_delete(one_node):
    p = mkn(one_node, "svc", "create", "web", "-n", "demo", "--port", "http=80:8080", "--selector", "app=web")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("service/web created in demo: clusterIP 10.")
    ip = p.stdout.split("clusterIP ")[1].split(",")[0]
    listing = mkn(one_node, "svc", "get", "-n", "demo").stdout
    assert ip in listing and "app=web" in listing and "80/TCP" in listing
    doc = json.loads(mkn(one_node, "svc", "get", "web", "-n", "demo", "-o", "json").stdout)[0]
    assert doc["spec"]["clusterIP"] == ip and doc["kind"] == "Service"
    assert mkn(one_node, "get", "endpoints", "-A").returncode == 0
    assert mkn(one_node, "get", "pods", "-A").returncode == 0
    p = mkn(one_node, "svc", "delete", "web", "-n", "demo")
    assert p.returncode == 0 and f"clusterIP {ip} released" in p.stdout
    assert keys(one_node, "/minikubenet/service") == []


def test_bad_input_is_refused_and_nothing_is_stored(one_node):
    before = keys(one_node)
    cases = [
        (["--port", "80", "--cluster-ip", "10.96.0.300"], "'10.96.0.300' is not a valid IPv4 address"),
        (["--port", "70000"], "spec.ports[0].port: 70000 is out of range"),
        (["--port", "80/sctp"], "unknown protocol 'SCTP'"),
        (["--port", "80", "--selector", "app=-web"], "spec.selector[app]: '-web' is not a valid label value"),
        (["--port", "a=80", "--port", "a=81"], "duplicate port name 'a'"),
        (["--port", "80", "--cluster-ip", "192.168.0.1"], "outside the service network 10.96.0.0/12"),
    ]
    for extra, message in cases:
        p = mkn(one_node, "svc", "create", "bad", *extra)
        assert p.returncode == 1 and message in p.stderr and "nothing stored" in p.stderr, (extra, p.stderr)
        assert "Traceback" not in p.stderr
    assert keys(one_node) == before


def test_a_taken_cluster_ip_is_refused(one_node):
    assert mkn(one_node, "svc", "create", "first", "--port", "80", "--cluster-ip", "10.96.7.7").returncode == 0
    before = keys(one_node)
    p = mkn(one_node, "svc", "create", "second", "--port", "80", "--cluster-ip", "10.96.7.7")
    assert p.returncode == 1 and "clusterIP 10.96.7.7 is already allocated to default/first" in p.stderr
    assert keys(one_node) == before
    mkn(one_node, "svc", "delete", "first")


def test_concurrent_creates_get_distinct_ips(one_node):
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(
            pool.map(lambda i: mkn(one_node, "svc", "create", f"c{i}", "-n", "conc", "--port", "80"), range(10))
        )
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    ips = [r.stdout.split("clusterIP ")[1].split(",")[0] for r in results]
    assert len(set(ips)) == 10
    for i in range(10):
        mkn(one_node, "svc", "delete", f"c{i}", "-n", "conc")


def test_endpoints_on_an_unknown_pod_are_refused(one_node):
    assert mkn(one_node, "svc", "create", "manual", "--port", "http=80").returncode == 0
    doc = {
        "metadata": {"name": "manual"},
        "subsets": [
            {
                "addresses": [{"ip": "10.244.200.9", "targetRef": {"kind": "Pod", "name": "ghost"}}],
                "ports": [{"name": "http", "port": 8080}],
            }
        ],
    }
    p = mkn(one_node, "svc", "set-endpoints", "-f", "-", stdin=json.dumps(doc))
    assert p.returncode == 1 and "pod default/ghost is unknown" in p.stderr
    assert "/minikubenet/endpoints/default/manual" not in keys(one_node)
    mkn(one_node, "svc", "delete", "manual")
