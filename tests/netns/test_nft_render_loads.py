"""The rendered nftables text, loaded into a real kernel: ``nft -c -f`` (check mode), real
loads and reloads, stale-chain flush then delete, cleanup, and connections through the
verdict maps.

Everything happens inside a throwaway network namespace, mkntest-prx-<random>, removed
after each test; nothing is loaded into the host's namespace. Needs root.
"""

import os
import time
from dataclasses import replace

import pytest

from minikubenet.proxy.model import RenderOptions
from minikubenet.proxy.nft_render import (
    TABLE,
    names_from_listing,
    plan_nft,
    render_nft_cleanup,
    render_nft_delete_chains,
)

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

from tests.netns.node_in_one_ns import connect, plumb_node, run, start_server  # noqa: E402
from tests.proxy_golden import load_cluster  # noqa: E402


def nft(ns, text, check=False):
    run(ns, "nft", *(["-c"] if check else []), "-f", "-", input=text)


def listing(ns):
    return run(ns, "nft", "list", "table", "ip", TABLE)


@pytest.mark.parametrize(
    "node_ips, options, service_cidr",
    [
        ((), RenderOptions(), "10.96.0.0/12"),
        (("192.168.56.11",), RenderOptions(masquerade_all=True, random_fully=False), None),
    ],
)
def test_check_mode_accepts_the_render(netns, node_ips, options, service_cidr):
    services, endpoints, doc = load_cluster()
    plan = plan_nft(services, endpoints, node_ips, doc["cluster_cidr"], options, service_cidr)
    nft(netns, plan.render(), check=True)
    assert "table ip" not in run(netns, "nft", "list", "tables")  # check mode changed nothing


def test_load_reload_stale_and_cleanup(netns):
    services, endpoints, doc = load_cluster()
    plan = plan_nft(services, endpoints, (), doc["cluster_cidr"], service_cidr=doc["service_cidr"])
    nft(netns, plan.render())
    nft(netns, plan.render())  # the same transaction again: no error
    chains, sets = names_from_listing(listing(netns))
    assert {c for c in chains if "/" in c} == plan.service_chains()
    assert {s for s in sets if s.startswith("affinity-")} == plan.affinity_sets()

    # shop is deleted, cart loses its affinity: its chains are flushed, its sets deleted.
    services = [s for s in services if s.name != "shop"]
    services = [replace(s, session_affinity="None") if s.name == "cart" else s for s in services]
    after = plan_nft(services, endpoints, (), doc["cluster_cidr"], service_cidr=doc["service_cidr"])
    stale = after.stale_chains(chains)
    assert stale and all("demo/shop" in c for c in stale)
    nft(netns, after.render(existing_chains=chains, existing_sets=sets))
    chains2, sets2 = names_from_listing(listing(netns))
    assert not {s for s in sets2 if s.startswith("affinity-")}
    assert set(stale) <= chains2  # flushed, still there...
    time.sleep(1)  # (kube-proxy waits >= 1 s: kernels < 6.2)
    nft(netns, render_nft_delete_chains(stale))  # ...deleted by the later transaction
    assert {c for c in names_from_listing(listing(netns))[0] if "/" in c} == after.service_chains()

    nft(netns, render_nft_cleanup())
    nft(netns, render_nft_cleanup())  # cleaning up twice is fine
    assert "minikubenet" not in run(netns, "nft", "list", "tables")


def test_a_staged_full_sync_leaves_the_same_table_as_one_transaction(netns):
    services, endpoints, doc = load_cluster()
    plan = plan_nft(services, endpoints, (), doc["cluster_cidr"], service_cidr=doc["service_cidr"])
    nft(netns, plan.render())
    whole = listing(netns)
    run(netns, "nft", "delete", "table", "ip", TABLE)
    for stage in plan.render_staged(stage_above=1, stage_ports=2):
        nft(netns, stage)
    assert listing(netns) == whole
    # a staged resync over the table, shop deleted: its chains flushed in the last stage
    chains, sets = names_from_listing(whole)
    after = plan_nft(
        [s for s in services if s.name != "shop"], endpoints, (), doc["cluster_cidr"], service_cidr=doc["service_cidr"]
    )
    for stage in after.render_staged(chains, sets, plan.state, stage_above=1, stage_ports=2):
        nft(netns, stage)
    fresh_chains, _ = names_from_listing(listing(netns))
    assert {c for c in fresh_chains if "/" in c} == after.service_chains() | set(after.stale_chains(chains))
    assert "demo/shop" not in run(netns, "nft", "list", "map", "ip", TABLE, "service-ips")


@pytest.mark.parametrize("staged", [False, True], ids=["one-transaction", "staged"])
def test_connections_through_the_verdict_maps(netns, staged):
    services, endpoints, doc = load_cluster()
    plumb_node(netns)
    plan = plan_nft(services, endpoints, (), doc["cluster_cidr"], service_cidr=doc["service_cidr"])
    for text in plan.render_staged(stage_above=1, stage_ports=2) if staged else [plan.render()]:
        nft(netns, text)
    servers = [start_server(netns, 8080), start_server(netns, 8443)]
    try:
        answers = connect(netns, "10.244.9.9", "10.96.0.20", 80, 60)
        assert {a.split()[0] for a in answers} == {"10.244.1.11", "10.244.2.12", "10.244.3.13"}, answers
        assert {a.split()[1] for a in answers} == {"10.244.9.9"}  # not masqueraded
        answers = connect(netns, "10.244.9.9", "192.168.56.11", 30080, 20)  # NodePort
        assert {a.split()[0] for a in answers} <= {"10.244.1.21", "10.244.2.22"}, answers
        assert {a.split()[1] for a in answers} == {"192.168.56.11"}  # masqueraded
        # ClientIP affinity: the first connection picks an endpoint, all others follow it.
        answers = connect(netns, "10.244.9.9", "10.96.0.40", 443, 20)
        assert len({a.split()[0] for a in answers}) == 1, answers
        # No endpoints, and a port the ClusterIP does not have: rejected at once.
        assert connect(netns, "10.244.9.9", "10.96.0.50", 80, 1) == ["ConnectionRefusedError"]
        assert connect(netns, "10.244.9.9", "10.96.0.20", 81, 1) == ["ConnectionRefusedError"]
    finally:
        for s in servers:
            s.kill()
            s.wait()
