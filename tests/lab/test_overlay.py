"""The overlay follows etcd and repairs the kernel: a vanished lease takes its route,
neighbour and FDB entry with it on every node; entries removed or added by hand are
corrected by the periodic reconcile; the lease watch survives an etcd restart."""

from __future__ import annotations

import json
import subprocess

from minikubenet.waiting import wait_until
from tests.conftest import make_lab

RESYNC_S = 10  # overlay/controller.py DEFAULT_RESYNC_S


def entries(lab, node, dev="flannel.1"):
    ns = lab.topo.node(node).netns
    routes = json.loads(
        subprocess.run(["ip", "-n", ns, "-j", "route", "show", "dev", dev], capture_output=True, text=True).stdout
        or "[]"
    )
    neigh = json.loads(
        subprocess.run(["ip", "-n", ns, "-j", "neigh", "show", "dev", dev], capture_output=True, text=True).stdout
        or "[]"
    )
    fdb = json.loads(
        subprocess.run(["bridge", "-n", ns, "-j", "fdb", "show", "dev", dev], capture_output=True, text=True).stdout
        or "[]"
    )
    return ({r["dst"] for r in routes}, {n["dst"] for n in neigh}, {f["dst"] for f in fdb if f.get("dst")})


def test_every_node_has_one_route_neighbour_and_fdb_entry_per_peer(three_nodes):
    lab = three_nodes
    leases = lab.leases()
    for n in lab.topo.nodes:
        routes, neigh, fdb = entries(lab, n.name)
        others = [m for m in lab.topo.nodes if m.name != n.name]
        assert routes == {leases[m.name]["subnet"] for m in others}
        assert neigh == {leases[m.name]["subnet"].split("/")[0] for m in others}
        assert fdb == {str(m.ip) for m in others}


def test_a_route_removed_by_hand_comes_back(three_nodes):
    lab = three_nodes
    target = lab.leases()["n2"]["subnet"]
    subprocess.run(["ip", "-n", lab.topo.node("n1").netns, "route", "del", target], check=True)
    assert wait_until(lambda: target in entries(lab, "n1")[0], RESYNC_S + 5)


def test_a_stray_entry_added_by_hand_is_removed(three_nodes):
    lab = three_nodes
    ns = lab.topo.node("n1").netns
    stray = "10.244.250.0/24"
    subprocess.run(
        ["ip", "-n", ns, "route", "add", stray, "via", "10.244.250.0", "dev", "flannel.1", "onlink"], check=True
    )
    assert wait_until(lambda: stray not in entries(lab, "n1")[0], RESYNC_S + 5)


def test_the_watch_survives_an_etcd_restart(lab_root):
    lab = make_lab(lab_root, nodes=3, pods_per_node=1)
    try:
        lab.up()
        lab.restart_etcd()
        # the lease of n3 disappears (its node died): every other node drops its entries
        subnet = lab.leases()["n3"]["subnet"]
        lab.stop_agent("n3")
        lab.etcdctl("del", "/coreos.com/network/subnets/" + subnet.replace("/", "-"))
        for node in ("n1", "n2"):
            assert wait_until(
                lambda node=node: (
                    subnet not in entries(lab, node)[0] and str(lab.topo.node("n3").ip) not in entries(lab, node)[2]
                ),
                5,
            ), node
        # and n3 coming back is programmed everywhere again, reachable at once
        lab.start_agent("n3")
        new = lab.leases()["n3"]["subnet"]
        for node in ("n1", "n2"):
            assert new in entries(lab, node)[0]
    finally:
        lab.down()


def test_host_gw_pods_reach_each_other_across_nodes(lab_root):
    lab = make_lab(lab_root, nodes=3, pods_per_node=1, backend="host-gw")
    try:
        lab.up()
        assert lab.check_cross_node()
        leases = lab.leases()
        routes = json.loads(
            subprocess.run(
                ["ip", "-n", lab.topo.node("n1").netns, "-j", "route", "show", leases["n2"]["subnet"]],
                capture_output=True,
                text=True,
            ).stdout
        )
        assert routes[0]["gateway"] == str(lab.topo.node("n2").ip) and routes[0]["dev"] == "eth0"
        # host-gw has no encapsulation: the pod MTU is the underlay's
        pod = lab.topo.node("n1").pods[0]
        mtu = json.loads(
            subprocess.run(["ip", "-n", pod.netns, "-j", "link", "show", "eth0"], capture_output=True, text=True).stdout
        )[0]["mtu"]
        assert mtu == 1500
    finally:
        lab.down()


def test_vxlan_mtu_follows_the_underlay(lab_root):
    lab = make_lab(lab_root, nodes=2, pods_per_node=1, mtu=9000)
    try:
        lab.up()
        env = open(f"{lab.run_dir('n1')}/subnet.env").read()
        assert "FLANNEL_MTU=8950" in env
        assert lab.check_cross_node()  # DF pings at 8950 - 28 pass, one byte more does not
    finally:
        lab.down()
