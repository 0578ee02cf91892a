"""LoadBalancer, externalIPs and the traffic policies in the iptables renderer, against
kube-proxy's own expectations (pkg/proxy/iptables/proxier_test.go).

kube-proxy's expected texts are kept verbatim in tests/unit/golden/kube_proxy/, named by
their upstream test. The only lines we do not produce are nfacct accounting (the
``-m nfacct`` counters behind two kube-proxy metrics), removed before comparing.
"""

import ipaddress
from pathlib import Path

from minikubenet.k8s_objects import Endpoint, Service, ServicePort
from minikubenet.proxy.iptables_render import render_iptables
from minikubenet.proxy.model import RenderOptions

IP = ipaddress.IPv4Address
NET = ipaddress.IPv4Network
KUBE_PROXY = Path(__file__).parent / "golden" / "kube_proxy"
TEST_NODE = "test-node"           # kube-proxy's testHostname
TEST_NODE_IP = "192.168.0.2"      # kube-proxy's testNodeIP


def without_nfacct(text: str) -> str:
    lines = [line.replace(" -m nfacct --nfacct-name ct_state_invalid_dropped_pkts", "")
             for line in text.splitlines() if "localhost_nps_accepted_pkts" not in line]
    return "\n".join(lines) + "\n"


def p80(node_port=None):
    return (ServicePort("p80", "TCP", 80, 80, node_port),)


def overall_services():
    """TestOverallIPTablesRules' six services and their endpoint slices."""
    services = [
        Service("ns1", "svc1", IP("172.30.0.41"), p80()),
        Service("ns2", "svc2", IP("172.30.0.42"), p80(3001), type="LoadBalancer",
                external_traffic_policy="Local", load_balancer_ips=(IP("1.2.3.4"),),
                external_ips=(IP("192.168.99.22"),), health_check_node_port=30000),
        Service("ns3", "svc3", IP("172.30.0.43"), p80(3003), type="NodePort"),
        Service("ns4", "svc4", IP("172.30.0.44"), p80(), type="NodePort",
                external_ips=(IP("192.168.99.33"),)),
        # healthCheckNodePort 30000 is set upstream too, but kube-proxy ignores it with
        # the Cluster policy (and our validation refuses it, as the API server does).
        Service("ns5", "svc5", IP("172.30.0.45"), p80(3002), type="LoadBalancer",
                load_balancer_ips=(IP("5.6.7.8"),), load_balancer_source_ranges=(NET("203.0.113.0/25"),),
                session_affinity="ClientIP"),
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
UPSTREAM = RenderOptions(localhost_nodeports=True, random_fully=False, node_name=TEST_NODE,
                         node_ip=TEST_NODE_IP)


def render(services, endpoints, options=UPSTREAM):
    return render_iptables(services, endpoints, (), "10.0.0.0/8", options)


def test_overall_iptables_rules_as_kube_proxy():
    """TestOverallIPTablesRules: ClusterIP, LoadBalancer with eTP=Local and no local
    endpoint (the health check port, the "has no local endpoints" drops, the EXT chain's
    pod/LOCAL short-circuits), NodePort, externalIPs, LoadBalancer with source ranges and
    affinity (KUBE-FW, KUBE-PROXY-FIREWALL), no endpoints: line for line."""
    expected = without_nfacct((KUBE_PROXY / "TestOverallIPTablesRules.txt").read_text())
    assert render(*overall_services()) == expected
