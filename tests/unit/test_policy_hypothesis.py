"""Invariants of the policy model, and the node plan equal to the model, on random policies."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from minikubenet.policy import iptables_render, nft_render
from minikubenet.policy.model import Address, verdict
from minikubenet.policy.plan import plan_allows, plan_node
from tests.unit.policy_cases import netpol, xyz_cluster
from tests.unit.policy_strategies import policies

PORTS = [(80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP")]


def cluster_of(pols):
    return xyz_cluster([netpol(f"p{i}", s, ns) for i, (ns, s) in enumerate(pols)])


@settings(max_examples=60, deadline=None)
@given(policies)
def test_plan_equals_model(pols):
    c = cluster_of(pols)
    plans = {n: plan_node(c, n) for n in ("n1", "n2")}
    for s in c.pods:
        for d in c.pods:
            for port, proto in PORTS:
                want = verdict(c, Address(s.ip, s), Address(d.ip, d), port, proto).allowed
                got = plan_allows(plans[s.node], s, "Egress", d.ip, port, proto) and plan_allows(
                    plans[d.node], d, "Ingress", s.ip, port, proto
                )
                assert got == want, (s.key, d.key, port, proto)


@settings(max_examples=40, deadline=None)
@given(policies, st.integers(0, 8), st.integers(0, 8))
def test_adding_a_policy_never_opens_an_isolated_pod_more_than_the_union(pols, i, j):
    """Union: with one more policy, a pod that was already isolated in a direction allows
    at least what it allowed before (policies only add allowances once isolated)."""
    before = cluster_of(pols[:-1])
    after = cluster_of(pols)
    s, d = before.pods[i], before.pods[j]
    for port, proto in PORTS:
        was = verdict(before, Address(s.ip, s), Address(d.ip, d), port, proto)
        now = verdict(after, Address(s.ip, s), Address(d.ip, d), port, proto)
        if was.allowed and before.isolating(d, "Ingress") and before.isolating(s, "Egress"):
            assert now.allowed


@settings(max_examples=30, deadline=None)
@given(policies)
def test_renderings_are_deterministic_and_name_every_policy(pols):
    c = cluster_of(pols)
    plan = plan_node(c, "n1")
    text = iptables_render.render(iptables_render.chains(plan))
    assert text == iptables_render.render(iptables_render.chains(plan_node(c, "n1")))
    nft = nft_render.render_full(nft_render.ruleset(plan))
    for pp in plan.policies:
        assert f'"{pp.key} {pp.direction.lower()}' in text or not any(r.atoms for r in pp.rules)
        assert f"jump {pp.key}" not in nft  # chains are hash-named
    assert len(iptables_render.chains(plan)) == 1 + sum(len(v) for v in plan.isolated.values()) + len(plan.policies)
