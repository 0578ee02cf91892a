"""minikubenet.cni.install: the plugins and a conflist where runtimes look, and back out.

Everything happens in a temp dir (``--bin-dir``, ``--conf-dir``, ``--state-dir``); no root
needed. The installed binaries are executed with an empty environment, as a runtime
does, to show they find their interpreter and their agent socket by themselves.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from minikubenet.cni import install, shim


@pytest.fixture
def dirs(tmp_path):
    d = {k: str(tmp_path / k) for k in ("bin", "net.d", "state")}
    return d


def opts(dirs, **kw) -> install.Options:
    return install.Options(bin_dir=dirs["bin"], conf_dir=dirs["net.d"], state_dir=dirs["state"], plugin_dirs=(), **kw)


def conflist(dirs) -> dict:
    with open(os.path.join(dirs["net.d"], install.DEFAULT_CONF_NAME)) as f:
        return json.load(f)


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minikubenet", *args], capture_output=True, text=True)


def run_plugin(path: str, env: dict, stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([path], input=stdin, env=env, capture_output=True, timeout=30)


def embedded(path: str, name: str):
    """The value of a top-level constant (``_SOURCE``, ``_MAGIC``...) of an installed plugin."""
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == name:
            return ast.literal_eval(node.value)
    raise KeyError(name)


# -- what gets written ---------------------------------------------------------------------------------


def test_install_writes_both_plugins_and_a_conflist(dirs):
    report = install.install(opts(dirs))
    assert [line.split()[0] for line in report.lines] == ["create"] * 3
    for name in ("minikubenet", "minikubenet-ipam"):
        mode = os.stat(os.path.join(dirs["bin"], name)).st_mode
        assert stat.S_IMODE(mode) == 0o755
    assert conflist(dirs) == {
        "cniVersion": "1.0.0",
        "name": "minikubenet",
        "plugins": [{"type": "minikubenet", "agentSocket": "/run/minikubenet/agent.sock"}],
    }


def test_the_binary_names_the_real_interpreter_and_bakes_its_settings(dirs):
    install.install(opts(dirs, agent_socket="/run/mkn/a.sock", invocation_log="/tmp/x.log"))
    path = os.path.join(dirs["bin"], "minikubenet-ipam")
    with open(path) as f:
        first = f.readline().rstrip("\n")
    assert first == f"#!{install.plugin_interpreter()} -IS"
    assert os.path.isabs(install.plugin_interpreter()) and os.access(install.plugin_interpreter(), os.X_OK)
    source = embedded(path, "_SOURCE")
    assert "\nMODE = 'ipam'\n" in source
    assert "\nDEFAULT_AGENT_SOCKET = '/run/mkn/a.sock'\n" in source
    assert "\nINVOCATION_LOG = '/tmp/x.log'\n" in source


def test_the_binary_carries_bytecode_and_falls_back_to_its_source(dirs, tmp_path):
    install.install(opts(dirs))
    path = os.path.join(dirs["bin"], "minikubenet")
    magic = subprocess.run(
        [
            install.plugin_interpreter(),
            "-I",
            "-c",
            "import importlib.util, sys; sys.stdout.buffer.write(importlib.util.MAGIC_NUMBER)",
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert embedded(path, "_MAGIC") == magic  # the bytecode of the interpreter the #! line names
    assert len(embedded(path, "_BYTECODE")) > 1000
    # an interpreter with another bytecode format compiles the source instead
    other = tmp_path / "other-magic"
    with open(path) as f:
        text = f.read()
    other.write_text(text.replace(repr(embedded(path, "_MAGIC")), repr(b"\0\0\r\n"), 1))
    other.chmod(0o755)
    p = run_plugin(str(other), {"CNI_COMMAND": "VERSION"}, b"")
    assert p.returncode == 0 and json.loads(p.stdout)["cniVersion"] == shim.CURRENT_VERSION


def test_installed_binaries_work_with_an_empty_environment(dirs, tmp_path):
    sock = str(tmp_path / "nobody.sock")
    install.install(opts(dirs, agent_socket=sock))
    for name in ("minikubenet", "minikubenet-ipam"):
        path = os.path.join(dirs["bin"], name)
        p = run_plugin(path, {"CNI_COMMAND": "VERSION"}, b"")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["supportedVersions"] == list(shim.SUPPORTED_VERSIONS)
        # no agentSocket in the config: the baked-in default is used (and nobody listens there)
        conf = {"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "minikubenet-ipam"}}
        if name == "minikubenet":
            del conf["ipam"]
        p = run_plugin(
            path,
            {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0"},
            json.dumps(conf).encode(),
        )
        err = json.loads(p.stdout)
        assert err["code"] == 11 and sock in err["details"], err


def test_chain_adds_the_reference_plugins_with_their_capabilities(dirs):
    install.install(
        opts(
            dirs,
            chain=("portmap", "tuning", "bandwidth"),
            sysctls=(("net.core.somaxconn", "512"),),
            cni_version="0.4.0",
            network="pods",
        )
    )
    c = conflist(dirs)
    assert c["cniVersion"] == "0.4.0" and c["name"] == "pods"
    assert [p["type"] for p in c["plugins"]] == ["minikubenet", "portmap", "tuning", "bandwidth"]
    assert c["plugins"][1]["capabilities"] == {"portMappings": True}
    assert c["plugins"][2]["sysctl"] == {"net.core.somaxconn": "512"}
    assert c["plugins"][3]["capabilities"] == {"bandwidth": True}


@pytest.mark.parametrize(
    "bad, named",
    [
        ({"cni_version": "0.2.0"}, "0.2.0"),
        ({"network": "-x"}, "-x"),
        ({"agent_socket": "run/a.sock"}, "--agent-socket"),
        ({"chain": ("flannel",)}, "flannel"),
        ({"sysctls": (("a", "b"),)}, "tuning"),
        ({"conf_name": "a/b.conflist"}, "a/b"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(dirs, bad, named):
    with pytest.raises(install.InstallError) as e:
        install.install(opts(dirs, **bad))
    assert named in str(e.value)
    assert not os.path.exists(dirs["bin"]) and not os.path.exists(dirs["net.d"])


# -- idempotence and ownership -------------------------------------------------------------------------------


def test_a_second_install_changes_nothing(dirs):
    install.install(opts(dirs))
    mtimes = {n: os.stat(os.path.join(dirs["bin"], n)).st_mtime_ns for n in os.listdir(dirs["bin"])}
    report = install.install(opts(dirs))
    assert [line.split()[0] for line in report.lines] == ["unchanged"] * 3
    assert mtimes == {n: os.stat(os.path.join(dirs["bin"], n)).st_mtime_ns for n in os.listdir(dirs["bin"])}


def test_new_options_update_our_own_files(dirs):
    install.install(opts(dirs))
    report = install.install(opts(dirs, cni_version="1.1.0"))
    assert report.lines[-1].split()[0] == "update"
    assert conflist(dirs)["cniVersion"] == "1.1.0"


def test_a_foreign_file_is_refused_then_replaced_with_force_and_restored_by_uninstall(dirs):
    os.makedirs(dirs["net.d"])
    foreign = os.path.join(dirs["net.d"], install.DEFAULT_CONF_NAME)
    with open(foreign, "w") as f:
        f.write('{"someone": "else"}')
    os.chmod(foreign, 0o640)
    with pytest.raises(install.InstallError) as e:
        install.install(opts(dirs))
    assert foreign in str(e.value) and "--force" in str(e.value)
    assert open(foreign).read() == '{"someone": "else"}'
    assert not os.path.exists(os.path.join(dirs["bin"], "minikubenet")), "a refused install writes nothing"

    install.install(opts(dirs), force=True)
    assert conflist(dirs)["name"] == "minikubenet"
    install.uninstall(dirs["state"])
    assert open(foreign).read() == '{"someone": "else"}'
    assert stat.S_IMODE(os.stat(foreign).st_mode) == 0o640
    assert os.listdir(dirs["bin"]) == []
    assert not os.path.exists(dirs["state"])


def test_a_file_we_wrote_but_someone_edited_is_foreign_again(dirs):
    install.install(opts(dirs))
    path = os.path.join(dirs["net.d"], install.DEFAULT_CONF_NAME)
    with open(path, "a") as f:
        f.write("\n")
    with pytest.raises(install.InstallError):
        install.install(opts(dirs, cni_version="0.4.0"))


def test_uninstall_removes_exactly_what_install_wrote(dirs):
    os.makedirs(dirs["bin"])
    neighbour = os.path.join(dirs["bin"], "portmap")
    open(neighbour, "w").close()
    install.install(opts(dirs))
    report = install.uninstall(dirs["state"])
    assert report.ok
    assert os.listdir(dirs["bin"]) == ["portmap"]
    assert os.listdir(dirs["net.d"]) == []
    assert install.uninstall(dirs["state"]).lines[0].startswith("nothing recorded")


def test_uninstall_keeps_an_edited_file_unless_forced(dirs):
    install.install(opts(dirs))
    path = os.path.join(dirs["net.d"], install.DEFAULT_CONF_NAME)
    with open(path, "w") as f:
        f.write("{}")
    report = install.uninstall(dirs["state"])
    assert not report.ok and os.path.exists(path)
    assert not os.path.exists(os.path.join(dirs["bin"], "minikubenet"))
    assert install.uninstall(dirs["state"], force=True).ok
    assert not os.path.exists(path)


def test_dry_run_writes_nothing(dirs):
    report = install.install(opts(dirs), dry_run=True)
    assert len(report.lines) == 3
    assert not any(os.path.exists(d) for d in dirs.values())


def test_warns_about_a_config_that_sorts_first(dirs):
    os.makedirs(dirs["net.d"])
    open(os.path.join(dirs["net.d"], "05-other.conflist"), "w").close()
    open(os.path.join(dirs["net.d"], "99-later.conflist"), "w").close()
    report = install.install(opts(dirs))
    assert len(report.warnings) == 1 and "05-other.conflist" in report.warnings[0]


@pytest.mark.skipif(not os.path.exists("/usr/lib/cni/portmap"), reason="containernetworking-plugins not installed")
def test_a_chained_plugin_that_cannot_speak_the_version_is_refused(dirs):
    # Debian's reference plugins (1.1.1) speak up to 1.0.0
    o = install.Options(
        bin_dir=dirs["bin"], conf_dir=dirs["net.d"], state_dir=dirs["state"], chain=("portmap",), cni_version="1.1.0"
    )
    with pytest.raises(install.InstallError) as e:
        install.install(o)
    assert "portmap" in str(e.value) and "1.1.0" in str(e.value)
    install.install(dict_replace(o, cni_version="1.0.0"))


def dict_replace(o: install.Options, **kw) -> install.Options:
    from dataclasses import replace

    return replace(o, **kw)


# -- the command line ---------------------------------------------------------------------------------------------


def test_cli_install_then_uninstall(dirs):
    args = ["--bin-dir", dirs["bin"], "--conf-dir", dirs["net.d"], "--state-dir", dirs["state"]]
    p = cli("install", *args, "--chain", "tuning", "--sysctl", "net.core.somaxconn=100", "--plugin-dir", dirs["bin"])
    assert p.returncode == 0, p.stderr
    assert "create" in p.stdout
    assert "tuning" in p.stderr, "a chained plugin not found is a warning"
    p = cli("install", *args, "--chain", "tuning", "--sysctl", "net.core.somaxconn=100", "--plugin-dir", dirs["bin"])
    assert p.returncode == 0 and p.stdout.count("unchanged") == 3
    p = cli("uninstall", "--state-dir", dirs["state"])
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("removed") == 3


def test_cli_refusal_is_one_line_and_exit_1(dirs):
    os.makedirs(dirs["bin"])
    with open(os.path.join(dirs["bin"], "minikubenet"), "w") as f:
        f.write("#!/bin/sh\n")
    p = cli("install", "--bin-dir", dirs["bin"], "--conf-dir", dirs["net.d"], "--state-dir", dirs["state"])
    assert p.returncode == 1
    assert p.stderr.startswith("minikubenet: install:") and "Traceback" not in p.stderr


def test_the_installed_copy_is_the_shim(dirs):
    """The installed source is shim.py less its shebang, with the baked lines, nothing else."""
    install.install(opts(dirs))
    with open(shim.__file__) as f:
        source = f.read().split("\n")[1:]
    installed = embedded(os.path.join(dirs["bin"], "minikubenet"), "_SOURCE").split("\n")
    differ = [a for a, b in zip(source, installed) if a != b]
    assert len(source) == len(installed)
    assert all(line.split(" = ")[0] in install.BAKED for line in differ)


def test_uninstalled_state_dir_stays_when_other_files_live_there(dirs):
    install.install(opts(dirs))
    with open(os.path.join(dirs["state"], "notes.txt"), "w") as f:
        f.write("mine")
    install.uninstall(dirs["state"])
    assert os.listdir(dirs["state"]) == ["notes.txt"]
    shutil.rmtree(dirs["state"])


@pytest.mark.parametrize("stdin", [b"{", b'"abc', b'{"cniVersion": "1.0.0",}', b"[1,", b"nul", b"{} {}", b"\xff"])
def test_the_installed_binary_reports_malformed_json_as_code_6(dirs, stdin):
    """In its own process the shim has no json package loaded: the C scanner's errors
    must still come out as the spec's error JSON (a unit test in-process cannot see this)."""
    install.install(opts(dirs))
    p = run_plugin(
        os.path.join(dirs["bin"], "minikubenet"),
        {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0"},
        stdin,
    )
    assert p.returncode == 1 and b"Traceback" not in p.stderr, p.stderr
    assert json.loads(p.stdout)["code"] == 6
