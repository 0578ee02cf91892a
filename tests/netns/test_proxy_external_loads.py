"""The LoadBalancer / traffic-policy renderings (kube-proxy's TestOverall* services),
loaded into a real kernel in both modes: the kernel accepts every rule and map element
we write for LB IPs, external IPs, Local policies and source-range firewalls.

Inside a throwaway network namespace (the ``netns`` fixture); needs root."""

import os

import pytest

from minikubenet.proxy.iptables_render import render_iptables
from minikubenet.proxy.model import RenderOptions
from minikubenet.proxy.nft_render import TABLE, render_nft

from tests.netns.node_in_one_ns import run
from tests.unit.test_proxy_external import TEST_NODE, TEST_NODE_IP, overall_services

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

OPTIONS = RenderOptions(node_name=TEST_NODE, node_ip=TEST_NODE_IP)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_iptables_mode_loads(netns, backend):
    text = render_iptables(*overall_services(), (), "10.0.0.0/8", OPTIONS)
    run(netns, f"iptables-{backend}-restore", "-w", "--noflush", input=text)
    saved = run(netns, f"iptables-{backend}-save")
    assert "-A KUBE-FW-NUKIZ6OKUXPJNT4C -s 203.0.113.0/25" in saved
    assert '-A KUBE-EXTERNAL-SERVICES -d 1.2.3.4/32 -p tcp -m comment --comment "ns2/svc2:p80 has no local endpoints"' in saved


def test_nftables_mode_loads(netns):
    text = render_nft(*overall_services(), (), "10.0.0.0/8", OPTIONS, service_cidr="172.30.0.0/16")
    run(netns, "nft", "-f", "-", input=text)
    listing = run(netns, "nft", "list", "table", "ip", TABLE)
    assert "ip saddr != 203.0.113.0/25 drop" in listing
    assert "5.6.7.8 . tcp . 80 : goto firewall-HVFWP5L3-ns5/svc5/tcp/p80" in listing
    run(netns, "nft", "-f", "-", input=text)     # and again: the transaction is idempotent
