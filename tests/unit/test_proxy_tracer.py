"""Trace packets through rendered rules, as kube-proxy's runPacketFlowTests do.

The cluster (tests/unit/golden/proxy_cluster.json): pod network 10.244.0.0/16, this
node's address 192.168.56.11. Services:

    demo/web:http   ClusterIP 10.96.0.20:80   -> 10.244.1.11, 10.244.2.12, 10.244.3.13 :8080
    demo/shop:http  NodePort 30080, 10.96.0.30 -> 10.244.1.21, 10.244.2.22 :8080
    demo/cart       NodePort 30443, ClientIP affinity (600 s) -> 10.244.1.31, 10.244.2.32 :8443
    demo/empty:http NodePort 30050, 10.96.0.50, no ready endpoints
    kube-dns        10.96.0.10: dns 53/UDP and dns-tcp 53/TCP -> 10.244.1.2, 10.244.2.2
"""

import ipaddress
import json
from pathlib import Path

import pytest

from minikubenet.k8s_objects import Endpoint, Service, ServicePort, endpoints_from_k8s, service_from_k8s
from minikubenet.proxy.iptables_render import plan_iptables, render_iptables
from minikubenet.proxy.model import RenderOptions
from minikubenet.proxy.naming import endpoint_chain
from minikubenet.proxy.tracer import TracerError, check_ruleset, parse_restore, trace_packet

GOLDEN = Path(__file__).parent / "golden"
NODE_IP = "192.168.56.11"
POD = "10.244.5.5"  # a pod that backs no service
EXTERNAL = "203.0.113.7"  # a client outside the cluster
WEB = "10.244.1.11:8080, 10.244.2.12:8080, 10.244.3.13:8080"
SHOP = "10.244.1.21:8080, 10.244.2.22:8080"


def cluster_rules(options=RenderOptions(), node_ips=()):
    doc = json.loads((GOLDEN / "proxy_cluster.json").read_text())
    services = [service_from_k8s(d, doc["service_cidr"]) for d in doc["services"]]
    endpoints = {}
    for d in doc["endpoints"]:
        endpoints.update(endpoints_from_k8s(d))
    return render_iptables(services, endpoints, node_ips, doc["cluster_cidr"], options)


RULES = cluster_rules()


@pytest.mark.parametrize(
    "name, src, dst, port, proto, output, masq",
    [
        ("pod to cluster IP", POD, "10.96.0.20", 80, "tcp", WEB, False),
        ("pod to cluster IP, wrong port", POD, "10.96.0.20", 81, "tcp", "ACCEPT", False),
        ("external to cluster IP (a static route to the service range)", EXTERNAL, "10.96.0.20", 80, "tcp", WEB, True),
        ("node to cluster IP", NODE_IP, "10.96.0.20", 80, "tcp", WEB, True),
        ("external to NodePort", EXTERNAL, NODE_IP, 30080, "tcp", SHOP, True),
        ("pod to NodePort", POD, NODE_IP, 30080, "tcp", SHOP, True),
        ("node to its own NodePort", NODE_IP, NODE_IP, 30080, "tcp", SHOP, True),
        ("pod to cluster IP of a NodePort service", POD, "10.96.0.30", 80, "tcp", SHOP, False),
        ("NodePorts are not on localhost", NODE_IP, "127.0.0.1", 30080, "tcp", "ACCEPT", False),
        ("pod to cluster IP with no endpoints", POD, "10.96.0.50", 80, "tcp", "REJECT", False),
        ("node to cluster IP with no endpoints", NODE_IP, "10.96.0.50", 80, "tcp", "REJECT", False),
        ("external to NodePort with no endpoints", EXTERNAL, NODE_IP, 30050, "tcp", "REJECT", False),
        ("node to its own NodePort with no endpoints", NODE_IP, NODE_IP, 30050, "tcp", "REJECT", False),
        ("DNS over UDP", POD, "10.96.0.10", 53, "udp", "10.244.1.2:53, 10.244.2.2:53", False),
        ("DNS over TCP", POD, "10.96.0.10", 53, "tcp", "10.244.1.2:53, 10.244.2.2:53", False),
        ("UDP to a TCP-only port is not a service", POD, "10.96.0.20", 80, "udp", "ACCEPT", False),
        ("pod to pod, no service", POD, "10.244.1.11", 8080, "tcp", "ACCEPT", False),
    ],
)
def test_packet_flows(name, src, dst, port, proto, output, masq):
    trace = trace_packet(RULES, src, dst, port, proto, local_ips=[NODE_IP])
    assert (trace.output, trace.masquerade) == (output, masq), f"{name}:\n{trace.explain()}"


def test_hairpin_is_masqueraded_only_when_the_pod_reaches_itself():
    trace = trace_packet(RULES, "10.244.2.12", "10.96.0.20", 80, local_ips=[NODE_IP])
    assert trace.masquerade_by_endpoint() == {
        "10.244.1.11:8080": False,
        "10.244.2.12:8080": True,
        "10.244.3.13:8080": False,
    }


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_every_endpoint_gets_one_nth(n):
    """The 1/(n-i) cascade gives each of n endpoints the same share."""
    svc = Service("a", "b", ipaddress.IPv4Address("10.96.0.1"), (ServicePort("", "TCP", 80, 80),))
    eps = {"a/b": [Endpoint(ipaddress.IPv4Address(f"10.244.0.{i}"), 80) for i in range(1, n + 1)]}
    shares = trace_packet(render_iptables([svc], eps), POD, "10.96.0.1", 80).probabilities()
    assert len(shares) == n
    assert all(abs(p - 1 / n) < 1e-9 for p in shares.values()), shares


def test_client_ip_affinity():
    fresh = trace_packet(RULES, POD, "10.96.0.40", 443, local_ips=[NODE_IP])
    assert fresh.output == "10.244.1.31:8443, 10.244.2.32:8443"
    # Each outcome records the client in the chosen endpoint's "recent" list...
    remembered = {o.destination: o.remembered for o in fresh.outcomes}
    sep = endpoint_chain("demo/cart", "tcp", "10.244.2.32:8443")
    assert remembered["10.244.2.32:8443"] == (sep,)
    # ...and a client already in that list goes back to the same endpoint, every time.
    again = trace_packet(RULES, POD, "10.96.0.40", 443, local_ips=[NODE_IP], recent=[sep])
    assert again.output == "10.244.2.32:8443" and again.probabilities() == {"10.244.2.32:8443": 1.0}
    # Affinity also holds through the NodePort.
    assert trace_packet(RULES, EXTERNAL, NODE_IP, 30443, local_ips=[NODE_IP], recent=[sep]).output == "10.244.2.32:8443"


def test_nodeports_on_given_node_ips_only():
    rules = cluster_rules(node_ips=[NODE_IP])
    assert trace_packet(rules, EXTERNAL, NODE_IP, 30080, local_ips=[NODE_IP, "10.244.0.1"]).output == SHOP
    # cni0's address is local too, but not a NodePort address here.
    assert trace_packet(rules, POD, "10.244.0.1", 30080, local_ips=[NODE_IP, "10.244.0.1"]).output == "ACCEPT"


def test_localhost_nodeports_when_enabled():
    rules = cluster_rules(RenderOptions(localhost_nodeports=True))
    assert trace_packet(rules, NODE_IP, "127.0.0.1", 30080, local_ips=[NODE_IP]).output == SHOP
    # KUBE-FIREWALL (jumped to from INPUT) drops martian 127.0.0.0/8 packets from outside
    # that were not DNATed.
    assert trace_packet(rules, EXTERNAL, "127.0.0.1", 22, local_ips=[NODE_IP]).output == "DROP"


def test_masquerade_all():
    rules = cluster_rules(RenderOptions(masquerade_all=True))
    assert trace_packet(rules, POD, "10.96.0.20", 80, local_ips=[NODE_IP]).masquerade


def test_marked_nodeport_traffic_is_forwarded_even_if_forward_policy_drops():
    """KUBE-FORWARD accepts packets carrying the masquerade mark: the tracer shows the
    ACCEPT comes from there, before any DROP another tool might append to FORWARD."""
    trace = trace_packet(RULES, EXTERNAL, NODE_IP, 30080, local_ips=[NODE_IP])
    assert all(any('kubernetes forwarding rules" -m mark' in r for r in o.rules) for o in trace.outcomes)


def test_explain_names_every_rule_taken():
    text = trace_packet(RULES, POD, "10.96.0.30", 80, local_ips=[NODE_IP]).explain()
    assert "nat: -A PREROUTING" in text and "-j DNAT --to-destination 10.244.1.21:8080" in text


def test_partial_renders_trace_like_the_full_one_once_applied():
    # The tracer reads any restore text; a partial one alone lacks unchanged chains.
    doc = json.loads((GOLDEN / "proxy_cluster.json").read_text())
    services = [service_from_k8s(d) for d in doc["services"]]
    endpoints = {}
    for d in doc["endpoints"]:
        endpoints.update(endpoints_from_k8s(d))
    plan = plan_iptables(services, endpoints, (), doc["cluster_cidr"])
    assert "jump to undefined chain" in " ".join(check_ruleset(plan.render_partial(plan.state)))


def test_unknown_options_are_errors_not_guesses():
    with pytest.raises(TracerError, match="does not understand '--sport'"):
        parse_restore("*nat\n:X - [0:0]\n-A X -p tcp --sport 80 -j ACCEPT\nCOMMIT\n")


def test_consistency_check_finds_broken_rulesets():
    broken = (
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n:KUBE-SVC-DDDDDDDDDDDDDDDD - [0:0]\n"
        "-A KUBE-SERVICES -j KUBE-SVC-BBBBBBBBBBBBBBBB\n"
        "-A KUBE-SERVICES -j KUBE-SVC-DDDDDDDDDDDDDDDD\n"
        "-A KUBE-SEP-CCCCCCCCCCCCCCCC -j DNAT --to-destination 1.2.3.4:5\n"
        "-X KUBE-SVC-DDDDDDDDDDDDDDDD\nCOMMIT\n"
    )
    assert check_ruleset(broken) == [
        "nat: jump to undefined chain KUBE-SVC-BBBBBBBBBBBBBBBB: -A KUBE-SERVICES -j KUBE-SVC-BBBBBBBBBBBBBBBB",
        "nat: rules in undeclared chain KUBE-SEP-CCCCCCCCCCCCCCCC",
        "nat: chain KUBE-SVC-AAAAAAAAAAAAAAAA is never jumped to",
        "nat: -X KUBE-SVC-DDDDDDDDDDDDDDDD but rules still jump to it",
    ]
