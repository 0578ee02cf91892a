"""minikubenet.masquerade: flannel's masquerade and forward rules as iptables-restore text.

Reference C.6 (flannel pkg/trafficmngr/iptables/iptables.go, masqRules): in chain
FLANNEL-POSTRTG, every rule commented "flanneld masq":
  1. -A POSTROUTING -j FLANNEL-POSTRTG
  2. -m mark --mark 0x4000/0x4000 -j RETURN
  3. -s <podCIDR> -d <clusterCIDR> -j RETURN
  4. -s <clusterCIDR> -d <podCIDR> -j RETURN
  5. ! -s <clusterCIDR> -d <podCIDR> -j RETURN
  6. -s <clusterCIDR> ! -d 224.0.0.0/4 -j MASQUERADE --random-fully
  7. ! -s <clusterCIDR> -d <clusterCIDR> -j MASQUERADE --random-fully
and in filter chain FLANNEL-FWD ("flanneld forward"): -s <cluster> ACCEPT, -d <cluster> ACCEPT.
Here the chains are MINIKUBENET-POSTRTG / MINIKUBENET-FWD; the jumps from the built-in
chains (rule 1) are kept out of the restore text and added once by linux/iptables.py.
"""

import shlex
from ipaddress import IPv4Network as N

import pytest

from minikubenet import masquerade
from minikubenet.masquerade import FORWARD_CHAIN, JUMPS, POSTROUTING_CHAIN, render_masquerade

CLUSTER = N("10.244.0.0/16")
POD = N("10.244.1.0/24")

BUILTIN = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def parse_restore(text: str) -> dict:
    """iptables-restore text -> {table: {"chains": [...], "rules": [(chain, tokens)]}}.

    Fails the test on anything outside the format's shape: a rule outside a table, a
    table without COMMIT, a rule in an undeclared non-built-in chain.
    """
    tables: dict = {}
    current = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("*"):
            assert current is None, f"line {n}: table {line} opened before COMMIT of {current}"
            current = line[1:]
            assert current not in tables, f"line {n}: table {current} twice"
            tables[current] = {"chains": [], "rules": []}
        elif line == "COMMIT":
            assert current is not None, f"line {n}: COMMIT outside a table"
            current = None
        elif line.startswith(":"):
            assert current is not None, f"line {n}: chain outside a table"
            name, policy, counters = line[1:].split()
            assert policy == "-" and counters == "[0:0]", f"line {n}: {line}"
            assert not tables[current]["rules"], f"line {n}: chain declared after rules"
            tables[current]["chains"].append(name)
        elif line.startswith("-A "):
            assert current is not None, f"line {n}: rule outside a table"
            tokens = shlex.split(line)
            chain = tokens[1]
            assert chain in tables[current]["chains"] or chain in BUILTIN, f"line {n}: undeclared {chain}"
            tables[current]["rules"].append((chain, tokens[2:]))
        else:
            pytest.fail(f"line {n}: not iptables-restore syntax: {line!r}")
    assert current is None, f"table {current} has no COMMIT"
    return tables


def rule_spec(tokens: list[str]) -> dict:
    """Order-independent meaning of a rule: {option: value, "!option": value, target, comment}."""
    spec: dict = {}
    i, neg = 0, False
    while i < len(tokens):
        t = tokens[i]
        if t == "!":
            neg = True
            i += 1
            continue
        if t == "-m":
            i += 2  # the match module is implied by its options below
            continue
        if t == "--random-fully":
            spec["--random-fully"] = True
            i += 1
            continue
        key = ("!" if neg else "") + t
        assert key not in spec, f"option {key} twice in {tokens}"
        spec[key] = tokens[i + 1]
        neg = False
        i += 2
    return spec


def flannel_masq(cluster, pod, comment="minikubenet masq", random_fully=True):
    """Reference C.6 rules 2-7, as specs."""
    rf = {"--random-fully": True} if random_fully else {}
    c = {"--comment": comment}
    return [
        {"--mark": "0x4000/0x4000", "-j": "RETURN", **c},
        {"-s": str(pod), "-d": str(cluster), "-j": "RETURN", **c},
        {"-s": str(cluster), "-d": str(pod), "-j": "RETURN", **c},
        {"!-s": str(cluster), "-d": str(pod), "-j": "RETURN", **c},
        {"-s": str(cluster), "!-d": "224.0.0.0/4", "-j": "MASQUERADE", **rf, **c},
        {"!-s": str(cluster), "-d": str(cluster), "-j": "MASQUERADE", **rf, **c},
    ]


def flannel_fwd(cluster, comment="minikubenet forward"):
    return [
        {"-s": str(cluster), "-j": "ACCEPT", "--comment": comment},
        {"-d": str(cluster), "-j": "ACCEPT", "--comment": comment},
    ]


@pytest.mark.parametrize(
    "cluster, pod",
    [
        (CLUSTER, POD),
        (N("10.244.0.0/16"), N("10.244.255.0/24")),
        (N("172.16.0.0/12"), N("172.16.64.0/20")),
    ],
)
def test_nat_rules_are_flannels_in_flannels_order(cluster, pod):
    t = parse_restore(render_masquerade(cluster, pod))
    rules = t["nat"]["rules"]
    assert {chain for chain, _ in rules} == {POSTROUTING_CHAIN}
    assert [rule_spec(tokens) for _, tokens in rules] == flannel_masq(cluster, pod)


def test_forward_rules_are_flannels():
    t = parse_restore(render_masquerade(CLUSTER, POD))
    rules = t["filter"]["rules"]
    assert {chain for chain, _ in rules} == {FORWARD_CHAIN}
    assert [rule_spec(tokens) for _, tokens in rules] == flannel_fwd(CLUSTER)


def test_without_random_fully():
    t = parse_restore(render_masquerade(CLUSTER, POD, random_fully=False))
    assert [rule_spec(tok) for _, tok in t["nat"]["rules"]] == flannel_masq(CLUSTER, POD, random_fully=False)
    assert "--random-fully" not in render_masquerade(CLUSTER, POD, random_fully=False)


def test_ipmasq_off_empties_our_nat_chain_but_keeps_forwarding():
    t = parse_restore(render_masquerade(CLUSTER, POD, ipmasq=False))
    assert t["nat"]["chains"] == [POSTROUTING_CHAIN]  # still declared: --noflush then flushes it
    assert t["nat"]["rules"] == []
    assert [rule_spec(tok) for _, tok in t["filter"]["rules"]] == flannel_fwd(CLUSTER)
    assert "MASQUERADE" not in render_masquerade(CLUSTER, POD, ipmasq=False)


@pytest.mark.parametrize("kw", [{}, {"ipmasq": False}, {"random_fully": False}])
def test_restore_text_shape(kw):
    text = render_masquerade(CLUSTER, POD, **kw)
    assert text.endswith("COMMIT\n")
    lines = text.splitlines()
    assert lines[0] == "*nat"
    assert lines.count("COMMIT") == 2
    assert [line for line in lines if line.startswith("*")] == ["*nat", "*filter"]
    parse_restore(text)


@pytest.mark.parametrize("kw", [{}, {"ipmasq": False}])
def test_only_our_chains_are_declared_and_written_to(kw):
    t = parse_restore(render_masquerade(CLUSTER, POD, **kw))
    assert t["nat"]["chains"] == [POSTROUTING_CHAIN]
    assert t["filter"]["chains"] == [FORWARD_CHAIN]
    for table in t.values():
        for chain in table["chains"]:
            assert chain.startswith("MINIKUBENET-")
            assert chain not in BUILTIN  # declaring a built-in chain in --noflush mode would flush it
        for chain, _ in table["rules"]:
            # a jump appended to a built-in chain would be added again on every resync
            assert chain not in BUILTIN


def test_chain_names_fit_iptables_limit():
    # iptables chain names are at most 28 characters
    assert len(POSTROUTING_CHAIN) <= 28 and len(FORWARD_CHAIN) <= 28


def test_jumps_hook_our_chains_where_flannel_hooks_its_own():
    assert {(table, builtin, ours) for table, builtin, ours, _ in JUMPS} == {
        ("nat", "POSTROUTING", POSTROUTING_CHAIN),
        ("filter", "FORWARD", FORWARD_CHAIN),
    }
    comments = {ours: comment for _, _, ours, comment in JUMPS}
    assert comments == {POSTROUTING_CHAIN: "minikubenet masq", FORWARD_CHAIN: "minikubenet forward"}


def test_kube_proxy_mark_is_flannels():
    assert masquerade.KUBE_MASQ_MARK == "0x4000/0x4000"


def test_every_rule_carries_our_comment():
    t = parse_restore(render_masquerade(CLUSTER, POD))
    assert all(rule_spec(tok)["--comment"] == "minikubenet masq" for _, tok in t["nat"]["rules"])
    assert all(rule_spec(tok)["--comment"] == "minikubenet forward" for _, tok in t["filter"]["rules"])
