"""Chain names must be byte-for-byte kube-proxy's: these values come from kube-proxy's own
test expectations (pkg/proxy/iptables/proxier_test.go, pkg/proxy/nftables/proxier_test.go)
and from real clusters, as collected in shared/reference/kube-proxy.md section 1.2."""

import pytest

from minikubenet.proxy import naming


@pytest.mark.parametrize(
    "spn, proto, chain",
    [
        ("ns1/svc1:p80", "tcp", "KUBE-SVC-XPGD46QRK7WJZT7O"),  # TestOverallIPTablesRules
        ("ns1/svc1", "tcp", "KUBE-SVC-AQI2S6QIMU7PVVRP"),  # unnamed port: no ":"
        ("ns3/svc3:p80", "tcp", "KUBE-SVC-X27LE4BHSL4DOUIK"),
        ("ns5/svc5:p80", "tcp", "KUBE-SVC-NUKIZ6OKUXPJNT4C"),
        ("kube-system/kube-dns:dns", "udp", "KUBE-SVC-TCOU7JCQXEZGVUNU"),  # every real cluster
        ("kube-system/kube-dns:dns", "UDP", "KUBE-SVC-TCOU7JCQXEZGVUNU"),  # protocol lower-cased
    ],
)
def test_service_chain(spn, proto, chain):
    assert naming.service_chain(spn, proto) == chain


@pytest.mark.parametrize(
    "spn, endpoint, chain",
    [
        ("ns1/svc1:p80", "10.180.0.1:80", "KUBE-SEP-SXIVWICOYRO3J4NJ"),
        ("ns5/svc5:p80", "10.180.0.3:80", "KUBE-SEP-I77PXRDZVX7PMWMN"),
        ("ns1/svc1", "10.0.1.1:80", "KUBE-SEP-3JOIVZTXZZRGORX4"),  # TestInternalTrafficPolicyE2E
        ("ns1/svc1", "10.0.1.2:80", "KUBE-SEP-IO5XOSKPAXIFQXAJ"),
        ("ns1/svc1", "10.0.1.3:80", "KUBE-SEP-XGJFVO3L2O5SRFNT"),
    ],
)
def test_endpoint_chain(spn, endpoint, chain):
    assert naming.endpoint_chain(spn, "tcp", endpoint) == chain


def test_ext_chain_shares_the_service_hash():
    assert naming.external_chain("ns3/svc3:p80", "tcp") == "KUBE-EXT-X27LE4BHSL4DOUIK"


def test_names_fit_iptables():
    long = "a" * 63 + "/" + "b" * 63 + ":" + "c" * 63
    for name in (naming.service_chain(long, "tcp"), naming.endpoint_chain(long, "udp", "10.0.0.1:65535")):
        assert len(name) <= naming.IPTABLES_CHAIN_MAX


def test_only_per_service_chains_count_as_ours_to_delete():
    assert naming.is_service_chain("KUBE-SEP-SXIVWICOYRO3J4NJ")
    assert naming.is_service_chain("KUBE-FW-NUKIZ6OKUXPJNT4C")
    for fixed in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-MARK-MASQ", "KUBE-POSTROUTING", "DOCKER"):
        assert not naming.is_service_chain(fixed)


def test_nft_names():
    # The examples in kube-proxy's nftables code comments and tests.
    assert naming.nft_service_base("ns1", "svc1", "tcp", "p80") == "ULMVA6XW-ns1/svc1/tcp/p80"
    assert (
        naming.nft_endpoint_base("ns1", "svc1", "tcp", "p80", "10.180.0.1", 80)
        == "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    )
    assert naming.nft_service_base("ns5", "svc5", "TCP", "p80") == "HVFWP5L3-ns5/svc5/tcp/p80"
    assert (
        naming.nft_endpoint_base("ns5", "svc5", "tcp", "p80", "10.180.0.3", 80)
        == "GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
    )
    assert naming.nft_is_service_chain("service-ULMVA6XW-ns1/svc1/tcp/p80")
    assert not naming.nft_is_service_chain("services")


def test_nft_names_are_truncated_with_their_hash_kept():
    name = naming.hash_and_truncate("x" * 300)
    assert len(name) == 240 and name.endswith("...") and name[8] == "-"
