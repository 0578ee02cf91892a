"""vagrant/Vagrantfile is valid for every provider it supports (``vagrant validate``, offline,
no VM, no libvirtd), and its settings do what the README says."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VAGRANT_DIR = os.path.join(REPO, "vagrant")

pytestmark = pytest.mark.skipif(
    shutil.which("vagrant") is None, reason="vagrant is not installed (./setup.sh installs it: vagrant/setup-host.sh)"
)


def vagrant(tmp_path, *args, **env):
    """vagrant in a throw-away VAGRANT_HOME: nothing lands in ~/.vagrant.d or vagrant/.vagrant.
    MINIKUBENET_VM_DIST (where the project's wheel is) must exist for the file provisioner."""
    (tmp_path / "dist").mkdir(exist_ok=True)
    e = {k: v for k, v in os.environ.items() if not k.startswith("MINIKUBENET_VM_")}
    e.update(
        {
            "MINIKUBENET_VM_DIST": str(tmp_path / "dist"),
            "VAGRANT_HOME": str(tmp_path / "home"),
            "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
            "VAGRANT_CWD": VAGRANT_DIR,
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_NO_COLOR": "1",
            "VAGRANT_DEFAULT_PROVIDER": "libvirt",
        },
        **env,
    )
    return subprocess.run(["vagrant", *args], env=e, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def libvirt_plugin(tmp_path_factory):
    if "vagrant-libvirt" not in vagrant(tmp_path_factory.mktemp("plugins"), "plugin", "list").stdout:
        pytest.skip("the vagrant-libvirt plugin is not installed (./setup.sh installs it)")


@pytest.mark.parametrize("driver", ["kvm", "qemu"])
def test_validate_libvirt(tmp_path, driver, libvirt_plugin):
    p = vagrant(
        tmp_path,
        "validate",
        MINIKUBENET_VM_DRIVER=driver,
        MINIKUBENET_VM_ISOLATED="1",
        MINIKUBENET_VM_CONSOLE_DIR=str(tmp_path),
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Vagrantfile validated successfully" in p.stdout


def test_validate_virtualbox(tmp_path):
    # validating a VirtualBox block needs no VirtualBox; `--ignore-provider` skips its checks of the host
    p = vagrant(tmp_path, "validate", "--ignore-provider", VAGRANT_DEFAULT_PROVIDER="virtualbox")
    assert p.returncode == 0, p.stdout + p.stderr


def test_three_nodes_by_default_and_the_count_is_a_setting(tmp_path):
    p = vagrant(tmp_path, "status")
    assert p.returncode == 0, p.stdout + p.stderr
    assert [f"node{i}" for i in (1, 2, 3)] == [
        line.split()[0] for line in p.stdout.splitlines() if line.startswith("node")
    ]
    p = vagrant(tmp_path, "status", MINIKUBENET_VM_NODES="2")
    assert "node3" not in p.stdout and "node2" in p.stdout


def test_a_bad_driver_is_refused_with_the_setting_named(tmp_path):
    p = vagrant(tmp_path, "validate", MINIKUBENET_VM_DRIVER="xen")
    assert p.returncode != 0
    assert "MINIKUBENET_VM_DRIVER must be kvm or qemu" in p.stdout + p.stderr


def test_each_node_is_given_only_its_own_etcd_certificates(tmp_path):
    """The Vagrantfile makes the etcd PKI once on the host; node1 gets etcd's server and
    peer certificates and the root user's, the others only the agent's and the proxy's,
    and no node gets the CA's key."""
    pki = tmp_path / "pki"
    p = vagrant(tmp_path, "status", MINIKUBENET_VM_PKI=str(pki))
    assert p.returncode == 0, p.stdout + p.stderr
    node1, node2 = set(os.listdir(pki / "node1")), set(os.listdir(pki / "node2"))
    assert {"server.key", "peer.key", "root.key", "agent.key", "proxy.key", "ca.crt"} <= node1
    assert node2 == {"ca.crt", "agent.crt", "agent.key", "proxy.crt", "proxy.key"}
    assert "ca.key" not in node1 | node2 and (pki / "all" / "ca.key").exists()
    for f in node1:
        assert (pki / "node1" / f).stat().st_mode & 0o077 == 0, f
    ca_before = (pki / "all" / "ca.crt").read_bytes()
    vagrant(tmp_path, "status", MINIKUBENET_VM_PKI=str(pki))  # made once, then kept
    assert (pki / "all" / "ca.crt").read_bytes() == ca_before
