"""The nftables renderer: golden text, kube-proxy's own lines, and self-consistency.
(tests/netns/test_nft_render_loads.py loads the same text into a real kernel.)"""

import ipaddress
import os
import re

from minikubenet.k8s_objects import Endpoint, Service, ServicePort
from minikubenet.proxy.model import RenderOptions
from minikubenet.proxy.nft_render import (
    names_from_listing,
    plan_nft,
    render_nft,
    render_nft_cleanup,
    render_nft_delete_chains,
)
from tests.proxy_golden import GOLDEN, load_cluster  # noqa: E402

IP = ipaddress.IPv4Address


def render_cluster(**kw):
    services, endpoints, doc = load_cluster()
    return render_nft(services, endpoints, doc["node_ips"], doc["cluster_cidr"], service_cidr=doc["service_cidr"], **kw)


def test_golden():
    text = render_cluster()
    path = GOLDEN / "nft_all.nft"
    if os.environ.get("MKN_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs; if intended, regenerate with MKN_UPDATE_GOLDEN=1"


def nft_problems(text: str) -> list[str]:
    """Jumps/gotos to chains never added, sets/maps used but never added, and one-line
    blocks without the "; }" that nft 1.0.6 needs."""
    unquoted = re.sub(r'"[^"]*"', '""', text)  # comments may mention @maps
    added = set(re.findall(r"^add chain \S+ \S+ (\S+)", text, re.M))
    containers = set(re.findall(r"^add (?:set|map) \S+ \S+ (\S+)", text, re.M))
    problems = [f"undefined chain {c}" for c in re.findall(r"(?:jump|goto) (\S+)", unquoted) if c not in added]
    problems += [f"undefined set/map {s}" for s in re.findall(r"@([^\s,}]+)", unquoted) if s not in containers]
    problems += [
        f"no ';' before '}}': {line}"
        for line in text.splitlines()
        if re.search(r"\{ (type|comment)", line) and not line.endswith("; }")
    ]
    return problems


def test_consistent():
    assert nft_problems(render_cluster()) == []
    assert nft_problems(render_cluster(options=RenderOptions(masquerade_all=True, random_fully=False))) == []


def test_one_numgen_rule_per_service_instead_of_a_cascade():
    text = render_cluster()
    web = [
        line.split(" ", 5)[5]
        for line in text.splitlines()
        if line.startswith("add rule ip minikubenet-proxy service-") and "-demo/web/tcp/http " in line
    ]
    assert len(web) == 2 and web[0].startswith("ip daddr 10.96.0.20 ip saddr != 10.244.0.0/16 ")
    assert web[1].startswith("numgen random mod 3 vmap { 0 : goto endpoint-")
    assert "statistic" not in text and "probability" not in text


def kube_proxy_overall_services():
    """The subset of kube-proxy's TestOverallNFTablesRules our model expresses
    (ns5/svc5 is a LoadBalancer there, a NodePort here: same service/endpoint chains)."""
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
    return render_nft(services, eps, (), "10.0.0.0/8", service_cidr="172.30.0.0/16", table="kube-proxy")


def test_lines_as_in_kube_proxys_nftables_tests():
    lines = kube_proxy_overall_services().splitlines()
    for line in [
        'add table ip kube-proxy { comment "rules for kube-proxy" ; }',
        'add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }',
        'add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }',
        'add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }',
        'add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }',
        'add chain ip kube-proxy reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }',
        "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }",
        "add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }",
        "add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000",
        "add rule ip kube-proxy masquerading mark and 0x4000 == 0 return",
        "add rule ip kube-proxy masquerading mark set mark xor 0x4000",
        "add rule ip kube-proxy masquerading masquerade fully-random",
        "add rule ip kube-proxy nat-prerouting jump services",
        "add rule ip kube-proxy reject-chain reject",
        'add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
        'add rule ip kube-proxy cluster-ips-check ip daddr { 172.30.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"',
        "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips",
        "add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
        "add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        # ns1/svc1
        "add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80",
        "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
        "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }",
        "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade",
        "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80",
        "add element ip kube-proxy cluster-ips { 172.30.0.41 }",
        "add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }",
        # ns3/svc3 (NodePort)
        "add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 jump mark-for-masquerade",
        "add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 goto service-4AT6LBPK-ns3/svc3/tcp/p80",
        "add element ip kube-proxy service-nodeports { tcp . 3003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80 }",
        # ns5/svc5 (ClientIP affinity)
        "add set ip kube-proxy affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }",
        "add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 ip saddr @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80",
        "add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 update @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { ip saddr }",
        # ns6/svc6 (no endpoints)
        "add element ip kube-proxy cluster-ips { 172.30.0.46 }",
        'add element ip kube-proxy no-endpoint-services { 172.30.0.46 . tcp . 80 comment "ns6/svc6:p80" : goto reject-chain }',
    ]:
        assert line in lines, line


def test_node_ips_fill_the_nodeport_set():
    services, endpoints, doc = load_cluster()
    text = render_nft(services, endpoints, ["192.168.56.11", "127.0.0.1"], doc["cluster_cidr"])
    assert "add element ip minikubenet-proxy nodeport-ips { 192.168.56.11 }" in text
    assert "127.0.0.1 }" not in text  # never NodePorts on localhost
    assert "services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports" in text
    assert "fib daddr type local" not in text


def test_stale_chains_are_flushed_and_stale_affinity_sets_deleted():
    services, endpoints, doc = load_cluster()
    plan = plan_nft(services, endpoints, (), doc["cluster_cidr"])
    gone_chain, gone_set = "service-AAAAAAAA-demo/old/tcp/http", "affinity-BBBBBBBB-demo/old/tcp/__10.244.9.9/80"
    live = sorted(plan.service_chains())[0]
    text = plan.render(
        existing_chains=[gone_chain, live, "services", "mark-for-masquerade"],
        existing_sets=[gone_set, "cluster-ips", sorted(plan.affinity_sets())[0]],
    )
    tail = text.splitlines()[-3:]
    assert tail == [
        "# stale: flushed now, deleted by a later transaction",
        f"flush chain ip minikubenet-proxy {gone_chain}",
        f"delete set ip minikubenet-proxy {gone_set}",
    ]
    assert render_nft_delete_chains([gone_chain]) == f"delete chain ip minikubenet-proxy {gone_chain}\n"


def test_affinity_sets_are_never_flushed():
    # Flushing them would forget every client's endpoint on each resync.
    assert "flush set ip minikubenet-proxy affinity-" not in render_cluster()


def test_names_from_listing():
    listing = (
        "table ip minikubenet-proxy {\n\tset cluster-ips {\n\t\ttype ipv4_addr\n\t}\n"
        "\tset affinity-X-a/b/tcp/__1.2.3.4/80 {\n\t}\n\tmap service-ips {\n\t}\n"
        "\tchain services {\n\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\t}\n"
        "\tchain service-X-a/b/tcp/ {\n\t}\n}\n"
    )
    assert names_from_listing(listing) == (
        {"services", "service-X-a/b/tcp/"},
        {"cluster-ips", "affinity-X-a/b/tcp/__1.2.3.4/80"},
    )


def test_cleanup():
    assert render_nft_cleanup() == "add table ip minikubenet-proxy\ndelete table ip minikubenet-proxy\n"


def test_a_small_full_sync_is_one_transaction_as_kube_proxys():
    services, endpoints, doc = load_cluster()
    plan = plan_nft(services, endpoints, (), doc["cluster_cidr"])
    assert plan.render_staged() == [plan.render()]


def test_a_large_full_sync_is_staged_with_the_dispatch_switched_last():
    services, endpoints, doc = load_cluster()
    plan = plan_nft(services, endpoints, (), doc["cluster_cidr"])
    gone = "service-AAAAAAAA-demo/old/tcp/http"
    n = len(plan.service_ports)
    stages = plan.render_staged([gone], (), stage_above=1, stage_ports=2)
    create, *chunks, final = stages
    assert len(chunks) == (n + 1) // 2
    # 1: objects created, nothing flushed, no rule (a table that exists is left as it is)
    assert create.strip() and all(
        line.startswith(("add table", "add set", "add map", "add chain")) for line in create.splitlines()
    )
    assert "flush" not in create and "hook" in create
    # 2: chains only - each flushed and refilled in the same transaction, no element
    for chunk in chunks:
        lines = chunk.splitlines()
        assert not [line for line in lines if line.startswith("add element")]
        flushed = {line.split()[-1] for line in lines if line.startswith("flush chain")}
        filled = {line.split()[4] for line in lines if line.startswith("add rule")}
        assert filled <= flushed, filled - flushed
    # 3: the fixed part with its flushes, every element, the stale chain: the switch
    assert final.startswith("\n".join(plan.static))
    single = plan.render([gone])
    elements = [line for line in single.splitlines() if line.startswith("add element")]
    assert [line for line in final.splitlines() if line.startswith("add element")] == elements
    assert final.rstrip().endswith(f"flush chain ip minikubenet-proxy {gone}")
    # together: every line of the one-transaction form, in stages
    assert {x for s in stages for x in s.splitlines() if x} == {x for x in single.splitlines() if x}
    # and each stage consistent with what the stages before it made
    for i in range(len(stages)):
        assert nft_problems("".join(stages[: i + 1])) == [], i


def test_a_changed_port_whose_chains_exist_switches_with_the_maps_in_the_last_stage():
    services, endpoints, doc = load_cluster()
    before = plan_nft(services, endpoints, (), doc["cluster_cidr"])
    key = before.service_ports[0].key
    changed = {pk: eps[:1] if pk == key else eps for pk, eps in endpoints.items()}
    after = plan_nft(services, changed, (), doc["cluster_cidr"])
    port = next(p for p in after.service_ports if p.key == key)
    assert port.digest != next(p for p in before.service_ports if p.key == key).digest
    existing = before.service_chains()
    flush = f"flush chain ip minikubenet-proxy {next(iter(port.chains))}"
    # restarted onto the table (no previous state): only new chains go ahead of the switch
    create, *chunks, final = after.render_staged(existing, (), None, stage_above=1, stage_ports=2)
    assert flush in final.splitlines() and chunks == []  # every port's chains exist
    # with the last sync's state: unchanged ports go ahead, the changed one only at the switch
    create, *chunks, final = after.render_staged(existing, (), before.state, stage_above=1, stage_ports=2)
    assert flush in final.splitlines() and not any(flush in c.splitlines() for c in chunks)
    assert chunks and all("flush chain" in c for c in chunks)
