"""minikubenet.cni.shim: the CNI binary a runtime executes, in front of the node agent.

Reference A.2 (what skel enforces), A.5 (error codes, error JSON on stdout) and A.10
(VERSION). The shim is called as ``run(env, stdin, stdout)`` with in-memory streams; a
fake agent (a unix socket server in a thread) shows what it forwards and prints. One
test runs ``cni-plugins/minikubenet`` as a real subprocess, as a runtime does.
"""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from minikubenet.cni import shim

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "cni-plugins" / "minikubenet"

SUPPORTED = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def short_dir():
    """A short temp dir: a unix socket path must fit in 108 bytes, pytest's tmp_path may not."""
    d = tempfile.mkdtemp(prefix="mknshim-", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def netns_path(short_dir):
    """Something that exists where CNI_NETNS points: the shim only checks that the path exists."""
    p = short_dir / "netns"
    p.write_text("")
    return str(p)


class FakeAgent:
    """Answers every connection with ``self.answer`` (bytes) and records the requests."""

    def __init__(self, path: str):
        self.path = path
        self.answer = b"{}"
        self.requests: list[dict] = []
        self.raw_requests: list[bytes] = []
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(path)
        self._srv.listen(8)
        self._srv.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def reply(self, doc) -> None:
        self.answer = json.dumps(doc).encode()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self._stop.is_set():
                conn.close()
                return
            with conn:
                conn.settimeout(10)
                chunks = []
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:  # the shim half-closes after its request
                        break
                    chunks.append(chunk)
                raw = b"".join(chunks)
                self.raw_requests.append(raw)
                self.requests.append(json.loads(raw))
                conn.sendall(self.answer)

    def close(self):
        self._stop.set()
        try:  # wake the accept() now
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(self.path)
        except OSError:
            pass
        self._thread.join(5)
        self._srv.close()


@pytest.fixture
def agent(short_dir):
    a = FakeAgent(str(short_dir / "agent.sock"))
    yield a
    a.close()


@pytest.fixture
def missing_socket(short_dir):
    return str(short_dir / "no-agent-here.sock")


def conf(sock: str, version: str = "1.0.0", **extra) -> dict:
    c = {"cniVersion": version, "name": "mkn", "type": "minikubenet", "agentSocket": sock}
    c.update(extra)
    return c


def pod_env(command: str, netns: str, **extra) -> dict:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "3f9a1c0de",
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def invoke(env: dict, stdin) -> tuple[int, str]:
    if isinstance(stdin, dict):
        stdin = json.dumps(stdin)
    if isinstance(stdin, str):
        stdin = stdin.encode()
    out = io.StringIO()
    code = shim.run(env, io.BytesIO(stdin), out)
    return code, out.getvalue()


def invoke_error(env: dict, stdin) -> dict:
    """Run, expect a CNI error: exit non-zero and exactly one error object on stdout."""
    code, out = invoke(env, stdin)
    assert code != 0, out
    err = json.loads(out)  # stdout carries nothing but the error JSON
    assert isinstance(err["code"], int)
    assert isinstance(err["msg"], str) and err["msg"]
    return err


def text_of(err: dict) -> str:
    return err["msg"] + " " + err.get("details", "")


class ExplodingStdin:
    def read(self, *a):
        raise AssertionError("VERSION must not read stdin")


class BrokenStdin:
    def read(self, *a):
        raise OSError(5, "Input/output error")


# -- VERSION -------------------------------------------------------------------------------


@pytest.mark.parametrize("stdin", [b'{"cniVersion": "0.3.1"}', b"", b"not json at all", b"[]"])
def test_version_answers_supported_versions_whatever_stdin_says(stdin):
    code, out = invoke({"CNI_COMMAND": "VERSION"}, stdin)
    assert code == 0
    assert json.loads(out) == {"cniVersion": "1.1.0", "supportedVersions": SUPPORTED}


def test_version_does_not_read_stdin():
    out = io.StringIO()
    assert shim.run({"CNI_COMMAND": "VERSION"}, ExplodingStdin(), out) == 0
    assert json.loads(out.getvalue())["supportedVersions"] == SUPPORTED


# -- errors the shim finds on its own ------------------------------------------------------


@pytest.mark.parametrize(
    "env, stdin, code, named",
    [
        ({}, "{}", 4, "CNI_COMMAND"),
        ({"CNI_COMMAND": ""}, "{}", 4, "CNI_COMMAND"),
        ({"CNI_COMMAND": "FROB"}, "{}", 4, "FROB"),
        ({"CNI_COMMAND": "add"}, "{}", 4, "add"),  # verbs are upper case
    ],
    ids=["no-command", "empty-command", "unknown-command", "lower-case-command"],
)
def test_bad_command_is_code_4(env, stdin, code, named):
    err = invoke_error(env, stdin)
    assert err["code"] == code
    assert named in text_of(err)


@pytest.mark.parametrize(
    "stdin", ["{nope", "", "   ", '{"cniVersion": "1.0.0",}'], ids=["truncated", "empty", "blank", "trailing-comma"]
)
def test_malformed_json_is_code_6(stdin, netns_path):
    err = invoke_error(pod_env("ADD", netns_path), stdin)
    assert err["code"] == 6


def test_undecodable_bytes_are_code_6(netns_path):
    out = io.StringIO()
    assert shim.run(pod_env("ADD", netns_path), io.BytesIO(b"\xff\xfe\x00{"), out) == 1
    assert json.loads(out.getvalue())["code"] == 6


@pytest.mark.parametrize("stdin", ["[]", '"1.0.0"', "null", "42", '[{"cniVersion": "1.0.0"}]'])
def test_json_that_is_not_an_object_is_code_6(stdin, netns_path):
    err = invoke_error(pod_env("ADD", netns_path), stdin)
    assert err["code"] == 6


def test_unreadable_stdin_is_code_5(netns_path):
    out = io.StringIO()
    assert shim.run(pod_env("ADD", netns_path), BrokenStdin(), out) == 1
    assert json.loads(out.getvalue())["code"] == 5


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "GC", "STATUS"])
def test_missing_cni_version_is_code_1(command, netns_path, missing_socket):
    c = conf(missing_socket)
    del c["cniVersion"]
    err = invoke_error(pod_env(command, netns_path), c)
    assert err["code"] == 1
    assert "cniVersion" in text_of(err)


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "0.3.0", "1.0", "1.2.0", "2.0.0", "", 1.0, None], ids=repr)
def test_unknown_cni_version_is_code_1(version, netns_path, missing_socket):
    c = conf(missing_socket)
    c["cniVersion"] = version
    err = invoke_error(pod_env("ADD", netns_path), c)
    assert err["code"] == 1


@pytest.mark.parametrize(
    "command, version",
    [
        ("CHECK", "0.3.1"),
        ("GC", "0.3.1"),
        ("GC", "0.4.0"),
        ("GC", "1.0.0"),
        ("STATUS", "0.3.1"),
        ("STATUS", "0.4.0"),
        ("STATUS", "1.0.0"),
    ],
)
def test_verb_newer_than_the_config_version_is_code_1(command, version, netns_path, missing_socket):
    err = invoke_error(pod_env(command, netns_path), conf(missing_socket, version))
    assert err["code"] == 1
    assert command in text_of(err)
    assert err["cniVersion"] == version


@pytest.mark.parametrize(
    "command, version",
    [("CHECK", "0.4.0"), ("CHECK", "1.0.0"), ("GC", "1.1.0"), ("STATUS", "1.1.0"), ("ADD", "0.3.1"), ("DEL", "0.3.1")],
)
def test_verb_allowed_by_the_config_version_gets_past_version_checks(command, version, netns_path, missing_socket):
    # it reaches the (absent) agent: code 11, not 1
    err = invoke_error(pod_env(command, netns_path), conf(missing_socket, version))
    assert err["code"] == (50 if command == "STATUS" else 11)  # STATUS: "not available"


@pytest.mark.parametrize(
    "change, named",
    [
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"name": 7}, "7"),
        ({"name": "-mkn"}, "'-mkn'"),
        ({"name": "mkn/../etc"}, "'mkn/../etc'"),
        ({"name": "mkn net"}, "'mkn net'"),
        ({"agentSocket": "run/minikubenet/agent.sock"}, "'run/minikubenet/agent.sock'"),
        ({"agentSocket": ""}, "''"),
        ({"agentSocket": 5}, "5"),
    ],
    ids=[
        "no-name",
        "empty-name",
        "int-name",
        "dash-name",
        "path-name",
        "space-name",
        "relative-socket",
        "empty-socket",
        "int-socket",
    ],
)
def test_invalid_network_config_is_code_7(change, named, netns_path, missing_socket):
    c = conf(missing_socket)
    for k, v in change.items():
        if v is None:
            del c[k]
        else:
            c[k] = v
    err = invoke_error(pod_env("ADD", netns_path), c)
    assert err["code"] == 7
    assert named in text_of(err)


@pytest.mark.parametrize(
    "command, drop",
    [
        ("ADD", ["CNI_CONTAINERID"]),
        ("ADD", ["CNI_NETNS"]),
        ("ADD", ["CNI_IFNAME"]),
        ("ADD", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]),
        ("CHECK", ["CNI_CONTAINERID"]),
        ("CHECK", ["CNI_NETNS"]),
        ("CHECK", ["CNI_IFNAME"]),
        ("DEL", ["CNI_CONTAINERID"]),
        ("DEL", ["CNI_IFNAME"]),
        ("DEL", ["CNI_CONTAINERID", "CNI_IFNAME"]),
    ],
)
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_missing_required_env_is_code_4_and_names_each_variable(command, drop, how, netns_path, missing_socket):
    env = pod_env(command, netns_path)
    for k in drop:
        if how == "absent":
            del env[k]
        else:
            env[k] = ""
    err = invoke_error(env, conf(missing_socket))
    assert err["code"] == 4
    for k in drop:
        assert k in text_of(err)
    for k in {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"} - set(drop):
        assert k not in err["msg"]


@pytest.mark.parametrize("netns", [None, "", "/run/netns/gone-already"], ids=["absent", "empty", "gone"])
def test_del_without_a_netns_is_accepted_and_goes_to_the_agent(netns, missing_socket):
    # the spec makes CNI_NETNS optional on DEL (reference A.2, A.6): the shim asks the agent
    env = pod_env("DEL", "x", CNI_NETNS=netns)
    err = invoke_error(env, conf(missing_socket))
    assert err["code"] == 11


def test_del_without_a_netns_reaches_the_agent_and_prints_nothing(agent):
    agent.reply({"result": None})
    env = pod_env("DEL", "x", CNI_NETNS=None)
    code, out = invoke(env, conf(agent.path))
    assert (code, out) == (0, "")
    (req,) = agent.requests
    assert req["command"] == "DEL"
    assert "CNI_NETNS" not in req["env"]


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_and_status_need_no_pod_env(command, agent):
    agent.reply({"result": None})
    code, out = invoke({"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"}, conf(agent.path, "1.1.0"))
    assert (code, out) == (0, "")
    assert agent.requests[0]["command"] == command


@pytest.mark.parametrize("cid", ["-abc", ".abc", "_abc", "abc/def", "../etc", "abc def", "abc;rm", "äbc"])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_bad_container_id_is_code_4(cid, command, netns_path, missing_socket):
    err = invoke_error(pod_env(command, netns_path, CNI_CONTAINERID=cid), conf(missing_socket))
    assert err["code"] == 4
    assert "CNI_CONTAINERID" in err["msg"] and repr(cid) in err["msg"]


@pytest.mark.parametrize("cid", ["a", "3f9a1c0de", "k8s_POD.web-0_default", "A-1.2_3"])
def test_good_container_ids_pass(cid, netns_path, missing_socket):
    err = invoke_error(pod_env("ADD", netns_path, CNI_CONTAINERID=cid), conf(missing_socket))
    assert err["code"] == 11


@pytest.mark.parametrize("ifname", ["eth0123456789abc", "eth/0", "eth:0", "eth 0", "eth\t0", ".", ".."])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_bad_ifname_is_code_4(ifname, command, netns_path, missing_socket):
    err = invoke_error(pod_env(command, netns_path, CNI_IFNAME=ifname), conf(missing_socket))
    assert err["code"] == 4
    assert "CNI_IFNAME" in err["msg"]


@pytest.mark.parametrize("ifname", ["eth0", "net1", "eth012345678901"])  # 15 characters is the limit
def test_good_ifnames_pass(ifname, netns_path, missing_socket):
    err = invoke_error(pod_env("ADD", netns_path, CNI_IFNAME=ifname), conf(missing_socket))
    assert err["code"] == 11


@pytest.mark.parametrize(
    "change", [{"env": {"CNI_CONTAINERID": "abc\n"}}, {"conf": {"name": "mkn\n"}}], ids=["container-id", "network-name"]
)
def test_trailing_newline_is_not_a_valid_id_or_name(change, netns_path, missing_socket):
    env = pod_env("ADD", netns_path, **change.get("env", {}))
    err = invoke_error(env, conf(missing_socket, **change.get("conf", {})))
    assert err["code"] in (4, 7)


@pytest.mark.parametrize("command", ["ADD", "CHECK"])
def test_netns_that_does_not_exist_is_code_4_for_add_and_check(command, short_dir, missing_socket):
    gone = str(short_dir / "netns-that-is-not-there")
    err = invoke_error(pod_env(command, gone), conf(missing_socket))
    assert err["code"] == 4
    assert gone in text_of(err)


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "GC", "STATUS"])
def test_agent_not_running_is_code_11_try_again_later(command, netns_path, missing_socket):
    err = invoke_error(pod_env(command, netns_path), conf(missing_socket, "1.1.0"))
    assert err["code"] == (50 if command == "STATUS" else 11)  # spec: "try again later"; STATUS: 50
    assert missing_socket in text_of(err)
    assert err["cniVersion"] == "1.1.0"


def test_socket_path_that_is_not_a_socket_is_code_11(netns_path):
    err = invoke_error(pod_env("ADD", netns_path), conf(netns_path))  # a regular file
    assert err["code"] == 11


def test_agent_that_hangs_up_without_answering_is_code_11(agent, netns_path):
    agent.answer = b""
    err = invoke_error(pod_env("ADD", netns_path), conf(agent.path))
    assert err["code"] == 11
    assert len(agent.requests) == 1


@pytest.mark.parametrize("answer", [b"[]", b'"ok"', b'{"error": "boom"}'])
def test_malformed_agent_answer_is_still_a_cni_error(answer, agent, netns_path):
    agent.answer = answer
    err = invoke_error(pod_env("ADD", netns_path), conf(agent.path))
    assert err["code"] != 0


@pytest.mark.parametrize("version", SUPPORTED)
def test_errors_carry_the_requested_cni_version(version, short_dir):
    err = invoke_error(pod_env("ADD", str(short_dir / "gone")), conf("/nonexistent.sock", version))
    assert err["cniVersion"] == version


def test_errors_before_the_config_is_read_carry_the_current_version():
    err = invoke_error({}, "{}")
    assert err["cniVersion"] == "1.1.0"


# -- with a (fake) agent -------------------------------------------------------------------

CANNED_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
        {"name": "veth1234abcd", "mac": "aa:bb:cc:00:00:02"},
        {"name": "eth0", "mac": "aa:bb:cc:00:00:03", "sandbox": "/run/netns/p"},
    ],
    "ips": [{"interface": 2, "address": "10.244.1.5/24", "gateway": "10.244.1.1"}],
    "routes": [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
    "dns": {},
}


def test_add_forwards_env_and_config_and_prints_the_result_verbatim(agent, netns_path):
    agent.reply({"result": CANNED_RESULT})
    env = pod_env(
        "ADD",
        netns_path,
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web-0",
        HOME="/root",
        PATH="/usr/bin",
        NOT_CNI_SECRET="hunter2",
    )
    c = conf(agent.path, ipMasq=False, someFutureKey={"nested": [1, 2]}, prevResult={"cniVersion": "1.0.0", "ips": []})
    code, out = invoke(env, c)
    assert code == 0
    assert json.loads(out) == CANNED_RESULT
    assert out == json.dumps(CANNED_RESULT)  # nothing added, dropped or reordered
    (req,) = agent.requests
    assert req["command"] == "ADD"
    assert req["config"] == c  # the config as given, unknown keys included
    assert req["env"] == {k: v for k, v in env.items() if k.startswith("CNI_")}
    assert "NOT_CNI_SECRET" not in req["env"] and "PATH" not in req["env"]


@pytest.mark.parametrize("version", SUPPORTED)
def test_the_result_is_printed_as_the_agent_encoded_it_for_each_version(version, agent, netns_path):
    result = {"cniVersion": version, "ips": [{"address": "10.244.1.7/24"}]}
    agent.reply({"result": result})
    code, out = invoke(pod_env("ADD", netns_path), conf(agent.path, version))
    assert code == 0
    assert json.loads(out) == result
    assert agent.requests[0]["config"]["cniVersion"] == version


def test_check_success_prints_nothing(agent, netns_path):
    agent.reply({})
    code, out = invoke(pod_env("CHECK", netns_path), conf(agent.path))
    assert (code, out) == (0, "")


@pytest.mark.parametrize(
    "error",
    [
        {"code": 3, "msg": "container unknown", "details": "no attachment 3f9a1c0de/eth0"},
        {"code": 50, "msg": "plugin not available", "details": "no subnet lease yet"},
        {"code": 100, "msg": "check failed: eth0 has no address 10.244.1.5/24"},
        {"code": 11, "msg": "etcd unavailable", "details": "etcd at http://127.0.0.1:2379 did not answer"},
    ],
)
def test_agent_errors_are_passed_through(error, agent, netns_path):
    agent.reply({"error": error})
    err = invoke_error(pod_env("ADD", netns_path), conf(agent.path, "0.4.0"))
    assert err["code"] == error["code"]
    assert err["msg"] == error["msg"]
    assert err.get("details", "") == error.get("details", "")
    assert err["cniVersion"] == "0.4.0"


def test_one_connection_per_invocation(agent, netns_path):
    agent.reply({"result": CANNED_RESULT})
    for _ in range(3):
        assert invoke(pod_env("ADD", netns_path), conf(agent.path))[0] == 0
    assert len(agent.raw_requests) == 3  # each one request, one complete JSON object
    assert [json.loads(r)["command"] for r in agent.raw_requests] == ["ADD"] * 3


# -- as a real process ---------------------------------------------------------------------


def _exec_plugin(env: dict, stdin: bytes) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run([str(PLUGIN)], input=stdin, env={**base, **env}, capture_output=True, timeout=60)


def test_plugin_binary_runs_as_a_runtime_calls_it(agent, netns_path, missing_socket):
    assert os.access(PLUGIN, os.X_OK), f"{PLUGIN} must be executable"

    p = _exec_plugin({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}')
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"cniVersion": "1.1.0", "supportedVersions": SUPPORTED}

    agent.reply({"result": CANNED_RESULT})
    p = _exec_plugin(pod_env("ADD", netns_path), json.dumps(conf(agent.path)).encode())
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == CANNED_RESULT
    assert agent.requests[0]["env"]["CNI_CONTAINERID"] == "3f9a1c0de"

    p = _exec_plugin(pod_env("ADD", netns_path), json.dumps(conf(missing_socket)).encode())
    assert p.returncode != 0
    assert json.loads(p.stdout)["code"] == 11
    assert b"Traceback" not in p.stderr


def test_shim_module_stays_stdlib_only():
    # run as a script, with no site-packages: importing pyroute2/grpc/etcd here would fail
    p = subprocess.run(
        [sys.executable, "-I", "-S", str(PLUGIN)],
        input=b"",
        env={"CNI_COMMAND": "VERSION"},
        capture_output=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["supportedVersions"] == SUPPORTED
