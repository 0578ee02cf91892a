"""The seed's conntrack claim, VM half: "if the conntrack table fills up, your cluster
stops accepting new connections". Each VM has its own kernel, so its own table: lower
``nf_conntrack_max`` on node2 only, fill it with established flows from a noisy pod
(n2p1 holding connections to a sink in n2p2, across node2's bridge, which node2's
conntrack tracks with bridge netfilter on), then show that

- new connections from node2's other pod and to node2's pods fail,
- pods on node1 and node3 still talk to each other,
- the agent on node2 names the cause: its CNI STATUS (asked over the unix socket, which
  needs no conntrack entry) fails with "the conntrack table is full" and the numbers,
  its log warns, and its metrics show entries at the limit and the kernel's drops;
- even a new scrape of node2's metrics is dropped while the table is full (a scrape is
  a connection too): alert at 90 % (``minikubenet_conntrack_entries /
  minikubenet_conntrack_entries_limit``), not at 100 %;
- raising the limit again brings the node back.

Why a sink on the same node: a first version held flows to a pod on node3, and new
connections still got through about half the time. Each cross-node flow also gave node2
VXLAN UDP entries (one per direction, each end picking its own outer source port), which
never see a reply and so are never "assured", and a full table evicts an unassured
entry near the new one's hash bucket (``early_drop``). Flows over the bridge are plain
assured TCP entries: nothing to evict, the table stays full.

The sessions to the VMs are ssh ControlMaster connections opened before the table
fills, so they keep working; a timer on node2 restores ``nf_conntrack_max`` after
10 minutes whatever happens to this test. ``minikubenet doctor`` on node2 names the
cause too (``DOCTOR_HOOK``).
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.vm.conftest import GUEST_PODS_PATH, POD_PORT, report

SINK_PORT = 9000
HEADROOM = 150  # entries above the idle count: what the noisy pod has to fill. Each of its
# flows costs node2 two: the pod's TCP flow (forwarded) and the VXLAN UDP
# flow carrying it (the outer source port hashes the inner flow)
PROC = "/proc/sys/net/netfilter"
# doctor on node2 as on any real node, with the agent's own etcd settings and node flags
# (/etc/default/minikubenet-agent): it must exit non-zero naming conntrack, also when the
# full table drops its connection to etcd
# (the file is systemd's EnvironmentFile syntax, unquoted values with spaces: read it line
# by line rather than sourcing it with sh)
DOCTOR_HOOK = (
    'while IFS= read -r line; do [ -n "$line" ] && export "$line"; done < /etc/default/minikubenet-agent; '
    "minikubenet doctor --no-probe $MINIKUBENET_AGENT_ARGS"
)


def metrics(vc, node: str, timeout: int = 10) -> dict[str, float] | None:
    p = vc.ssh(node, f"timeout {timeout} busybox wget -q -O - http://127.0.0.1:10261/metrics", check=False)
    if p.returncode != 0:
        return None
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in p.stdout.splitlines()
        if line.startswith("minikubenet_conntrack")
    }


def reaches(vc, src_pod: str, dst_pod: str, timeout: int = 6) -> bool:
    p = vc.in_pod(
        src_pod, f"timeout {timeout} busybox wget -q -O - http://{vc.pods[dst_pod]['ip']}:{POD_PORT}/", check=False
    )
    return p.returncode == 0 and dst_pod in p.stdout


def test_a_full_table_on_one_vm_stops_its_pods_new_connections_and_the_agent_says_why(vm_cluster):
    vc = vm_cluster
    n2 = "node2"
    count, original = (
        int(x) for x in vc.ssh(n2, f"cat {PROC}/nf_conntrack_count {PROC}/nf_conntrack_max").stdout.split()
    )
    assert reaches(vc, "n2p2", "n3p1") and reaches(vc, "n1p1", "n2p2")
    before = metrics(vc, n2)
    assert before is not None and before["minikubenet_conntrack_entries_limit"] == original
    limit = count + HEADROOM
    # the sink: n2p2, on node2's bridge (see the module's doc); without bridge netfilter
    # node2 would not track those flows, so then a pod on node3 serves
    bridged = vc.ssh(n2, "cat /proc/sys/net/bridge/bridge-nf-call-iptables", check=False).stdout.strip() == "1"
    sink_node, sink_pod = (n2, "n2p2") if bridged else ("node3", "n3p2")
    sink_ip = vc.pods[sink_pod]["ip"]
    vc.ssh(
        sink_node,
        f"systemd-run --quiet --unit=mkvm-sink ip netns exec {sink_pod} python3 -I -S {GUEST_PODS_PATH} sink {SINK_PORT}",
    )
    try:
        # the safety net first, then the lower limit
        vc.ssh(
            n2,
            f"systemd-run --quiet --unit=mkvm-ct-restore --on-active=600 "
            f"sysctl -w net.netfilter.nf_conntrack_max={original}",
        )
        vc.ssh(n2, f"sysctl -qw net.netfilter.nf_conntrack_max={limit}")
        t0 = time.monotonic()
        vc.ssh(
            n2,
            f"rm -f /tmp/noisy.out /tmp/noisy.out.stop /tmp/noisy.out.held; systemd-run --quiet --unit=mkvm-noisy ip netns exec n2p1 "
            f"python3 -I -S {GUEST_PODS_PATH} hold {sink_ip} {SINK_PORT} {limit + 100} /tmp/noisy.out",
        )
        out = vc.ssh(
            n2, "for i in $(seq 240); do [ -f /tmp/noisy.out ] && cat /tmp/noisy.out && exit 0; sleep 0.5; done; exit 1"
        ).stdout
        opened, failed = (int(x) for x in re.findall(r"\d+", out))
        fill_s = time.monotonic() - t0
        assert failed >= 3 and opened < limit + 100, out  # it ran into the limit
        # full and staying full: the noisy pod got no new flow for 3 s while the table is at
        # its limit (entries that were not yet assured when the limit was reached - the
        # VXLAN UDP of earlier probes - are evicted by the kernel's early drop and refilled
        # by the noisy pod first; probing before that measures the refill, not the limit)
        settled = vc.ssh(
            n2,
            "for i in $(seq 120); do [ -f /tmp/noisy.out.held ] && read held quiet < /tmp/noisy.out.held; "
            f"n=$(cat {PROC}/nf_conntrack_count); "
            f'[ "$n" -ge {limit - 1} ] && [ "${{quiet%.*}}" -ge 3 ] && echo "$held $quiet $n" && exit 0; '
            'sleep 0.5; done; echo "$held $quiet $n"; exit 1',
            check=False,
        )
        assert settled.returncode == 0, f"node2's table did not stay full: held, quiet s, count = {settled.stdout}"
        held_flows, quiet_s, _ = settled.stdout.split()

        # three tries per path (each a SYN and its retransmissions for 6 s): a slot that
        # frees for a moment may let one through; the noisy pod takes it back at once
        def tries(src: str, dst: str) -> int:
            return sum(reaches(vc, src, dst) for _ in range(3))

        full = {
            "node2 pod -> node3 pod": tries("n2p2", "n3p1"),
            "node1 pod -> node2 pod": tries("n1p1", "n2p2"),
            "node1 pod -> node3 pod": tries("n1p1", "n3p1"),
            "node3 pod -> node1 pod": tries("n3p1", "n1p2"),
        }
        if full["node2 pod -> node3 pod"] > 1 or full["node1 pod -> node2 pod"] > 1:
            count = vc.ssh(n2, f"cat {PROC}/nf_conntrack_count", check=False).stdout.strip()
            if count.isdigit() and int(count) < limit - 2:
                # the noisy pod's entries were evicted before the probes (TCG timing): the
                # table was not full when tried, so this run says nothing either way
                pytest.skip(f"inconclusive: node2's table held {count} of {limit} entries when probed ({full})")
        assert full["node2 pod -> node3 pod"] <= 1 and full["node1 pod -> node2 pod"] <= 1, full
        assert full["node1 pod -> node3 pod"] == 3 and full["node3 pod -> node1 pod"] == 3, full

        # the agent's word, over the unix socket (the upkeep reads /proc every sync period).
        # At the limit STATUS fails; a moment below it (an entry expired) it succeeds with
        # the >90 % warning: either names the cause with the numbers.
        deadline = time.monotonic() + 60
        while True:
            status = json.loads(vc.ssh(n2, f"python3 -I -S {GUEST_PODS_PATH} status").stdout)
            said = (
                status["error"]["msg"] + ": " + status["error"]["details"]
                if "error" in status
                else " ".join(status.get("warnings", []))
            )
            if "conntrack table" in said:
                break
            assert time.monotonic() < deadline, status
            time.sleep(2)
        assert f"of {limit} entries" in said, status
        log = vc.ssh(n2, "journalctl -u minikubenet-agent -o cat --no-pager | grep 'conntrack table' | tail -1").stdout
        assert f"of {limit} entries" in log, log
        scrape_while_full = metrics(vc, n2, timeout=5)
        doctor = ""
        if DOCTOR_HOOK:  # while full: its etcd connection is dropped too, the table must still be named
            p = vc.ssh(n2, f"timeout 180 sh -c '{DOCTOR_HOOK}'", check=False, timeout=240)
            # full, or (an entry expired between the probes and doctor's read: TCG timing) the
            # drops the full table caused - either way doctor names the conntrack table
            doctor = next(
                (
                    line.strip()
                    for line in p.stdout.splitlines()
                    if "conntrack table is full" in line or "dropped connections for want of conntrack room" in line
                ),
                "",
            )
            assert p.returncode not in (0, 124) and doctor, p.stdout + p.stderr

        # a little room (50 entries, still far below the original): the noisy pod stops
        # pushing (it keeps its flows), and the scrape gets through
        vc.ssh(n2, f"touch /tmp/noisy.out.stop; sleep 2; sysctl -qw net.netfilter.nf_conntrack_max={limit + 50}")
        m = metrics(vc, n2)
        assert m is not None
        # the noisy flows are all still there (each cross-node flow also had a VXLAN UDP
        # flow of its own on this node: those time out after 30-120 s)
        assert m["minikubenet_conntrack_entries"] >= opened, m
        assert m["minikubenet_conntrack_drop_total"] > before["minikubenet_conntrack_drop_total"], m
    finally:
        vc.ssh(
            n2,
            f"systemctl stop mkvm-noisy; sysctl -qw net.netfilter.nf_conntrack_max={original}; "
            "systemctl stop mkvm-ct-restore; systemctl reset-failed mkvm-noisy mkvm-ct-restore",
            check=False,
        )
        vc.ssh(sink_node, "systemctl stop mkvm-sink; systemctl reset-failed mkvm-sink", check=False)
    deadline = time.monotonic() + 60
    while not reaches(vc, "n2p2", "n3p1"):
        assert time.monotonic() < deadline, "node2's pods did not recover after nf_conntrack_max was restored"
        time.sleep(1)
    report(
        "conntrack full on node2 (VM tier)",
        f"nf_conntrack_max {original} -> {limit} (idle count {count}); the noisy pod opened {opened} flows to {sink_pod} in "
        f"{fill_s:.0f}s, then {failed} connects failed; it held {held_flows} with no new one for {quiet_s}s when probed; successful tries of 3 while full: {full}; agent STATUS: {said[:120]!r}; metrics: "
        f"{m['minikubenet_conntrack_entries']:.0f} entries of {limit}, drop_total "
        f"{m['minikubenet_conntrack_drop_total']:.0f} (+"
        f"{m['minikubenet_conntrack_drop_total'] - before['minikubenet_conntrack_drop_total']:.0f}); a scrape while "
        f"full {'got through' if scrape_while_full else 'was dropped too'}; doctor: {doctor[:160]!r}; recovered after the limit was restored",
    )
