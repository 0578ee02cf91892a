"""The policy renderings as text: names, comments and structure (golden-ish), partial
syncs that write only what changed, and the rendered iptables rules walked by the
proxy's tracer agreeing with the model on random policies."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from minikubenet.policy import iptables_render, naming, nft_render
from minikubenet.policy.model import Address, verdict
from minikubenet.policy.plan import plan_node
from minikubenet.proxy.tracer import trace_packet
from tests.unit.policy_cases import netpol, xyz_cluster
from tests.unit.policy_strategies import policies

POLICY = netpol(
    "web",
    {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                "ports": [{"port": 80}, {"port": 1000, "endPort": 1010}],
            },
            {
                "from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}],
                "ports": [{"port": "serve-81-tcp"}],
            },
        ],
    },
)


def test_iptables_names_and_comments():
    c = xyz_cluster([POLICY])
    plan = plan_node(c, "n1")  # x/a (10.244.2.11... node n1 holds the odd ones)
    chains = iptables_render.chains(plan)
    xa = next(p for p in c.pods if p.key == "x/a")
    assert xa.node == "n1"
    pi = naming.pod_chain("x/a", "Ingress")
    np = naming.policy_chain("x/web", "Ingress")
    assert len(pi) <= 28 and len(np) <= 28 and pi.startswith("MKN-PI-") and np.startswith("MKN-NP-")
    assert chains["MKN-POLICY"] == [
        "-A MKN-POLICY -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f'-A MKN-POLICY -d {xa.ip}/32 -m comment --comment "x/a ingress" -j {pi}',
    ]
    assert chains[pi] == [
        f"-A {pi} -j MARK --set-xmark 0x0/0x10000",
        f'-A {pi} -m comment --comment "x/web" -j {np}',
        f"-A {pi} -m mark --mark 0x10000/0x10000 -j RETURN",
        f'-A {pi} -m comment --comment "x/a ingress isolated by x/web: drop" -j DROP',
    ]
    xb = next(p for p in c.pods if p.key == "x/b")
    assert (
        f'-A {np} -s {xb.ip}/32 -p tcp -m tcp --dport 1000:1010 -m comment --comment "x/web ingress rule 0" '
        "-j MARK --set-xmark 0x10000/0x10000"
    ) in chains[np]
    # ipBlock minus except, named port resolved on x/a, restricted to x/a
    rule1 = [r for r in chains[np] if "rule 1" in r]
    assert len(rule1) == 8 and all(f"-d {xa.ip}/32 -p tcp -m tcp --dport 81 " in r for r in rule1)
    assert not any("192.168.1.0/24" in r for r in rule1) and any("192.168.0.0/24" in r for r in rule1)
    text = iptables_render.render(chains, jump=True)
    assert text.startswith("*filter\n:MKN-POLICY - [0:0]\n") and text.endswith("COMMIT\n")
    assert '-I FORWARD 1 -m comment --comment "minikubenet network policy" -j MKN-POLICY' in text


def test_iptables_partial_writes_only_changed_chains():
    before = iptables_render.chains(plan_node(xyz_cluster([POLICY]), "n1"))
    after = iptables_render.chains(plan_node(xyz_cluster(), "n1"))
    write = {c for c in after if before.get(c) != after[c]}
    delete = tuple(c for c in before if c not in after)
    text = iptables_render.render(after, write, delete)
    assert write == {"MKN-POLICY"} and len(delete) == 2
    assert text.index("-A MKN-POLICY") < text.index("-X ")  # the jump goes before the chain


def test_nft_uses_sets_not_pods_times_policies():
    c = xyz_cluster(
        [netpol(f"p{i}", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}) for i in range(20)]
    )
    rs = nft_render.ruleset(plan_node(c, "n1"))
    # 20 policies selecting every pod: one map element per pod, ONE shared chain of 20 jumps
    assert len(rs.sets["ingress-pods"].elements) == 2 and rs.sets["ingress-pods"].kind == "map"
    groups = [c for c in rs.chains if c.startswith("ingress-pods-")]
    assert len(groups) == 1 and len(rs.chains[groups[0]]) == 20
    assert rs.chains["ingress"][2:] == [
        "ip daddr vmap @ingress-pods",
        "counter drop comment " + rs.chains["ingress"][-1].split("comment ", 1)[1],
    ]
    assert all(len(rs.chains[naming.nft_policy_chain(f"x/p{i}", "Ingress")]) == 1 for i in range(20))
    text = nft_render.render_full(rs)
    assert text.startswith("add table ip minikubenet-policy\ndelete table ip minikubenet-policy\n")
    assert 'accept comment "x/p3 ingress rule 0"' in text
    assert "type filter hook forward priority -5" in text and "type filter hook forward priority -6" in text


def test_nft_partial_touches_only_what_changed():
    a = nft_render.ruleset(plan_node(xyz_cluster([POLICY]), "n1"))
    assert nft_render.render_partial(a, a) == ""
    c = xyz_cluster([POLICY])
    c.pods = [p for p in c.pods if p.key != "x/c"]  # a pod goes away: x/c, in no rule
    assert nft_render.render_partial(a, nft_render.ruleset(plan_node(c, "n1"))) == ""
    pol = netpol(
        "web",
        {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}]}],
        },
    )
    a = nft_render.ruleset(plan_node(xyz_cluster([pol]), "n1"))
    c = xyz_cluster([pol])
    c.pods = [p for p in c.pods if p.key != "y/b"]  # one of three peer pods goes away
    b = nft_render.ruleset(plan_node(c, "n1"))
    text = nft_render.render_partial(a, b)
    assert text.startswith("flush set ip minikubenet-policy peers-") and "add rule" not in text


def _traced(c, s, d, port, proto) -> bool:
    for node, src, dst in ((s.node, s, d), (d.node, s, d)):
        text = iptables_render.render(iptables_render.chains(plan_node(c, node)), jump=True)
        if trace_packet(text, src.ip, dst.ip, port, proto.lower(), jumps=()).output != "ACCEPT":
            return False
    return True


@settings(max_examples=25, deadline=None)
@given(policies)
def test_tracer_over_the_iptables_rendering_equals_the_model(pols):
    c = xyz_cluster([netpol(f"p{i}", s, ns) for i, (ns, s) in enumerate(pols)])
    for s in c.pods[::2]:
        for d in c.pods[1::2]:
            for port, proto in ((80, "TCP"), (81, "UDP")):
                want = verdict(c, Address(s.ip, s), Address(d.ip, d), port, proto).allowed
                assert _traced(c, s, d, port, proto) == want, (s.key, d.key, port, proto)


def test_tracer_names_the_policy_that_drops():
    c = xyz_cluster([POLICY])
    src = next(p for p in c.pods if p.key == "y/a")
    dst = next(p for p in c.pods if p.key == "x/a")
    text = iptables_render.render(iptables_render.chains(plan_node(c, dst.node)), jump=True)
    trace = trace_packet(text, src.ip, dst.ip, 80, "tcp", jumps=())
    assert trace.output == "DROP"
    assert trace.dropped_by() == ["x/a ingress isolated by x/web: drop"]
    xb = next(p for p in c.pods if p.key == "x/b")
    trace = trace_packet(text, xb.ip, dst.ip, 1005, "tcp", jumps=())
    assert trace.output == "ACCEPT" and any("x/web ingress rule 0" in r for o in trace.outcomes for r in o.rules)


def test_a_pods_egress_to_its_own_node_is_judged_from_input_too():
    plan = plan_node(xyz_cluster([POLICY]), "n1")
    text = iptables_render.render(iptables_render.chains(plan), jump=True)
    assert [x.split(" -m ")[0] for x in text.splitlines() if x.startswith("-I ")] == ["-I FORWARD 1", "-I INPUT 1"]
    moved = iptables_render.render(iptables_render.chains(plan), move_jump=("INPUT",))
    assert "-D INPUT " in moved and "-D FORWARD" not in moved and "-I FORWARD" not in moved
    rs = nft_render.ruleset(plan)
    assert rs.chains[nft_render.EGRESS_INPUT] == rs.chains["egress"]
    full = nft_render.render_full(rs)
    assert (
        "add chain ip minikubenet-policy egress-input { type filter hook input priority -6 ; policy accept ; }" in full
    )


@given(
    st.sets(
        st.tuples(
            st.sampled_from([10 << 24, (10 << 24) + (1 << 16), (192 << 24) + (168 << 16)]),
            st.integers(0, 1 << 17),
            st.sampled_from([8, 16, 23, 24, 25, 26, 30, 31, 32, 32]),
        ),
        min_size=1,
        max_size=8,
    )
)
@settings(max_examples=400, deadline=None)
def test_peer_sets_are_collapsed_exactly_as_ipaddress_does(raw):
    """The integer merge of a rule's peer networks (no element inside another: an
    interval set refuses overlaps) gives collapse_addresses' answer, element for element."""
    nets = {str(ipaddress.IPv4Network((base + offset, length), strict=False)) for base, offset, length in raw}
    want = tuple(str(n) for n in ipaddress.collapse_addresses(ipaddress.IPv4Network(x) for x in nets))
    assert nft_render._collapsed_set(frozenset(nets)) == want
