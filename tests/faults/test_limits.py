"""Input limits on one node (issue 10, observed problem 8): what a careless runtime or a
confused client sends, through the real CNI binary and straight to the agent's socket.

Each case ends in the spec's error JSON with the right code (never a traceback, never
silence) and leaves nothing made: no veth on the node, no IP record in etcd, no
``eth0`` in the pod's namespace. Idle connections to the agent's socket hold no thread
and do not keep a real ADD from being served. What the agent and the lab write is
0600/0700.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time

import pytest

from minikubenet.agent import cni_server
from minikubenet.cni import shim
from minikubenet.linux import named_netns
from tests.faults.conftest import report


def node_veths(lab):
    out = subprocess.run(
        ["ip", "-n", lab.topo.node("n1").netns, "-o", "link", "show", "type", "veth"], capture_output=True, text=True
    ).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


def records(lab):
    return lab.etcd_dump("/minikubenet/ipam/")


def pod_links(netns):
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


def agent_threads(lab) -> int:
    with open(f"/proc/{lab.agent_record('n1').pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("Threads:")))


@pytest.fixture(scope="module")
def node(one_node):
    lab = one_node
    name = f"{lab.topo.name}-lim"
    named_netns.add(name)
    plugin = lab.conflist("n1")["plugins"][0]
    return {
        "lab": lab,
        "netns": name,
        "path": f"/run/netns/{name}",
        "socket": plugin["agentSocket"],
        "binary": os.path.join(lab.bin_dir, "minikubenet"),
        "mtu": lab.topo.mtu - 50,
    }


@pytest.fixture
def nothing_made(node):
    """Asserts, after the test, that the node and the pod namespace are as before."""
    lab = node["lab"]
    before = (node_veths(lab), records(lab), pod_links(node["netns"]))
    yield
    assert (node_veths(lab), records(lab), pod_links(node["netns"])) == before, "something was left behind"


def run_plugin(node, stdin: bytes, command="ADD", cid="lim-cid"):
    """The installed binary inside the node's namespace, with a runtime's bare environment."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": node["path"],
        "CNI_IFNAME": "eth0",
        "CNI_PATH": os.path.dirname(node["binary"]),
        "PATH": os.environ["PATH"],
    }
    started = time.monotonic()
    p = subprocess.run(
        ["ip", "netns", "exec", node["lab"].topo.node("n1").netns, node["binary"]],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert b"Traceback" not in p.stderr, p.stderr.decode(errors="replace")[-2000:]
    return p, time.monotonic() - started


def config(node, **extra) -> dict:
    return {"cniVersion": "1.0.0", "name": "minikubenet", "type": "minikubenet", "agentSocket": node["socket"], **extra}


def error_of(p) -> dict:
    assert p.returncode != 0
    err = json.loads(p.stdout)  # the spec's error JSON on stdout
    assert set(err) >= {"cniVersion", "code", "msg"}, err
    return err


def ask(node, payload: bytes, fds=(), timeout=30.0) -> dict:
    """One request straight to the agent's socket, as any root process could send it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(node["socket"])
        if fds:
            socket.send_fds(s, [payload[:1]], list(fds))
            payload = payload[1:]
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent refused a too-large request before reading all of it
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        s.close()
    return json.loads(b"".join(chunks))


# -- through the CNI binary ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stdin",
    [b"[" * 200_000, b'{"a":' * 200_000, b"[" * 65 + b"]" * 65],
    ids=["200k-brackets", "200k-objects", "65-levels"],
)
def test_deep_nesting_is_a_decoding_failure(node, nothing_made, stdin):
    p, took = run_plugin(node, stdin)
    err = error_of(p)
    assert err["code"] == 6 and "nests deeper than 64" in err["details"], err
    if len(stdin) > 1000:
        report(f"limits: {len(stdin) // 1000}k-byte nested config refused", f"{took * 1000:.0f} ms (code 6)")


def test_ten_megabyte_config_is_refused_unread(node, nothing_made):
    stdin = json.dumps(config(node, padding="x" * 10_000_000)).encode()
    p, took = run_plugin(node, stdin)
    err = error_of(p)
    assert err["code"] == 6 and str(shim.MAX_CONFIG_BYTES) in err["details"], err
    report("limits: 10 MB config refused", f"{took * 1000:.0f} ms (code 6, limit {shim.MAX_CONFIG_BYTES} bytes)")


def test_a_config_just_under_the_limit_still_works(node):
    lab = node["lab"]
    doc = config(node)
    doc["padding"] = "x" * (shim.MAX_CONFIG_BYTES - len(json.dumps(doc)) - 20)
    p, _ = run_plugin(node, json.dumps(doc).encode(), cid="lim-big-ok")
    assert p.returncode == 0, p.stdout
    assert json.loads(p.stdout)["ips"], p.stdout
    p, _ = run_plugin(node, json.dumps(doc).encode(), command="DEL", cid="lim-big-ok")
    assert p.returncode == 0, p.stdout
    assert "eth0" not in pod_links(node["netns"]) and not records(lab)


@pytest.mark.parametrize("mtu", [0, 67, 65536, -1, 1e3, "1450", None, True])
def test_mtu_out_of_range_is_invalid_config(node, nothing_made, mtu):
    p, _ = run_plugin(node, json.dumps(config(node, mtu=mtu)).encode())
    err = error_of(p)
    assert err["code"] == 7 and "mtu" in err["msg"], err


def test_mtu_other_than_the_nodes_is_refused_not_ignored(node, nothing_made):
    p, _ = run_plugin(node, json.dumps(config(node, mtu=9000)).encode())
    err = error_of(p)
    assert err["code"] == 7 and str(node["mtu"]) in err["msg"], err


def test_the_nodes_own_mtu_is_accepted(node):
    p, _ = run_plugin(node, json.dumps(config(node, mtu=node["mtu"])).encode(), cid="lim-mtu-ok")
    assert p.returncode == 0, p.stdout
    assert json.loads(p.stdout)["interfaces"][2]["name"] == "eth0"
    p, _ = run_plugin(node, json.dumps(config(node, mtu=node["mtu"])).encode(), command="DEL", cid="lim-mtu-ok")
    assert p.returncode == 0, p.stdout


def test_del_is_not_refused_for_an_mtu(node):
    """DEL must clean up after any config (a runtime retries a failing DEL forever)."""
    p, _ = run_plugin(node, json.dumps(config(node, mtu=0)).encode(), command="DEL", cid="lim-never-added")
    assert p.returncode == 0, p.stdout


# -- straight to the agent's socket --------------------------------------------------------------------


def add_request(node, config_doc: dict, cid="lim-direct") -> bytes:
    return json.dumps(
        {
            "command": "ADD",
            "mode": "main",
            "netnsFd": True,
            "config": config_doc,
            "env": {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": node["path"], "CNI_IFNAME": "eth0"},
        }
    ).encode()


def test_request_without_cni_version_makes_nothing(node, nothing_made):
    doc = {k: v for k, v in config(node).items() if k != "cniVersion"}
    fd = os.open(node["path"], os.O_RDONLY)
    try:
        answer = ask(node, add_request(node, doc), fds=[fd])
    finally:
        os.close(fd)
    assert answer["error"]["code"] == 1 and "cniVersion" in answer["error"]["details"], answer


@pytest.mark.parametrize(
    "payload,code",
    [
        (b"[]", 6),
        (b"null", 6),
        (b'"x"', 6),
        (b"", 6),
        (b"{", 6),
        (b"\xff\xfe", 6),
        (b"[" * 200_000, 6),
        (b"{}", 4),
        (b'{"command": "ADD"}', 6),
        (b'{"command": "VERSION"}', 4),
        (b'{"command": "ADD", "env": [], "config": {}}', 6),
        (b'{"command": "ADD", "env": {"CNI_NETNS": 1}, "config": {}}', 6),
        (b'{"command": "ADD", "env": {}, "config": []}', 6),
        (b'{"command": "ADD", "mode": "x", "env": {}, "config": {}}', 7),
        (b'{"command": "ADD", "env": {}, "config": {"cniVersion": "1.0.0"}}', 7),
    ],
    ids=lambda v: v[:40].decode(errors="replace") if isinstance(v, bytes) else str(v),
)
def test_every_malformed_request_is_answered(node, nothing_made, payload, code):
    answer = ask(node, payload)
    assert answer["error"]["code"] == code, answer


def test_request_missing_env_makes_nothing(node, nothing_made):
    """A well-formed config but no CNI_IFNAME: refused before any work (code 4)."""
    raw = json.loads(add_request(node, config(node)))
    del raw["env"]["CNI_IFNAME"]
    fd = os.open(node["path"], os.O_RDONLY)
    try:
        answer = ask(node, json.dumps(raw).encode(), fds=[fd])
    finally:
        os.close(fd)
    assert answer["error"]["code"] == 4 and "CNI_IFNAME" in answer["error"]["msg"], answer


def test_too_large_request_is_answered(node, nothing_made):
    doc = config(node, padding="x" * (cni_server.MAX_REQUEST_BYTES + 1000))
    answer = ask(node, add_request(node, doc))
    assert answer["error"]["code"] == 6 and str(cni_server.MAX_REQUEST_BYTES) in answer["error"]["details"]


def test_idle_connections_hold_no_thread_and_do_not_block_an_add(node):
    lab = node["lab"]
    baseline = agent_threads(lab)
    idle = []
    try:
        for _ in range(200):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(node["socket"])
            s.sendall(b'{"command": ')  # half a request, then nothing
            idle.append(s)
        time.sleep(0.5)
        held = agent_threads(lab)
        started = time.monotonic()
        result = lab.runtime("n1").add("lim-idle-add", node["path"])
        add_s = time.monotonic() - started
        assert result["ips"], result
        during = agent_threads(lab)
        report(
            "limits: agent threads with 200 idle connections",
            f"{held} (before {baseline}; {during} during an ADD, served in {add_s * 1000:.0f} ms)",
        )
        assert held < baseline + 10 and during < baseline + cni_server.WORKERS + 10 < 200, (baseline, held, during)
        # each idle one is answered and closed once its time is up
        deadline = time.monotonic() + cni_server.REQUEST_TIMEOUT_S + 10
        s = idle[0]
        s.settimeout(max(1.0, deadline - time.monotonic()))
        answer = json.loads(s.recv(65536))
        assert answer["error"]["code"] == 6 and "no complete request" in answer["error"]["details"], answer
        assert s.recv(65536) == b""
    finally:
        for s in idle:
            s.close()
    lab.runtime("n1").delete("lim-idle-add", node["path"])


# -- file modes ---------------------------------------------------------------------------------------


def test_agent_and_lab_files_are_private(node):
    lab = node["lab"]
    loose = []
    seen = 0
    for top, dirs, files in os.walk(lab.dir):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            seen += 1
            if stat.S_ISLNK(st.st_mode):
                continue
            if st.st_mode & 0o077:
                loose.append(f"{oct(stat.S_IMODE(st.st_mode))} {os.path.relpath(path, lab.dir)}")
    assert stat.S_IMODE(os.stat(lab.dir).st_mode) == 0o700
    run_dir = lab.run_dir("n1")
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(run_dir, "subnet.env")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(run_dir, "agent.sock")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(lab.state_file).st_mode) == 0o600
    assert not loose, "readable by others:\n" + "\n".join(loose)
    report("limits: lab files and directories checked for 0600/0700", str(seen))
