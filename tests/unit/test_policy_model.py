"""NetworkPolicy semantics (minikubenet/policy/model.py), one test per point, and the
node plan (plan.py) agreeing with the model on every pair of the x/y/z layout."""

from __future__ import annotations

import pytest

from minikubenet.policy.model import Address, PolicyError, policy_from_k8s, verdict
from minikubenet.policy.plan import plan_allows, plan_node
from minikubenet.policy.selectors import SelectorError, parse_selector
from tests.unit.policy_cases import netpol, xyz_cluster


def addr(cluster, key):
    p = next(p for p in cluster.pods if p.key == key)
    return Address(p.ip, p)


def ok(cluster, src, dst, port=80, proto="TCP"):
    return verdict(cluster, addr(cluster, src), addr(cluster, dst), port, proto).allowed


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    "expr,labels,want",
    [
        ({"key": "a", "operator": "In", "values": ["1", "2"]}, {"a": "2"}, True),
        ({"key": "a", "operator": "In", "values": ["1"]}, {}, False),
        ({"key": "a", "operator": "NotIn", "values": ["1"]}, {}, True),
        ({"key": "a", "operator": "NotIn", "values": ["1"]}, {"a": "1"}, False),
        ({"key": "a", "operator": "Exists"}, {"a": ""}, True),
        ({"key": "a", "operator": "DoesNotExist"}, {"a": "x"}, False),
        ({"key": "a", "operator": "DoesNotExist"}, {"b": "x"}, True),
    ],
)
def test_match_expressions(expr, labels, want):
    assert parse_selector({"matchExpressions": [expr]}, "s").matches(labels) is want


def test_match_labels_and_expressions_are_anded():
    s = parse_selector({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]}, "s")
    assert s.matches({"a": "1", "b": "x"}) and not s.matches({"a": "1"}) and not s.matches({"b": "x"})
    assert parse_selector({}, "s").matches({"anything": "x"})


@pytest.mark.parametrize(
    "doc,msg",
    [
        ({"matchExpressions": [{"key": "a", "operator": "Maybe"}]}, "s.matchExpressions[0].operator: Unsupported"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "s.matchExpressions[0].values"),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "Required value"),
    ],
)
def test_bad_selectors(doc, msg):
    with pytest.raises(SelectorError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        parse_selector(doc, "s")


# --------------------------------------------------------------------------- semantics


def test_no_policy_allows_everything():
    c = xyz_cluster()
    assert all(ok(c, s.key, d.key) for s in c.pods for d in c.pods)


def test_deny_all_ingress_with_empty_pod_selector():
    c = xyz_cluster([netpol("deny", {"podSelector": {}})])  # policyTypes absent: Ingress
    assert not ok(c, "y/a", "x/a") and not ok(c, "x/b", "x/c")
    assert ok(c, "x/a", "y/a")  # egress untouched, y not isolated


def test_empty_from_allows_all_but_absent_denies():
    allow = xyz_cluster([netpol("p", {"podSelector": {}, "ingress": [{}]})])
    deny = xyz_cluster([netpol("p", {"podSelector": {}, "ingress": []})])
    assert ok(allow, "z/c", "x/a") and not ok(deny, "z/c", "x/a")


def test_policy_types_default_egress_only_with_rules():
    only_ingress = xyz_cluster([netpol("p", {"podSelector": {}, "egress": []})])
    assert not ok(only_ingress, "y/a", "x/a") and ok(only_ingress, "x/a", "y/a")
    with_egress = xyz_cluster([netpol("p", {"podSelector": {}, "egress": [{"ports": [{"port": 81}]}]})])
    assert not ok(with_egress, "x/a", "y/a", 80) and ok(with_egress, "x/a", "y/a", 81)
    egress_only = xyz_cluster([netpol("p", {"podSelector": {}, "policyTypes": ["Egress"]})])
    assert ok(egress_only, "y/a", "x/a") and not ok(egress_only, "x/a", "y/a")


def test_pod_selector_peer_is_own_namespace_only():
    c = xyz_cluster(
        [
            netpol(
                "p",
                {
                    "podSelector": {"matchLabels": {"pod": "a"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
                },
            )
        ]
    )
    assert ok(c, "x/b", "x/a") and not ok(c, "y/b", "x/a") and not ok(c, "x/c", "x/a")
    assert ok(c, "y/c", "x/b")  # x/b is not selected


def test_namespace_selector_alone_and_anded_with_pod_selector():
    ns_only = xyz_cluster(
        [netpol("p", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})]
    )
    assert ok(ns_only, "y/a", "x/a") and ok(ns_only, "y/c", "x/a") and not ok(ns_only, "x/b", "x/a")
    both = xyz_cluster(
        [
            netpol(
                "p",
                {
                    "podSelector": {},
                    "ingress": [
                        {
                            "from": [
                                {
                                    "namespaceSelector": {"matchLabels": {"ns": "y"}},
                                    "podSelector": {"matchLabels": {"pod": "b"}},
                                }
                            ]
                        }
                    ],
                },
            )
        ]
    )
    assert ok(both, "y/b", "x/a") and not ok(both, "y/a", "x/a") and not ok(both, "x/b", "x/a")
    two_peers = xyz_cluster(
        [
            netpol(
                "p",
                {
                    "podSelector": {},
                    "ingress": [
                        {
                            "from": [
                                {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                                {"podSelector": {"matchLabels": {"pod": "b"}}},
                            ]
                        }
                    ],
                },
            )
        ]
    )
    assert ok(two_peers, "y/a", "x/a") and ok(two_peers, "x/b", "x/a") and not ok(two_peers, "z/b", "x/a")


def test_metadata_name_label_is_always_there():
    c = xyz_cluster(
        [
            netpol(
                "p",
                {
                    "podSelector": {},
                    "ingress": [
                        {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}
                    ],
                },
            )
        ]
    )
    assert ok(c, "z/a", "x/a") and not ok(c, "y/a", "x/a")


def test_ip_block_with_except():
    c = xyz_cluster()
    ip = addr(c, "y/a").ip
    c = xyz_cluster(
        [
            netpol(
                "p",
                {
                    "podSelector": {},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [f"{ip}/32"]}}]}],
                },
            )
        ]
    )
    assert not ok(c, "y/a", "x/a") and ok(c, "y/b", "x/a")
    assert verdict(c, Address("10.244.9.9"), addr(c, "x/a"), 80).allowed
    assert not verdict(c, Address("192.168.1.1"), addr(c, "x/a"), 80).allowed


def test_ports_by_number_range_protocol_and_name():
    c = xyz_cluster(
        [
            netpol(
                "p",
                {
                    "podSelector": {},
                    "ingress": [
                        {
                            "ports": [
                                {"port": 80, "protocol": "UDP"},
                                {"port": 1000, "endPort": 1010},
                                {"port": "serve-81-tcp"},
                            ]
                        }
                    ],
                },
            )
        ]
    )
    assert ok(c, "y/a", "x/a", 80, "UDP") and not ok(c, "y/a", "x/a", 80, "TCP")
    assert ok(c, "y/a", "x/a", 1005) and not ok(c, "y/a", "x/a", 1011)
    assert ok(c, "y/a", "x/a", 81) and not ok(c, "y/a", "x/a", 81, "UDP")
    assert not ok(c, "y/a", "x/a", 80, "SCTP")


def test_named_port_is_resolved_per_destination_pod():
    from dataclasses import replace

    c = xyz_cluster(
        [netpol("p", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "http"}]}]})]
    )
    pods = [replace(p, ports=((p.ports[0].__class__("http", 8080 if p.key == "y/a" else 9090),))) for p in c.pods]
    c.pods = pods
    assert ok(c, "x/a", "y/a", 8080) and not ok(c, "x/a", "y/a", 9090)
    assert ok(c, "x/a", "y/b", 9090) and not ok(c, "x/a", "y/b", 8080)


def test_union_of_policies_and_verdict_names_the_rule():
    c = xyz_cluster(
        [
            netpol("a", {"podSelector": {}, "ingress": [{"ports": [{"port": 81}]}]}),
            netpol("b", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
        ]
    )
    v = verdict(c, addr(c, "y/a"), addr(c, "x/a"), 81)
    assert v.allowed and v.policy == "x/a" and v.rule == 0
    assert ok(c, "x/b", "x/a", 80)
    v = verdict(c, addr(c, "y/a"), addr(c, "x/a"), 80)
    assert not v.allowed and v.direction == "Ingress" and v.isolating == ("x/a", "x/b")


def test_own_node_always_reaches_its_pods():
    c = xyz_cluster([netpol("deny", {"podSelector": {}})])
    dst = addr(c, "x/a")
    assert verdict(c, Address("192.168.50.1", node=dst.pod.node), dst, 80).allowed
    assert not verdict(c, Address("192.168.50.2", node="elsewhere"), dst, 80).allowed


def test_policy_in_missing_namespace_waits_for_it():
    c = xyz_cluster([netpol("deny", {"podSelector": {}}, namespace="w")])
    from minikubenet.policy.model import Pod

    c.pods = list(c.pods) + [Pod("w", "a", "10.244.3.3", "n1", {})]
    assert ok(c, "x/a", "w/a")
    c.namespaces = {**c.namespaces, "w": {"kubernetes.io/metadata.name": "w"}}
    assert not ok(c, "x/a", "w/a")


@pytest.mark.parametrize(
    "spec,path",
    [
        (
            {"podSelector": {}, "ingress": [{"ports": [{"port": "a-very-long-port-name"}]}]},
            "spec.ingress[0].ports[0].port",
        ),
        (
            {"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            {
                "podSelector": {},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}],
            },
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]}},
            "spec.podSelector.matchExpressions[0].values",
        ),
    ],
)
def test_bad_policies_name_the_field(spec, path):
    with pytest.raises(PolicyError) as e:
        policy_from_k8s(netpol("p", spec))
    assert str(e.value).startswith(path)


def test_cidr_with_host_bits_is_accepted():
    p = policy_from_k8s(netpol("p", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1/24"}}]}]}))
    assert str(p.ingress[0].peers[0].ip_block.cidr) == "10.0.0.0/24"


# --------------------------------------------------------------------------- plan == model

MIXED = [
    netpol(
        "a",
        {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"ns": "y"}},
                            "podSelector": {"matchLabels": {"pod": "b"}},
                        }
                    ],
                    "ports": [{"port": "serve-80-tcp"}, {"port": 81, "protocol": "UDP"}],
                }
            ],
        },
    ),
    netpol(
        "e",
        {
            "podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"ipBlock": {"cidr": "10.244.1.0/24", "except": ["10.244.1.12/30"]}}]},
                {"to": [{"namespaceSelector": {}}], "ports": [{"port": "serve-81-tcp"}]},
            ],
        },
    ),
    netpol("z", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}, namespace="z"),
]


@pytest.mark.parametrize("port,proto", [(80, "TCP"), (81, "TCP"), (81, "UDP")])
def test_node_plans_agree_with_the_model(port, proto):
    c = xyz_cluster(MIXED)
    plans = {n: plan_node(c, n) for n in ("n1", "n2")}
    for s in c.pods:
        for d in c.pods:
            want = verdict(c, Address(s.ip, s), Address(d.ip, d), port, proto).allowed
            got = plan_allows(plans[s.node], s, "Egress", d.ip, port, proto) and plan_allows(
                plans[d.node], d, "Ingress", s.ip, port, proto
            )
            assert got == want, (s.key, d.key, port, proto)
