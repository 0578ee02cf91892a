"""The whole CNI spec on one node: CNI 1.1's GC and STATUS, CHECK and DEL with libcni's
cached ``prevResult``, chaining with the reference plugins, ``minikubenet-ipam`` under
the reference ``bridge``, and the bad input of issue #5.

The plugins are the files ``minikubenet install`` writes (into a scratch bin dir),
executed inside the node's namespace with a bare environment by ``CniRuntime``, which
derives each plugin's request as libcni does. Each test uses its own network name, so
GC in one test can never touch another test's pods. Every namespace is named
``<lab>-…`` and goes with the lab.

Cases are recorded for docs/conformance.md (tests/runtimes/conformance.py) under the
runtime names ``libcni-style`` and ``bridge+ipam``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from minikubenet import subnet_env
from minikubenet.cni.runtime import CniCallError, CniRuntime
from minikubenet.lab import podserver, probes, processes
from minikubenet.linux import named_netns
from minikubenet.pod_network import host_veth_name
from tests.conftest import make_lab
from tests.runtimes.conformance import case

REFERENCE = "/usr/lib/cni"
V11 = "1.1.0"


# -- fixtures and helpers ----------------------------------------------------------------------------


class Node:
    """A one-node lab plus the installed plugins, and ways to drive them."""

    def __init__(self, lab, bin_dir: str):
        self.lab, self.bin_dir = lab, bin_dir
        self.netns = lab.topo.node("n1").netns
        self.sock = lab.conflist("n1")["plugins"][0]["agentSocket"]
        self.env = subnet_env.read(os.path.join(lab.run_dir("n1"), "subnet.env"))
        self.gateway = str(self.env.subnet.network_address + 1)
        self._pods = 0

    def pod(self) -> tuple[str, str]:
        self._pods += 1
        name = f"{self.lab.topo.name}-c{self._pods}"
        named_netns.add(name)
        return name, f"/run/netns/{name}"

    def conflist(self, network: str, version: str = "1.0.0", *chained: dict, ours: dict | None = None) -> dict:
        first = {"type": "minikubenet", "agentSocket": self.sock, **(ours or {})}
        return {"cniVersion": version, "name": network, "plugins": [first, *chained]}

    def runtime(self, conflist: dict) -> CniRuntime:
        return CniRuntime(conflist, [self.bin_dir, REFERENCE], node_netns=self.netns)

    def call(self, conf: dict, command: str, cid: str = "", netns: str = "", ifname: str = "", plugin: str = ""):
        """One plugin invocation with exactly this config (no derivation)."""
        conf = dict(conf, type=plugin or conf.get("type", "minikubenet"))
        return self.runtime({"cniVersion": conf["cniVersion"], "name": conf["name"], "plugins": [conf]}).exec_plugin(
            conf, command, cid, netns, ifname
        )

    def gc(self, network: str, **valid) -> None:
        conf = {"cniVersion": V11, "name": network, "type": "minikubenet", "agentSocket": self.sock, **valid}
        self.call(conf, "GC")

    def records(self, network: str | None = None) -> dict[str, dict]:
        """ip -> record, of this node's pods (optionally of one network)."""
        out = {}
        for key, value in self.lab.etcd_dump("/minikubenet/ipam/"):
            doc = json.loads(value)
            if network is None or doc.get("network") == network:
                out[key.rsplit("/", 1)[1]] = doc
        return out

    def owners(self, network: str) -> set[str]:
        return {r["containerID"] for r in self.records(network).values()}

    def veths(self) -> set[str]:
        out = subprocess.run(
            ["ip", "-n", self.netns, "-o", "link", "show", "type", "veth"], capture_output=True, text=True
        ).stdout
        return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


@pytest.fixture(scope="module")
def node(lab_root):
    lab = make_lab(lab_root, nodes=1, pods_per_node=0)
    try:
        lab.up()
        bin_dir = os.path.join(lab.dir, "cni-bin")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "minikubenet",
                "install",
                "--bin-dir",
                bin_dir,
                "--conf-dir",
                os.path.join(lab.dir, "cni-net.d"),
                "--state-dir",
                os.path.join(lab.dir, "cni-state"),
                "--agent-socket",
                lab.conflist("n1")["plugins"][0]["agentSocket"],
            ],
            check=True,
            capture_output=True,
        )
        yield Node(lab, bin_dir)
    finally:
        lab.down()


def ip_of(result: dict) -> str:
    return next(ip["address"].split("/")[0] for ip in result["ips"] if not ip["address"].startswith(("127.", "::1")))


# -- GC ------------------------------------------------------------------------------------------------


def test_gc_releases_every_stale_attachment_of_its_network_and_nothing_else(node):
    rt, other = node.runtime(node.conflist("gca", V11)), node.runtime(node.conflist("gcb", V11))
    pods = {cid: node.pod()[1] for cid in ("gca-1", "gca-2", "gca-3")}
    for cid, path in pods.items():
        rt.add(cid, path)
    other.add("gcb-1", node.pod()[1])
    with case("GC", "libcni-style", V11, "releases the stale attachments of its network, keeps the valid ones"):
        node.gc("gca", **{"cni.dev/valid-attachments": [{"containerID": "gca-1", "ifname": "eth0"}]})
        assert node.owners("gca") == {"gca-1"}
        assert node.owners("gcb") == {"gcb-1"}, "GC of one network released another network's pod"
        assert host_veth_name("gca-1", "eth0") in node.veths()
        assert not {host_veth_name(c, "eth0") for c in ("gca-2", "gca-3")} & node.veths(), "host-side leftovers"
    rt.delete("gca-1", pods["gca-1"])
    other.delete("gcb-1", "")


def test_gc_honours_both_of_libcnis_spellings(node):
    rt = node.runtime(node.conflist("gcs", V11))
    for cid in ("gcs-1", "gcs-2", "gcs-3"):
        rt.add(cid, node.pod()[1])
    with case(
        "GC",
        "libcni-style",
        V11,
        "valid attachments under cni.dev/attachments (pre-#1101 spelling) and both keys at once (libcni >= 1.2)",
    ):
        node.gc(
            "gcs",
            **{
                "cni.dev/attachments": [
                    {"containerID": "gcs-1", "ifname": "eth0"},
                    {"containerID": "gcs-2", "ifname": "eth0"},
                ]
            },
        )
        assert node.owners("gcs") == {"gcs-1", "gcs-2"}
        node.gc(
            "gcs",
            **{
                "cni.dev/valid-attachments": [{"containerID": "gcs-1", "ifname": "eth0"}],
                "cni.dev/attachments": [{"containerID": "gcs-2", "ifname": "eth0"}],
            },
        )
        assert node.owners("gcs") == {"gcs-1", "gcs-2"}, "an attachment listed under either key is valid"
    for cid in ("gcs-1", "gcs-2"):
        rt.delete(cid, "")


@pytest.mark.parametrize("empty", [[], None], ids=["empty-list", "null"])
def test_gc_with_an_empty_list_releases_the_whole_network_only(node, empty):
    network = "gce" + ("l" if empty == [] else "n")
    rt = node.runtime(node.conflist(network, V11))
    bystander = node.runtime(node.conflist("gckeep", V11))
    for i in range(2):
        rt.add(f"{network}-{i}", node.pod()[1])
    bystander.add(f"keep-{network}", node.pod()[1])
    with case("GC", "libcni-style", V11, f"valid list {json.dumps(empty)}: every attachment of the network is stale"):
        node.gc(network, **{"cni.dev/valid-attachments": empty})
        assert node.owners(network) == set()
        assert f"keep-{network}" in node.owners("gckeep")
    bystander.delete(f"keep-{network}", "")


@pytest.mark.parametrize(
    "valid",
    [
        {"cni.dev/valid-attachments": "gcm-1"},
        {"cni.dev/valid-attachments": {"containerID": "gcm-1", "ifname": "eth0"}},
        {"cni.dev/valid-attachments": [["gcm-1", "eth0"]]},
        {"cni.dev/valid-attachments": [{"containerID": "gcm-1"}]},
        {"cni.dev/valid-attachments": [{"containerID": "", "ifname": "eth0"}]},
        {"cni.dev/valid-attachments": [{"containerID": "gcm-1", "ifname": "eth0"}, 7]},
        {"cni.dev/attachments": 42},
        {},
    ],
    ids=["string", "object", "pairs", "no-ifname", "empty-id", "one-bad-entry", "old-key-int", "missing"],
)
def test_gc_with_a_malformed_or_missing_list_is_code_7_and_releases_nothing(node, valid):
    rt = node.runtime(node.conflist("gcm", V11))
    for cid in ("gcm-1", "gcm-2"):
        rt.add(cid, node.pod()[1])
    before, veths = node.records("gcm"), node.veths()
    with case("GC", "libcni-style", V11, f"malformed valid list {json.dumps(valid)[:60]}: code 7, nothing released"):
        with pytest.raises(CniCallError) as e:
            node.gc("gcm", **valid)
        assert e.value.code == 7
        assert node.records("gcm") == before and node.veths() == veths
    for cid in ("gcm-1", "gcm-2"):
        rt.delete(cid, "")


@pytest.mark.parametrize("verb", ["GC", "STATUS"])
@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_gc_and_status_need_a_1_1_config(node, verb, version):
    rt = node.runtime(node.conflist("old" + version.replace(".", ""), version))
    rt.add("old-" + version, node.pod()[1])
    before = node.records()
    conf = {
        "cniVersion": version,
        "name": "old" + version.replace(".", ""),
        "type": "minikubenet",
        "agentSocket": node.sock,
        "cni.dev/valid-attachments": [],
    }
    with case(verb, "libcni-style", version, f"{verb} with a {version} config: code 1, nothing released", refusal=True):
        with pytest.raises(CniCallError) as e:
            node.call(conf, verb)
        assert e.value.code == 1 and verb in e.value.msg
        assert node.records() == before
    rt.delete("old-" + version, "")


# -- STATUS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", ["minikubenet", "minikubenet-ipam"])
def test_status_is_ready_with_a_lease_and_etcd(node, plugin):
    conf = {"cniVersion": V11, "name": "st", "agentSocket": node.sock, "ipam": {"type": "minikubenet-ipam"}}
    if plugin == "minikubenet":
        del conf["ipam"]
    with case(
        "STATUS",
        "libcni-style" if plugin == "minikubenet" else "bridge+ipam",
        V11,
        f"{plugin}: ready (exit 0, no output)",
    ):
        assert node.call(conf, "STATUS", plugin=plugin) is None


def test_status_reports_50_when_etcd_or_the_agent_is_down(lab_root):
    lab = make_lab(lab_root, nodes=1, pods_per_node=0)
    try:
        lab.up()
        conf = dict(lab.conflist("n1")["plugins"][0], cniVersion=V11, name="minikubenet")
        rt = lab.runtime("n1")
        with case("STATUS", "libcni-style", V11, "etcd down: code 50 (cannot service ADD)"):
            etcd = next(r for r in lab._load_state()["processes"] if r["what"] == "etcd")
            processes.stop([etcd["pid"]])
            with pytest.raises(CniCallError) as e:
                rt.exec_plugin(conf, "STATUS", "", "", "")
            assert e.value.code == 50 and "etcd" in e.value.msg
        with case("STATUS", "libcni-style", V11, "agent down: code 50"):
            lab.stop_agent("n1")
            with pytest.raises(CniCallError) as e:
                rt.exec_plugin(conf, "STATUS", "", "", "")
            assert e.value.code == 50 and "agent" in e.value.msg
    finally:
        lab.down()


# -- ADD: versions, chaining, bad input ---------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", V11])
def test_add_del_and_check_in_every_version(node, version):
    rt = node.runtime(node.conflist("ver" + version.replace(".", ""), version))
    _, path = node.pod()
    cid = "v" + version.replace(".", "")
    with case("ADD", "libcni-style", version, "pod plumbed; result in this version's spelling, mtu from 1.1.0"):
        result = rt.add(cid, path)
        assert result["cniVersion"] == version
        eth0 = result["interfaces"][2]
        assert ("mtu" in eth0) == (version == V11) and eth0.get("mtu", node.env.mtu) == node.env.mtu
        assert all(len(i["mac"]) == 17 for i in result["interfaces"])
    if version != "0.3.1":  # CHECK arrived in 0.4.0
        with case("CHECK", "libcni-style", version, "CHECK with the cached result passes"):
            rt.check(cid, path)
    else:
        with case("CHECK", "libcni-style", version, "CHECK with a 0.3.1 config: code 1", refusal=True):
            with pytest.raises(CniCallError) as e:
                rt.check(cid, path)
            assert e.value.code == 1
    with case("DEL", "libcni-style", version, "DEL with the cached result releases the IP, twice is fine"):
        rt.delete(cid, path)
        rt.delete(cid, path)
        assert cid not in node.owners("ver" + version.replace(".", ""))
    with case("VERSION", "libcni-style", version, "VERSION lists this version"):
        out = node.call({"cniVersion": version, "name": "x"}, "VERSION")
        assert version in out["supportedVersions"]


def test_add_after_another_plugin_carries_its_result(node):
    """Chained after the reference loopback, our result must contain loopback's (SPEC §5)."""
    conflist = {
        "cniVersion": "1.0.0",
        "name": "afterlo",
        "plugins": [{"type": "loopback"}, {"type": "minikubenet", "agentSocket": node.sock}],
    }
    rt = node.runtime(conflist)
    _, path = node.pod()
    with case("ADD", "libcni-style", "1.0.0", "chained after loopback: prevResult kept, our indexes shifted"):
        result = rt.add("afterlo-1", path)
        names = [i["name"] for i in result["interfaces"]]
        assert names[0] == "lo" and names[-1] == "eth0"
        ours = [ip for ip in result["ips"] if not ip["address"].startswith(("127.", "::1"))]
        assert [result["interfaces"][ip["interface"]]["name"] for ip in ours] == ["eth0"]
        assert any(ip["address"].startswith("127.0.0.1") for ip in result["ips"])
    rt.check("afterlo-1", path)
    rt.delete("afterlo-1", path)


def test_unknown_fields_are_passed_over(node):
    conflist = node.conflist("unknown", "1.0.0", ours={"frobnicate": {"level": 11}, "x-vendor": [1, 2]})
    conflist["someFutureTopLevelKey"] = True
    rt = node.runtime(conflist)
    _, path = node.pod()
    with case("ADD", "libcni-style", "1.0.0", "unknown fields in the plugin config are ignored (SPEC §1)"):
        assert ip_of(rt.add("unknown-1", path))
    rt.delete("unknown-1", path)


@pytest.mark.parametrize(
    "change, code",
    [
        ({"ipam": {"type": "host-local", "subnet": "10.1.0.0/16"}}, 2),
        ({"cniVersion": "2.0.0"}, 1),
        ({"cniVersion": "0.2.0"}, 1),
    ],
    ids=["ipam-section", "future-version", "old-version"],
)
def test_config_we_cannot_honour_is_refused_and_leaves_nothing(node, change, code):
    conf = {"cniVersion": "1.0.0", "name": "refused", "type": "minikubenet", "agentSocket": node.sock, **change}
    _, path = node.pod()
    before, veths = node.records(), node.veths()
    with case("ADD", "libcni-style", "1.0.0", f"config {json.dumps(change)[:50]}: code {code}, nothing leaked"):
        with pytest.raises(CniCallError) as e:
            node.call(conf, "ADD", "refused-1", path, "eth0")
        assert e.value.code == code
        if code == 2:
            assert "ipam" in e.value.msg and "host-local" in e.value.msg, "the message names key and value"
        assert node.records() == before and node.veths() == veths


def test_add_into_the_nodes_own_namespace_is_refused(node):
    conf = {"cniVersion": "1.0.0", "name": "ownns", "type": "minikubenet", "agentSocket": node.sock}
    with case("ADD", "libcni-style", "1.0.0", "CNI_NETNS = the node's namespace: code 8, node untouched"):
        with pytest.raises(CniCallError) as e:
            node.call(conf, "ADD", "ownns-1", f"/run/netns/{node.netns}", "eth0")
        assert e.value.code == 8
        assert (
            "UP"
            in subprocess.run(["ip", "-n", node.netns, "link", "show", "eth0"], capture_output=True, text=True).stdout
        )
        assert "ownns-1" not in {r["containerID"] for r in node.records().values()}


# -- CHECK and DEL with libcni's cached result ------------------------------------------------------------


def test_check_compares_with_the_cached_result(node):
    rt = node.runtime(node.conflist("chk", "1.0.0"))
    name, path = node.pod()
    result = rt.add("chk-1", path)
    conf = dict(rt.conflist["plugins"][0], cniVersion="1.0.0", name="chk")
    with case("CHECK", "libcni-style", "1.0.0", "no prevResult: code 7"):
        with pytest.raises(CniCallError) as e:
            node.call(conf, "CHECK", "chk-1", path, "eth0")
        assert e.value.code == 7
    with case("CHECK", "libcni-style", "1.0.0", "prevResult with another IP: code 100"):
        wrong = json.loads(json.dumps(result))
        wrong["ips"][0]["address"] = "10.99.99.99/24"
        with pytest.raises(CniCallError) as e:
            node.call(dict(conf, prevResult=wrong), "CHECK", "chk-1", path, "eth0")
        assert e.value.code == 100 and "10.99.99.99" in e.value.details
    with case("CHECK", "libcni-style", "1.0.0", "pod MAC changed since ADD: code 100"):
        subprocess.run(["ip", "-n", name, "link", "set", "eth0", "address", "02:00:00:00:00:99"], check=True)
        with pytest.raises(CniCallError) as e:
            rt.check("chk-1", path)
        assert e.value.code == 100 and "MAC" in e.value.details
    with case("CHECK", "libcni-style", "1.0.0", "after the netns is gone: code 4, nothing released"):
        named_netns.delete(name)
        with pytest.raises(CniCallError) as e:
            rt.check("chk-1", path)
        assert e.value.code == 4
        assert "chk-1" in node.owners("chk")
    rt.delete("chk-1", path)
    assert "chk-1" not in node.owners("chk")


@pytest.mark.parametrize("prev", ["missing", "empty", "0.4.0-shaped", "other-ip"])
def test_del_needs_no_usable_prev_result(node, prev):
    rt = node.runtime(node.conflist("delprev", "1.0.0"))
    _, path = node.pod()
    cid = f"delprev-{prev}"
    result = rt.add(cid, path)
    conf = dict(rt.conflist["plugins"][0], cniVersion="1.0.0", name="delprev")
    if prev == "empty":
        conf["prevResult"] = {}
    elif prev == "0.4.0-shaped":
        conf["prevResult"] = dict(result, cniVersion="0.4.0", ips=[dict(i, version="4") for i in result["ips"]])
    elif prev == "other-ip":
        conf["prevResult"] = dict(result, ips=[{"address": "10.99.0.9/24", "interface": 2}])
    with case("DEL", "libcni-style", "1.0.0", f"prevResult {prev}: released all the same"):
        node.call(conf, "DEL", cid, path, "eth0")
        assert cid not in node.owners("delprev")
        assert host_veth_name(cid, "eth0") not in node.veths()


def test_del_of_another_network_releases_nothing(node):
    rt = node.runtime(node.conflist("mine", "1.0.0"))
    _, path = node.pod()
    rt.add("shared-id", path)
    with case("DEL", "libcni-style", "1.0.0", "DEL for another network name keeps this network's IP"):
        node.call(
            {"cniVersion": "1.0.0", "name": "theirs", "agentSocket": node.sock, "type": "minikubenet"},
            "DEL",
            "shared-id",
            path,
            "eth0",
        )
        assert "shared-id" in node.owners("mine")
    rt.delete("shared-id", path)


# -- chaining with the reference meta plugins ------------------------------------------------------------


def test_chain_with_tuning_bandwidth_and_portmap(node):
    """Our plugin, then tuning (a sysctl), bandwidth (static rates) and portmap (a hostPort);
    the runtimeConfig libcni would inject for portmap is written into the conflist."""
    conflist = node.conflist(
        "chain",
        "1.0.0",
        {"type": "tuning", "sysctl": {"net.core.somaxconn": "321"}},
        {
            "type": "bandwidth",
            "ingressRate": 8_000_000,
            "ingressBurst": 80_000,
            "egressRate": 8_000_000,
            "egressBurst": 80_000,
        },
        {
            "type": "portmap",
            "capabilities": {"portMappings": True},
            "snat": True,
            "runtimeConfig": {"portMappings": [{"hostPort": 18081, "containerPort": 8080, "protocol": "tcp"}]},
        },
    )
    rt = node.runtime(conflist)
    name, path = node.pod()
    server = processes.start_in_netns(
        name,
        [sys.executable, "-I", "-S", podserver.__file__, "chain-1", "8080"],
        os.path.join(node.lab.dir, "logs", "chain-1.log"),
        "pod chain-1",
    )
    try:
        with case("ADD", "libcni-style", "1.0.0", "chain minikubenet → tuning → bandwidth → portmap"):
            rt.add("chain-1", path)
            probes.wait_listening(name, "127.0.0.1", 8080)
            somaxconn = subprocess.run(
                ["ip", "netns", "exec", name, "cat", "/proc/sys/net/core/somaxconn"], capture_output=True, text=True
            ).stdout.strip()
            assert somaxconn == "321"
            tc = subprocess.run(
                ["ip", "netns", "exec", node.netns, "tc", "qdisc", "show", "dev", host_veth_name("chain-1", "eth0")],
                capture_output=True,
                text=True,
            ).stdout
            assert "tbf" in tc
            node_ip = str(node.lab.topo.node("n1").ip)
            assert probes.whoami(node.netns, node_ip, 18081)["pod"] == "chain-1", "hostPort on the node"
        with case("CHECK", "libcni-style", "1.0.0", "CHECK through minikubenet → tuning → bandwidth"):
            # not through portmap: Debian's portmap 1.1.1 fails CHECK on a pod without IPv6
            # ("could not check ipv6 dnat: chain CNI-DN-… not found"), a bug of that plugin
            without_portmap = node.runtime(dict(conflist, plugins=conflist["plugins"][:3]))
            without_portmap.results = rt.results
            without_portmap.check("chain-1", path)
        with case("DEL", "libcni-style", "1.0.0", "DEL through the chain removes the hostPort and the IP"):
            rt.delete("chain-1", path)
            nat = subprocess.run(
                ["ip", "netns", "exec", node.netns, "iptables", "-t", "nat", "-S"], capture_output=True, text=True
            ).stdout
            assert "18081" not in nat
            assert "chain-1" not in node.owners("chain")
    finally:
        processes.stop([server.pid])


# -- minikubenet-ipam under the reference bridge ------------------------------------------------------


def test_reference_bridge_with_minikubenet_ipam(node):
    ipam = {"type": "minikubenet-ipam", "agentSocket": node.sock}
    conflist = {
        "cniVersion": "1.0.0",
        "name": "brnet",
        "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": True, "mtu": node.env.mtu, "ipam": ipam}],
    }
    rt = node.runtime(conflist)
    name, path = node.pod()
    ours = node.runtime(node.conflist("brmain", "1.0.0"))
    other_name, other_path = node.pod()
    other_ip = ip_of(ours.add("brmain-1", other_path))
    with case("ADD", "bridge+ipam", "1.0.0", "bridge gets its IP from etcd via minikubenet-ipam"):
        result = rt.add("br-1", path)
        ip = ip_of(result)
        assert node.records("brnet")[ip]["containerID"] == "br-1"
        assert result["ips"][0]["gateway"] == node.gateway and result["ips"][0]["interface"] == 2
        assert (
            subprocess.run(
                ["ip", "netns", "exec", name, "ping", "-c1", "-W2", other_ip], capture_output=True
            ).returncode
            == 0
        ), "bridge pod -> minikubenet pod on cni0"
    with case("CHECK", "bridge+ipam", "1.0.0", "bridge delegates CHECK to minikubenet-ipam"):
        rt.check("br-1", path)
    with case("DEL", "bridge+ipam", "1.0.0", "bridge delegates DEL: IP released, twice is fine"):
        rt.delete("br-1", path)
        rt.delete("br-1", path)
        assert ip not in node.records("brnet")
    ours.delete("brmain-1", other_path)


def test_ipam_plugin_answers_with_the_abbreviated_result(node):
    _, path = node.pod()
    conf = {
        "cniVersion": "1.0.0",
        "name": "ipamonly",
        "type": "bridge",
        "ipam": {"type": "minikubenet-ipam", "agentSocket": node.sock},
    }
    with case("ADD", "bridge+ipam", "1.0.0", "IPAM ADD: ips + gateway + default route, no interfaces"):
        out = node.call(conf, "ADD", "ipam-1", path, "eth0", plugin="minikubenet-ipam")
        assert "interfaces" not in out and "interface" not in out["ips"][0]
        assert out["ips"][0]["gateway"] == node.gateway
        assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": node.gateway}]
        again = node.call(conf, "ADD", "ipam-1", path, "eth0", plugin="minikubenet-ipam")
        assert again["ips"] == out["ips"], "a repeated ADD keeps its IP"
    with case("ADD", "bridge+ipam", "1.0.0", "IPAM ADD: ipam.routes are returned as configured"):
        routed = json.loads(json.dumps(conf))
        routed["ipam"]["routes"] = [{"dst": "10.244.0.0/16"}]
        out2 = node.call(routed, "ADD", "ipam-2", path, "net1", plugin="minikubenet-ipam")
        assert out2["routes"] == [{"dst": "10.244.0.0/16"}]
    with case("GC", "bridge+ipam", V11, "IPAM GC releases what is not valid"):
        node.call(
            dict(conf, cniVersion=V11, **{"cni.dev/valid-attachments": [{"containerID": "ipam-1", "ifname": "eth0"}]}),
            "GC",
            plugin="minikubenet-ipam",
        )
        assert node.owners("ipamonly") == {"ipam-1"}
    with case("DEL", "bridge+ipam", "1.0.0", "IPAM DEL before ADD and twice succeed"):
        node.call(conf, "DEL", "ipam-never", "", "eth0", plugin="minikubenet-ipam")
        node.call(conf, "DEL", "ipam-1", "", "eth0", plugin="minikubenet-ipam")
        node.call(conf, "DEL", "ipam-1", "", "eth0", plugin="minikubenet-ipam")
        assert node.owners("ipamonly") == set()
