"""The rendered iptables text, loaded into a real kernel: ``iptables-restore --test``, real
full and partial restores with both backends (nf_tables and legacy), the jump rules, and
a connection through a ClusterIP.

Everything happens inside a throwaway network namespace, mkntest-prx-<random>, removed
after each test; the host's own rules are never touched. Needs root.
"""

import os
import subprocess

import pytest

from minikubenet.proxy.iptables_render import chains_from_save, jump_chains, plan_iptables
from minikubenet.proxy.model import RenderOptions

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

from tests.netns.node_in_one_ns import connect, plumb_node, run, start_server  # noqa: E402
from tests.proxy_golden import load_cluster  # noqa: E402

BACKENDS = ["nft", "legacy"]


def restore(ns, backend, text, *extra):
    run(ns, f"iptables-{backend}-restore", "-w", "--noflush", *extra, input=text)


def ensure_jumps(ns, backend, options=RenderOptions()):
    """What the apply layer does on a full sync: iptables -C, else -I at the top."""
    for j in jump_chains(options):
        check = ["ip", "netns", "exec", ns, f"iptables-{backend}", "-w", "-t", j.table, "-C", j.src, *j.rule_args()]
        if subprocess.run(check, capture_output=True).returncode != 0:
            run(ns, f"iptables-{backend}", "-w", "-t", j.table, "-I", j.src, "1", *j.rule_args())


def rules_per_chain(save_text):
    counts = {}
    for line in save_text.splitlines():
        if line.startswith("-A "):
            chain = line.split()[1]
            counts[chain] = counts.get(chain, 0) + 1
    return counts


def expected_per_chain(plan, table):
    from minikubenet.proxy.tracer import parse_restore

    rs = parse_restore(plan.render())
    return {c: len(r) for c, r in rs.rules[table].items() if r}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "options",
    [
        RenderOptions(),
        RenderOptions(localhost_nodeports=True, masquerade_all=True, random_fully=False, drop_invalid=False),
    ],
)
def test_restore_test_accepts_the_full_render(netns, backend, options):
    services, endpoints, doc = load_cluster()
    plan = plan_iptables(services, endpoints, ["192.168.56.11"], doc["cluster_cidr"], options)
    restore(netns, backend, plan.render(existing_chains={"KUBE-SVC-STALESTALESTALE1"}), "--test")
    restore(netns, backend, plan.render(), "--test")


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_then_partial_syncs_in_a_kernel(netns, backend):
    services, endpoints, doc = load_cluster()
    plan = plan_iptables(services, endpoints, (), doc["cluster_cidr"])
    restore(netns, backend, plan.render())
    ensure_jumps(netns, backend)
    ensure_jumps(netns, backend)  # idempotent: -C finds them the second time
    nat = run(netns, f"iptables-{backend}-save", "-t", "nat")
    assert nat.count("-j KUBE-SERVICES") == 2  # PREROUTING and OUTPUT, once each
    assert chains_from_save(nat) - {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"} == plan.owned_chains()["nat"]
    assert {c: n for c, n in rules_per_chain(nat).items() if c.startswith("KUBE-")} == expected_per_chain(plan, "nat")

    # A partial sync: one web pod gone, the shop service deleted.
    endpoints = dict(endpoints, **{"demo/web:http": endpoints["demo/web:http"][:2]})
    after = plan_iptables([s for s in services if s.name != "shop"], endpoints, (), doc["cluster_cidr"])
    restore(netns, backend, after.render_partial(plan.state))
    nat = run(netns, f"iptables-{backend}-save", "-t", "nat")
    assert chains_from_save(nat) - {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"} == after.owned_chains()["nat"]
    assert {c: n for c, n in rules_per_chain(nat).items() if c.startswith("KUBE-")} == expected_per_chain(after, "nat")

    # Everything gone: every service chain deleted, fixed chains stay.
    empty = plan_iptables([], {}, (), doc["cluster_cidr"])
    restore(netns, backend, empty.render_partial(after.state))
    assert not [
        c
        for c in chains_from_save(run(netns, f"iptables-{backend}-save", "-t", "nat"))
        if c.startswith(("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-"))
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_connections_through_the_rules(netns, backend):
    services, endpoints, doc = load_cluster()
    plumb_node(netns)
    restore(netns, backend, plan_iptables(services, endpoints, (), doc["cluster_cidr"]).render())
    ensure_jumps(netns, backend)
    servers = [start_server(netns, 8080), start_server(netns, 8443)]
    try:
        # ClusterIP, from a pod address: spread over all three endpoints, source kept.
        answers = connect(netns, "10.244.9.9", "10.96.0.20", 80, 60)
        assert {a.split()[0] for a in answers} == {"10.244.1.11", "10.244.2.12", "10.244.3.13"}, answers
        assert {a.split()[1] for a in answers} == {"10.244.9.9"}
        # NodePort on the node's address: DNATed to a shop pod and masqueraded.
        answers = connect(netns, "10.244.9.9", "192.168.56.11", 30080, 20)
        assert {a.split()[0] for a in answers} <= {"10.244.1.21", "10.244.2.22"}, answers
        assert "10.244.9.9" not in {a.split()[1] for a in answers}
        # ClientIP affinity (-m recent): the first connection picks, all others follow.
        answers = connect(netns, "10.244.9.9", "10.96.0.40", 443, 20)
        assert len({a.split()[0] for a in answers}) == 1, answers
        # No ready endpoints: rejected at once, not a timeout.
        assert connect(netns, "10.244.9.9", "10.96.0.50", 80, 1) == ["ConnectionRefusedError"]
    finally:
        for server in servers:
            server.kill()
            server.wait()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_tracer_reads_the_kernels_dump_as_it_reads_our_text(netns, backend):
    """iptables-save prints rules differently (-d 10.96.0.20/32, 11-decimal probabilities,
    --set-xmark for MARK, options reordered); the tracer must still find the same paths."""
    from minikubenet.proxy.tracer import trace_packet

    services, endpoints, doc = load_cluster()
    text = plan_iptables(services, endpoints, (), doc["cluster_cidr"]).render()
    restore(netns, backend, text)
    ensure_jumps(netns, backend)
    dump = run(netns, f"iptables-{backend}-save")
    for src, dst, port, proto in [
        ("10.244.9.9", "10.96.0.20", 80, "tcp"),
        ("203.0.113.7", "192.168.56.11", 30080, "tcp"),
        ("10.244.1.11", "10.96.0.20", 80, "tcp"),
        ("10.244.9.9", "10.96.0.50", 80, "tcp"),
        ("192.168.56.11", "192.168.56.11", 30050, "tcp"),
        ("10.244.9.9", "10.96.0.10", 53, "udp"),
        ("10.244.9.9", "10.96.0.40", 443, "tcp"),
    ]:
        ours = trace_packet(text, src, dst, port, proto, local_ips=["192.168.56.11"])
        kernels = trace_packet(dump, src, dst, port, proto, local_ips=["192.168.56.11"], jumps=())
        assert (kernels.output, kernels.masquerade_by_endpoint()) == (ours.output, ours.masquerade_by_endpoint())
        assert all(abs(kernels.probabilities()[k] - v) < 1e-9 for k, v in ours.probabilities().items())
