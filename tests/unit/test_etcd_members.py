"""The lab's etcd cluster as data (lab/topology.py) and one member's command line
(lab/daemons.py): pure, nothing is started."""

from __future__ import annotations

import ipaddress

import pytest

from minikubenet.lab import daemons
from minikubenet.lab.topology import build_topology


def test_one_member_is_the_lab_as_before():
    t = build_topology("lab", nodes=2, pods_per_node=0)
    [m] = t.etcd_member_specs()
    assert (m.name, m.netns, m.switch_port, str(m.ip)) == ("m1", "lab-etcd", "etcd", "172.31.0.2")
    assert t.etcd_endpoints == t.etcd_endpoint == "https://172.31.0.2:2379"


def test_three_members_each_have_a_namespace_an_address_and_a_port_of_their_own():
    t = build_topology("lab", nodes=3, pods_per_node=1, etcd_members=3)
    specs = t.etcd_member_specs()
    assert [m.netns for m in specs] == ["lab-etcd", "lab-etcd2", "lab-etcd3"]
    assert [str(m.ip) for m in specs] == ["172.31.0.2", "172.31.0.3", "172.31.0.4"]
    assert [m.switch_port for m in specs] == ["etcd", "etcd2", "etcd3"]
    assert t.etcd_endpoints == "https://172.31.0.2:2379,https://172.31.0.3:2379,https://172.31.0.4:2379"
    assert set(m.netns for m in specs) <= set(t.all_netns())
    # no member shares an address with a node
    assert not {m.ip for m in specs} & {n.ip for n in t.nodes}
    assert t.etcd_member("m2").netns == "lab-etcd2"
    with pytest.raises(KeyError):
        t.etcd_member("m4")


@pytest.mark.parametrize("n", [0, 8])
def test_member_count_is_checked(n):
    with pytest.raises(ValueError, match="etcd members"):
        build_topology("lab", etcd_members=n)


def flag(argv, name):
    return argv[argv.index(name) + 1]


def test_one_members_command_line(monkeypatch):
    monkeypatch.setattr(daemons, "etcd_binary", lambda: "etcd")
    cluster = {"m1": "172.31.0.2", "m2": "172.31.0.3", "m3": "172.31.0.4"}
    argv = daemons.etcd_member_argv("m2", "/d/m2", "172.31.0.3", cluster, "existing")
    assert flag(argv, "--name") == "m2" and flag(argv, "--data-dir") == "/d/m2"
    assert flag(argv, "--listen-client-urls") == "http://172.31.0.3:2379,http://127.0.0.1:2379"
    assert flag(argv, "--advertise-client-urls") == "http://172.31.0.3:2379"
    assert flag(argv, "--initial-advertise-peer-urls") == "http://172.31.0.3:2380"
    assert flag(argv, "--initial-cluster") == (
        "m1=http://172.31.0.2:2380,m2=http://172.31.0.3:2380,m3=http://172.31.0.4:2380"
    )
    assert flag(argv, "--initial-cluster-state") == "existing"
    assert "--election-timeout" not in argv  # a cluster keeps etcd's defaults
    single = daemons.etcd_member_argv("m1", "/d/m1", "172.31.0.2", {"m1": "172.31.0.2"}, "new")
    assert flag(single, "--initial-cluster-state") == "new"
    assert int(flag(single, "--election-timeout")) >= 5 * int(flag(single, "--heartbeat-interval"))
    assert ipaddress.ip_address(flag(single, "--advertise-client-urls")[7:-5])
