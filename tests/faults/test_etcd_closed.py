"""Issue 10, observed problem 2: "etcd is open to every pod".

A hostile pod runs etcdctl against the lab's etcd, reachable from it (the node
masquerades pod traffic to the underlay): over plain http, over https without a client
certificate, and with a stolen certificate of the proxy trying to write a node's
subnet lease and a pod IP record. Every attempt must fail, and nothing may have been
written. Meanwhile the agents, the proxies and the endpoints controller, each with its
own certificate and etcd user, keep working: the pods got their IPs, and a Service
balances over pods of every node.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from minikubenet.linux.netns import socket_in
from minikubenet.store.etcd_rbac import AGENT, PROXY
from tests.conftest import running_lab
from tests.faults.conftest import report

# short timeouts: a refused request must not look like a slow one
TIMEOUTS = ["--dial-timeout", "2s", "--command-timeout", "3s"]


@pytest.fixture(scope="module")
def lab(lab_root):
    with running_lab(lab_root, nodes=2, pods_per_node=1) as lab:
        yield lab


def from_pod(lab, *args: str) -> subprocess.CompletedProcess:
    """etcdctl inside the first pod's namespace, with nothing in its environment that
    the lab sets for its own clients."""
    pod = lab.topo.pods()[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "MINIKUBENET_"))}
    env["ETCDCTL_API"] = "3"
    return subprocess.run(
        ["ip", "netns", "exec", pod.netns, "etcdctl", *TIMEOUTS, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def stolen(lab, user: str) -> list[str]:
    tls = lab.etcd_tls(user)
    return ["--cacert", tls.ca, "--cert", tls.cert, "--key", tls.key]


def keys(lab, prefix: str) -> list[str]:
    return [k for k in lab.etcdctl("get", "--prefix", "--keys-only", prefix).splitlines() if k]


def test_the_pod_reaches_etcd_port(lab):
    """The attempts below fail because etcd refuses them, not because nothing answers."""
    pod = lab.topo.pods()[0]
    s = socket_in(f"/run/netns/{pod.netns}", socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((str(lab.topo.etcd_ip), 2379))
    finally:
        s.close()


def test_plain_http_can_neither_read_nor_write(lab):
    http = f"http://{lab.topo.etcd_ip}:2379"
    t0 = time.monotonic()
    put = from_pod(lab, "--endpoints", http, "put", "/x", "y")
    get = from_pod(lab, "--endpoints", http, "get", "--prefix", "/")
    assert put.returncode != 0 and get.returncode != 0, (put.stdout, get.stdout)
    assert "/coreos.com" not in get.stdout
    assert keys(lab, "/x") == []
    report("etcd closed: pod over http", f"put and get refused ({time.monotonic() - t0:.1f}s for both)")


def test_https_without_a_client_certificate_can_neither_read_nor_write(lab):
    """Even trusting the lab's CA (its certificate is no secret), a client without a
    certificate of its own fails the TLS handshake (--client-cert-auth)."""
    https = lab.topo.etcd_endpoint
    ca = ["--cacert", lab.etcd_tls().ca]
    for args in (["put", "/x", "y"], ["get", "--prefix", "/"], ["lease", "grant", "60"]):
        p = from_pod(lab, "--endpoints", https, *ca, *args)
        assert p.returncode != 0, (args, p.stdout)
        assert "/coreos.com" not in p.stdout
    p = from_pod(lab, "--endpoints", https, "--insecure-skip-tls-verify", "put", "/x", "y")
    assert p.returncode != 0
    assert keys(lab, "/x") == []
    report("etcd closed: pod over https, no client certificate", "put, get, lease grant refused")


def test_the_proxy_certificate_may_not_write_leases_or_ip_records(lab):
    """Least privilege: the proxy's user reads services, endpoints and pods only."""
    https = lab.topo.etcd_endpoint
    proxy = stolen(lab, PROXY)
    leases_before = lab.etcdctl("get", "--prefix", "/coreos.com/network/subnets/", "-w", "json")
    lease = from_pod(lab, "--endpoints", https, *proxy, "lease", "grant", "600")
    # etcd 3.4 lets any authenticated user grant a lease; attaching it to a key needs
    # write permission on the key
    lease_id = lease.stdout.split()[1] if lease.returncode == 0 else "0"
    subnet_key = "/coreos.com/network/subnets/10.244.250.0-24"
    attempts = {
        "put a subnet lease": ["put", "--lease", lease_id, subnet_key, '{"PublicIP":"6.6.6.6"}'],
        "take over a node's lease": [
            "put",
            "/coreos.com/network/subnets/" + lab.leases()["n1"]["subnet"].replace("/", "-"),
            '{"PublicIP":"6.6.6.6"}',
        ],
        "put a pod IP record": ["put", "/minikubenet/ipam/10.244.250.0-24/10.244.250.5", "{}"],
        "put a service": ["put", "/minikubenet/services/default/evil", "{}"],
        "rewrite endpoints": ["put", "/minikubenet/endpoints/default/web", "{}"],
        "rewrite the network config": ["put", "/coreos.com/network/config", "{}"],
        "read the pod IP records": ["get", "--prefix", "/minikubenet/ipam/"],
    }
    for what, args in attempts.items():
        p = from_pod(lab, "--endpoints", https, *proxy, *args)
        assert p.returncode != 0, f"the proxy's certificate could {what}: {p.stdout}"
        assert "permission denied" in p.stderr, (what, p.stderr)
    # what the proxy does need still works with its certificate
    assert from_pod(lab, "--endpoints", https, *proxy, "get", "--prefix", "/minikubenet/services/").returncode == 0
    assert keys(lab, subnet_key) == []
    assert keys(lab, "/minikubenet/ipam/10.244.250.0-24/") == []
    assert keys(lab, "/minikubenet/services/default/evil") == []
    assert _kvs(leases_before) == _kvs(lab.etcdctl("get", "--prefix", "/coreos.com/network/subnets/", "-w", "json"))
    report("etcd closed: the proxy's certificate", f"{len(attempts)} writes/reads outside its role: permission denied")


def test_the_agent_certificate_may_not_touch_services(lab):
    https = lab.topo.etcd_endpoint
    p = from_pod(lab, "--endpoints", https, *stolen(lab, AGENT), "put", "/minikubenet/services/default/evil", "{}")
    assert p.returncode != 0 and "permission denied" in p.stderr


def test_the_daemons_still_work_with_their_own_certificates(lab):
    """Agents: every pod has an IP record; proxies and controller: a Service over pods
    of both nodes balances to all of them (Lab.check_services)."""
    records = lab.pods()
    assert sorted(records) == sorted(p.name for p in lab.topo.pods())
    assert lab.check_services()


def _kvs(doc: str) -> list:
    import json

    return sorted((kv["key"], kv["value"]) for kv in json.loads(doc).get("kvs", []))
