"""The iptables renderer: golden rulesets, kube-proxy's own expectations, consistency,
and partial syncs.

Golden files live in tests/unit/golden/. After an intended change, regenerate them with
``MKN_UPDATE_GOLDEN=1 pytest tests/unit/test_proxy_iptables.py`` and read the diff.
"""

import ipaddress
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from minikubenet.k8s_objects import Endpoint, Service, ServicePort
from minikubenet.proxy.iptables_render import (
    JUMP_CHAINS,
    SyncState,
    chains_from_save,
    plan_iptables,
    probability,
    render_iptables,
)
from minikubenet.proxy.model import RenderOptions
from minikubenet.proxy.tracer import check_ruleset, parse_restore
from tests.proxy_golden import GOLDEN, load_cluster  # noqa: E402

IP = ipaddress.IPv4Address


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MKN_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs; if intended, regenerate with MKN_UPDATE_GOLDEN=1"


def render(*names, **kw):
    services, endpoints, doc = load_cluster(*names)
    return render_iptables(services, endpoints, doc["node_ips"], doc["cluster_cidr"], **kw)


# --------------------------------------------------------------------------- goldens


def test_golden_clusterip_three_endpoints():
    assert_golden("iptables_basic.txt", render("web"))


def test_golden_nodeport():
    assert_golden("iptables_nodeport.txt", render("shop"))


def test_golden_client_ip_affinity():
    assert_golden("iptables_affinity.txt", render("cart"))


def test_golden_no_endpoints():
    text = render("empty")
    assert_golden("iptables_no_endpoints.txt", text)
    assert "KUBE-SVC-" not in text and "KUBE-SEP-" not in text  # filter REJECTs only


def test_golden_udp_and_tcp_on_one_port():
    text = render("kube-dns")
    assert_golden("iptables_udp.txt", text)
    assert "-j KUBE-SVC-TCOU7JCQXEZGVUNU" in text  # the kube-dns chain of every cluster


def test_golden_everything():
    assert_golden("iptables_all.txt", render())


def test_goldens_are_consistent():
    for name in ("web", "shop", "cart", "empty", "kube-dns"):
        assert check_ruleset(render(name)) == []
    assert check_ruleset(render()) == []


# --------------------------------------------------------------------------- kube-proxy's own expectations

# kube-proxy's TestInternalTrafficPolicyE2E expectation for a ClusterIP service with three
# endpoints, verbatim (shared/reference/kube-proxy.md section 1.3): that test runs with
# localhost NodePorts on and an iptables without --random-fully.
KUBE_PROXY_3_ENDPOINTS = """\
*filter
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-3JOIVZTXZZRGORX4 - [0:0]
:KUBE-SEP-IO5XOSKPAXIFQXAJ - [0:0]
:KUBE-SEP-XGJFVO3L2O5SRFNT - [0:0]
:KUBE-SVC-AQI2S6QIMU7PVVRP - [0:0]
-A KUBE-SERVICES -m comment --comment "ns1/svc1 cluster IP" -m tcp -p tcp -d 172.30.1.1 --dport 80 -j KUBE-SVC-AQI2S6QIMU7PVVRP
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-SEP-3JOIVZTXZZRGORX4 -m comment --comment ns1/svc1 -s 10.0.1.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-3JOIVZTXZZRGORX4 -m comment --comment ns1/svc1 -m tcp -p tcp -j DNAT --to-destination 10.0.1.1:80
-A KUBE-SEP-IO5XOSKPAXIFQXAJ -m comment --comment ns1/svc1 -s 10.0.1.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-IO5XOSKPAXIFQXAJ -m comment --comment ns1/svc1 -m tcp -p tcp -j DNAT --to-destination 10.0.1.2:80
-A KUBE-SEP-XGJFVO3L2O5SRFNT -m comment --comment ns1/svc1 -s 10.0.1.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-XGJFVO3L2O5SRFNT -m comment --comment ns1/svc1 -m tcp -p tcp -j DNAT --to-destination 10.0.1.3:80
-A KUBE-SVC-AQI2S6QIMU7PVVRP -m comment --comment "ns1/svc1 cluster IP" -m tcp -p tcp -d 172.30.1.1 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-AQI2S6QIMU7PVVRP -m comment --comment "ns1/svc1 -> 10.0.1.1:80" -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-3JOIVZTXZZRGORX4
-A KUBE-SVC-AQI2S6QIMU7PVVRP -m comment --comment "ns1/svc1 -> 10.0.1.2:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-IO5XOSKPAXIFQXAJ
-A KUBE-SVC-AQI2S6QIMU7PVVRP -m comment --comment "ns1/svc1 -> 10.0.1.3:80" -j KUBE-SEP-XGJFVO3L2O5SRFNT
COMMIT
"""


def test_byte_for_byte_kube_proxy_three_endpoints():
    svc = Service("ns1", "svc1", IP("172.30.1.1"), (ServicePort("", "TCP", 80, 80),))
    eps = {"ns1/svc1": [Endpoint(IP(f"10.0.1.{i}"), 80) for i in (3, 1, 2)]}  # any order in
    options = RenderOptions(localhost_nodeports=True, random_fully=False)
    assert render_iptables([svc], eps, (), "10.0.0.0/8", options) == KUBE_PROXY_3_ENDPOINTS


def kube_proxy_overall_services():
    """TestOverallIPTablesRules' ns1/svc1 (ClusterIP), ns3/svc3 (NodePort), ns5/svc5
    (ClientIP affinity; a LoadBalancer there, a NodePort here: the same SVC/SEP/EXT
    chains) and ns6/svc6 (no endpoints)."""
    p80 = lambda node_port=None: (ServicePort("p80", "TCP", 80, 80, node_port),)  # noqa: E731
    services = [
        Service("ns1", "svc1", IP("172.30.0.41"), p80()),
        Service("ns3", "svc3", IP("172.30.0.43"), p80(3003), type="NodePort"),
        Service("ns5", "svc5", IP("172.30.0.45"), p80(3002), type="NodePort", session_affinity="ClientIP"),
        Service("ns6", "svc6", IP("172.30.0.46"), p80()),
    ]
    eps = {
        "ns1/svc1:p80": [Endpoint(IP("10.180.0.1"), 80)],
        "ns3/svc3:p80": [Endpoint(IP("10.180.0.3"), 80)],
        "ns5/svc5:p80": [Endpoint(IP("10.180.0.3"), 80)],
    }
    return render_iptables(services, eps, (), "10.0.0.0/8", RenderOptions(random_fully=False))


def test_rules_as_in_kube_proxy_overall_test():
    """Lines of kube-proxy's TestOverallIPTablesRules expectation (and section 1.6/1.7 of
    the reference notes) that our model can produce, verbatim."""
    text = kube_proxy_overall_services()
    for line in [
        '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O',
        '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ',
        '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ',
        "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ",
        "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80",
        "-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK",
        '-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ',
        "-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK",
        '-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP',
        '-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --rcheck --seconds 10800 --reap -j KUBE-SEP-I77PXRDZVX7PMWMN',
        '-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -j KUBE-SEP-I77PXRDZVX7PMWMN',
        "-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80",
        '-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT',
    ]:
        assert line in text.splitlines(), line


def test_probabilities_are_1_over_n_minus_i_with_ten_decimals():
    assert [probability(n) for n in (5, 4, 3, 2)] == ["0.2000000000", "0.2500000000", "0.3333333333", "0.5000000000"]
    svc = Service("a", "b", IP("10.96.0.1"), (ServicePort("", "TCP", 80, 80),))
    eps = {"a/b": [Endpoint(IP(f"10.244.0.{i}"), 80) for i in range(1, 6)]}
    rules = [line for line in render_iptables([svc], eps).splitlines() if " -> " in line]
    assert [r.split("--probability ")[1].split()[0] for r in rules[:-1]] == [
        "0.2000000000",
        "0.2500000000",
        "0.3333333333",
        "0.5000000000",
    ]
    assert "statistic" not in rules[-1]  # the last endpoint is unconditional


# --------------------------------------------------------------------------- options


def test_node_ips_restrict_nodeports_and_localhost_is_excluded_by_default():
    services, endpoints, doc = load_cluster("shop")
    text = render_iptables(services, endpoints, ["192.168.56.11", "127.0.0.1"], doc["cluster_cidr"])
    tail = [line for line in text.splitlines() if "-j KUBE-NODEPORTS" in line]
    assert tail == [
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be '
        'the last rule in this chain" -d 192.168.56.11 -j KUBE-NODEPORTS'
    ]
    default = render("shop")
    assert "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS" in default
    assert "KUBE-FIREWALL" not in default


def test_masquerade_all_and_no_cluster_cidr():
    services, endpoints, _ = load_cluster("web")
    masq_all = render_iptables(services, endpoints, (), None, RenderOptions(masquerade_all=True))
    assert "--dport 80 -j KUBE-MARK-MASQ" in masq_all and "! -s" not in masq_all
    none = render_iptables(services, endpoints, (), None)
    assert 'cluster IP" -m tcp -p tcp -d 10.96.0.20 --dport 80 -j KUBE-MARK-MASQ' not in none
    assert "! -s" not in none


def test_drop_invalid_and_random_fully_and_mark_bit():
    text = render("web", options=RenderOptions(drop_invalid=False, random_fully=False, masquerade_bit=15))
    assert "INVALID" not in text and "--random-fully" not in text
    assert "-j MARK --or-mark 0x8000" in text and "--mark 0x8000/0x8000 -j ACCEPT" in text


def test_headless_services_get_no_rules():
    svc = Service("a", "headless", None, (ServicePort("", "TCP", 80, 80),))
    assert "headless" not in render_iptables([svc], {"a/headless": [Endpoint(IP("10.244.0.1"), 80)]})


def test_jump_chains_are_kube_proxys():
    args = {(j.table, j.src, j.dst): j.rule_args() for j in JUMP_CHAINS}
    assert args[("nat", "PREROUTING", "KUBE-SERVICES")] == [
        "-m",
        "comment",
        "--comment",
        "kubernetes service portals",
        "-j",
        "KUBE-SERVICES",
    ]
    assert args[("filter", "FORWARD", "KUBE-SERVICES")][:4] == ["-m", "conntrack", "--ctstate", "NEW"]
    assert len(JUMP_CHAINS) == 12


def test_only_our_chains_are_named():
    rs = parse_restore(render())
    for chains in rs.declared.values():
        assert all(c.startswith("KUBE-") for c in chains), chains
    assert all(c.startswith("KUBE-") for t in rs.rules.values() for c in t)


# --------------------------------------------------------------------------- stale chains and partial syncs


def test_full_render_deletes_only_our_stale_chains():
    services, endpoints, doc = load_cluster("web")
    existing = {
        "KUBE-SVC-OLDOLDOLDOLDOLD1",
        "KUBE-SEP-OLDOLDOLDOLDOLD2",
        "KUBE-SERVICES",
        "DOCKER",
        "MINIKUBENET-POSTRTG",
        "KUBE-MARK-MASQ",
    }
    text = render_iptables(services, endpoints, (), doc["cluster_cidr"], existing_chains=existing)
    assert text.splitlines()[-3:] == ["-X KUBE-SEP-OLDOLDOLDOLDOLD2", "-X KUBE-SVC-OLDOLDOLDOLDOLD1", "COMMIT"]
    assert ":KUBE-SVC-OLDOLDOLDOLDOLD1 - [0:0]" in text
    assert "DOCKER" not in text and "MINIKUBENET" not in text
    assert check_ruleset(text) == []


def test_chains_from_save():
    save = "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-X - [0:0]\n-A PREROUTING -j KUBE-SVC-X\nCOMMIT\n"
    assert chains_from_save(save) == {"PREROUTING", "KUBE-SVC-X"}


def nat_chain_lines(text):
    nat = text[text.index("*nat") :]
    return [line[1:].split()[0] for line in nat.splitlines() if line.startswith(":")]


def test_partial_with_nothing_changed_writes_only_fixed_chains():
    services, endpoints, doc = load_cluster()
    plan = plan_iptables(services, endpoints, (), doc["cluster_cidr"])
    partial = plan.render_partial(plan.state)
    assert nat_chain_lines(partial) == ["KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"]
    # ...but KUBE-SERVICES still names every service, and the filter table is complete.
    full = plan.render()
    services_rules = [line for line in full.splitlines() if line.startswith("-A KUBE-SERVICES")]
    assert all(line in partial.splitlines() for line in services_rules)
    assert partial[: partial.index("*nat")] == full[: full.index("*nat")]


def test_partial_rewrites_the_changed_service_and_deletes_what_is_gone():
    services, endpoints, doc = load_cluster()
    before = plan_iptables(services, endpoints, (), doc["cluster_cidr"])
    endpoints = dict(endpoints)
    endpoints["demo/web:http"] = endpoints["demo/web:http"][:2]  # one web pod gone
    services = [s for s in services if s.name != "shop"]  # shop deleted
    after = plan_iptables(services, endpoints, (), doc["cluster_cidr"])
    partial = after.render_partial(before.state)
    assert_golden("iptables_partial.txt", partial)
    declared = set(nat_chain_lines(partial))
    web = next(p for p in after.service_ports if p.key == "demo/web:http")
    assert set(web.nat_chains) <= declared  # web rewritten
    cart = next(p for p in after.service_ports if p.key == "demo/cart")
    assert not set(cart.nat_chains) & declared  # cart untouched
    deleted = {line.split()[1] for line in partial.splitlines() if line.startswith("-X ")}
    shop = next(p for p in before.service_ports if p.key == "demo/shop:http")
    web_before = next(p for p in before.service_ports if p.key == "demo/web:http")
    gone_sep = set(web_before.nat_chains) - set(web.nat_chains)
    assert len(gone_sep) == 1 and deleted == set(shop.nat_chains) | gone_sep


def test_partial_from_nothing_is_a_full_render():
    services, endpoints, doc = load_cluster()
    plan = plan_iptables(services, endpoints, (), doc["cluster_cidr"])
    assert plan.render_partial(SyncState()) == plan.render()


def test_owned_chains():
    services, endpoints, doc = load_cluster("web")
    owned = plan_iptables(services, endpoints, (), doc["cluster_cidr"]).owned_chains()
    assert owned["filter"] == {
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    }
    assert {"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-SVC-"} <= {
        c if not c.startswith("KUBE-SVC-") else "KUBE-SVC-" for c in owned["nat"]
    }
    assert len([c for c in owned["nat"] if c.startswith("KUBE-SEP-")]) == 3


def apply_noflush(kernel: dict, text: str) -> dict:
    """What ``iptables-restore --noflush`` does to the tables, on a dict model: a chain
    line (re)creates and flushes a chain, -A appends, -X deletes; other chains stay."""
    rs = parse_restore(text)
    kernel = {t: dict(chains) for t, chains in kernel.items()}
    for table, declared in rs.declared.items():
        chains = kernel.setdefault(table, {})
        for c in declared:
            chains[c] = [r.text for r in rs.chain(table, c)]
        for c in rs.deleted.get(table, []):
            del chains[c]
    return kernel


SERVICE_POOL = [
    Service(
        "ns",
        f"s{i}",
        IP(f"10.96.0.{i + 1}"),
        (ServicePort("p", "UDP" if i % 2 else "TCP", 80 + i, 8080, 30000 + i if i < 3 else None),),
        type="NodePort" if i < 3 else "ClusterIP",
        session_affinity="ClientIP" if i == 1 else "None",
    )
    for i in range(5)
]
states = st.lists(
    st.tuples(
        st.sets(st.integers(0, 4)),  # which services exist
        st.dictionaries(st.integers(0, 4), st.sets(st.integers(1, 4))),
    ),  # their pods
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(states)
def test_a_chain_of_partial_syncs_always_equals_a_full_sync(history):
    """Apply a full sync, then partial syncs one after another: after each, the kernel
    holds exactly what a full sync of that state would have written."""
    kernel, state = {}, None
    for present, pods in history:
        services = [SERVICE_POOL[i] for i in sorted(present)]
        endpoints = {f"ns/s{i}:p": [Endpoint(IP(f"10.244.{i}.{p}"), 8080) for p in ps] for i, ps in pods.items()}
        plan = plan_iptables(services, endpoints, (), "10.244.0.0/16")
        kernel = apply_noflush(kernel, plan.render() if state is None else plan.render_partial(state))
        state = plan.state
        assert kernel == apply_noflush({}, plan.render())
