"""One node, a real kernel, a real etcd: the CNI verbs as a runtime sees them.

Every pod namespace here is named ``<lab>-x...`` so the lab's teardown removes it.
Pods are created through ``CniRuntime`` (the installed shim, executed inside the node's
namespace with a bare environment), exactly as a runtime would.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from minikubenet.cni.runtime import CniCallError
from minikubenet.linux import named_netns
from minikubenet.pod_network import host_veth_name


def new_pod(lab, suffix):
    name = f"{lab.topo.name}-x{suffix}"
    named_netns.add(name)
    return name, f"/run/netns/{name}"


def ip_of(result):
    return result["ips"][0]["address"].split("/")[0]


def node_veths(lab):
    out = subprocess.run(
        ["ip", "-n", lab.topo.node("n1").netns, "-o", "link", "show", "type", "veth"], capture_output=True, text=True
    ).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def records(lab):
    return {k: json.loads(v) for k, v in lab.etcd_dump("/minikubenet/ipam/")}


def node_subnet(lab):
    return ipaddress.IPv4Network(lab.leases()["n1"]["subnet"])


def test_add_plumbs_the_pod_and_records_its_ip(one_node):
    lab = one_node
    rt = lab.runtime("n1")
    name, path = new_pod(lab, "add1")
    result = rt.add("cid-add1", path, "eth0", {"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": "cart-1"})

    ip = ipaddress.IPv4Address(ip_of(result))
    subnet = node_subnet(lab)
    assert ip in subnet and ip not in (subnet.network_address, subnet.network_address + 1)
    assert [i["name"] for i in result["interfaces"]] == ["cni0", host_veth_name("cid-add1", "eth0"), "eth0"]
    assert result["interfaces"][2]["sandbox"] == path
    assert all(len(i["mac"]) == 17 for i in result["interfaces"])
    assert result["ips"][0]["interface"] == 2
    assert result["ips"][0]["gateway"] == str(subnet.network_address + 1)

    link = subprocess.run(["ip", "-n", name, "-j", "addr", "show", "eth0"], capture_output=True, text=True)
    info = json.loads(link.stdout)[0]
    assert info["mtu"] == 1450, "pod MTU must be underlay 1500 - 50 for VXLAN"
    assert f"{ip}" in [a["local"] for a in info["addr_info"] if a["family"] == "inet"]
    routes = subprocess.run(["ip", "-n", name, "route", "show", "default"], capture_output=True, text=True).stdout
    assert f"via {subnet.network_address + 1}" in routes
    lo = json.loads(
        subprocess.run(["ip", "-n", name, "-j", "link", "show", "lo"], capture_output=True, text=True).stdout
    )[0]
    assert "UP" in lo["flags"]

    rec = next(v for k, v in records(lab).items() if k.endswith(f"/{ip}"))
    assert rec["containerID"] == "cid-add1" and rec["ifname"] == "eth0" and rec["node"] == "n1"
    assert rec["podNamespace"] == "shop" and rec["podName"] == "cart-1"
    # the pod really reaches its gateway on the node
    assert (
        subprocess.run(
            ["ip", "netns", "exec", name, "ping", "-c1", "-W2", str(subnet.network_address + 1)], capture_output=True
        ).returncode
        == 0
    )


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_result_is_spelled_in_the_requested_version(one_node, version):
    lab = one_node
    rt = lab.runtime("n1")
    rt.conflist = dict(rt.conflist, cniVersion=version)
    _, path = new_pod(lab, "v" + version.replace(".", ""))
    result = rt.add("cid-v" + version, path)
    assert result["cniVersion"] == version
    assert ("version" in result["ips"][0]) == (version < "1.0.0")
    assert ("mtu" in result["interfaces"][2]) == (version == "1.1.0")
    rt.delete("cid-v" + version, path)


def test_repeated_add_returns_the_same_ip(one_node):
    lab = one_node
    rt = lab.runtime("n1")
    _, path = new_pod(lab, "rep")
    first = rt.add("cid-rep", path)
    second = rt.add("cid-rep", path)
    assert ip_of(first) == ip_of(second)
    owned = [v for v in records(lab).values() if v["containerID"] == "cid-rep"]
    assert len(owned) == 1


def test_check_passes_then_reports_what_broke(one_node):
    lab = one_node
    rt = lab.runtime("n1")
    name, path = new_pod(lab, "chk")
    rt.add("cid-chk", path)
    rt.check("cid-chk", path)
    subprocess.run(["ip", "-n", name, "route", "del", "default"], check=True)
    with pytest.raises(CniCallError) as e:
        rt.check("cid-chk", path)
    assert "no default route" in e.value.details


def test_del_removes_everything_and_can_repeat(one_node):
    lab = one_node
    rt = lab.runtime("n1")
    name, path = new_pod(lab, "del")
    ip = ip_of(rt.add("cid-del", path))
    assert host_veth_name("cid-del", "eth0") in node_veths(lab)
    rt.delete("cid-del", path)
    assert host_veth_name("cid-del", "eth0") not in node_veths(lab)
    assert not any(k.endswith(f"/{ip}") for k in records(lab))
    assert "eth0" not in subprocess.run(["ip", "-n", name, "link"], capture_output=True, text=True).stdout
    rt.delete("cid-del", path)  # a second DEL succeeds (SPEC §2)


def test_del_after_the_netns_is_gone_releases_the_ip(one_node):
    lab = one_node
    rt = lab.runtime("n1")
    name, path = new_pod(lab, "gone")
    ip = ip_of(rt.add("cid-gone", path))
    named_netns.delete(name)
    rt.delete("cid-gone", path)
    assert not any(k.endswith(f"/{ip}") for k in records(lab))
    assert host_veth_name("cid-gone", "eth0") not in node_veths(lab)
    rt.delete("cid-gone", "")  # ctr sends DEL with an empty CNI_NETNS


def test_del_before_add_succeeds(one_node):
    one_node.runtime("n1").delete("never-added", "")


def test_add_into_a_missing_netns_fails_with_code_4_and_leaves_nothing(one_node):
    lab = one_node
    before_veths, before_records = node_veths(lab), records(lab)
    with pytest.raises(CniCallError) as e:
        lab.runtime("n1").add("cid-nons", f"/run/netns/{lab.topo.name}-does-not-exist")
    assert e.value.code == 4
    assert node_veths(lab) == before_veths and records(lab) == before_records


def test_unreachable_agent_is_try_again_later(one_node, tmp_path):
    lab = one_node
    rt = lab.runtime("n1")
    rt.conflist = json.loads(json.dumps(rt.conflist))
    rt.conflist["plugins"][0]["agentSocket"] = str(tmp_path / "nobody-listens.sock")
    _, path = new_pod(lab, "noagent")
    with pytest.raises(CniCallError) as e:
        rt.add("cid-noagent", path)
    assert e.value.code == 11


def test_fifty_concurrent_adds_get_fifty_distinct_ips(one_node):
    lab = one_node
    rt = lab.runtime("n1")
    paths = [new_pod(lab, f"c{i}")[1] for i in range(50)]
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda i: rt.add(f"cid-conc-{i}", paths[i]), range(50)))
    ips = {ip_of(r) for r in results}
    assert len(ips) == 50
    with ThreadPoolExecutor(max_workers=25) as pool:
        list(pool.map(lambda i: rt.delete(f"cid-conc-{i}", paths[i]), range(50)))
    assert not any(v["containerID"].startswith("cid-conc-") for v in records(lab).values())
