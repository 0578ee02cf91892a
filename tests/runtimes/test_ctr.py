"""``ctr run --cni``: containerd's own client runs our plugin (go-cni, in the ctr process).

ctr reads the hard-coded /etc/cni/net.d and /opt/cni/bin; here they are scratch dirs
bind-mounted in the containerd daemon's private mount namespace, where every ctr call
runs (scratch_ns.py). The quirks are ctr's, and the plugin handles them:

- ``ctr run --rm --cni`` sends DEL with an *empty* CNI_NETNS (the task is gone): the
  IP must still be released;
- ``ctr run -d --cni`` never sends DEL at all: the IP stays taken until a CNI 1.1 GC
  (sent here as libcni would) lists the attachments that are still valid.

The network is named ``mkn-ctr`` so that GC here concerns only these containers.
"""

from __future__ import annotations

import ipaddress
import os

import pytest

from minikubenet.cni.runtime import CniRuntime
from tests.runtimes import containerd as ctd
from tests.runtimes.conformance import case
from tests.runtimes.conftest import install_plugins, invocations, node_subnet, records, skip_without_overlay

RUNTIME = "ctr"
NETWORK = "mkn-ctr"
IMAGE = "localhost/mknbusybox:latest"
VERSIONS = ["0.4.0", "1.0.0"]  # ctr 1.6's libcni knows nothing newer than 1.0.0


def setup_module():
    why = ctd.available()
    if why:
        pytest.skip(why, allow_module_level=True)


@pytest.fixture(scope="module")
def ctr(runtime_lab, images):
    scratch = os.path.join(runtime_lab.dir, "ctr")
    d = ctd.Containerd(runtime_lab.topo.node("n1").netns, os.path.join(scratch, "containerd"), cri=False)
    try:
        d.start()
        d.import_image(images["busybox"], namespace="default")
        yield {"daemon": d, "lab": runtime_lab, "scratch": scratch}
    finally:
        for c in ctr_containers(d):
            kill(d, c)
        d.stop()


@pytest.fixture(scope="module", params=VERSIONS)
def version(request, ctr):
    """Our plugins and a conflist of this cniVersion, where ctr looks for them."""
    plugins = install_plugins(
        ctr["lab"],
        ctr["scratch"],
        bin_dir=ctr["daemon"].ctr_cni_bin_dir,
        conf_dir=ctr["daemon"].ctr_cni_conf_dir,
        network=NETWORK,
        cni_version=request.param,
        link_reference=False,
    )
    ctr["log"] = plugins["log"]
    return request.param


def run(ctr, *args, check=True):
    p = ctr["daemon"].ctr("run", "--cni", *args, namespace="default", check=False, timeout=60)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def eth0_ip(ctr, name) -> str:
    out = ctr["daemon"].exec_in(name, "ip", "-4", "-o", "addr", "show", "eth0", namespace="default").stdout
    return out.split("inet ")[1].split("/")[0]


def ctr_containers(d) -> list[str]:
    p = d.ctr("container", "list", "-q", namespace="default", check=False)
    return p.stdout.split()


def kill(d, name) -> None:
    d.ctr("task", "kill", "-s", "KILL", name, namespace="default", check=False)
    d.ctr("task", "rm", "-f", name, namespace="default", check=False)
    d.ctr("container", "rm", name, namespace="default", check=False)


def test_a_container_gets_an_ip_and_reaches_another(ctr, version):
    lab = ctr["lab"]
    a, b = f"a{version.replace('.', '')}", f"b{version.replace('.', '')}"
    with case("ADD", RUNTIME, version, "ctr run -d --cni: IP from the node's subnet, recorded in etcd"):
        run(ctr, "-d", IMAGE, a, "sleep", "600")
        ip_a = eth0_ip(ctr, a)
        rec = records(lab)[f"default-{a}"]
        assert rec["ip"] == ip_a and rec["network"] == NETWORK
        assert ipaddress.IPv4Address(ip_a) in node_subnet(lab)
    with case("ADD", RUNTIME, version, "ctr run --rm --cni: the container reaches another and a lab pod"):
        p = run(
            ctr, "--rm", IMAGE, b, "sh", "-c", f"ping -c1 -W2 {ip_a} && wget -qO- http://{lab.pod_ips['n1-p1']}:8080/"
        )
        assert "1 packets received" in p.stdout and '"pod": "n1-p1"' in p.stdout
    with case("DEL", RUNTIME, version, "DEL with an empty CNI_NETNS releases the IP"):
        dels = [
            i
            for i in invocations(ctr["log"])
            if i["command"] == "DEL" and i["env"]["CNI_CONTAINERID"] == f"default-{b}"
        ]
        assert len(dels) == 1 and dels[0]["env"]["CNI_NETNS"] == "" and dels[0]["exit"] == 0
        assert f"default-{b}" not in records(lab)
    kill(ctr["daemon"], a)


def test_a_container_reaches_a_pod_on_another_node(ctr, version):
    lab = ctr["lab"]
    skip_without_overlay(lab)
    with case("ADD", RUNTIME, version, "a ctr container reaches a pod on another node"):
        p = run(
            ctr, "--rm", IMAGE, f"x{version.replace('.', '')}", "wget", "-qO-", f"http://{lab.pod_ips['n2-p1']}:8080/"
        )
        assert '"pod": "n2-p1"' in p.stdout


def test_detached_containers_leak_until_gc(ctr, version):
    """ctr -d never sends DEL; a CNI 1.1 GC listing the live attachments frees the rest."""
    lab = ctr["lab"]
    live, dead = f"live{version.replace('.', '')}", f"dead{version.replace('.', '')}"
    run(ctr, "-d", IMAGE, live, "sleep", "600")
    run(ctr, "-d", IMAGE, dead, "sleep", "600")
    kill(ctr["daemon"], dead)
    assert f"default-{dead}" in records(lab), "ctr sent no DEL: the IP is still taken"
    conf = {
        "cniVersion": "1.1.0",
        "name": NETWORK,
        "type": "minikubenet",
        "agentSocket": lab.conflist("n1")["plugins"][0]["agentSocket"],
        "cni.dev/valid-attachments": [
            {"containerID": f"default-{c}", "ifname": "eth0"} for c in ctr_containers(ctr["daemon"])
        ],
    }
    rt = CniRuntime(
        {"cniVersion": "1.1.0", "name": NETWORK, "plugins": [conf]},
        [ctr["daemon"].ctr_cni_bin_dir],
        node_netns=lab.topo.node("n1").netns,
    )
    with case("GC", "libcni-style", "1.1.0", "GC frees what `ctr run -d` leaked, keeps the live container"):
        rt.exec_plugin(conf, "GC", "", "", "")
        now = records(lab)
        assert f"default-{dead}" not in now and f"default-{live}" in now
    kill(ctr["daemon"], live)
    rt.exec_plugin(dict(conf, **{"cni.dev/valid-attachments": []}), "GC", "", "", "")
    assert not [r for r in records(lab).values() if r["network"] == NETWORK]
