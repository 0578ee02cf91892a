"""minikubenet-proxy on one node, both modes: it balances, rejects services without
endpoints, follows endpoint changes, moves UDP clients, restores flushed rules within
one sync period, leaves other software's chains alone, removes its stale chains,
survives a failing iptables-restore, and reports metrics and health.

A one-node lab (etcd, agent, endpoints controller, proxy) with three pods: n1-p1 and
n1-p2 serve (app=web), n1-p3 is relabelled app=client and connects. Connections from
the node itself go through OUTPUT, from the pod through PREROUTING.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
import time

import pytest

from minikubenet.k8s_objects import pod_doc
from minikubenet.lab import probes
from minikubenet.lab import services as S
from minikubenet.waiting import wait_until
from tests.conftest import make_lab

MODES = ["iptables", "nftables"]
HTTP = [{"name": "http", "port": 80, "targetPort": 8080}]


@pytest.fixture(scope="module", params=MODES)
def lab(request, lab_root):
    """Name: lab. Scope: module, once per proxy mode. One node, three pods (n1-p3
    relabelled app=client); removed in teardown, also on failure."""
    lab = make_lab(lab_root, nodes=1, pods_per_node=3)
    try:
        lab.up()
        client = next(p for p in lab.topo.pods() if p.name == "n1-p3")
        S.store_call(
            lab,
            "put-pods",
            pods=[pod_doc("default", client.name, lab.pods()[client.name]["ip"], "n1", {"app": "client"})],
        )
        if request.param != "iptables":
            S.restart_proxies(lab, request.param)
        lab.mode = request.param
        lab.node = lab.topo.nodes[0]
        lab.client = client
        yield lab
    finally:
        lab.down()


def node_sh(lab, *argv, check=True) -> str:
    p = subprocess.run(["ip", "netns", "exec", lab.node.netns, *argv], capture_output=True, text=True)
    if check:
        assert p.returncode == 0, f"{' '.join(argv)}: {p.stderr}"
    return p.stdout


def proxy_log(lab) -> str:
    with open(os.path.join(lab.dir, "logs", f"proxy-{lab.node.name}.log")) as f:
        return f.read()


def metric(lab, name: str) -> float:
    for line in S.metrics(lab, lab.node).splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0


def connect_error(netns: str, ip: str, port: int, timeout: float = 2.0) -> str | None:
    error = probes.connect_error(netns, ip, port, timeout)
    return type(error).__name__ if error is not None else None


def ruleset(lab) -> str:
    if lab.mode == "iptables":
        return "".join(line for line in node_sh(lab, "iptables-save").splitlines(True) if not line.startswith("#"))
    return node_sh(lab, "nft", "list", "table", "ip", "minikubenet-proxy", check=False)


def test_balances_from_pods_and_from_the_node(lab):
    svc = S.create_service(lab, "web", {"app": "web"}, HTTP)
    from_pod = S.hit(lab.client.netns, svc["clusterIP"], 80, 200)
    from_node = S.hit(lab.node.netns, svc["clusterIP"], 80, 200)
    for got in (from_pod, from_node):
        assert set(got) == {"n1-p1", "n1-p2"} and min(got.values()) > 40, got


def test_a_service_without_endpoints_is_rejected_at_once(lab):
    svc = S.create_service(lab, "empty", {"app": "nothing"}, HTTP)
    for netns in (lab.client.netns, lab.node.netns):
        started = time.monotonic()
        assert connect_error(netns, svc["clusterIP"], 80) == "ConnectionRefusedError"
        assert time.monotonic() - started < 1.0


def test_client_ip_affinity(lab):
    svc = S.create_service(lab, "sticky", {"app": "web"}, HTTP, sessionAffinity="ClientIP")
    got = S.hit(lab.client.netns, svc["clusterIP"], 80, 40, workers=1)
    assert len(got) == 1 and "<error>" not in got, got


def test_endpoint_changes_are_partial_syncs(lab):
    svc = S.create_service(lab, "shrink", {"app": "web"}, HTTP)
    full, partial = (metric(lab, f"kubeproxy_sync_{k}_proxy_rules_duration_seconds_count") for k in ("full", "partial"))
    S.store_call(lab, "set-pod-ready", name="n1-p2", ready=False)
    try:
        S.wait_endpoints(lab, "shrink", [lab.pods()["n1-p1"]["ip"]])
        got = S.hit(lab.client.netns, svc["clusterIP"], 80, 100)
        assert got == {"n1-p1": 100}, got
        assert metric(lab, "kubeproxy_sync_full_proxy_rules_duration_seconds_count") == full, proxy_log(lab)
        assert metric(lab, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count") > partial
    finally:
        S.store_call(lab, "set-pod-ready", name="n1-p2", ready=True)


def test_another_controller_moving_its_jump_is_no_reason_for_a_full_sync(lab):
    """The policy controller keeps its jump first in FORWARD: when the proxy's jumps went
    in above it, it deletes its jump and inserts it again at the top. That deleted rule
    in FORWARD is not the proxy's (the notification says where it jumped), so the proxy
    does not resync; one of its own jumps deleted still brings a full sync at once."""
    if lab.mode != "iptables":
        pytest.skip("iptables-nft notifications for the built-in chains are the iptables mode's")
    full_count = "kubeproxy_sync_full_proxy_rules_duration_seconds_count"
    full = metric(lab, full_count)
    node_sh(lab, "iptables", "-N", "TEST-MOVER")
    try:
        for _ in range(3):
            node_sh(lab, "iptables", "-I", "FORWARD", "1", "-j", "TEST-MOVER")
            node_sh(lab, "iptables", "-D", "FORWARD", "-j", "TEST-MOVER")
        time.sleep(1.0)  # the proxy answers a notification within --min-sync-period (0.1 s here)
        assert metric(lab, full_count) == full, proxy_log(lab)
        ours = next(
            line for line in node_sh(lab, "iptables", "-S", "FORWARD").splitlines() if "-j KUBE-FORWARD" in line
        )
        node_sh(lab, "iptables", "-D", *shlex.split(ours)[1:])
        assert wait_until(lambda: metric(lab, full_count) > full, 3, interval=0.1), proxy_log(lab)
        assert "deleted our rules (DELRULE filter FORWARD)" in proxy_log(lab)
        assert wait_until(lambda: "-j KUBE-FORWARD" in node_sh(lab, "iptables", "-S", "FORWARD"), 3, interval=0.1)
    finally:
        node_sh(lab, "iptables", "-D", "FORWARD", "-j", "TEST-MOVER", check=False)
        node_sh(lab, "iptables", "-X", "TEST-MOVER", check=False)


def udp_move(lab, name: str) -> tuple[str, list]:
    svc = S.create_service(
        lab, name, {"app": "web"}, [{"name": "echo", "port": 53, "protocol": "UDP", "targetPort": S.UDP_PORT}]
    )
    client = S.UdpClient(lab.client.netns, svc["clusterIP"], 53)
    try:
        first = {client.ask() for _ in range(3)}
        assert len(first) == 1 and None not in first, first
        (endpoint,) = first
        other = "n1-p2" if endpoint == "n1-p1" else "n1-p1"
        S.store_call(lab, "set-pod-ready", name=endpoint, ready=False)
        S.wait_endpoints(lab, name, [lab.pods()[other]["ip"]])
        return endpoint, [client.ask() for _ in range(3)]
    finally:
        client.close()
        S.store_call(lab, "set-pod-ready", name=endpoint, ready=True)


def test_a_udp_client_moves_to_a_live_endpoint(lab):
    before = metric(lab, "kubeproxy_conntrack_reconciler_deleted_entries_total")
    endpoint, after = udp_move(lab, "echo")
    assert endpoint not in after and None not in after, (endpoint, after)
    assert "deleted 1 UDP conntrack entries" in proxy_log(lab)
    assert metric(lab, "kubeproxy_conntrack_reconciler_deleted_entries_total") > before


def test_without_the_cleanup_the_udp_client_would_stay(lab):
    """The control experiment: with --no-conntrack-cleanup the old conntrack entry
    keeps DNATing the client to the endpoint that is no longer ready."""
    if lab.mode != "iptables":
        pytest.skip("the control experiment runs once (iptables mode)")
    S.restart_proxies(lab, lab.mode, extra=("--no-conntrack-cleanup",))
    try:
        endpoint, after = udp_move(lab, "echo-stays")
        assert after == [endpoint] * 3
    finally:
        S.restart_proxies(lab, lab.mode)


def test_flushed_rules_come_back_within_one_sync_period(lab):
    svc = S.create_service(lab, "survivor", {"app": "web"}, HTTP)
    if lab.mode == "iptables":
        node_sh(lab, "iptables", "-t", "nat", "-F")
        node_sh(lab, "iptables", "-t", "filter", "-F")
    else:
        node_sh(lab, "nft", "delete", "table", "ip", "minikubenet-proxy")
    started = time.monotonic()
    # (not asserting that the service is broken now: the check may have run already)
    while S.hit(lab.client.netns, svc["clusterIP"], 80, 1, timeout=0.5)["<error>"]:
        assert time.monotonic() - started < 5 + 3, "not restored within one sync period (5 s) and a margin"
    assert "rules were flushed" in proxy_log(lab)
    assert set(S.hit(lab.client.netns, svc["clusterIP"], 80, 40)) == {"n1-p1", "n1-p2"}


def test_other_chains_stay_and_stale_chains_go(lab):
    """A foreign chain (and a jump to it) survives full and partial syncs; a stale chain
    of ours left by an earlier run goes at the next full sync, the chains of a deleted
    service at the next partial one."""
    if lab.mode == "iptables":
        node_sh(lab, "iptables", "-t", "nat", "-N", "FOREIGN")
        node_sh(lab, "iptables", "-t", "nat", "-A", "FOREIGN", "-s", "192.0.2.1", "-j", "RETURN")
        node_sh(lab, "iptables", "-t", "nat", "-A", "PREROUTING", "-j", "FOREIGN")
        node_sh(lab, "iptables", "-t", "nat", "-N", "KUBE-SVC-STALESTALESTALE")
        stale, foreign = (
            "KUBE-SVC-STALESTALESTALE",
            ["-A FOREIGN -s 192.0.2.1/32 -j RETURN", "-A PREROUTING -j FOREIGN"],
        )
    else:
        node_sh(
            lab,
            "nft",
            "add table ip foreign; add chain ip foreign c { type nat hook prerouting priority 50 ; }; "
            "add rule ip foreign c ip saddr 192.0.2.1 return",
        )
        stale = "service-AAAAAAAA-default/gone/tcp/http"
        node_sh(lab, "nft", f"add chain ip minikubenet-proxy {stale}")
        foreign = ["ip saddr 192.0.2.1 return"]
    S.restart_proxies(lab, lab.mode)  # a full sync
    svc = S.create_service(lab, "doomed", {"app": "web"}, HTTP)
    doomed_chains = set(
        re.findall(
            r"-A (KUBE-(?:SVC|SEP)-\w+) .*default/doomed|((?:service|endpoint)-\w+-default/doomed/\S+)", ruleset(lab)
        )
    )
    doomed_chains = {a or b for a, b in doomed_chains}
    assert doomed_chains
    S.store_call(lab, "delete-service", name="doomed")  # a partial sync
    assert wait_until(lambda: not any(c in ruleset(lab) for c in doomed_chains), 5, interval=0.2), (
        f"chains of the deleted service are still there: {doomed_chains}"
    )
    assert connect_error(lab.client.netns, svc["clusterIP"], 80, 0.5) is not None
    text = ruleset(lab)
    assert stale not in text
    outside = (
        node_sh(lab, "iptables-save", "-t", "nat")
        if lab.mode == "iptables"
        else node_sh(lab, "nft", "list", "table", "ip", "foreign")
    )
    assert all(rule in outside for rule in foreign), outside


def test_a_failing_restore_keeps_the_old_rules_and_is_retried(lab, tmp_path_factory):
    """A missing kernel module (xt_recent, for ClientIP affinity), simulated by a
    wrapper around iptables-restore: the error is logged with the offending line, the
    previous rules keep working, and once the module "is back" the retry applies."""
    if lab.mode != "iptables":
        pytest.skip("iptables-restore is the iptables mode's")
    wrap = os.path.join(lab.dir, "wrap")
    os.makedirs(wrap, exist_ok=True)
    flag = os.path.join(wrap, "no-xt_recent")
    scripts = {
        "iptables": 'exec /usr/sbin/iptables "$@"\n',
        "iptables-save": 'exec /usr/sbin/iptables-save "$@"\n',
        "iptables-restore": f"""in=$(mktemp); cat > "$in"
line=$(grep -n -m1 -- '-m recent' "$in" | cut -d: -f1)
if [ -e {flag} ] && [ -n "$line" ]; then
  echo "iptables-restore v1.8.9 (nf_tables): Couldn't load match \\`recent':No such file or directory" >&2
  echo "" >&2; echo "Error occurred at line: $line" >&2
  rm -f "$in"; exit 2
fi
/usr/sbin/iptables-restore "$@" < "$in"; rc=$?; rm -f "$in"; exit $rc
""",
    }
    for name, body in scripts.items():
        path = os.path.join(wrap, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + body)
        os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    S.restart_proxies(lab, "iptables", extra=("--iptables", os.path.join(wrap, "iptables")))
    try:
        old = S.create_service(lab, "before", {"app": "web"}, HTTP)
        open(flag, "w").close()
        failures = metric(lab, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total")
        store = S.store_call(
            lab,
            "create-service",
            doc={
                "metadata": {"name": "needs-recent"},
                "spec": {"selector": {"app": "web"}, "ports": HTTP, "sessionAffinity": "ClientIP"},
            },
        )
        assert wait_until(
            lambda: metric(lab, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total") > failures,
            10,
            interval=0.1,
        ), "the failing restore was not reported"
        log = proxy_log(lab)
        assert "Couldn't load match `recent'" in log
        assert re.search(r">\s+\d+: -A KUBE-S\w+-\w+ .*-m recent", log), log[-2000:]
        assert set(S.hit(lab.client.netns, old["clusterIP"], 80, 20)) == {"n1-p1", "n1-p2"}  # old rules work
        assert S.hit(lab.client.netns, store["clusterIP"], 80, 1, timeout=0.5)["<error>"] == 1
        os.unlink(flag)  # the module is back
        assert wait_until(
            lambda: not S.hit(lab.client.netns, store["clusterIP"], 80, 1, timeout=0.5)["<error>"], 10, interval=0
        ), "not retried"
        assert "retrying in" in log
    finally:
        S.restart_proxies(lab, "iptables")


def test_metrics_and_health(lab):
    text = S.metrics(lab, lab.node)
    assert metric(lab, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") > time.time() - 3600
    assert metric(lab, "kubeproxy_sync_proxy_rules_duration_seconds_count") >= 1
    assert "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram" in text
    h = S.healthz(lab, lab.node)
    assert h["healthy"] is True and h["appliedRevision"] > 0 and h["mode"] == lab.mode


def test_dry_run_prints_the_ruleset_and_changes_nothing(lab):
    S.create_service(lab, "printed", {"app": "web"}, HTTP)
    before = ruleset(lab)
    p = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab.topo.etcd_netns,
            sys.executable,
            "-m",
            "minikubenet.proxy.daemon",
            "--dry-run",
            "--mode",
            lab.mode,
            "--etcd-endpoints",
            lab.topo.etcd_endpoints,
            *lab.etcd_tls("proxy").argv(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    if lab.mode == "iptables":
        assert p.stdout.count("*nat") == 1 and '"default/printed:http cluster IP"' in p.stdout
    else:
        assert "add table ip minikubenet-proxy" in p.stdout and "default/printed/tcp/http" in p.stdout
    assert ruleset(lab) == before


def test_a_periodic_full_sync_repairs_drift(lab):
    """Someone flushes one service chain: no canary notices, the next full sync (every
    --full-sync-period, 3 s here) rewrites it."""
    S.restart_proxies(lab, lab.mode, extra=("--full-sync-period", "3"))
    try:
        svc = S.create_service(lab, "drift", {"app": "web"}, HTTP)

        def full_syncs():
            return proxy_log(lab).rsplit("signal 15", 1)[-1].count("full sync")

        before = full_syncs()
        if lab.mode == "iptables":
            chain = re.search(r"-A (KUBE-SVC-\w+) .*default/drift:http", ruleset(lab)).group(1)
            node_sh(lab, "iptables", "-t", "nat", "-F", chain)
        else:
            chain = re.search(r"(service-\w+-default/drift/tcp/http)", ruleset(lab)).group(1)
            node_sh(lab, "nft", "flush", "chain", "ip", "minikubenet-proxy", chain)
        started = time.monotonic()
        while full_syncs() == before or S.hit(lab.client.netns, svc["clusterIP"], 80, 1, timeout=0.5)["<error>"]:
            assert time.monotonic() - started < 3 + 3, "not repaired by the periodic full sync"
            time.sleep(0.1)
    finally:
        S.restart_proxies(lab, lab.mode)


def test_cleanup_removes_our_rules_and_only_ours(lab):
    """``minikubenet-proxy --cleanup`` (last in this module: it leaves no rules)."""
    S.stop_proxies(lab)
    p = subprocess.run(
        ["ip", "netns", "exec", lab.node.netns, sys.executable, "-m", "minikubenet.proxy.daemon", "--cleanup"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    dump = node_sh(lab, "iptables-save")
    assert not re.search(r"\bKUBE-", dump), dump
    tables = node_sh(lab, "nft", "list", "tables")
    assert "minikubenet-proxy" not in tables
    # what test_other_chains_stay_and_stale_chains_go added for someone else stays
    assert ":FOREIGN" in dump if lab.mode == "iptables" else "table ip foreign" in tables
