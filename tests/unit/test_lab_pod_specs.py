"""The pure parts of ``lab pod add`` and ``lab probe`` (lab/pods.py, lab/reachability.py):
port and label specs, upstream's port names, the expected-matrix rules and the matrix
as upstream prints it."""

from __future__ import annotations

import re

import pytest

from minikubenet.lab import reachability
from minikubenet.lab.pods import LabPod, PodPort, PodSpecError, parse_labels, parse_ports, parse_ref
from minikubenet.lab.reachability import Reachability, compare, marks, parse_port_list, pretty


def test_ports_are_named_as_the_upstream_tests_name_theirs():
    assert parse_ports("80/TCP,81/TCP,80/UDP,http=8080/tcp,9090") == [
        PodPort("serve-80-tcp", 80, "TCP"),
        PodPort("serve-81-tcp", 81, "TCP"),
        PodPort("serve-80-udp", 80, "UDP"),
        PodPort("http", 8080, "TCP"),
        PodPort("serve-9090-tcp", 9090, "TCP"),
    ]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("80/ICMP", "protocol ICMP is not served in the lab (one of TCP, UDP, SCTP)"),
        ("0/TCP", "PORT 1-65535"),
        ("http/TCP", "expected [NAME=]PORT[/PROTO]"),
        ("a-very-long-port-name=80/TCP", "must be no more than 15 characters"),
        ("80/TCP,80/TCP", "80/TCP is given twice"),
        ("a=80/TCP,a=81/TCP", "the port name 'a' is given twice"),
    ],
)
def test_bad_port_specs_are_refused(spec, expected):
    with pytest.raises(PodSpecError, match=re.escape(expected)):
        parse_ports(spec)


def test_labels():
    assert parse_labels("pod=a, app.kubernetes.io/name=web,empty=") == {
        "pod": "a",
        "app.kubernetes.io/name": "web",
        "empty": "",
    }
    for bad in ("pod", "pod=-a", "bad key=a"):
        with pytest.raises(PodSpecError):
            parse_labels(bad)
    assert parse_ref("x/a") == ("x", "a") and parse_ref("a") == ("default", "a")


def test_the_pod_document_carries_labels_and_named_container_ports():
    pod = LabPod(
        "x", "a", "n1", "t-pod-x.a", "t-pod-x.a", {"pod": "a"}, parse_ports("80/TCP,http=81/UDP"), ip="10.244.1.5"
    )
    assert pod.doc() == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": "x", "name": "a", "labels": {"pod": "a"}},
        "spec": {
            "nodeName": "n1",
            "containers": [
                {
                    "name": "app",
                    "ports": [
                        {"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"},
                        {"name": "http", "containerPort": 81, "protocol": "UDP"},
                    ],
                }
            ],
        },
        "status": {"podIP": "10.244.1.5", "conditions": [{"type": "Ready", "status": "True"}]},
    }


PODS = [f"{ns}/{p}" for ns in "xyz" for p in "abc"]


def test_expectation_rules_apply_in_order():
    r = Reachability(PODS, True).expect_all_ingress("x/a", False).expect("x/b", "x/a", True)
    r.expect_peer(False, from_ns="z", to_ns="y")
    assert r.expected[("y/a", "x/a")] is False and r.expected[("x/b", "x/a")] is True
    assert r.expected[("z/c", "y/b")] is False and r.expected[("z/c", "x/b")] is True
    assert sum(not v for v in r.expected.values()) == 8 + 9


def test_the_matrix_prints_as_upstream_and_the_diagonal_is_not_judged():
    pods = ["x/a", "x/b"]
    expected = Reachability(pods, True).expect("x/b", "x/a", False).expect("x/a", "x/a", False).expected
    assert pretty(pods, marks(expected)) == "-    x/a  x/b\nx/a  X    .\nx/b  X    ."
    observed = {**expected, ("x/a", "x/a"): True, ("x/a", "x/b"): False}
    wrong, text = compare(pods, expected, observed)
    assert wrong == [("x/a", "x/b")]
    assert "comparison (1 wrong):\n-    x/a  x/b\nx/a  -    X\nx/b  .    -" in text


def test_probe_port_lists(monkeypatch):
    assert parse_port_list("80/TCP,81/udp,82") == [(80, "TCP"), (81, "UDP"), (82, "TCP")]
    with pytest.raises(ValueError):
        parse_port_list("80/ICMP")
    monkeypatch.setattr(reachability, "sctp_missing", lambda: None)
    assert parse_port_list("80/sctp") == [(80, "SCTP")]
    monkeypatch.setattr(reachability, "sctp_missing", lambda: "this kernel has no SCTP (Protocol not supported; ...)")
    with pytest.raises(ValueError, match="this kernel has no SCTP"):
        parse_port_list("80/SCTP")


def test_sctp_ports_are_named_like_the_others():
    assert parse_ports("80/SCTP,x=81/sctp") == [PodPort("serve-80-sctp", 80, "SCTP"), PodPort("x", 81, "SCTP")]
