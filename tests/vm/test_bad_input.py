"""Bad input to the VM tier: each is one clear message saying which piece is wrong, and
nothing is left behind (no VM, network, disk, namespace or process)."""

from __future__ import annotations

import os
import subprocess
import tarfile

import pytest

from tests.vm.conftest import mkvm, skip_unless_vm_tier


@pytest.fixture(autouse=True)
def vm_tier():
    skip_unless_vm_tier()


def fake_path(tmp_path, tools):
    """A PATH directory holding only ``tools`` (links to the real ones)."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for t in tools:
        os.symlink(mkvm.which(t), d / t)
    return str(d)


@pytest.mark.parametrize(
    "present, expected",
    [
        ([], "no libvirt: libvirtd/virtlogd/virsh are not installed"),
        (
            ["libvirtd", "virtlogd", "virsh"],
            "no qemu: qemu-system-x86_64/qemu-img are not installed, so neither KVM nor TCG",
        ),
        (["libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "qemu-img"], "no vagrant"),
    ],
)
def test_a_missing_tool_is_named(tmp_path, present, expected):
    with pytest.raises(mkvm.VmError) as e:
        mkvm.preflight(path=fake_path(tmp_path, present))
    assert expected in str(e.value) and "setup.sh" in str(e.value)


def test_a_missing_box_is_named_and_nothing_is_made(tmp_path):
    c = mkvm.Cluster(nodes=1)
    with pytest.raises(mkvm.VmError) as e:
        c.up(box=str(tmp_path / "no-such.box"))
    assert "no-such.box is missing" in str(e.value) and "build-box.sh" in str(e.value)
    assert mkvm.leftovers(c.name) == []


def test_an_underlay_that_is_already_in_use_is_refused_before_anything_is_made():
    c = mkvm.Cluster(nodes=1, underlay="192.168.121")
    with pytest.raises(mkvm.VmError) as e:
        c.up()
    assert "192.168.121.0/24 is already in use" in str(e.value) and "management network" in str(e.value)
    assert mkvm.leftovers(c.name) == []


def test_a_name_already_in_use_is_refused_and_left_alone():
    name = mkvm.Host.new_name()
    subprocess.run(["ip", "netns", "add", name], check=True)  # someone else's namespace
    try:
        with pytest.raises(mkvm.VmError) as e:
            mkvm.Host(name).up()
        assert f"{name} is already in use" in str(e.value)
        assert os.path.exists(f"/run/netns/{name}")  # not ours: not removed
        assert not os.path.exists(os.path.join(mkvm.STATE_ROOT, name))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def broken_box(tmp_path) -> str:
    """The real kernel and initramfs with an empty disk: the VM starts, finds no root file
    system and powers off (what a corrupt image or a wrong root= looks like)."""
    good = mkvm.build_box()
    d = tmp_path / "broken"
    d.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / "box.img"), "1G"], check=True)
    path = str(tmp_path / "broken.box")
    with tarfile.open(path, "w") as tar:
        tar.add(str(d / "box.img"), "box.img")
        for f in ("metadata.json", "Vagrantfile", "vmlinuz", "initrd.gz"):
            tar.add(os.path.join(mkvm.box_dir(good), f), f)
    return path


def test_a_vm_that_fails_to_boot_is_named_with_its_console_and_everything_is_removed(tmp_path):
    box = broken_box(tmp_path)
    c = mkvm.Cluster(nodes=1, boot_timeout=300, owned=True)
    try:
        with pytest.raises(mkvm.VmError) as e:
            c.up(box=box)
        msg = str(e.value)
        assert "a VM failed to boot: node1 powered off while booting" in msg
        assert "node1's console" in msg and "cannot mount /dev/vda" in msg
    finally:
        st = c.host.state()
        removed = c.down()
    assert mkvm.leftovers(c.name) == [], removed
    # no qemu, dnsmasq or daemon survives in the namespaces
    assert st.get("mnt_ino") and not mkvm.pids_in_namespaces(None, st["mnt_ino"])


def test_down_after_a_killed_up_removes_everything():
    """`mkvm.py up` killed while a VM boots (a crash, a CI time-out): `down` still removes
    the VM, its disk, the networks, libvirtd, the namespace and the scratch dir."""
    import signal
    import sys
    import time

    name = mkvm.Host.new_name()
    p = subprocess.Popen(
        [sys.executable, os.path.join(mkvm.HERE, "mkvm.py"), "up", "--nodes", "1", "--name", name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    host = mkvm.Host(name)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert p.poll() is None, "mkvm.py up ended before a VM was running"
            assert time.monotonic() < deadline, "no VM running after 300s"
            if host.state().get("daemons") and host.virsh("list", "--name", "--state-running", check=False).split():
                break
            time.sleep(1)
        os.killpg(p.pid, signal.SIGKILL)  # vagrant, started in a session of its own, keeps running
        p.wait()
        st = host.state()
        out = subprocess.run(
            [sys.executable, os.path.join(mkvm.HERE, "mkvm.py"), "down", name],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        mkvm.Cluster(name).down()
    assert mkvm.leftovers(name) == []
    assert not mkvm.pids_in_namespaces(None, st["mnt_ino"])
