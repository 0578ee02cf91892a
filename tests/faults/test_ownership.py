"""A careless runtime's ADD never touches what it does not own (issue 10, observed problem 1).

Each case is sent through the real CNI binary, as a runtime sends it, on a two-node lab
with one serving pod per node:

- ADD with a new container ID into a running pod's namespace, ``CNI_IFNAME=eth0``:
  refused with the reference bridge's words and code 999; the owner's eth0 keeps its
  mark, address and MAC, the other pod still reaches it, no IP record is left;
- ADD with ``CNI_NETNS`` = the other node's own namespace (with its eth0, or a free
  name): refused; that node's underlay eth0 and flannel.1 stay, cross-node traffic flows;
- the DEL a runtime sends after each failed ADD: the other container keeps everything.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from minikubenet.cni.runtime import CniCallError
from minikubenet.lab import probes
from minikubenet.lab.topology import POD_PORT
from minikubenet.pod_network import host_veth_name, ownership_mark
from minikubenet.waiting import wait_until
from tests.conftest import make_lab


@pytest.fixture(scope="module")
def lab(lab_root):
    lab = make_lab(lab_root, nodes=2, pods_per_node=1)
    lab.proxy_mode = None  # no services needed: fewer daemons on a shared machine
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def link(netns: str, name: str) -> dict | None:
    p = subprocess.run(["ip", "-n", netns, "-j", "-d", "addr", "show", "dev", name], capture_output=True, text=True)
    return json.loads(p.stdout)[0] if p.returncode == 0 and p.stdout.strip() else None


def snapshot(netns: str, name: str) -> tuple:
    """What a user of the interface sees: it exists, its index, MAC, alias, addresses."""
    info = link(netns, name)
    assert info is not None, f"{name} is gone from {netns}"
    return (
        info["ifindex"],
        info["address"],
        info.get("ifalias", ""),
        sorted(a["local"] for a in info["addr_info"] if a["family"] == "inet"),
    )


def records(lab) -> dict[str, dict]:
    return {k: json.loads(v) for k, v in lab.etcd_dump("/minikubenet/ipam/")}


def claims(lab) -> dict[str, str]:
    """The claim markers (ADDs not finished) left in etcd, after the agent had a moment."""
    # completions are written just after ADD's answer
    wait_until(lambda: not lab.etcd_dump("/minikubenet/ipam-claims/"), 5, interval=0.1)
    return dict(lab.etcd_dump("/minikubenet/ipam-claims/"))


def node_veths(lab, node: str) -> set[str]:
    out = subprocess.run(
        ["ip", "-n", lab.topo.node(node).netns, "-o", "link", "show", "type", "veth"], capture_output=True, text=True
    ).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def reaches(lab, src_pod, dst_pod) -> bool:
    try:
        return probes.whoami(src_pod.netns, lab.pod_ips[dst_pod.name], POD_PORT)["pod"] == dst_pod.name
    except OSError:
        return False


def test_add_of_a_new_container_into_a_running_pods_namespace_is_refused(lab):
    owner, other = lab.topo.node("n1").pods[0], lab.topo.node("n2").pods[0]
    rt = lab.runtime("n1")
    path = f"/run/netns/{owner.netns}"
    before, recs_before = snapshot(owner.netns, "eth0"), records(lab)
    mark = ownership_mark(owner.container_id, "eth0")
    assert before[2] == mark, "the owner's eth0 carries its mark"
    assert snapshot(lab.topo.node("n1").netns, host_veth_name(owner.container_id, "eth0"))[2] == mark, (
        "so does its host end"
    )
    [rec] = [r for r in recs_before.values() if r["containerID"] == owner.container_id]
    assert rec["mac"] == before[1] and rec["netns"] == path
    assert claims(lab) == {}, "every pod of the lab is complete: no claim marker is left"

    with pytest.raises(CniCallError) as e:
        rt.add("intruder-1", path, "eth0")
    assert e.value.code == 999
    assert e.value.msg == "container veth name provided (eth0) already exists"

    assert snapshot(owner.netns, "eth0") == before
    assert records(lab) == recs_before and claims(lab) == {}, "no IP record claimed or left"
    assert host_veth_name("intruder-1", "eth0") not in node_veths(lab, "n1")
    assert reaches(lab, other, owner) and reaches(lab, owner, other)

    # the runtime cleans up after its failed ADD: the owner keeps everything
    rt.delete("intruder-1", path, "eth0")
    assert snapshot(owner.netns, "eth0") == before
    assert records(lab) == recs_before
    assert reaches(lab, other, owner)


def test_add_of_an_unmarked_foreign_interface_name_is_refused_too(lab):
    """An interface some other tool made (no mark) is not ours either."""
    owner = lab.topo.node("n1").pods[0]
    subprocess.run(
        ["ip", "-n", owner.netns, "link", "add", "net9", "type", "veth", "peer", "name", "net9p"], check=True
    )
    try:
        before, recs_before = snapshot(owner.netns, "net9"), records(lab)
        with pytest.raises(CniCallError) as e:
            lab.runtime("n1").add("intruder-2", f"/run/netns/{owner.netns}", "net9")
        assert e.value.code == 999 and "(net9) already exists" in e.value.msg
        lab.runtime("n1").delete("intruder-2", f"/run/netns/{owner.netns}", "net9")
        assert snapshot(owner.netns, "net9") == before and records(lab) == recs_before
    finally:
        subprocess.run(["ip", "-n", owner.netns, "link", "del", "net9"], check=False)


@pytest.mark.parametrize("ifname", ["eth0", "eth7"])
def test_add_into_another_nodes_namespace_is_refused(lab, ifname):
    n2 = lab.topo.node("n2")
    path = f"/run/netns/{n2.netns}"
    underlay, vxlan = snapshot(n2.netns, "eth0"), snapshot(n2.netns, "flannel.1")
    devices_before, recs_before = node_veths(lab, "n2"), records(lab)

    with pytest.raises(CniCallError) as e:
        lab.runtime("n1").add(f"intruder-node-{ifname}", path, ifname)
    assert e.value.code in (8, 999), e.value
    if ifname == "eth7":
        assert e.value.code == 8 and "node" in e.value.msg

    lab.runtime("n1").delete(f"intruder-node-{ifname}", path, ifname)
    assert snapshot(n2.netns, "eth0") == underlay and snapshot(n2.netns, "flannel.1") == vxlan
    assert link(n2.netns, ifname) is None or ifname == "eth0"
    assert node_veths(lab, "n2") == devices_before and records(lab) == recs_before
    p1, p2 = lab.topo.node("n1").pods[0], n2.pods[0]
    assert reaches(lab, p1, p2) and reaches(lab, p2, p1), "the node's overlay still carries pod traffic"


def test_a_repeated_add_of_the_same_container_replaces_only_its_own_leftover(lab):
    """The mark is what lets a retried ADD (same container) remake its own interface."""
    name = f"{lab.topo.name}-own"
    subprocess.run(["ip", "netns", "add", name], check=True)
    rt = lab.runtime("n1")
    try:
        first = rt.add("retry-1", f"/run/netns/{name}", "eth0")
        second = rt.add("retry-1", f"/run/netns/{name}", "eth0")
        assert first["ips"] == second["ips"]
        assert snapshot(name, "eth0")[2] == ownership_mark("retry-1", "eth0")
        rt.delete("retry-1", f"/run/netns/{name}", "eth0")
        assert link(name, "eth0") is None
        assert not [r for r in records(lab).values() if r["containerID"] == "retry-1"]
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_gc_and_del_leave_an_interface_by_our_name_with_another_mark(lab):
    """Someone re-marked (took over) the host end of one of our pods: GC releases the
    stale IP record but leaves the device; so does DEL."""
    n1 = lab.topo.node("n1")
    name = f"{lab.topo.name}-gc"
    subprocess.run(["ip", "netns", "add", name], check=True)
    rt = lab.runtime("n1")
    conf = {
        "cniVersion": "1.1.0",
        "name": "gcnet",
        "type": "minikubenet",
        "agentSocket": lab.conflist("n1")["plugins"][0]["agentSocket"],
    }
    veth = host_veth_name("gc-victim", "eth0")
    try:
        rt.exec_plugin(conf, "ADD", "gc-victim", f"/run/netns/{name}", "eth0")
        subprocess.run(["ip", "-n", n1.netns, "link", "set", veth, "alias", "someone-else"], check=True)
        rt.exec_plugin({**conf, "cni.dev/valid-attachments": []}, "GC", "", "", "")
        assert not [r for r in records(lab).values() if r["containerID"] == "gc-victim"], "record released"
        assert veth in node_veths(lab, "n1"), "GC deleted a device that is not (any more) ours"
        rt.exec_plugin(conf, "DEL", "gc-victim", "", "eth0")
        assert veth in node_veths(lab, "n1"), "DEL deleted a device that is not (any more) ours"
    finally:
        subprocess.run(["ip", "-n", n1.netns, "link", "del", veth], check=False)
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_a_device_of_someone_else_by_our_host_veth_name_is_refused_and_left_unchanged(lab):
    """Host veth names are 8 hex digits of a hash: another tool's device may hold one."""
    n1 = lab.topo.node("n1")
    veth = host_veth_name("collide", "eth0")
    name = f"{lab.topo.name}-co"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", n1.netns, "link", "add", veth, "type", "veth", "peer", "name", "wo-peer"], check=True)
    try:
        before, recs_before = snapshot(n1.netns, veth), records(lab)
        with pytest.raises(CniCallError) as e:
            lab.runtime("n1").add("collide", f"/run/netns/{name}", "eth0")
        assert e.value.code == 999 and veth in e.value.msg
        assert snapshot(n1.netns, veth) == before, "the other device was changed (alias, MAC or address)"
        assert link(name, "eth0") is None and records(lab) == recs_before
        lab.runtime("n1").delete("collide", f"/run/netns/{name}", "eth0")
        assert snapshot(n1.netns, veth) == before
    finally:
        subprocess.run(["ip", "-n", n1.netns, "link", "del", veth], check=False)
        subprocess.run(["ip", "netns", "del", name], check=False)
