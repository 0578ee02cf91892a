"""Bad network configs and node settings stop the agent with a message that names
the value and what to do, and leave no device or route behind."""

from __future__ import annotations

import json
import subprocess

import pytest

from minikubenet.lab.cluster import LabError

GOOD = {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472}}


def put_config(lab, doc):
    lab.etcdctl("put", "/coreos.com/network/config", json.dumps(doc))


def links(lab):
    out = subprocess.run(["ip", "-n", lab.topo.node("n1").netns, "-j", "link"], capture_output=True, text=True)
    return {link["ifname"] for link in json.loads(out.stdout)}


def overlay_routes(lab):
    out = subprocess.run(
        ["ip", "-n", lab.topo.node("n1").netns, "route", "show", "10.244.0.0/16", "root", "10.244.0.0/16"],
        capture_output=True,
        text=True,
    ).stdout
    return [line for line in out.splitlines() if "flannel" in line or "onlink" in line]


@pytest.fixture
def stopped_node(one_node):
    lab = one_node
    lab.stop_agent("n1")
    subprocess.run(["ip", "-n", lab.topo.node("n1").netns, "link", "del", "flannel.1"], capture_output=True)
    yield lab
    subprocess.run(["ip", "-n", lab.topo.node("n1").netns, "link", "del", "mknother1"], capture_output=True)
    put_config(lab, GOOD)
    lab.start_agent("n1")


@pytest.mark.parametrize(
    "doc, message",
    [
        ({**GOOD, "Backend": {"Type": "udp"}}, "unknown Backend.Type 'udp'"),
        ({**GOOD, "Backend": {"Type": "vxlan", "VNI": 1 << 24}}, "Backend.VNI 16777216 is out of range"),
        ({**GOOD, "Backend": {"Type": "vxlan", "Port": 70000}}, "Backend.Port 70000 is out of range"),
        ({**GOOD, "Network": "10.244.0.0/25"}, "too small for SubnetLen 24"),
    ],
)
def test_invalid_network_config_is_refused_and_leaves_nothing(stopped_node, doc, message):
    lab = stopped_node
    put_config(lab, doc)
    before = links(lab)
    with pytest.raises(LabError) as e:
        lab.start_agent("n1")
    assert message in str(e.value)
    assert links(lab) == before and "flannel.1" not in links(lab)
    assert overlay_routes(lab) == []


def test_public_ip_not_on_any_interface(stopped_node):
    lab = stopped_node
    with pytest.raises(LabError) as e:
        lab.start_agent("n1", extra=("--public-ip", "192.0.2.99"))
    assert "192.0.2.99 is not an address of any interface" in str(e.value)
    assert "flannel.1" not in links(lab)


def test_a_conflicting_vxlan_device_that_cannot_be_replaced(stopped_node):
    lab = stopped_node
    ns = lab.topo.node("n1").netns
    # another device already owns VNI 1 on port 8472: the kernel refuses a second one
    subprocess.run(
        [
            "ip",
            "-n",
            ns,
            "link",
            "add",
            "mknother1",
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            "8472",
            "local",
            str(lab.topo.node("n1").ip),
            "nolearning",
        ],
        check=True,
    )
    with pytest.raises(LabError) as e:
        lab.start_agent("n1")
    assert "mknother1" in str(e.value)
    assert "flannel.1" not in links(lab)


def test_a_bad_rps_mask_is_refused_before_anything_is_made(stopped_node):
    lab = stopped_node
    before = links(lab)
    with pytest.raises(LabError) as e:
        lab.start_agent("n1", extra=("--rps-cpus", "cpu1"))
    assert "bad RPS CPU mask 'cpu1'" in str(e.value) and "e.g. 2" in str(e.value)
    assert links(lab) == before and "flannel.1" not in links(lab)


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--metrics-bind-address", "10261"), "--metrics-bind-address: '10261' is not host:port"),
        (("--metrics-bind-address", "127.0.0.1:99999"), "is not host:port"),
        (("--sync-period", "0"), "--sync-period must be a positive number of seconds, got 0.0"),
    ],
)
def test_bad_metrics_address_or_sync_period_is_refused_before_anything_is_made(stopped_node, extra, message):
    lab = stopped_node
    before = links(lab)
    with pytest.raises(LabError) as e:
        lab.start_agent("n1", extra=extra)
    assert message in str(e.value) and "Traceback" not in str(e.value)
    assert links(lab) == before and "flannel.1" not in links(lab)


def test_a_metrics_port_in_use_is_a_clear_error(stopped_node):
    import socket

    from minikubenet.linux.netns import path_of, socket_in

    lab = stopped_node
    node = lab.topo.node("n1")
    squatter = socket_in(path_of(node.netns), socket.AF_INET, socket.SOCK_STREAM)
    try:
        squatter.bind((str(node.ip), 10261))
        squatter.listen(1)
        with pytest.raises(LabError) as e:
            lab.start_agent("n1")
        assert f"cannot serve metrics on {node.ip}:10261" in str(e.value) and "Traceback" not in str(e.value)
    finally:
        squatter.close()
