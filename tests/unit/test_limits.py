"""Input limits, without root: the pure checks of the shim and the agent (size, nesting,
mtu, the request's shape), private file modes, and the agent's socket server with a
fake handler (every malformed request answered, idle connections hold no thread and
time out, the connection cap evicts the oldest unfinished one).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minikubenet import private_files, subnet_env
from minikubenet.agent import cni_server
from minikubenet.agent.request_checks import check_request, decode_request
from minikubenet.cni import shim
from minikubenet.cni.shim import CniError


def nested(depth: int) -> str:
    return '{"a":' * (depth - 1) + "[]" + "}" * (depth - 1)


# -- nesting ------------------------------------------------------------------------------------------


def test_depth_is_counted_in_containers():
    assert not shim.too_deep({}, 1) and shim.too_deep({"a": []}, 1)
    assert not shim.too_deep(json.loads(nested(64)), 64) and shim.too_deep(json.loads(nested(65)), 64)
    assert not shim.too_deep([1, "x", None, [2]], 2)


def test_json_loads_refuses_past_the_limit_and_not_before():
    assert shim.json_loads(nested(64)) == json.loads(nested(64))
    with pytest.raises(shim.TooDeep):
        shim.json_loads(nested(65))
    with pytest.raises(shim.TooDeep):
        shim.json_loads("[" * 200_000)  # the C scanner's recursion guard, not a traceback
    with pytest.raises(shim.TooDeep):
        shim.json_loads("[" * 900 + "]" * 900)  # parses, then measured
    assert shim.json_loads(json.dumps([[{"x": 1}]] * 1000)) == [[{"x": 1}]] * 1000  # many, not deep
    assert shim.json_loads('{"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]"}')


def test_deep_config_is_a_decoding_failure():
    with pytest.raises(CniError) as e:
        shim.parse_config(b'{"a":' * 200_000)
    assert e.value.code == 6 and "deeper than 64" in e.value.details


# -- size ---------------------------------------------------------------------------------------------


def test_config_size_limit():
    assert shim.read_config(io.BytesIO(b"x" * shim.MAX_CONFIG_BYTES)) == b"x" * shim.MAX_CONFIG_BYTES
    with pytest.raises(CniError) as e:
        shim.read_config(io.BytesIO(b"x" * (shim.MAX_CONFIG_BYTES + 1)))
    assert e.value.code == 6 and str(shim.MAX_CONFIG_BYTES) in e.value.details


def test_run_answers_a_ten_megabyte_config_with_error_json():
    out = io.StringIO()
    raw = json.dumps({"cniVersion": "1.0.0", "name": "n", "pad": "x" * 10_000_000}).encode()
    assert shim.run({"CNI_COMMAND": "ADD"}, io.BytesIO(raw), out) == 1
    assert json.loads(out.getvalue())["code"] == 6


# -- mtu ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mtu", [68, 1450, 9000, 65535])
def test_mtu_in_range(mtu):
    shim.check_mtu({"mtu": mtu}, "ADD")


@pytest.mark.parametrize("mtu", [67, 0, -1, 65536, 1450.0, "1450", None, True, [1450]])
def test_mtu_out_of_range_is_code_7(mtu):
    with pytest.raises(CniError) as e:
        shim.check_mtu({"mtu": mtu}, "ADD")
    assert e.value.code == 7


@pytest.mark.parametrize("command", ["DEL", "GC", "STATUS"])
def test_mtu_is_not_checked_where_it_is_not_used(command):
    shim.check_mtu({"mtu": 0}, command)


def test_subnet_env_with_an_impossible_mtu_is_invalid():
    good = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPMASQ=true\n"
    assert subnet_env.parse(good + "FLANNEL_MTU=1450\n").mtu == 1450
    for mtu in (0, 67, 65536):
        with pytest.raises(ValueError):
            subnet_env.parse(good + f"FLANNEL_MTU={mtu}\n")


# -- the agent's checks of a request -------------------------------------------------------------------


def request(command="ADD", mode="main", **config):
    conf = {"cniVersion": "1.0.0", "name": "minikubenet", "type": "minikubenet", **config}
    if mode == "ipam":
        conf["ipam"] = {"type": "minikubenet-ipam"}
    return {
        "command": command,
        "mode": mode,
        "netnsFd": True,
        "config": conf,
        "env": {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"},
    }


def refused(req, mtu=1450) -> int:
    with pytest.raises(CniError) as e:
        check_request(req, mtu)
    return e.value.code


def test_a_good_request_passes():
    check_request(request(), 1450)
    check_request(request(mtu=1450), 1450)
    check_request(request("STATUS", **{"cniVersion": "1.1.0"}), 1450)


def test_decode_request():
    assert decode_request(json.dumps(request()).encode())["command"] == "ADD"
    for raw in (b"[]", b"null", b"", b"{", b"\xff", b'"x"', b"[" * 200_000):
        with pytest.raises(CniError) as e:
            decode_request(raw)
        assert e.value.code == 6, raw[:20]
    with pytest.raises(CniError) as e:
        decode_request(b" " * (shim.MAX_REQUEST_BYTES + 1))
    assert e.value.code == 6
    # a config at the limit inside the envelope is fine, one more level is not
    decode_request(json.dumps({"config": json.loads(nested(64))}).encode())
    with pytest.raises(CniError):
        decode_request(json.dumps({"config": json.loads(nested(65))}).encode())


def test_request_without_cni_version_is_refused():
    req = request()
    del req["config"]["cniVersion"]
    assert refused(req) == 1


@pytest.mark.parametrize(
    "change,code",
    [
        (lambda r: r.update(command="VERSION"), 4),
        (lambda r: r.update(command=None), 4),
        (lambda r: r.update(mode="other"), 7),
        (lambda r: r.update(env=None), 6),
        (lambda r: r["env"].update(CNI_IFNAME=5), 6),
        (lambda r: r.update(config="x"), 6),
        (lambda r: r.update(netnsFd="yes"), 6),
        (lambda r: r["config"].pop("name"), 7),
        (lambda r: r["config"].update(name="-bad"), 7),
        (lambda r: r["config"].update(mtu=70000), 7),
        (lambda r: r["config"].update(mtu=9000), 7),  # in range, but not the node's
        (lambda r: r["config"].update(prevResult=[]), 7),
        (lambda r: r["env"].pop("CNI_NETNS"), 4),
        (lambda r: r["env"].update(CNI_CONTAINERID="a/b"), 4),
    ],
)
def test_malformed_requests_are_refused_with_the_shims_code(change, code):
    req = request()
    change(req)
    assert refused(req) == code


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "command": st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]) | _json_values,
            "mode": st.sampled_from(["main", "ipam"]) | _json_values,
            "env": st.dictionaries(st.sampled_from(["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]), st.text(max_size=6))
            | _json_values,
            "config": st.fixed_dictionaries(
                {},
                optional={
                    "cniVersion": st.sampled_from(["1.0.0", "1.1.0"]) | _json_values,
                    "name": st.just("minikubenet") | _json_values,
                    "mtu": st.just(1450) | _json_values,
                    "ipam": _json_values,
                    "prevResult": _json_values,
                    "agentSocket": _json_values,
                },
            )
            | _json_values,
            "netnsFd": _json_values,
        },
    )
)
def test_any_request_is_accepted_or_refused_with_a_cni_error(req):
    try:
        check_request(req, 1450)
    except CniError as e:
        assert e.code in (1, 2, 4, 6, 7)


def test_ipam_mode_leaves_the_mtu_to_the_main_plugin_but_not_nonsense():
    check_request(request(mode="ipam", mtu=9000), 1450)
    assert refused(request(mode="ipam", mtu=0)) == 7


# -- private files ------------------------------------------------------------------------------------


def test_private_dirs_and_files_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        private_files.make_dir(str(tmp_path / "a" / "b" / "c"))
        with private_files.open_file(str(tmp_path / "a" / "f"), "w") as f:
            f.write("x")
        loose = tmp_path / "a" / "g"
        loose.write_text("y")
        os.chmod(loose, 0o644)
        with private_files.open_file(str(loose), "a") as f:
            f.write("z")
    finally:
        os.umask(old)
    for d in ("a", "a/b", "a/b/c"):
        assert stat.S_IMODE(os.stat(tmp_path / d).st_mode) == 0o700, d
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "f").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o600 and loose.read_text() == "yz"


def test_subnet_env_is_written_0600(tmp_path):
    path = str(tmp_path / "run" / "subnet.env")
    env = subnet_env.parse(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
    old = os.umask(0)
    try:
        subnet_env.write(path, env)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


# -- the socket server, with a fake handler ------------------------------------------------------------


class FakeHandler:
    node = types.SimpleNamespace(mtu=1450)

    def __init__(self):
        self.calls = []

    def handle(self, request, netns_fd=None):
        self.calls.append(request)
        return {"cniVersion": "1.1.0"}


@pytest.fixture
def server():
    d = tempfile.mkdtemp(prefix="mknlim-", dir="/tmp")
    srv = cni_server.CniServer(
        os.path.join(d, "run", "a.sock"), FakeHandler(), workers=4, max_connections=20, request_timeout=1.0
    )
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.close()
    t.join(5)
    shutil.rmtree(d, ignore_errors=True)


def ask(path, payload: bytes) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    try:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except BrokenPipeError:
            pass
        return json.loads(s.makefile("rb").read())
    finally:
        s.close()


def test_server_socket_is_private(server):
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(server.path)).st_mode) == 0o700


def test_server_answers_good_and_malformed_requests(server):
    assert ask(server.path, json.dumps(request()).encode()) == {"result": {"cniVersion": "1.1.0"}}
    for raw in (b"[]", b"", b"{}", b"[" * 200_000):
        assert "error" in ask(server.path, raw), raw[:10]
    req = request()
    del req["config"]["cniVersion"]
    assert ask(server.path, json.dumps(req).encode())["error"]["code"] == 1
    assert len(server.cni_handler.calls) == 1, "only the good request reached the handler"


def test_server_refuses_a_too_large_request_with_an_answer(server):
    answer = ask(server.path, b" " * (shim.MAX_REQUEST_BYTES + 100_000))
    assert answer["error"]["code"] == 6


def test_idle_connections_hold_no_thread_time_out_and_leave_room(server):
    threads = threading.active_count()
    idle = []
    for _ in range(19):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(server.path)
        idle.append(s)
    try:
        assert threading.active_count() <= threads + 1
        # the cap (20) is reached: the next real request is served, the oldest idle one dropped
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(server.path)
        idle.append(s)
        assert ask(server.path, json.dumps(request()).encode()) == {"result": {"cniVersion": "1.1.0"}}
        idle[0].settimeout(5)
        assert json.loads(idle[0].recv(65536))["error"]["code"] == 11
        # the others are answered and closed when their second is up
        idle[-1].settimeout(5)
        started = time.monotonic()
        answer = json.loads(idle[-1].recv(65536))
        assert answer["error"]["code"] == 6 and time.monotonic() - started < 3
    finally:
        for s in idle:
            s.close()
