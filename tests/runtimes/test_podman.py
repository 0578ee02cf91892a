"""podman's CNI backend running our plugin.

podman 4.3 (Debian) with ``network_backend = "cni"``, its conflist and plugin dirs
from a scratch containers.conf, on lab node n1 (podman.py). What podman adds to the
picture: it asks VERSION before every ADD and DEL, it rejects a result whose pod
interface has no MAC ("invalid MAC address"), and it sends DEL from ``podman rm`` and
from conmon's cleanup when a ``--rm`` container exits.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess

import pytest

from tests.runtimes import podman as pm
from tests.runtimes.conformance import case
from tests.runtimes.conftest import install_plugins, invocations, node_subnet, records, skip_without_overlay

RUNTIME = "podman"
NETWORK = "mkn-podman"
IMAGE = "localhost/mknbusybox:latest"
VERSIONS = ["0.4.0", "1.0.0"]  # podman 4.3's libcni knows nothing newer than 1.0.0


def setup_module():
    why = pm.available()
    if why:
        pytest.skip(why, allow_module_level=True)


@pytest.fixture(scope="module")
def podman(runtime_lab, images):
    scratch = os.path.join(runtime_lab.dir, "podman")
    plugins = install_plugins(runtime_lab, scratch, network=NETWORK, link_reference=False)
    p = pm.Podman(
        runtime_lab.topo.node("n1").netns,
        os.path.join(scratch, "podman"),
        NETWORK,
        plugins["conf_dir"],
        [plugins["bin_dir"], "/usr/lib/cni"],
    )
    try:
        p.start()
        p.run("import", "-q", "--change", 'CMD ["/bin/sh"]', images["rootfs_tar"], IMAGE)
        yield {"podman": p, "lab": runtime_lab, "scratch": scratch, "log": plugins["log"]}
    finally:
        p.stop()


@pytest.fixture(scope="module", params=VERSIONS)
def version(request, podman):
    install_plugins(podman["lab"], podman["scratch"], network=NETWORK, cni_version=request.param, link_reference=False)
    return request.param


def calls(podman, cid):
    return [i for i in invocations(podman["log"]) if i["env"].get("CNI_CONTAINERID") == cid]


def test_a_container_gets_an_ip_and_reaches_another(podman, version):
    p, lab = podman["podman"], podman["lab"]
    name = f"p{version.replace('.', '')}"
    before = len(invocations(podman["log"]))
    with case("ADD", RUNTIME, version, "podman run -d: IP from the node's subnet, a MAC podman accepts"):
        cid = p.run("run", "-d", "--name", name, IMAGE, "sleep", "600").stdout.strip()
        net = json.loads(p.run("inspect", name).stdout)[0]["NetworkSettings"]["Networks"][NETWORK]
        ip, mac = net["IPAddress"], net["MacAddress"]
        assert ipaddress.IPv4Address(ip) in node_subnet(lab)
        assert records(lab)[cid]["ip"] == ip and records(lab)[cid]["podName"] == name
        link = p.run("exec", name, "cat", "/sys/class/net/eth0/address").stdout.strip()
        assert mac and mac == link
    with case("VERSION", RUNTIME, version, "podman asks VERSION before ADD"):
        seen = [i["command"] for i in invocations(podman["log"])[before:]]
        assert seen[:2] == ["VERSION", "ADD"]
    with case("ADD", RUNTIME, version, "podman run --rm: reaches the other container and a lab pod"):
        out = p.run(
            "run", "--rm", IMAGE, "sh", "-c", f"ping -c1 -W2 {ip} && wget -qO- http://{lab.pod_ips['n1-p1']}:8080/"
        ).stdout
        assert "1 packets received" in out and '"pod": "n1-p1"' in out
    with case("DEL", RUNTIME, version, "podman rm: DEL (with prevResult) releases the IP"):
        p.run("rm", "-f", "-t", "0", name)
        assert cid not in records(lab)
        dels = [i for i in calls(podman, cid) if i["command"] == "DEL"]
        assert dels and dels[0]["prevResult"] and all(i["exit"] == 0 for i in dels)
    with case("DEL", RUNTIME, version, "a --rm container's cleanup released its IP too"):
        assert not [r for r in records(lab).values() if r["network"] == NETWORK]


def test_a_container_reaches_a_pod_on_another_node(podman, version):
    lab = podman["lab"]
    skip_without_overlay(lab)
    with case("ADD", RUNTIME, version, "a podman container reaches a pod on another node"):
        out = podman["podman"].run("run", "--rm", IMAGE, "wget", "-qO-", f"http://{lab.pod_ips['n2-p1']}:8080/").stdout
        assert '"pod": "n2-p1"' in out


def test_nothing_of_podman_reaches_the_host():
    """podman's state lives in scratch: no lock in /dev/shm, no netns files in /run/netns."""
    assert not os.path.exists("/dev/shm/libpod_lock")
    leftovers = [n for n in os.listdir("/run/netns") if n.startswith("netns-")]
    assert leftovers == [], leftovers
    assert subprocess.run(["ls", "/run/containers"], capture_output=True).returncode != 0 or not os.listdir(
        "/run/containers"
    )
