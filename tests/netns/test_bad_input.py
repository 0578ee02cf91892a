"""Bad input on one node: every failure is the spec's error JSON with the right code,
and nothing is left behind (no veth on the node, no IP record in etcd).

The property-based test feeds the real binary malformed configs and environments
(hypothesis) and asserts exactly that after every single call.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minikubenet.cni.runtime import CniCallError
from minikubenet.lab import processes
from minikubenet.linux import named_netns
from tests.conftest import make_lab


def veths(lab):
    out = subprocess.run(
        ["ip", "-n", lab.topo.node("n1").netns, "-o", "link", "show", "type", "veth"], capture_output=True, text=True
    ).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


def records(lab):
    return lab.etcd_dump("/minikubenet/ipam/")


@pytest.fixture
def small_subnet_node(lab_root):
    """A node whose subnet is a /29: 5 pod addresses (.2 - .6)."""
    lab = make_lab(lab_root, nodes=1, pods_per_node=0, subnet_len=29)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def test_full_subnet_is_a_clear_error_and_leaves_nothing(small_subnet_node):
    lab = small_subnet_node
    rt = lab.runtime("n1")
    paths = []
    for i in range(6):
        name = f"{lab.topo.name}-f{i}"
        named_netns.add(name)
        paths.append(f"/run/netns/{name}")
    for i in range(5):
        rt.add(f"cid-full-{i}", paths[i])
    before = (veths(lab), records(lab))
    with pytest.raises(CniCallError) as e:
        rt.add("cid-full-5", paths[5])
    assert e.value.code == 11
    assert "no free pod IP" in e.value.details and "/29" in e.value.details
    assert (veths(lab), records(lab)) == before
    # freeing one address makes room again
    rt.delete("cid-full-0", paths[0])
    rt.add("cid-full-5", paths[5])


def test_etcd_down_is_try_again_later_and_leaves_nothing(small_subnet_node):
    lab = small_subnet_node
    name = f"{lab.topo.name}-e1"
    named_netns.add(name)
    before = veths(lab)
    etcd = next(r for r in lab._load_state()["processes"] if r["what"] == "etcd")
    processes.stop([etcd["pid"]])
    with pytest.raises(CniCallError) as e:
        lab.runtime("n1").add("cid-etcd-down", f"/run/netns/{name}")
    assert e.value.code == 11
    assert "etcd" in e.value.msg
    assert veths(lab) == before
    assert "eth0" not in subprocess.run(["ip", "-n", name, "link"], capture_output=True, text=True).stdout


# -- property-based: malformed configs and environments ------------------------------------------


def _configs(socket_path):
    good = {"cniVersion": "1.0.0", "name": "minikubenet", "type": "minikubenet", "agentSocket": socket_path}
    broken_values = st.one_of(
        st.none(),
        st.integers(),
        st.text(max_size=12),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )
    mutated = st.builds(
        lambda key, value: {**good, key: value}, st.sampled_from(["cniVersion", "name", "agentSocket"]), broken_values
    )
    dropped = st.builds(
        lambda key: {k: v for k, v in good.items() if k != key}, st.sampled_from(["cniVersion", "name"])
    )
    garbage = st.one_of(
        st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
        st.just("{"),
        st.just("[]"),
        st.just("null"),
        st.just('"x"'),
    )
    return st.one_of(mutated.map(json.dumps), dropped.map(json.dumps), garbage)


def _envs(netns_path):
    base = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "prop-cid", "CNI_NETNS": netns_path, "CNI_IFNAME": "eth0"}
    bad_values = {
        "CNI_COMMAND": st.sampled_from(["", "add", "BOGUS", "ADD "]),
        "CNI_CONTAINERID": st.sampled_from(["", "-x", "a/b", "x y"]),
        "CNI_NETNS": st.sampled_from(["", "/run/netns/nope-nope", "/proc/999999999/ns/net"]),
        "CNI_IFNAME": st.sampled_from(["", "a" * 16, "eth/0", "."]),
    }
    one_bad = st.sampled_from(sorted(bad_values)).flatmap(lambda k: bad_values[k].map(lambda v: {**base, k: v}))
    missing = st.sampled_from(sorted(base)).map(lambda k: {kk: vv for kk, vv in base.items() if kk != k})
    return st.one_of(one_bad, missing)


EXPECTED_CODES = {1, 4, 6, 7}


def test_malformed_input_gives_error_json_and_leaves_nothing(one_node_for_props):
    lab, socket_path, netns_path, binary = one_node_for_props
    before = (veths(lab), records(lab))

    def call(env, stdin):
        p = subprocess.run(
            ["ip", "netns", "exec", lab.topo.node("n1").netns, binary],
            input=stdin.encode(),
            env={**env, "CNI_PATH": os.path.dirname(binary), "PATH": os.environ["PATH"]},
            capture_output=True,
            timeout=30,
        )
        assert p.returncode != 0, f"accepted env={env} stdin={stdin!r}"
        err = json.loads(p.stdout)  # always the spec's error JSON on stdout, never a traceback
        assert set(err) >= {"code", "msg"}, err
        assert err["code"] in EXPECTED_CODES, err
        assert b"Traceback" not in p.stderr
        assert (veths(lab), records(lab)) == before, f"left something behind for env={env} stdin={stdin!r}"

    good_env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "prop-cid", "CNI_NETNS": netns_path, "CNI_IFNAME": "eth0"}
    good_config = json.dumps(
        {"cniVersion": "1.0.0", "name": "minikubenet", "type": "minikubenet", "agentSocket": socket_path}
    )

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(config=_configs(socket_path))
    def bad_configs(config):
        try:
            doc = json.loads(config)
        except ValueError:
            doc = None
        if (
            isinstance(doc, dict)
            and doc.get("cniVersion") in ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
            and doc.get("agentSocket") == socket_path
            and isinstance(doc.get("name"), str)
            and doc["name"][:1].isalnum()
            and all(c.isalnum() or c in "_.-" for c in doc["name"])
        ):
            return  # hypothesis built a valid config: not this test's business
        call(good_env, config)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(env=_envs(netns_path))
    def bad_envs(env):
        call(env, good_config)

    bad_configs()
    bad_envs()


@pytest.fixture(scope="module")
def one_node_for_props(one_node):
    lab = one_node
    name = f"{lab.topo.name}-prop"
    named_netns.add(name)
    socket_path = lab.conflist("n1")["plugins"][0]["agentSocket"]
    yield lab, socket_path, f"/run/netns/{name}", os.path.join(lab.bin_dir, "minikubenet")
