"""Three nodes in one lab: subnets are unique and stable, pods are reachable, and pod
IPs stay unique when the whole cluster adds pods at once."""

from __future__ import annotations

import ipaddress
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from minikubenet.lab import probes
from minikubenet.lab.topology import POD_PORT
from minikubenet.linux import named_netns
from minikubenet.pod_network import host_veth_name


def test_each_node_leases_its_own_subnet(three_nodes):
    leases = three_nodes.leases()
    subnets = [ipaddress.IPv4Network(leases[n.name]["subnet"]) for n in three_nodes.topo.nodes]
    assert len(set(subnets)) == 3
    for n, subnet in zip(three_nodes.topo.nodes, subnets):
        assert subnet.subnet_of(three_nodes.topo.pod_network) and subnet.prefixlen == 24
        assert leases[n.name]["PublicIP"] == str(n.ip)
        assert leases[n.name]["BackendType"] == "vxlan"
    for name, rec in three_nodes.pods().items():
        node_subnet = ipaddress.IPv4Network(leases[rec["node"]]["subnet"])
        assert ipaddress.IPv4Address(rec["ip"]) in node_subnet, name


def test_pods_reach_each_other_and_their_node(three_nodes):
    checked = three_nodes.check_same_node()
    # 3 nodes x (2x2 pod pairs + 2 pods x 2 node addresses + 2 node->pod)
    assert len(checked) == 3 * (4 + 4 + 2)


def test_restarted_agent_keeps_its_subnet_and_pods_keep_working(three_nodes):
    lab = three_nodes
    before = lab.leases()["n2"]["subnet"]
    lab.stop_agent("n2")
    lab.start_agent("n2")
    assert lab.leases()["n2"]["subnet"] == before
    pod = lab.topo.node("n2").pods[0]
    ip = lab.pods()[pod.name]["ip"]
    assert probes.whoami(lab.topo.node("n2").pods[1].netns, ip, POD_PORT)["pod"] == pod.name


def test_restarted_agent_without_its_lease_record_reclaims_the_subnet_from_subnet_env(three_nodes):
    """flannel PR #752: the previous subnet.env names the subnet to ask for again."""
    lab = three_nodes
    before = lab.leases()["n3"]["subnet"]
    lab.stop_agent("n3")
    key = "/coreos.com/network/subnets/" + before.replace("/", "-")
    lab.etcdctl("del", key)
    lab.start_agent("n3")
    assert lab.leases()["n3"]["subnet"] == before


def test_two_hundred_concurrent_adds_over_three_nodes_get_distinct_ips(three_nodes):
    lab = three_nodes
    jobs = []
    for i in range(200):
        node = lab.topo.nodes[i % 3].name
        name = f"{lab.topo.name}-{node}-c{i}"
        named_netns.add(name)
        jobs.append((node, f"cid-many-{i}", f"/run/netns/{name}"))
    runtimes = {n.name: lab.runtime(n.name) for n in lab.topo.nodes}
    with ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(lambda j: runtimes[j[0]].add(j[1], j[2]), jobs))
    ips = [r["ips"][0]["address"].split("/")[0] for r in results]
    assert len(set(ips)) == 200
    records = {rec["containerID"]: rec["ip"] for rec in lab.pods().values()}
    assert sorted(records[j[1]] for j in jobs) == sorted(ips)
    with ThreadPoolExecutor(max_workers=30) as pool:
        list(pool.map(lambda j: runtimes[j[0]].delete(j[1], j[2]), jobs))


def test_pod_traffic_leaving_the_cluster_is_masqueraded(three_nodes):
    """The etcd namespace has no route back to any pod subnet: a pod's connection to it
    only works because the node rewrites the source to its own address."""
    lab = three_nodes
    import socket

    from minikubenet.linux.netns import socket_in

    pod = lab.topo.node("n1").pods[0]
    s = socket_in(f"/run/netns/{pod.netns}", socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((str(lab.topo.etcd_ip), 2379))
    finally:
        s.close()


def test_subnet_lease_is_renewed_before_its_ttl_runs_out(three_nodes):
    import time

    lab = three_nodes
    lab.stop_agent("n1")
    lab.start_agent("n1", extra=("--subnet-lease-ttl", "3"))
    subnet = lab.leases()["n1"]["subnet"]
    time.sleep(7)  # more than two TTLs: without renewal the key would be gone
    assert lab.leases()["n1"]["subnet"] == subnet
    lab.stop_agent("n1")
    lab.start_agent("n1")  # back to the default TTL for the tests after this one


def test_every_device_a_node_receives_on_steers_receive_work_off_cpu_0(three_nodes):
    """RPS (linux/rps.py): the underlay port, cni0, flannel.1 and each pod's host-side veth
    hand received packets to the lab's CPUs, so sending and receiving run apart."""
    mask = three_nodes.rps_cpus
    if not mask:
        pytest.skip("one CPU: the lab steers nothing")
    node = three_nodes.topo.nodes[0]
    veths = [
        host_veth_name(doc["containerID"], doc["ifname"])
        for doc in three_nodes.pods().values()
        if doc["node"] == node.name
    ]
    assert veths, "the node has pods, so it has host-side veths"
    for dev in ["eth0", "cni0", "flannel.1", *veths]:
        got = subprocess.run(
            ["ip", "netns", "exec", node.netns, "sh", "-c", f"cat /sys/class/net/{dev}/queues/rx-*/rps_cpus"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert got and all(int(g.replace(",", ""), 16) == int(mask.replace(",", ""), 16) for g in got), (dev, got)
