"""Heal what you can see: rules removed behind the daemons' backs come back on their own.

A 2-node lab (2 pods per node). The client is pod n1-p2; the service ``heal`` selects
the first pod of every node (slot=p1), so the client is never its own endpoint. Pod
egress is probed by a TCP connection from the pod to etcd's address: the etcd namespace
has no route back to any pod subnet, so the connection only works when n1 masquerades
it (the agent's MINIKUBENET-POSTRTG chain). Every repair is timed from the moment the
damage is done to the first probe that works again, and reported.

The lab runs the agent with ``--sync-period 5`` and the proxy with ``--sync-period 5``:
the targets are one sync period; the assertions allow a margin for a loaded machine.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time

import pytest

from minikubenet.lab import daemons, probes
from minikubenet.lab import services as S
from minikubenet.linux import iptables
from minikubenet.linux.netns import path_of, socket_in
from tests.conftest import make_lab
from tests.faults.conftest import report

SYNC_PERIOD = 5.0
MARGIN = 4.0
SERVICE = "heal"


@pytest.fixture(scope="module")
def lab(lab_root):
    """Name: lab. Scope: module. A 2-node lab, 2 pods per node, proxies in iptables mode
    (the nftables test switches them); removed in teardown, also on failure."""
    lab = make_lab(lab_root, nodes=2, pods_per_node=2)
    try:
        lab.up()
        lab.svc_ip = S.create_service(
            lab, SERVICE, {"app": "web", "slot": "p1"}, [{"name": "http", "port": 80, "targetPort": 8080}]
        )["clusterIP"]
        yield lab
    finally:
        lab.down()


def node_ns(lab) -> str:
    return lab.topo.node("n1").netns


def client(lab):
    return next(p for p in lab.topo.pods() if p.name == "n1-p2")


def egress_works(lab) -> bool:
    s = socket_in(path_of(client(lab).netns), socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(0.4)
    try:
        s.connect((str(lab.topo.etcd_ip), 2379))
        return True
    except OSError:
        return False
    finally:
        s.close()


def service_works(lab) -> bool:
    try:
        probes.http_get(client(lab).netns, lab.svc_ip, 80, "/", timeout=0.4)
        return True
    except probes.ProbeFailed:
        return False


def sh(netns: str, *argv: str) -> str:
    p = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(argv)}: {p.stderr}"
    return p.stdout


def until(checks: dict, timeout: float, t0: float | None = None) -> dict:
    """Seconds from ``t0`` (default: now) until each check first passes (polled every
    50 ms), or None if it never did."""
    t0, found = t0 or time.monotonic(), {}
    while time.monotonic() - t0 < timeout and len(found) < len(checks):
        for name, check in checks.items():
            if name not in found and check():
                found[name] = time.monotonic() - t0
        time.sleep(0.05)
    return {name: found.get(name) for name in checks}


def agent_metric(lab, name: str) -> float:
    node = lab.topo.node("n1")
    text = probes.http_get(node.netns, str(node.ip), daemons.AGENT_METRICS_PORT, "/metrics").decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def proxy_metric(lab, name: str) -> float:
    text = S.metrics(lab, lab.topo.node("n1"))
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_a_flushed_nat_and_filter_table_is_repaired_within_one_sync_period(lab):
    assert egress_works(lab) and service_works(lab)
    repairs = agent_metric(lab, "minikubenet_agent_rule_repairs_total")
    t0 = time.monotonic()
    sh(node_ns(lab), "iptables", "-t", "nat", "-F")
    sh(node_ns(lab), "iptables", "-t", "filter", "-F")
    took = until(
        {"egress": lambda: egress_works(lab), "service": lambda: service_works(lab)},
        timeout=SYNC_PERIOD + MARGIN + 5,
        t0=t0,
    )
    report(
        "repair after iptables -t nat -F and -t filter -F",
        f"pod egress masquerade back in {took['egress']:.2f} s (agent sync period {SYNC_PERIOD:.0f} s), "
        f"service rules in {took['service']:.2f} s (proxy sync period {SYNC_PERIOD:.0f} s)"
        if None not in took.values()
        else f"not repaired: {took}",
    )
    assert took["egress"] is not None and took["egress"] <= SYNC_PERIOD + MARGIN
    assert took["service"] is not None and took["service"] <= SYNC_PERIOD + MARGIN

    # egress may come back before the filter table's repair (a node's FORWARD policy
    # accepts), so wait for the forward jump too. One restore writes both tables: when the
    # second flush lands while the first repair runs, one repair heals both (counted once).
    def forward_jump():
        return "-j MINIKUBENET-FWD" in sh(node_ns(lab), "iptables", "-t", "filter", "-S", "FORWARD")

    back = until({"forward": forward_jump}, timeout=SYNC_PERIOD + MARGIN, t0=time.monotonic())
    assert back["forward"] is not None, sh(node_ns(lab), "iptables", "-t", "filter", "-S", "FORWARD")
    assert agent_metric(lab, "minikubenet_agent_rule_repairs_total") >= repairs + 1
    log = open(f"{lab.dir}/logs/agent-n1.log").read()
    assert "restored the masquerade/forward rules" in log and "POSTROUTING -> MINIKUBENET-POSTRTG is gone" in log


def service_chain(lab, binary: str = "iptables") -> tuple[str, str]:
    """(the KUBE-SVC chain of the service, the KUBE-SERVICES rule that jumps to it)."""
    rules = sh(node_ns(lab), binary, "-t", "nat", "-S", "KUBE-SERVICES")
    line = next(r for r in rules.splitlines() if f"default/{SERVICE}:http cluster IP" in r)
    return re.search(r"-j (KUBE-SVC-\w+)", line).group(1), line


def test_a_deleted_kube_svc_chain_is_back_within_one_sync_period(lab):
    assert service_works(lab)
    chain, jump = service_chain(lab)
    repairs = proxy_metric(lab, "minikubenet_proxy_rule_repairs_total")
    # what a person cleaning up by hand does: the jump to it, its rules, the chain; in one
    # transaction (the proxy may put the jump back between two separate commands)
    t0 = time.monotonic()
    p = subprocess.run(
        ["ip", "netns", "exec", node_ns(lab), "iptables-restore", "--noflush"],
        capture_output=True,
        text=True,
        input=f"*nat\n{jump.replace('-A KUBE-SERVICES', '-D KUBE-SERVICES', 1)}\n"
        f":{chain} - [0:0]\n-X {chain}\nCOMMIT\n",
    )
    assert p.returncode == 0, p.stderr
    took = until({"service": lambda: service_works(lab)}, timeout=SYNC_PERIOD + MARGIN + 5, t0=t0)["service"]
    report(
        "repair of a deleted KUBE-SVC chain (iptables mode)",
        f"{took:.2f} s (proxy sync period {SYNC_PERIOD:.0f} s)" if took is not None else "not repaired",
    )
    assert took is not None and took <= SYNC_PERIOD + MARGIN
    assert service_chain(lab)[0] == chain
    assert proxy_metric(lab, "minikubenet_proxy_rule_repairs_total") > repairs


def test_a_flushed_kube_sep_chain_is_refilled(lab):
    rules = sh(node_ns(lab), "iptables", "-t", "nat", "-S", service_chain(lab)[0])
    sep = re.search(r"-j (KUBE-SEP-\w+)", rules).group(1)
    t0 = time.monotonic()
    sh(node_ns(lab), "iptables", "-t", "nat", "-F", sep)
    took = until(
        {"refilled": lambda: len(sh(node_ns(lab), "iptables", "-t", "nat", "-S", sep).splitlines()) > 1},
        timeout=SYNC_PERIOD + MARGIN,
        t0=t0,
    )["refilled"]
    report(
        "repair of a flushed KUBE-SEP chain (iptables mode)", f"{took:.2f} s" if took is not None else "not repaired"
    )
    assert took is not None and took <= SYNC_PERIOD + MARGIN


def nft(lab, text: str) -> None:
    p = subprocess.run(
        ["ip", "netns", "exec", node_ns(lab), "nft", "-f", "-"], input=text, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr


def test_nftables_mode_deleted_map_elements_chains_and_sets_come_back(lab):
    S.restart_proxies(lab, "nftables")
    S.wait_applied(lab, 0)
    assert until({"service": lambda: service_works(lab)}, timeout=10)["service"] is not None
    t = "ip minikubenet-proxy"
    figures = {}

    # the service map emptied: every service is gone at once
    t0 = time.monotonic()
    nft(lab, f"flush map {t} service-ips\n")
    figures["flushed map service-ips"] = until({"s": lambda: service_works(lab)}, SYNC_PERIOD + MARGIN, t0)["s"]

    # one service's chain deleted by hand (its map element first: a referenced chain cannot go)
    listing = sh(node_ns(lab), "nft", "list", "map", *t.split(), "service-ips")
    element, chain = re.search(r"elements = \{ (.+?) : goto (\S+) \}", listing).groups()
    t0 = time.monotonic()
    nft(lab, f"delete element {t} service-ips {{ {element} }}\nflush chain {t} {chain}\ndelete chain {t} {chain}\n")
    figures["deleted service chain"] = until({"s": lambda: service_works(lab)}, SYNC_PERIOD + MARGIN, t0)["s"]

    # the base chain that hooks our table into prerouting
    t0 = time.monotonic()
    nft(lab, f"delete chain {t} nat-prerouting\n")
    figures["deleted chain nat-prerouting"] = until({"s": lambda: service_works(lab)}, SYNC_PERIOD + MARGIN, t0)["s"]

    # the set of ClusterIPs (what rejects traffic to a ClusterIP's unknown ports)
    t0 = time.monotonic()
    nft(lab, f"flush set {t} cluster-ips\n")
    figures["flushed set cluster-ips"] = until(
        {"s": lambda: lab.svc_ip in sh(node_ns(lab), "nft", "list", "set", *t.split(), "cluster-ips")},
        SYNC_PERIOD + MARGIN,
        t0,
    )["s"]

    report(
        "repair in nftables mode",
        ", ".join(f"{k} {v:.2f} s" if v is not None else f"{k} NOT repaired" for k, v in figures.items()),
    )
    assert all(v is not None and v <= SYNC_PERIOD + MARGIN for v in figures.values()), figures
    log = open(f"{lab.dir}/logs/proxy-n1.log").read()
    assert "nft (pid" in log and "deleted our rules" in log


def test_iptables_legacy_sends_no_notifications_and_the_periodic_check_repairs(lab):
    """iptables-legacy changes are invisible to nf_tables notifications: the proxy then
    lists every chain of its own each sync period (the deep check) and repairs from that."""
    if not iptables.available("iptables-legacy"):
        pytest.skip("iptables-legacy is not installed")
    S.restart_proxies(lab, "iptables", extra=("--iptables", "iptables-legacy"))
    S.wait_applied(lab, 0)
    assert until({"service": lambda: service_works(lab)}, timeout=10)["service"] is not None
    chain, jump = service_chain(lab, "iptables-legacy")
    t0 = time.monotonic()
    p = subprocess.run(
        ["ip", "netns", "exec", node_ns(lab), "iptables-legacy-restore", "--noflush"],
        capture_output=True,
        text=True,
        input=f"*nat\n{jump.replace('-A KUBE-SERVICES', '-D KUBE-SERVICES', 1)}\n"
        f":{chain} - [0:0]\n-X {chain}\nCOMMIT\n",
    )
    assert p.returncode == 0, p.stderr
    took = until({"service": lambda: service_works(lab)}, timeout=SYNC_PERIOD + MARGIN + 5, t0=t0)["service"]
    report(
        "repair of a deleted KUBE-SVC chain with iptables-legacy (periodic check only)",
        f"{took:.2f} s (proxy sync period {SYNC_PERIOD:.0f} s)" if took is not None else "not repaired",
    )
    assert took is not None and took <= SYNC_PERIOD + MARGIN
    log = open(f"{lab.dir}/logs/proxy-n1.log").read()
    assert "no change notifications" in log and "changed by hand" in log
