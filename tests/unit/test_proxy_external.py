"""LoadBalancer, externalIPs and the traffic policies in the iptables renderer, against
kube-proxy's own expectations (pkg/proxy/iptables/proxier_test.go).

kube-proxy's expected texts are kept verbatim in tests/unit/golden/kube_proxy/, named by
their upstream test. The only lines we do not produce are nfacct accounting (the
``-m nfacct`` counters behind two kube-proxy metrics), removed before comparing.
"""

import dataclasses
import ipaddress
from pathlib import Path

from minikubenet.k8s_objects import Endpoint, Service, ServicePort
from minikubenet.proxy.iptables_render import render_iptables
from minikubenet.proxy.model import RenderOptions
from minikubenet.proxy.nft_render import render_nft

IP = ipaddress.IPv4Address
NET = ipaddress.IPv4Network
KUBE_PROXY = Path(__file__).parent / "golden" / "kube_proxy"
TEST_NODE = "test-node"  # kube-proxy's testHostname
TEST_NODE_IP = "192.168.0.2"  # kube-proxy's testNodeIP


def without_nfacct(text: str) -> str:
    lines = [
        line.replace(" -m nfacct --nfacct-name ct_state_invalid_dropped_pkts", "")
        for line in text.splitlines()
        if "localhost_nps_accepted_pkts" not in line
    ]
    return "\n".join(lines) + "\n"


def p80(node_port=None):
    return (ServicePort("p80", "TCP", 80, 80, node_port),)


def overall_services():
    """TestOverallIPTablesRules' six services and their endpoint slices."""
    services = [
        Service("ns1", "svc1", IP("172.30.0.41"), p80()),
        Service(
            "ns2",
            "svc2",
            IP("172.30.0.42"),
            p80(3001),
            type="LoadBalancer",
            external_traffic_policy="Local",
            load_balancer_ips=(IP("1.2.3.4"),),
            external_ips=(IP("192.168.99.22"),),
            health_check_node_port=30000,
        ),
        Service("ns3", "svc3", IP("172.30.0.43"), p80(3003), type="NodePort"),
        Service("ns4", "svc4", IP("172.30.0.44"), p80(), type="NodePort", external_ips=(IP("192.168.99.33"),)),
        # healthCheckNodePort 30000 is set upstream too, but kube-proxy ignores it with
        # the Cluster policy (and our validation refuses it, as the API server does).
        Service(
            "ns5",
            "svc5",
            IP("172.30.0.45"),
            p80(3002),
            type="LoadBalancer",
            load_balancer_ips=(IP("5.6.7.8"),),
            load_balancer_source_ranges=(NET("203.0.113.0/25"),),
            session_affinity="ClientIP",
        ),
        Service("ns6", "svc6", IP("172.30.0.46"), p80()),
    ]
    endpoints = {
        "ns1/svc1:p80": [Endpoint(IP("10.180.0.1"), 80)],
        # No nodeName: not local, so svc2's Local policy has nothing on this node.
        "ns2/svc2:p80": [Endpoint(IP("10.180.0.2"), 80)],
        "ns3/svc3:p80": [Endpoint(IP("10.180.0.3"), 80)],
        "ns4/svc4:p80": [Endpoint(IP("10.180.0.4"), 80), Endpoint(IP("10.180.0.5"), 80, node_name=TEST_NODE)],
        "ns5/svc5:p80": [Endpoint(IP("10.180.0.3"), 80)],
    }
    return services, endpoints


# kube-proxy's fake proxier: localhost NodePorts on, no --random-fully.
UPSTREAM = RenderOptions(localhost_nodeports=True, random_fully=False, node_name=TEST_NODE, node_ip=TEST_NODE_IP)


def render(services, endpoints, options=UPSTREAM):
    return render_iptables(services, endpoints, (), "10.0.0.0/8", options)


def test_overall_iptables_rules_as_kube_proxy():
    """TestOverallIPTablesRules: ClusterIP, LoadBalancer with eTP=Local and no local
    endpoint (the health check port, the "has no local endpoints" drops, the EXT chain's
    pod/LOCAL short-circuits), NodePort, externalIPs, LoadBalancer with source ranges and
    affinity (KUBE-FW, KUBE-PROXY-FIREWALL), no endpoints: line for line."""
    expected = without_nfacct((KUBE_PROXY / "TestOverallIPTablesRules.txt").read_text())
    assert render(*overall_services()) == expected


# --------------------------------------------------------------------------- one service, line for line


def service_lines(text: str) -> list[str]:
    """The lines a ruleset has beyond the fixed chains (which the three-endpoint test in
    test_proxy_iptables.py already compares byte for byte), in order."""
    fixed = set(render([], {}).splitlines())
    return [line for line in text.splitlines() if line not in fixed]


SVC1 = Service("ns1", "svc1", IP("172.30.1.1"), (ServicePort("", "TCP", 80, 80),))


def ep(ip, node, ready=True, serving=None, terminating=False):
    return Endpoint(IP(ip), 80, node_name=node, ready=ready, serving=serving, terminating=terminating)


def test_internal_traffic_policy_local_with_local_endpoints():
    """TestInternalTrafficPolicy, "internalTrafficPolicy is local and there are local
    endpoints": only this node's endpoint, in a KUBE-SVL chain."""
    svc = dataclasses.replace(SVC1, internal_traffic_policy="Local")
    eps = {"ns1/svc1": [ep("10.0.1.1", TEST_NODE), ep("10.0.1.2", "host1"), ep("10.0.1.3", "host2")]}
    assert service_lines(render([svc], eps)) == [
        ":KUBE-SEP-3JOIVZTXZZRGORX4 - [0:0]",
        ":KUBE-SVL-AQI2S6QIMU7PVVRP - [0:0]",
        '-A KUBE-SERVICES -m comment --comment "ns1/svc1 cluster IP" -m tcp -p tcp -d 172.30.1.1 --dport 80 -j KUBE-SVL-AQI2S6QIMU7PVVRP',
        "-A KUBE-SEP-3JOIVZTXZZRGORX4 -m comment --comment ns1/svc1 -s 10.0.1.1 -j KUBE-MARK-MASQ",
        "-A KUBE-SEP-3JOIVZTXZZRGORX4 -m comment --comment ns1/svc1 -m tcp -p tcp -j DNAT --to-destination 10.0.1.1:80",
        '-A KUBE-SVL-AQI2S6QIMU7PVVRP -m comment --comment "ns1/svc1 cluster IP" -m tcp -p tcp -d 172.30.1.1 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ',
        '-A KUBE-SVL-AQI2S6QIMU7PVVRP -m comment --comment "ns1/svc1 -> 10.0.1.1:80" -j KUBE-SEP-3JOIVZTXZZRGORX4',
    ]


def test_internal_traffic_policy_local_without_local_endpoints():
    """TestInternalTrafficPolicy, "... there are no local endpoints": a DROP, no nat."""
    svc = dataclasses.replace(SVC1, internal_traffic_policy="Local")
    eps = {"ns1/svc1": [ep("10.0.1.1", "host0"), ep("10.0.1.2", "host1"), ep("10.0.1.3", "host2")]}
    assert service_lines(render([svc], eps)) == [
        '-A KUBE-SERVICES -m comment --comment "ns1/svc1 has no local endpoints" -m tcp -p tcp -d 172.30.1.1 --dport 80 -j DROP',
    ]


# TestTerminatingEndpointsTrafficPolicyLocal's service: LoadBalancer, eTP=Local, ClientIP.
LB_LOCAL = dataclasses.replace(
    SVC1,
    type="LoadBalancer",
    external_traffic_policy="Local",
    load_balancer_ips=(IP("1.2.3.4"),),
    health_check_node_port=30000,
    session_affinity="ClientIP",
)
HC_ACCEPT = (
    '-A KUBE-NODEPORTS -m comment --comment "ns1/svc1 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT'
)
EXT_HEAD = [
    '-A KUBE-SERVICES -m comment --comment "ns1/svc1 cluster IP" -m tcp -p tcp -d 172.30.1.1 --dport 80 -j KUBE-SVC-AQI2S6QIMU7PVVRP',
    '-A KUBE-SERVICES -m comment --comment "ns1/svc1 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-EXT-AQI2S6QIMU7PVVRP',
    '-A KUBE-EXT-AQI2S6QIMU7PVVRP -m comment --comment "pod traffic for ns1/svc1 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-AQI2S6QIMU7PVVRP',
    '-A KUBE-EXT-AQI2S6QIMU7PVVRP -m comment --comment "masquerade LOCAL traffic for ns1/svc1 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
    '-A KUBE-EXT-AQI2S6QIMU7PVVRP -m comment --comment "route LOCAL traffic for ns1/svc1 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-AQI2S6QIMU7PVVRP',
]
SVC1_MASQ = '-A KUBE-SVC-AQI2S6QIMU7PVVRP -m comment --comment "ns1/svc1 cluster IP" -m tcp -p tcp -d 172.30.1.1 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ'


def sep_lines(chain: str, ip: str) -> list[str]:
    return [
        f"-A {chain} -m comment --comment ns1/svc1 -s {ip} -j KUBE-MARK-MASQ",
        f"-A {chain} -m comment --comment ns1/svc1 -m recent --name {chain} --set -m tcp -p tcp -j DNAT --to-destination {ip}:80",
    ]


def dispatch(chain: str, targets: list[tuple[str, str]]) -> list[str]:
    """Affinity checks, then the cascade, as kube-proxy writes them for ClientIP."""
    lines = [
        f'-A {chain} -m comment --comment "ns1/svc1 -> {ip}:80" -m recent --name {sep} --rcheck --seconds 10800 --reap -j {sep}'
        for ip, sep in targets
    ]
    n = len(targets)
    for i, (ip, sep) in enumerate(targets):
        chance = f" -m statistic --mode random --probability {1 / (n - i):0.10f}" if i < n - 1 else ""
        lines.append(f'-A {chain} -m comment --comment "ns1/svc1 -> {ip}:80"{chance} -j {sep}')
    return lines


SEP1, SEP2, SEP3, SEP5 = (
    "KUBE-SEP-3JOIVZTXZZRGORX4",
    "KUBE-SEP-IO5XOSKPAXIFQXAJ",
    "KUBE-SEP-XGJFVO3L2O5SRFNT",
    "KUBE-SEP-EQCHZ7S2PJ72OHAY",
)
SVC, SVL, EXT = "KUBE-SVC-AQI2S6QIMU7PVVRP", "KUBE-SVL-AQI2S6QIMU7PVVRP", "KUBE-EXT-AQI2S6QIMU7PVVRP"


def test_terminating_endpoints_local_ready_endpoints_exist():
    """TestTerminatingEndpointsTrafficPolicyLocal, "ready endpoints exist": ready local
    endpoints win, terminating ones are ignored; the cluster chain has every ready one."""
    eps = {
        "ns1/svc1": [
            ep("10.0.1.1", TEST_NODE),
            ep("10.0.1.2", TEST_NODE),
            ep("10.0.1.3", TEST_NODE, ready=False, serving=True, terminating=True),
            ep("10.0.1.4", TEST_NODE, ready=False, serving=False, terminating=True),
            ep("10.0.1.5", "host-1"),
        ]
    }
    assert service_lines(render([LB_LOCAL], eps)) == [
        HC_ACCEPT,
        f":{EXT} - [0:0]",
        f":{SEP1} - [0:0]",
        f":{SEP5} - [0:0]",
        f":{SEP2} - [0:0]",
        f":{SVC} - [0:0]",
        f":{SVL} - [0:0]",
        *EXT_HEAD,
        f"-A {EXT} -j {SVL}",
        *sep_lines(SEP1, "10.0.1.1"),
        *sep_lines(SEP5, "10.0.1.5"),
        *sep_lines(SEP2, "10.0.1.2"),
        SVC1_MASQ,
        *dispatch(SVC, [("10.0.1.1", SEP1), ("10.0.1.2", SEP2), ("10.0.1.5", SEP5)]),
        *dispatch(SVL, [("10.0.1.1", SEP1), ("10.0.1.2", SEP2)]),
    ]


def test_terminating_endpoints_local_only_terminating_exist():
    """... "only terminating endpoints exist": Local falls back to this node's serving
    terminating endpoints, Cluster keeps the remote ready one."""
    eps = {
        "ns1/svc1": [
            ep("10.0.1.2", TEST_NODE, ready=False, serving=True, terminating=True),
            ep("10.0.1.3", TEST_NODE, ready=False, serving=True, terminating=True),
            ep("10.0.1.4", TEST_NODE, ready=False, serving=False, terminating=True),
            ep("10.0.1.5", "host-1"),
        ]
    }
    assert service_lines(render([LB_LOCAL], eps)) == [
        HC_ACCEPT,
        f":{EXT} - [0:0]",
        f":{SEP5} - [0:0]",
        f":{SEP2} - [0:0]",
        f":{SEP3} - [0:0]",
        f":{SVC} - [0:0]",
        f":{SVL} - [0:0]",
        *EXT_HEAD,
        f"-A {EXT} -j {SVL}",
        *sep_lines(SEP5, "10.0.1.5"),
        *sep_lines(SEP2, "10.0.1.2"),
        *sep_lines(SEP3, "10.0.1.3"),
        SVC1_MASQ,
        *dispatch(SVC, [("10.0.1.5", SEP5)]),
        *dispatch(SVL, [("10.0.1.2", SEP2), ("10.0.1.3", SEP3)]),
    ]


def test_terminating_endpoints_local_on_remote_node():
    """... "terminating endpoints on remote node": Cluster falls back to it; external
    traffic has nothing local and is dropped, not rejected."""
    eps = {"ns1/svc1": [ep("10.0.1.5", "host-1", ready=False, serving=True, terminating=True)]}
    assert service_lines(render([LB_LOCAL], eps)) == [
        HC_ACCEPT,
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns1/svc1 has no local endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP',
        f":{EXT} - [0:0]",
        f":{SEP5} - [0:0]",
        f":{SVC} - [0:0]",
        *EXT_HEAD,
        *sep_lines(SEP5, "10.0.1.5"),
        SVC1_MASQ,
        *dispatch(SVC, [("10.0.1.5", SEP5)]),
    ]


def test_terminating_endpoints_local_none_usable():
    """... "no usable endpoints on any node": REJECT everywhere, no nat chains."""
    eps = {
        "ns1/svc1": [
            ep("10.0.1.5", TEST_NODE, ready=False, serving=False, terminating=True),
            ep("10.0.1.5", "host-1", ready=False, serving=False, terminating=True),
        ]
    }
    assert service_lines(render([LB_LOCAL], eps)) == [
        HC_ACCEPT,
        '-A KUBE-SERVICES -m comment --comment "ns1/svc1 has no endpoints" -m tcp -p tcp -d 172.30.1.1 --dport 80 -j REJECT',
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns1/svc1 has no endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j REJECT',
    ]


def test_large_cluster_drops_per_endpoint_comments():
    """Above 1 000 endpoints (largeClusterEndpointsThreshold) kube-proxy leaves out the
    per-endpoint comments (TestSyncProxyRulesLargeClusterMode counts on it); the
    others stay."""
    many = {"ns1/svc1": [Endpoint(IP(f"10.1.{i // 250}.{i % 250 + 1}"), 80) for i in range(1001)]}
    text = render([SVC1], many)
    assert "-A KUBE-SVC-AQI2S6QIMU7PVVRP -m statistic --mode random --probability 0.0009990010 -j KUBE-SEP-" in text
    assert "--comment ns1/svc1 -s" not in text and '"ns1/svc1 -> ' not in text
    assert '"ns1/svc1 cluster IP"' in text
    few = {"ns1/svc1": many["ns1/svc1"][:1000]}
    assert '"ns1/svc1 -> ' in render([SVC1], few)


# --------------------------------------------------------------------------- nftables


def nft_service_lines(text: str) -> set[str]:
    """Per-service objects of an nft transaction: what is not in the empty ruleset, minus
    our ``flush chain`` lines (kube-proxy's fake nft dumps objects, not the flushes
    its real transactions carry) and comments."""
    fixed = set(render_nft([], {}, (), "10.0.0.0/8", table="kube-proxy").splitlines())
    return {line for line in text.splitlines() if line and line not in fixed and not line.startswith(("flush ", "#"))}


def test_overall_nftables_rules_as_kube_proxy():
    """TestOverallNFTablesRules (pkg/proxy/nftables/proxier_test.go): the same six
    services; every per-service chain, rule, set and map element, and nothing else.
    (The fixed part is compared line by line in test_proxy_nft.py.) The upstream dump
    lists objects in its own order; the kernel does not care, so we compare sets."""
    text = render_nft(
        *overall_services(),
        (),
        "10.0.0.0/8",
        RenderOptions(node_name=TEST_NODE, node_ip=TEST_NODE_IP),
        table="kube-proxy",
    )
    expected = {
        line
        for line in (KUBE_PROXY / "TestOverallNFTablesRules.services.nft").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert nft_service_lines(text) == expected


def test_nftables_firewall_objects_as_kube_proxys_base_rules():
    """The fixed objects behind loadBalancerSourceRanges, from kube-proxy's baseRules."""
    lines = render_nft([], {}, (), "10.0.0.0/8", table="kube-proxy").splitlines()
    for line in [
        'add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }',
        "add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }",
        "add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }",
        "add chain ip kube-proxy firewall-check",
        "add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check",
        "add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check",
        "add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
    ]:
        assert line in lines, line


def test_deferred_stale_chains_are_deleted_later_unless_they_came_back():
    """Large clusters: kube-proxy puts off deleting stale chains (at most once per sync
    period). A partial restore without them leaves them in place; the next deletion
    includes them, except any chain the current rules use again."""
    from minikubenet.proxy.iptables_render import plan_iptables

    eps = {"ns1/svc1": [ep("10.0.1.1", TEST_NODE), ep("10.0.1.2", TEST_NODE)]}
    before = plan_iptables([SVC1], eps, (), "10.0.0.0/8", UPSTREAM)
    one = {"ns1/svc1": eps["ns1/svc1"][:1]}
    after = plan_iptables([SVC1], one, (), "10.0.0.0/8", UPSTREAM)
    stale = after.stale_since(before.state)
    assert stale == [SEP2]
    text = after.render_partial(before.state, stale=[])  # deferred
    assert "-X" not in text
    deferred = dataclasses.replace(after.state, pending_stale=tuple(stale))
    later = plan_iptables([SVC1], one, (), "10.0.0.0/8", UPSTREAM)
    assert later.stale_since(deferred) == [SEP2]
    assert f"-X {SEP2}" in later.render_partial(deferred)
    back = plan_iptables([SVC1], eps, (), "10.0.0.0/8", UPSTREAM)  # the endpoint returned
    assert back.stale_since(deferred) == []


def test_the_tracer_finds_the_external_rulesets_consistent():
    """Every jump goes to a declared chain, every declared chain is used (tracer.check_ruleset)."""
    from minikubenet.proxy.tracer import check_ruleset

    assert check_ruleset(render(*overall_services())) == []
