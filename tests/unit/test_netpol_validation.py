"""NetworkPolicy and Namespace validation (minikubenet/netpol_validation.py,
label_validation.py): what the API server refuses is refused with its field path and
reason; what it accepts (host bits in a CIDR, an absent podSelector, the upstream e2e
tests' policies) is accepted unchanged."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikubenet.k8s_objects import ValidationError
from minikubenet.netpol_validation import NAMESPACE_NAME_LABEL, validate_namespace, validate_network_policy

ALLOW_A = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "allow-client-a", "namespace": "x"},
    "spec": {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [
                    {
                        "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]},
                        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "y"}},
                    },
                    {"ipBlock": {"cidr": "10.244.1.7/24", "except": ["10.244.1.7/32"]}},
                ],
                "ports": [{"port": 80, "endPort": 90, "protocol": "TCP"}, {"port": "serve-81-udp", "protocol": "UDP"}],
            }
        ],
        "egress": [{}],
    },
}


def policy(**changes):
    """ALLOW_A with ``spec`` paths set: policy(**{"ingress.0.ports.0.port": 0})."""
    doc = copy.deepcopy(ALLOW_A)
    for path, value in changes.items():
        parts = path.split(".")
        node = doc["spec"]
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return doc


def errors_of(doc) -> list[str]:
    with pytest.raises(ValidationError) as e:
        validate_network_policy(doc)
    return e.value.errors


def test_a_full_policy_is_accepted_and_stored_as_given():
    assert validate_network_policy(ALLOW_A) == ALLOW_A


def test_what_the_api_server_accepts_is_accepted():
    for doc in (
        # host bits in the cidr: ParseCIDRSloppy; the upstream e2e tests write them so
        policy(**{"ingress.0.from.1.ipBlock": {"cidr": "10.244.1.7/16", "except": ["10.244.1.7/24"]}}),
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny-all"},
            "spec": {},
        },  # no podSelector: every pod; namespace defaulted
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "a.b"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}], "egress": []},
        },
        policy(**{"ingress.0.ports.0": {"protocol": "SCTP"}}),  # a protocol alone: all its ports
        policy(
            **{
                "ingress.0.from.0.podSelector": {
                    "matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "DoesNotExist"}]
                }
            }
        ),
        policy(**{"ingress.0.from.1.ipBlock": {"cidr": "2001:db8::/48", "except": ["2001:db8::/64"]}}),
        policy(**{"policyTypes": ["Egress"]}),
    ):
        assert validate_network_policy(doc)["spec"] == doc["spec"]
    defaulted = validate_network_policy(
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p"}},
        default_namespace="y",
    )
    assert defaulted["metadata"]["namespace"] == "y"


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            {"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Within", "values": ["a"]}]}},
            'spec.podSelector.matchExpressions[0].operator: Invalid value: "Within": not a valid selector operator',
        ),
        (
            {
                "ingress.0.from.0.podSelector": {
                    "matchExpressions": [{"key": "pod", "operator": "Exists", "values": ["a"]}]
                }
            },
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].values: Forbidden: may not be specified when "
            "`operator` is 'Exists' or 'DoesNotExist'",
        ),
        (
            {"ingress.0.from.0.namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn"}]}},
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values: Required value: must be "
            "specified when `operator` is 'In' or 'NotIn'",
        ),
        (
            {"ingress.0.ports.1.port": "serve-81-udp-long"},
            'spec.ingress[0].ports[1].port: Invalid value: "serve-81-udp-long": must be no more than 15 characters',
        ),
        (
            {"ingress.0.from.1.ipBlock": {"cidr": "10.244.1.300/24"}},
            'spec.ingress[0].from[1].ipBlock.cidr: Invalid value: "10.244.1.300/24": must be a valid CIDR value',
        ),
        (
            {"ingress.0.from.1.ipBlock": {"cidr": "10.244.1.0"}},
            'spec.ingress[0].from[1].ipBlock.cidr: Invalid value: "10.244.1.0": must be a valid CIDR value',
        ),
        (
            {"ingress.0.from.1.ipBlock": {"cidr": "10.244.1.0/24", "except": ["10.244.2.0/25"]}},
            'spec.ingress[0].from[1].ipBlock.except[0]: Invalid value: "10.244.2.0/25": must be a strict subset of '
            "`cidr`",
        ),
        (
            {"ingress.0.from.1.ipBlock": {"cidr": "10.244.1.0/24", "except": ["10.244.1.0/24"]}},
            'ipBlock.except[0]: Invalid value: "10.244.1.0/24": must be a strict subset of `cidr`',
        ),
        (
            {"ingress.0.from.1.ipBlock": {"cidr": "10.244.1.0/24", "except": ["10.244.1.0/16"]}},
            "must be a strict subset of `cidr`",
        ),
        (
            {"ingress.0.ports.0": {"port": 90, "endPort": 80}},
            "spec.ingress[0].ports[0].endPort: Invalid value: 80: must be greater than or equal to `port`",
        ),
        (
            {"ingress.0.ports.0": {"port": "http", "endPort": 80}},
            "spec.ingress[0].ports[0].endPort: Invalid value: 80: may not be specified when `port` is non-numeric",
        ),
        (
            {"ingress.0.ports.0": {"endPort": 80}},
            "spec.ingress[0].ports[0].endPort: Invalid value: 80: may not be specified when `port` is not specified",
        ),
        (
            {"ingress.0.ports.0": {"port": 0}},
            "spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        ),
        (
            {"ingress.0.ports.0": {"port": "80"}},
            'spec.ingress[0].ports[0].port: Invalid value: "80": must contain at least one letter (a-z)',
        ),
        (
            {"ingress.0.ports.0": {"port": 80, "protocol": "ICMP"}},
            'spec.ingress[0].ports[0].protocol: Unsupported value: "ICMP": supported values: "TCP", "UDP", "SCTP"',
        ),
        ({"ingress.0.from.0": {}}, "spec.ingress[0].from[0]: Required value: must specify a peer"),
        (
            {"ingress.0.from.0": {"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}},
            "spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer",
        ),
        (
            {"policyTypes": ["Ingress", "Outgress"]},
            'spec.policyTypes[1]: Unsupported value: "Outgress": supported values: "Ingress", "Egress"',
        ),
        ({"policyTypes": ["Ingress", "Egress", "Ingress"]}, "may not specify more than two policyTypes"),
        (
            {"podSelector": {"matchLabels": {"bad key!": "a"}}},
            'spec.podSelector.matchLabels: Invalid value: "bad key!"',
        ),
        ({"podSelector": {"matchLabels": {"pod": "-a"}}}, 'spec.podSelector.matchLabels[pod]: Invalid value: "-a"'),
        ({"podselector": {}}, 'spec.podselector: Invalid value: "podselector": unknown field'),
        ({"egress.0": {"from": []}}, 'spec.egress[0].from: Invalid value: "from": unknown field'),
        (
            {"ingress": {"from": []}},
            "spec.ingress: Invalid value: {'from': []}: must be a list of rules, not an object",
        ),
    ],
)
def test_bad_policies_are_refused_with_the_field_path(change, expected):
    problems = errors_of(policy(**change))
    assert any(expected in e for e in problems), problems


def test_every_problem_is_reported_at_once():
    problems = errors_of(
        policy(
            **{
                "ingress.0.ports.0": {"port": 90, "endPort": 80},
                "ingress.0.from.1.ipBlock": {"cidr": "nope"},
                "policyTypes": ["Sideways"],
            }
        )
    )
    assert len(problems) == 3, problems


def test_bad_metadata_is_refused():
    doc = copy.deepcopy(ALLOW_A)
    doc["metadata"] = {"name": "Allow_A", "namespace": "X"}
    problems = errors_of(doc)
    assert any(p.startswith('metadata.name: Invalid value: "Allow_A"') for p in problems)
    assert any(p.startswith('metadata.namespace: Invalid value: "X"') for p in problems)
    doc["metadata"] = {"namespace": "x"}
    assert errors_of(doc) == ["metadata.name: Required value: name or generateName is required"]


def test_malformed_documents_give_errors_not_tracebacks():
    for doc in (
        None,
        [],
        "x",
        {"metadata": "x"},
        {"metadata": {"name": "p"}, "spec": []},
        {"metadata": {"name": "p"}, "spec": {"ingress": [5]}},
        {"metadata": {"name": "p"}, "spec": {"ingress": [{"from": [{"ipBlock": "10.0.0.0/8"}]}]}},
        {"metadata": {"name": "p"}, "spec": {"podSelector": {"matchExpressions": [{"operator": "In"}]}}},
        {"metadata": {"name": "p"}, "spec": {"egress": [{"ports": [{"port": True}]}]}},
    ):
        with pytest.raises(ValidationError):
            validate_network_policy(doc)


def test_a_namespace_always_carries_its_name_label():
    ns = validate_namespace(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "x", "labels": {"ns": "x", NAMESPACE_NAME_LABEL: "lies"}},
        }
    )
    assert ns["metadata"]["labels"] == {"ns": "x", NAMESPACE_NAME_LABEL: "x"}
    assert validate_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}})["metadata"][
        "labels"
    ] == {NAMESPACE_NAME_LABEL: "y"}


@pytest.mark.parametrize(
    "meta, expected",
    [
        ({"name": "X"}, 'metadata.name: Invalid value: "X"'),
        ({"name": "a.b"}, 'metadata.name: Invalid value: "a.b"'),  # a label, not a subdomain
        ({"name": "x", "namespace": "y"}, "metadata.namespace: Forbidden: not allowed on this type"),
        ({"name": "x", "labels": {"k": "v" * 64}}, "metadata.labels[k]: Invalid value"),
        ({}, "metadata.name: Required value"),
    ],
)
def test_bad_namespaces_are_refused(meta, expected):
    with pytest.raises(ValidationError) as e:
        validate_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    assert any(expected in err for err in e.value.errors), e.value.errors


# any JSON at any place of a policy: a ValidationError or a result, never another exception
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.sampled_from(["", "a", "In", "10.0.0.0/8", "serve-80-tcp"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "podSelector",
                    "ingress",
                    "egress",
                    "from",
                    "to",
                    "ports",
                    "port",
                    "endPort",
                    "protocol",
                    "ipBlock",
                    "cidr",
                    "except",
                    "matchLabels",
                    "matchExpressions",
                    "key",
                    "operator",
                    "values",
                    "namespaceSelector",
                    "policyTypes",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(spec=_json, meta=st.one_of(_json, st.just({"name": "p", "namespace": "x"})))
def test_validation_is_total(spec, meta):
    try:
        out = validate_network_policy(
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec}
        )
    except ValidationError as e:
        assert e.errors and all(isinstance(m, str) for m in e.errors)
    else:
        assert out["spec"] == spec
    try:
        validate_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": meta, "spec": spec})
    except ValidationError:
        pass
