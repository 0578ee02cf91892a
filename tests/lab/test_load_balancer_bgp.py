"""LoadBalancer IPs announced over BGP (the bgp backend; MetalLB's BGP mode): the
client network (lab/bgp_client.py, a BIRD peered with every node) learns each ingress
IP as a /32 from the nodes allowed to serve it, reaches the pod through it keeping its
own address, and loses the route when the service goes. No node answers ARP for it.

One 3-node bgp lab for the module, 1 pod per node, iptables-mode proxies.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from minikubenet.lab import loadbalancer as LB
from minikubenet.lab import services as S
from minikubenet.linux import lb_announce, lb_routes
from minikubenet.waiting import wait_until
from tests.conftest import running_lab


@pytest.fixture(scope="module")
def lab(lab_root):
    """Name: lab. Scope: module. 3 bgp nodes, 1 pod each, the client network's BIRD."""
    with running_lab(lab_root, nodes=3, pods_per_node=1, backend="bgp") as lab:
        yield lab


def routes(netns: str, *selector: str) -> list[dict]:
    """``ip -j route show``; [] for a table that does not exist (yet): ip says so and fails."""
    p = subprocess.run(["ip", "-n", netns, "-j", "route", "show", *selector], capture_output=True, text=True)
    return json.loads(p.stdout or "[]") if p.returncode == 0 else []


def announced_by(lab, ip: str) -> list[str]:
    """The nodes whose speaker put ``ip`` into the LB table (our protocol number)."""
    return [
        n.name
        for n in lab.topo.nodes
        if any(
            r.get("dst") == ip
            for r in routes(n.netns, "table", str(lb_routes.LB_TABLE), "proto", str(lb_routes.LB_PROTO))
        )
    ]


def client_route(lab, ip: str) -> dict | None:
    return next((r for r in routes(LB.client_netns(lab), "proto", "bird") if r.get("dst") == ip), None)


def test_local_policy_ip_is_announced_by_the_endpoints_node_only_and_reached_through_it(lab):
    lines = LB.check_load_balancer(lab)
    first = lab.topo.nodes[0]
    assert "saw the client's own address" in lines[0] and f"announced over BGP by {first.name} alone" in lines[0]
    ip = S.store_call(lab, "get-service", name=LB.LB_SERVICE)["status"]["loadBalancer"]["ingress"][0]["ip"]
    assert announced_by(lab, ip) == [first.name]
    assert client_route(lab, ip)["gateway"] == str(first.ip)
    # BGP mode, not layer 2: no node holds the IP as an address to answer ARP with
    for n in lab.topo.nodes:
        out = subprocess.run(["ip", "-n", n.netns, "-j", "addr", "show", "dev", "eth0"], capture_output=True, text=True)
        labels = [a.get("label", "") for i in json.loads(out.stdout) for a in i.get("addr_info", [])]
        assert not any(lbl.endswith(lb_announce.LABEL_SUFFIX) for lbl in labels), (n.name, labels)
    assert [line.split(": ")[1].split(",")[0] for line in lines if line.startswith("health check")] == [
        "200",
        "503",
        "503",
    ]


def test_cluster_policy_ip_is_announced_by_every_node_and_withdrawn_with_its_service(lab):
    pod = lab.topo.nodes[1].pods[0]
    S.create_service(
        lab, "lb-cluster", S.pod_labels(pod), [{"name": "http", "port": 80, "targetPort": 8080}], type="LoadBalancer"
    )
    doc: dict = {}

    def has_ip() -> bool:
        doc.update(S.store_call(lab, "get-service", name="lb-cluster") or {})
        return bool(((doc.get("status") or {}).get("loadBalancer") or {}).get("ingress"))

    assert wait_until(has_ip, 20), doc
    ip = doc["status"]["loadBalancer"]["ingress"][0]["ip"]
    LB.run_speakers(lab)
    assert announced_by(lab, ip) == [n.name for n in lab.topo.nodes]
    assert wait_until(lambda: client_route(lab, ip) is not None, 10), routes(LB.client_netns(lab))
    # every node is a next hop the client may use (one per node over iBGP; BIRD installs the best)
    assert client_route(lab, ip)["gateway"] in {str(n.ip) for n in lab.topo.nodes}

    S.store_call(lab, "delete-service", name="lb-cluster")
    LB.run_speakers(lab)
    assert announced_by(lab, ip) == []
    assert wait_until(lambda: client_route(lab, ip) is None, 10), client_route(lab, ip)
