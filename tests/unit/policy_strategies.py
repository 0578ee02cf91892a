"""Hypothesis strategies: random small NetworkPolicies over the x/y/z layout."""

from __future__ import annotations

from hypothesis import strategies as st

LABEL_VALUES = ["a", "b", "c"]
selector = st.one_of(
    st.just({}),
    st.builds(lambda v: {"matchLabels": {"pod": v}}, st.sampled_from(LABEL_VALUES)),
    st.builds(
        lambda op, vs: {"matchExpressions": [{"key": "pod", "operator": op, "values": vs}]},
        st.sampled_from(["In", "NotIn"]),
        st.lists(st.sampled_from(LABEL_VALUES), min_size=1, max_size=2, unique=True),
    ),
    st.builds(
        lambda op: {"matchExpressions": [{"key": "pod", "operator": op}]}, st.sampled_from(["Exists", "DoesNotExist"])
    ),
)
ns_selector = st.one_of(st.just({}), st.builds(lambda v: {"matchLabels": {"ns": v}}, st.sampled_from(["x", "y", "z"])))
ip_block = st.builds(
    lambda last, exc: {"cidr": "10.244.0.0/16", **({"except": [f"10.244.{last}.0/24"]} if exc else {})},
    st.sampled_from([1, 2]),
    st.booleans(),
)
peer = st.one_of(
    st.builds(lambda s: {"podSelector": s}, selector),
    st.builds(lambda s: {"namespaceSelector": s}, ns_selector),
    st.builds(lambda s, n: {"podSelector": s, "namespaceSelector": n}, selector, ns_selector),
    st.builds(lambda b: {"ipBlock": b}, ip_block),
)
port = st.one_of(
    st.builds(
        lambda p, proto: {"port": p, "protocol": proto}, st.sampled_from([80, 81]), st.sampled_from(["TCP", "UDP"])
    ),
    st.builds(lambda p: {"port": p}, st.sampled_from(["serve-80-tcp", "serve-81-tcp", "nope"])),
    st.just({"port": 80, "endPort": 81}),
    st.just({"protocol": "UDP"}),
)


def rules(peer_field):
    return st.lists(
        st.builds(
            lambda peers, ports: {
                **({peer_field: peers} if peers is not None else {}),
                **({"ports": ports} if ports is not None else {}),
            },
            st.one_of(st.none(), st.lists(peer, max_size=2)),
            st.one_of(st.none(), st.lists(port, max_size=2)),
        ),
        max_size=2,
    )


spec = st.builds(
    lambda sel, ing, eg, types: {
        "podSelector": sel,
        **({"ingress": ing} if ing is not None else {}),
        **({"egress": eg} if eg is not None else {}),
        **({"policyTypes": types} if types else {}),
    },
    selector,
    st.one_of(st.none(), rules("from")),
    st.one_of(st.none(), rules("to")),
    st.one_of(st.none(), st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]])),
)
policies = st.lists(st.tuples(st.sampled_from(["x", "y", "z"]), spec), min_size=1, max_size=3)
