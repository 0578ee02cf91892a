"""``lab pod add|delete|list``, ``lab exec NS/POD`` and ``lab probe`` on a 2-node lab, as a
user runs them: pods with a namespace, labels and named ports are made through the CNI
plugin, serve every port they are given (TCP and UDP), appear in etcd as Pod objects a
policy can select, and the probe prints the upstream e2e tests' reachability matrix.
One lab for the module (no service proxy: nothing here needs one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from minikubenet.lab import pods as lab_pods
from minikubenet.lab import reachability
from minikubenet.linux import named_netns
from tests.conftest import running_lab


@pytest.fixture(scope="module")
def lab(lab_root):
    with running_lab(lab_root, nodes=2, pods_per_node=0, proxy=False) as lab:
        yield lab


def mkn(lab, *args):
    """The CLI on the host, finding the test's lab under its temporary root."""
    return subprocess.run(
        [sys.executable, "-m", "minikubenet", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MINIKUBENET_LAB_ROOT": os.path.dirname(lab.dir)},
    )


def etcd_json(lab, key):
    out = lab.etcdctl("get", key, "--print-value-only")
    return json.loads(out) if out.strip() else None


def test_pods_serve_their_ports_across_nodes_and_are_in_etcd(lab):
    name = lab.topo.name
    p = mkn(
        lab,
        "lab",
        "pod",
        "add",
        "a",
        "--name",
        name,
        "--namespace",
        "x",
        "--node",
        "n1",
        "--labels",
        "pod=a,app=web",
        "--ports",
        "80/TCP,81/TCP,80/UDP,http=8080/TCP",
    )
    assert p.returncode == 0, p.stderr
    assert "pod/a created in x on n1: IP 10.244." in p.stdout
    p = mkn(lab, "lab", "pod", "add", "b", "--name", name, "-n", "y", "--node", "n2", "--labels", "pod=b")
    assert p.returncode == 0, p.stderr

    doc = etcd_json(lab, "/minikubenet/pods/x/a")
    assert doc["metadata"]["labels"] == {"pod": "a", "app": "web"}
    assert doc["spec"]["nodeName"] == "n1"
    assert doc["spec"]["containers"][0]["ports"] == [
        {"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"},
        {"name": "serve-81-tcp", "containerPort": 81, "protocol": "TCP"},
        {"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"},
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
    ]
    assert doc["status"]["podIP"] == lab_pods.find_pod(lab, "x/a").ip
    assert etcd_json(lab, "/minikubenet/namespaces/y")["metadata"]["labels"] == {"kubernetes.io/metadata.name": "y"}

    listing = mkn(lab, "lab", "pod", "list", "--name", name).stdout
    assert "http=8080/TCP" in listing and "serve-81-udp=81/UDP" in listing
    status = mkn(lab, "lab", "status", "--name", name).stdout
    assert "app=web,pod=a" in status and "serve-80-tcp=80/TCP" in status

    p = mkn(lab, "lab", "exec", "--name", name, "x/a", "--", "ip", "-4", "-o", "addr", "show", "eth0")
    assert p.returncode == 0 and lab_pods.find_pod(lab, "x/a").ip in p.stdout

    a, b = lab_pods.find_pod(lab, "x/a"), lab_pods.find_pod(lab, "y/b")
    assert reachability.connect(b.netns, a.ip, 8080, "TCP")
    assert reachability.connect(a.netns, b.ip, 81, "UDP")
    assert not reachability.connect(a.netns, b.ip, 8080, "TCP", timeout=0.5)  # b does not serve 8080

    p = mkn(lab, "lab", "probe", "--name", name, "--ports", "80/TCP,80/UDP")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n\n")[0].splitlines() == ["80/TCP:", "-    x/a  y/b", "x/a  .    .", "y/b  .    ."]
    assert "80/UDP:\n-    x/a  y/b\nx/a  .    .\ny/b  .    ." in p.stdout


def test_bad_input_makes_nothing(lab):
    name = lab.topo.name
    before = named_netns.list_names(f"{name}-")
    for args, expected in (
        (["--node", "n1", "--ports", "80/ICMP"], "protocol ICMP is not served in the lab"),
        *([(["--node", "n1", "--ports", "80/SCTP"], "this kernel has no SCTP")] if reachability.sctp_missing() else []),
        (["--node", "n9"], "no node 'n9'"),
        (["--node", "n1", "--labels", "pod"], "expected key=value"),
        (["--node", "n1", "-n", "X"], "--namespace 'X'"),
        (["--node", "n1", "--ports", "a-very-long-port-name=80/TCP"], "must be no more than 15 characters"),
    ):
        p = mkn(lab, "lab", "pod", "add", "c", "--name", name, *args)
        assert p.returncode == 1 and expected in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
    assert named_netns.list_names(f"{name}-") == before
    assert etcd_json(lab, "/minikubenet/pods/default/c") is None
    p = mkn(lab, "lab", "pod", "delete", "--name", name, "x/nope")
    assert p.returncode == 1 and "no pod x/nope" in p.stderr


def test_delete_removes_the_pod_everywhere(lab):
    name = lab.topo.name
    p = mkn(lab, "lab", "pod", "add", "gone", "--name", name, "-n", "x", "--node", "n2")
    assert p.returncode == 0, p.stderr
    pod = lab_pods.find_pod(lab, "x/gone")
    p = mkn(lab, "lab", "pod", "delete", "--name", name, "x/gone")
    assert p.returncode == 0 and "pod/gone deleted from x" in p.stdout
    assert not named_netns.exists(pod.netns)
    assert etcd_json(lab, "/minikubenet/pods/x/gone") is None
    assert lab_pods.find_pod(lab, "x/gone") is None
    assert pod.ip not in lab.etcdctl("get", "--prefix", "--keys-only", "/minikubenet/ipam/")
