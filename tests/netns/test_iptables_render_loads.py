"""The rendered iptables text, loaded into a real kernel: ``iptables-restore --test``, real
full and partial restores with both backends (nf_tables and legacy), the jump rules, and
a connection through a ClusterIP.

Everything happens inside a throwaway network namespace, mkntest-prx-<random>, removed
after each test; the host's own rules are never touched. Needs root.
"""

import os
import subprocess
import sys
import time

import pytest

from minikubenet.proxy.iptables_render import chains_from_save, jump_chains, plan_iptables
from minikubenet.proxy.model import RenderOptions

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

from tests.proxy_golden import load_cluster  # noqa: E402
BACKENDS = ["nft", "legacy"]


def run(ns, *argv, input=None):
    p = subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(argv)} failed: {p.stderr}\n{input or ''}"
    return p.stdout


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
@pytest.mark.parametrize("options", [RenderOptions(),
                                     RenderOptions(localhost_nodeports=True, masquerade_all=True,
                                                   random_fully=False, drop_invalid=False)])
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
    ensure_jumps(netns, backend)           # idempotent: -C finds them the second time
    nat = run(netns, f"iptables-{backend}-save", "-t", "nat")
    assert nat.count("-j KUBE-SERVICES") == 2            # PREROUTING and OUTPUT, once each
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
    assert not [c for c in chains_from_save(run(netns, f"iptables-{backend}-save", "-t", "nat"))
                if c.startswith(("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-"))]


SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64)
while True:
    c, peer = s.accept()
    c.sendall(f"{c.getsockname()[0]} {peer[0]}".encode()); c.close()
"""

CLIENT = """
import socket, sys
src, dst, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for _ in range(n):
    c = socket.socket(); c.settimeout(3); c.bind((src, 0))
    try:
        c.connect((dst, port)); print(c.recv(100).decode())
    except OSError as e:
        print(type(e).__name__)
    c.close()
"""


def plumb_node(ns):
    """One interface carrying the node IP, the pods' IPs and a client pod IP, and a route
    for the service range: the lab's node, folded into one namespace. (A veth pair, as
    this kernel has no dummy driver; its peer stays unused.)"""
    run(ns, "ip", "link", "add", "mkn0", "type", "veth", "peer", "name", "mkn1")
    run(ns, "ip", "link", "set", "mkn1", "up")
    for ip in ("192.168.56.11", "10.244.1.11", "10.244.2.12", "10.244.3.13", "10.244.1.21",
               "10.244.2.22", "10.244.1.31", "10.244.2.32", "10.244.9.9"):
        run(ns, "ip", "addr", "add", f"{ip}/32", "dev", "mkn0")
    run(ns, "ip", "link", "set", "mkn0", "up")
    run(ns, "ip", "route", "add", "10.96.0.0/12", "dev", "mkn0")


def start_server(ns, port):
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, str(port)])
    for _ in range(100):
        if "LISTEN" in run(ns, "ss", "-Hltn", f"sport = :{port}") or proc.poll() is not None:
            break
        time.sleep(0.05)
    return proc


def connect(ns, src, dst, port, n):
    return run(ns, sys.executable, "-c", CLIENT, src, dst, str(port), str(n)).split("\n")[:-1]


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
    for src, dst, port, proto in [("10.244.9.9", "10.96.0.20", 80, "tcp"), ("203.0.113.7", "192.168.56.11", 30080, "tcp"),
                                  ("10.244.1.11", "10.96.0.20", 80, "tcp"), ("10.244.9.9", "10.96.0.50", 80, "tcp"),
                                  ("192.168.56.11", "192.168.56.11", 30050, "tcp"), ("10.244.9.9", "10.96.0.10", 53, "udp"),
                                  ("10.244.9.9", "10.96.0.40", 443, "tcp")]:
        ours = trace_packet(text, src, dst, port, proto, local_ips=["192.168.56.11"])
        kernels = trace_packet(dump, src, dst, port, proto, local_ips=["192.168.56.11"], jumps=())
        assert (kernels.output, kernels.masquerade_by_endpoint()) == (ours.output, ours.masquerade_by_endpoint())
        assert all(abs(kernels.probabilities()[k] - v) < 1e-9 for k, v in ours.probabilities().items())
