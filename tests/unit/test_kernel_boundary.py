"""Only ``minikubenet/linux/`` touches the kernel (issue 14, "How well"): nothing else
creates a netlink socket (``IPRoute(``, ``NetNS(``, ``socket.AF_NETLINK``, or imports
pyroute2 at all) or runs ``nft``/``iptables``. The lab's process management
(``minikubenet/lab/``) builds and inspects whole test clusters with ``ip``, ``nft`` and
``iptables`` and is exempt. Read from the source (ast), so the rule stays true as code
is added; the scanner itself is checked on samples that break the rule."""

from __future__ import annotations

import ast
import os

import pytest

import minikubenet

PACKAGE = os.path.dirname(os.path.abspath(minikubenet.__file__))
EXEMPT = ("linux", "lab")  # top-level subpackages allowed to touch the kernel
NETLINK_CALLS = {"IPRoute", "NetNS", "IPDB", "NDB", "IW", "IPSet", "NFTSocket"}
FIREWALL_BINARIES = ("nft", "iptables", "ip6tables", "xtables", "ebtables", "arptables")
RUNNERS = {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput", "system"}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _firewall_argv0(arg: ast.AST) -> str | None:
    """The program a literal argv (list/tuple, or a command string) starts with, if it
    is one of the firewall binaries."""
    first = arg.elts[0] if isinstance(arg, (ast.List, ast.Tuple)) and arg.elts else arg
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        text = first.value.split()[0] if first.value.split() else ""
    elif isinstance(first, ast.JoinedStr) and first.values and isinstance(first.values[0], ast.Constant):
        text = str(first.values[0].value)
    else:
        return None
    prog = os.path.basename(text)
    return prog if prog.startswith(FIREWALL_BINARIES) else None


def violations(source: str, filename: str = "<sample>") -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m == "pyroute2" or m.startswith("pyroute2.") for m in mods):
                out.append(f"{where}: imports pyroute2")
        elif isinstance(node, ast.Attribute) and node.attr == "AF_NETLINK":
            out.append(f"{where}: opens an AF_NETLINK socket")
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            if name in NETLINK_CALLS:
                out.append(f"{where}: creates a netlink socket ({name}())")
            elif name in RUNNERS and node.args and (prog := _firewall_argv0(node.args[0])):
                out.append(f"{where}: runs {prog}")
    return out


def package_files() -> list[str]:
    files = []
    for root, dirs, names in os.walk(PACKAGE):
        rel = os.path.relpath(root, PACKAGE)
        if rel.split(os.sep)[0] in EXEMPT:
            continue
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        files += [os.path.join(root, n) for n in names if n.endswith(".py")]
    return sorted(files)


def test_nothing_outside_linux_creates_a_netlink_socket_or_runs_nft_or_iptables():
    found = []
    for path in package_files():
        with open(path) as f:
            found += violations(f.read(), os.path.relpath(path, os.path.dirname(PACKAGE)))
    assert found == [], "kernel work outside minikubenet/linux/:\n" + "\n".join(found)


def test_the_scan_covers_the_agent_the_proxy_and_the_overlay():
    rel = {os.path.relpath(p, PACKAGE) for p in package_files()}
    assert {
        "agent/cni_handler.py",
        "agent/main.py",
        "proxy/syncers.py",
        "proxy/daemon.py",
        "overlay/controller.py",
    } <= rel
    assert not any(r.startswith(("linux/", "lab/")) for r in rel)


@pytest.mark.parametrize(
    "sample",
    [
        "from pyroute2 import IPRoute\n",
        "import pyroute2.netlink\n",
        "x = IPRoute()\n",
        "ns = pyroute2.NetNS('p')\n",
        "import socket\ns = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)\n",
        "import subprocess\nsubprocess.run(['nft', 'list', 'ruleset'])\n",
        "import subprocess\nsubprocess.run(['/usr/sbin/iptables-save', '-t', 'nat'])\n",
        "import subprocess\nsubprocess.Popen([f'iptables-{x}', '-w'])\n",
        "import os\nos.system('iptables -F')\n",
        "from minikubenet.linux import nft_monitor\nnft_monitor.run(['nft', '-f', '-'], text)\n",
    ],
)
def test_the_scanner_catches_kernel_work(sample):
    assert violations(sample) != []


@pytest.mark.parametrize(
    "sample",
    [
        "from minikubenet.linux import nft\nnft.apply(text)\n",
        "import subprocess\nsubprocess.run(['ip', 'netns', 'exec', ns, 'true'])\n",
        "import subprocess\nsubprocess.run(argv)\n",
        "log.info('iptables mode')\n",
    ],
)
def test_the_scanner_lets_the_rest_be(sample):
    assert violations(sample) == []
