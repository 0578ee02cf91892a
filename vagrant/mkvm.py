#!/usr/bin/env python3
"""mkvm: run the Vagrant cluster on a machine without systemd, without touching the host.

    vagrant/mkvm.py up [--name mkvm-ab12cd] [--nodes 3] [--keep-on-failure]
    vagrant/mkvm.py ssh NAME NODE [-- CMD...]      a shell or a command on a node
    vagrant/mkvm.py vagrant NAME -- status          any vagrant command, inside the namespaces
    vagrant/mkvm.py down NAME | --all               destroy the VMs, stop libvirtd, remove everything
    vagrant/mkvm.py list
    vagrant/mkvm.py probe-kvm                       does KVM boot a Debian kernel here?

On a normal lab host none of this is needed: libvirtd runs under systemd and you type
``vagrant up`` in vagrant/. Here (a CI machine: no systemd, a /dev/kvm that cannot run
stock kernels) ``up`` does, in order:

1. builds (or takes from its cache) the local box (``build-box.sh``) and the project's wheel;
2. picks the accelerator: KVM if a probe boot with ``-accel kvm`` finishes, else TCG;
3. creates a network namespace ``mkvm-<hex>`` and, inside it and a private mount namespace
   (``/etc`` and ``/var`` as overlays over a scratch dir, a fresh ``/run``), starts
   ``virtlogd`` and ``libvirtd``; every bridge, tap, dnsmasq and qemu libvirt makes lives
   there, so the VM networks never add an address or a route to the host's namespace;
4. runs ``vagrant box add`` and ``vagrant up`` inside those namespaces, with VAGRANT_HOME,
   the machine records and the libvirt storage pool in the scratch dir.

``down`` runs ``vagrant destroy``, then removes whatever is left: domains, networks and the
pool through virsh, then every process inside the namespaces by PID (libvirtd and virtlogd
first, by their recorded PIDs), the network namespace, and the scratch dir. It is safe to
run twice and after a crash: the state lives in /run/minikubenet-vm/<name>/state.json.

Standard library only; tests/vm drives the same ``Cluster`` class.
"""

from __future__ import annotations

import argparse
import glob
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE = os.environ.get("MINIKUBENET_VM_CACHE", "/var/cache/minikubenet-vm")
STATE_ROOT = "/run/minikubenet-vm"
# Not under /var or /etc: those are overlaid inside the namespace.
SCRATCH_ROOT = os.environ.get("MINIKUBENET_VM_SCRATCH", "/tmp/minikubenet-vm")
BOX_NAME = "minikubenet/bookworm"
NAME_PREFIX = "mkvm-"
NAME_RE = re.compile(r"^mkvm-[a-z0-9]{1,10}$")
DEFAULT_UNDERLAY = "192.168.56"


class VmError(Exception):
    """A failure with a message a person can act on (which piece, and what to do)."""


def log(msg: str) -> None:
    print(f"mkvm: {msg}", file=sys.stderr, flush=True)


# -- preflight ---------------------------------------------------------------------------------

REQUIREMENTS = [
    # (what, how to tell, message)
    (
        "libvirt",
        ["libvirtd", "virtlogd", "virsh"],
        "no libvirt: libvirtd/virtlogd/virsh are not installed (./setup.sh installs them: vagrant/setup-host.sh)",
    ),
    (
        "qemu",
        ["qemu-system-x86_64", "qemu-img"],
        "no qemu: qemu-system-x86_64/qemu-img are not installed, so neither KVM nor TCG can run a VM "
        "(./setup.sh installs them: vagrant/setup-host.sh)",
    ),
    ("vagrant", ["vagrant"], "no vagrant: `vagrant` is not installed (./setup.sh installs it: vagrant/setup-host.sh)"),
    ("namespaces", ["ip", "unshare", "nsenter"], "iproute2/util-linux (ip, unshare, nsenter) are missing"),
    ("ssh", ["ssh"], "no ssh client: install openssh-client"),
]


def preflight(path: str | None = None) -> None:
    """Raise VmError naming the first missing piece. ``path``: where to look (default $PATH + sbin)."""
    if os.geteuid() != 0:
        raise VmError("run as root: the VM tier creates namespaces and runs libvirtd")
    path = path if path is not None else os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    for _what, tools, msg in REQUIREMENTS:
        missing = [t for t in tools if not shutil.which(t, path=path)]
        if missing:
            raise VmError(f"{msg} (missing: {', '.join(missing)})")
    gems = "/usr/share/rubygems-integration/all/gems"
    if not (os.path.isdir(gems) and any(g.startswith("vagrant-libvirt-") for g in os.listdir(gems))):
        raise VmError(
            "no vagrant-libvirt: the libvirt provider for vagrant is not installed "
            "(./setup.sh installs it: vagrant/setup-host.sh)"
        )


MANAGEMENT_NETWORK = ipaddress.IPv4Network("192.168.121.0/24")  # vagrant-libvirt's default


def check_underlay(prefix: str) -> ipaddress.IPv4Network:
    """The underlay /24 from its first three octets; refuse one that is taken."""
    try:
        net = ipaddress.IPv4Network(f"{prefix}.0/24")
    except ValueError:
        raise VmError(f"bad underlay {prefix!r}: want the first three octets of a /24, e.g. 192.168.56") from None
    if net.overlaps(MANAGEMENT_NETWORK):
        raise VmError(
            f"the underlay {net} is already in use: it is Vagrant's management network "
            f"({MANAGEMENT_NETWORK}, the VMs' eth0); pick another MINIKUBENET_VM_UNDERLAY"
        )
    if net.overlaps(ipaddress.IPv4Network("10.244.0.0/16")) or net.overlaps(ipaddress.IPv4Network("10.96.0.0/12")):
        raise VmError(f"the underlay {net} overlaps the pod network 10.244.0.0/16 or the service network 10.96.0.0/12")
    return net


def which(tool: str) -> str:
    path = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not path:
        raise VmError(f"`{tool}` is not installed")
    return path


# -- the box and the wheel ---------------------------------------------------------------------


def build_box(force: bool = False) -> str:
    """Path of the local box, built if its inputs changed (see build-box.sh)."""
    argv = [os.path.join(HERE, "build-box.sh"), "--print-path"] + (["--force"] if force else [])
    p = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise VmError("building the box failed (build-box.sh's messages are above)")
    return p.stdout.strip().splitlines()[-1]


def box_dir(box: str) -> str:
    return os.path.dirname(box)


def build_wheel(dist: str, python: str | None = None) -> str:
    """The project's wheel, built from this checkout into ``dist``."""
    os.makedirs(dist, exist_ok=True)
    for f in os.listdir(dist):
        if f.endswith(".whl"):
            os.unlink(os.path.join(dist, f))
    python = python or (
        os.path.join(REPO, ".venv", "bin", "python")
        if os.path.exists(os.path.join(REPO, ".venv", "bin", "python"))
        else sys.executable
    )
    p = subprocess.run(
        [python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, REPO],
        capture_output=True,
        text=True,
    )
    wheels = [f for f in os.listdir(dist) if f.endswith(".whl")]
    if p.returncode != 0 or not wheels:
        raise VmError(f"building the project's wheel failed: {p.stderr.strip()[-2000:]}")
    return os.path.join(dist, wheels[0])


# -- KVM or TCG --------------------------------------------------------------------------------


def kvm_usable_device() -> bool:
    return os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)


def probe_kvm(kernel: str, timeout: float = 25.0) -> tuple[bool, str]:
    """Boot ``kernel`` under ``-accel kvm`` with no root file system: a working KVM reaches
    the "VFS: unable to mount root" panic and qemu exits (panic=-1, -no-reboot) within a few
    seconds. Some hosts' /dev/kvm (e.g. a PVM-backed one) accept the VM and then hang
    without any error, so only a boot that finishes counts."""
    if not kvm_usable_device():
        return False, "/dev/kvm is missing or not writable"
    if not os.path.isfile(kernel):  # any kernel will do: the one of the last box built
        built = sorted(glob.glob(os.path.join(CACHE, "boxes", "*", "vmlinuz")))
        if not built:
            return True, "/dev/kvm is usable (no kernel at hand to probe it with)"
        kernel = built[-1]
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot_id = f.read().strip()
    try:  # the kernel package the box was built with (build-box.sh writes it next to vmlinuz)
        with open(os.path.join(os.path.dirname(kernel), "kernel-package")) as f:
            kernel_id = f.read().strip()
    except OSError:
        kernel_id = kernel
    cache = os.path.join(CACHE, "kvm-probe.json")
    try:
        with open(cache) as f:
            doc = json.load(f)
        if doc.get("boot_id") == boot_id and doc.get("kernel") == kernel_id:
            return doc["ok"], doc["why"] + " (probed earlier this boot)"
    except (OSError, ValueError, KeyError):
        pass
    argv = [
        which("qemu-system-x86_64"),
        "-accel",
        "kvm",
        "-m",
        "256",
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-serial",
        "none",
        "-monitor",
        "none",
        "-kernel",
        kernel,
        "-append",
        "console=ttyS0 panic=-1",
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
        ok = proc.returncode == 0
        why = (
            f"a probe boot under -accel kvm finished in {time.monotonic() - t0:.1f}s"
            if ok
            else f"qemu -accel kvm failed: {err.decode(errors='replace').strip()[-300:]}"
        )
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        ok, why = False, f"a probe boot under -accel kvm hung for {timeout:.0f}s (this /dev/kvm cannot run the kernel)"
    os.makedirs(CACHE, exist_ok=True)
    with open(cache, "w") as f:
        json.dump({"boot_id": boot_id, "kernel": kernel_id, "ok": ok, "why": why}, f)
    return ok, why


def choose_driver(kernel: str | None) -> tuple[str, str]:
    forced = os.environ.get("MINIKUBENET_VM_DRIVER")
    if forced:
        if forced not in ("kvm", "qemu"):
            raise VmError(f"MINIKUBENET_VM_DRIVER must be kvm or qemu, not {forced!r}")
        return forced, "chosen by MINIKUBENET_VM_DRIVER"
    if kernel is None:
        return ("kvm", "/dev/kvm is usable") if kvm_usable_device() else ("qemu", "no usable /dev/kvm")
    ok, why = probe_kvm(kernel)
    return ("kvm" if ok else "qemu"), why


# -- processes and namespaces ------------------------------------------------------------------


def start_time_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def ns_inode(pid: int | str, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def pids_in_namespaces(net_ino: int | None, mnt_ino: int | None) -> list[int]:
    out = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        if (net_ino and ns_inode(entry, "net") == net_ino) or (mnt_ino and ns_inode(entry, "mnt") == mnt_ino):
            out.append(int(entry))
    return out


def stop_pids(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Only the PIDs given."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.1)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


QEMU_CONF = """\
# written by minikubenet's vagrant/mkvm.py: root, no security driver (a scratch namespace)
user = "root"
group = "root"
security_driver = "none"
stdio_handler = "file"
remember_owner = 0
"""

LIBVIRTD_CONF = """\
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""


def ns_init(scratch: str) -> None:
    """Runs inside the new network namespace, in a fresh private mount namespace (see
    Host.up): overlays /etc and /var on the scratch dir, a fresh /run, libvirt's system
    users in the overlay, then virtlogd and libvirtd. Prints their PIDs as JSON."""

    def sh(*argv):
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)

    for d in ("etc", "var"):
        upper, work = os.path.join(scratch, f"{d}.upper"), os.path.join(scratch, f"{d}.work")
        os.makedirs(upper, exist_ok=True)
        os.makedirs(work, exist_ok=True)
        sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/{d},upperdir={upper},workdir={work}", f"/{d}")
    sh("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run")
    # libvirt-daemon-system's users (we do not install that package: it would start libvirtd
    # on the host); libvirtd refuses to start without them
    for group in ("kvm", "libvirt", "libvirt-qemu"):
        subprocess.run(["groupadd", "-r", "-f", group], check=True)
    for user, group in (("libvirt-qemu", "kvm"), ("libvirt-dnsmasq", "libvirt")):
        if subprocess.run(["id", user], capture_output=True).returncode != 0:
            sh("useradd", "-r", "-g", group, "-d", "/var/lib/libvirt", "-s", "/usr/sbin/nologin", user)
    os.makedirs("/etc/libvirt", exist_ok=True)
    with open("/etc/libvirt/qemu.conf", "w") as f:
        f.write(QEMU_CONF)
    with open("/etc/libvirt/libvirtd.conf", "w") as f:
        f.write(LIBVIRTD_CONF)
    for d in ("/var/log/libvirt", "/var/lib/libvirt/images", "/var/lib/libvirt/dnsmasq", "/var/cache/libvirt"):
        os.makedirs(d, exist_ok=True)
    sh(which("virtlogd"), "-d")
    sh(which("libvirtd"), "-d")
    sock = "/run/libvirt/libvirt-sock"
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if time.monotonic() > deadline:
            raise SystemExit(
                f"libvirtd did not create {sock} within 30s; see {scratch}/var.upper/log/libvirt/libvirtd.log"
            )
        time.sleep(0.1)

    def pid_of(path):
        with open(path) as f:
            return int(f.read().strip())

    print(json.dumps({"virtlogd": pid_of("/run/virtlogd.pid"), "libvirtd": pid_of("/run/libvirtd.pid")}))


class Host:
    """libvirtd and virtlogd in their own network and mount namespaces, named ``name``."""

    def __init__(self, name: str):
        if not NAME_RE.match(name):
            raise VmError(f"bad name {name!r}: want {NAME_PREFIX}<up to 10 of a-z0-9>")
        self.name = name
        self.state_dir = os.path.join(STATE_ROOT, name)
        self.state_file = os.path.join(self.state_dir, "state.json")
        self.scratch = os.path.join(SCRATCH_ROOT, name)

    @staticmethod
    def new_name() -> str:
        return NAME_PREFIX + secrets.token_hex(3)

    def state(self) -> dict:
        try:
            with open(self.state_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _save(self, **kv) -> None:
        doc = self.state()
        doc.update(kv)
        os.makedirs(self.state_dir, exist_ok=True)
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, self.state_file)

    def up(self) -> None:
        if netns_exists(self.name) or os.path.exists(self.state_file):
            raise VmError(
                f"{self.name} is already in use (a namespace or a record of it exists): "
                f"`vagrant/mkvm.py down {self.name}` removes it"
            )
        t0 = time.monotonic()
        self._save(name=self.name, scratch=self.scratch, netns=self.name, created=time.time())
        os.makedirs(self.scratch, exist_ok=True)
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        self._save(net_ino=os.stat(f"/run/netns/{self.name}").st_ino)
        p = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.name,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                sys.executable,
                os.path.abspath(__file__),
                "_ns-init",
                self.scratch,
            ],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            raise VmError(
                f"starting libvirtd in namespace {self.name} failed: {(p.stderr or p.stdout).strip()[-1500:]}"
            )
        pids = json.loads(p.stdout.strip().splitlines()[-1])
        daemons = {k: {"pid": v, "start_time": start_time_of(v)} for k, v in pids.items()}
        self._save(daemons=daemons, mnt_ino=ns_inode(pids["libvirtd"], "mnt"))
        # the storage pool vagrant-libvirt uses by default, in the scratch dir (via the /var overlay)
        for cmd in (
            ["pool-define-as", "default", "dir", "--target", "/var/lib/libvirt/images"],
            ["pool-start", "default"],
        ):
            self.virsh(*cmd)
        log(
            f"libvirtd (pid {pids['libvirtd']}) up in namespace {self.name} in {time.monotonic() - t0:.1f}s; "
            f"scratch {self.scratch}"
        )

    @property
    def libvirtd_pid(self) -> int:
        d = self.state().get("daemons", {}).get("libvirtd")
        if not d or start_time_of(d["pid"]) != d["start_time"]:
            raise VmError(f"libvirtd of {self.name} is not running (`vagrant/mkvm.py down {self.name}` cleans up)")
        return d["pid"]

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespaces (where libvirt's socket and the VM networks are)."""
        return ["nsenter", "-t", str(self.libvirtd_pid), "-m", "-n", "--"] + argv

    def run(
        self, argv: list[str], check: bool = True, timeout: float | None = None, **kw
    ) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        p = subprocess.run(self.argv(argv), timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise VmError(f"{' '.join(argv[:3])}... failed ({p.returncode}): {(p.stderr or '').strip()[-1500:]}")
        return p

    def virsh(self, *args: str, check: bool = True) -> str:
        return self.run(["virsh", "-q", "-c", "qemu:///system", *args], check=check, timeout=120).stdout

    def down(self) -> list[str]:
        """Remove everything: domains, networks, pool, processes, namespace, scratch. Twice is fine."""
        st = self.state()
        done = []
        daemons = st.get("daemons", {})
        libvirtd = daemons.get("libvirtd")
        if libvirtd and start_time_of(libvirtd["pid"]) == libvirtd["start_time"]:
            try:
                for dom in self.virsh("list", "--all", "--name", check=False).split():
                    self.virsh("destroy", dom, check=False)
                    self.virsh("undefine", dom, "--remove-all-storage", check=False)
                    done.append(f"domain {dom}")
                for net in self.virsh("net-list", "--all", "--name", check=False).split():
                    self.virsh("net-destroy", net, check=False)
                    self.virsh("net-undefine", net, check=False)
                    done.append(f"network {net}")
                for pool in self.virsh("pool-list", "--all", "--name", check=False).split():
                    self.virsh("pool-destroy", pool, check=False)
                    self.virsh("pool-undefine", pool, check=False)
            except (VmError, subprocess.TimeoutExpired) as e:
                log(f"virsh clean-up of {self.name}: {e}")
        # our daemons by their recorded PIDs, then anything else still inside our namespaces
        recorded = [d["pid"] for d in daemons.values() if start_time_of(d["pid"]) == d.get("start_time")]
        stop_pids(recorded)
        rest = pids_in_namespaces(st.get("net_ino") if netns_exists(self.name) else None, st.get("mnt_ino"))
        if rest:
            done.append(f"{len(rest)} processes")
        stop_pids(rest)
        if netns_exists(self.name):
            subprocess.run(["ip", "netns", "del", self.name], check=False)
            done.append(f"namespace {self.name}")
        if os.path.isdir(self.scratch):
            shutil.rmtree(self.scratch, ignore_errors=True)
            done.append(f"scratch {self.scratch}")
        shutil.rmtree(self.state_dir, ignore_errors=True)
        for root in (SCRATCH_ROOT, STATE_ROOT):  # the parents go too once they are empty
            try:
                os.rmdir(root)
            except OSError:
                pass
        return done


# -- the cluster -------------------------------------------------------------------------------


class Cluster:
    """The Vagrant cluster of vagrant/Vagrantfile, inside a Host's namespaces."""

    def __init__(
        self,
        name: str | None = None,
        nodes: int = 3,
        box: str | None = None,
        underlay: str = DEFAULT_UNDERLAY,
        memory: int = 768,
        boot_timeout: int = 600,
        owned: bool = False,
    ):
        """``owned``: the cluster lives only as long as this process (tests): a later
        ``abandoned()`` check finds it once this process is gone."""
        self.owned = owned
        self.host = Host(name or Host.new_name())
        self.name = self.host.name
        self.nodes = [f"node{i}" for i in range(1, nodes + 1)]
        self.box = box
        self.underlay = underlay
        self.memory = memory
        self.boot_timeout = boot_timeout
        self.driver = None
        self.timings: dict[str, float] = {}

    @property
    def scratch(self) -> str:
        return self.host.scratch

    def node_ip(self, node: str) -> str:
        return f"{self.underlay}.{10 + int(node[4:])}"

    def env(self) -> dict:
        s = self.scratch
        st = self.host.state()
        return {
            **os.environ,
            "VAGRANT_HOME": os.path.join(s, "vagrant.d"),
            "VAGRANT_DOTFILE_PATH": os.path.join(s, "dot-vagrant"),
            "VAGRANT_CWD": HERE,
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_DEFAULT_PROVIDER": "libvirt",
            "VAGRANT_NO_COLOR": "1",
            "LIBVIRT_DEFAULT_URI": "qemu:///system",
            "MINIKUBENET_VM_BOX": BOX_NAME,
            "MINIKUBENET_VM_DRIVER": st.get("driver") or self.driver or "qemu",
            "MINIKUBENET_VM_NODES": str(len(self.nodes)),
            "MINIKUBENET_VM_UNDERLAY": self.underlay,
            "MINIKUBENET_VM_MEMORY": str(self.memory),
            "MINIKUBENET_VM_DIST": os.path.join(s, "dist"),
            # the etcd certificates (the Vagrantfile makes them once): gone with the scratch dir
            "MINIKUBENET_VM_PKI": os.path.join(s, "etcd-pki"),
            "MINIKUBENET_VM_ISOLATED": "1",
            "MINIKUBENET_VM_CONSOLE_DIR": os.path.join(s, "console"),
            "MINIKUBENET_VM_BOOT_TIMEOUT": str(self.boot_timeout),
        }

    def vagrant(
        self,
        *args: str,
        check: bool = True,
        timeout: float | None = None,
        stream: bool = False,
        watch_boot: bool = False,
    ) -> subprocess.CompletedProcess:
        """``vagrant ARGS`` inside the namespaces. ``stream``: show its output as it comes.
        ``watch_boot``: stop it as soon as a VM that was running powers off (a VM that
        fails to boot would otherwise keep vagrant waiting for its address for many minutes)."""
        argv = self.host.argv(["vagrant", *args])
        if not stream:
            p = subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=timeout)
        else:
            out: list[str] = []
            proc = subprocess.Popen(
                argv,
                env=self.env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            verdict: dict = {}
            stop = threading.Event()

            def watchdog():
                seen_running: set[str] = set()
                deadline = time.monotonic() + timeout if timeout else None
                while not stop.wait(3.0):
                    if deadline and time.monotonic() > deadline:
                        verdict["why"] = f"vagrant {' '.join(args)} did not finish within {timeout:.0f}s"
                    elif watch_boot:
                        try:
                            running = set(self.host.virsh("list", "--name", "--state-running", check=False).split())
                            off = set(self.host.virsh("list", "--name", "--state-shutoff", check=False).split())
                        except (VmError, subprocess.TimeoutExpired):
                            continue
                        seen_running |= running
                        dead = sorted(seen_running & off)
                        if dead:
                            nodes = [d.rsplit("_", 1)[-1] for d in dead]
                            verdict["why"] = f"a VM failed to boot: {', '.join(nodes)} powered off while booting"
                            verdict["nodes"] = nodes
                    if verdict:
                        try:
                            os.killpg(proc.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                        return

            t = threading.Thread(target=watchdog, daemon=True)
            t.start()
            t0 = time.monotonic()
            try:
                for line in proc.stdout:
                    out.append(line)
                    if "Progress:" not in line:  # the box upload's progress bar
                        print(f"  | {time.monotonic() - t0:5.0f}s {line.rstrip()}", file=sys.stderr, flush=True)
                proc.wait()
            finally:
                stop.set()
                t.join()
            if verdict:
                raise VmError(verdict["why"] + self.console_tails(verdict.get("nodes", self.nodes)))
            p = subprocess.CompletedProcess(argv, proc.returncode, "".join(out), "")
        if check and p.returncode != 0:
            raise VmError(self.explain_failure(args, (p.stdout or "") + (p.stderr or "")))
        return p

    def console_tails(self, nodes, lines: int = 12) -> str:
        out = []
        for node in nodes:
            console = os.path.join(self.scratch, "console", f"{node}.log")
            if os.path.exists(console):
                with open(console, errors="replace") as f:
                    tail = [ln for ln in f.read().splitlines() if ln.strip()][-lines:]
                out.append(f"\n{node}'s console ({console}) ends with:\n    " + "\n    ".join(tail))
        return "".join(out)

    def explain_failure(self, args, output: str) -> str:
        """Which piece failed, in one message, with the evidence."""
        what = f"vagrant {' '.join(args)} failed"
        tail = "\n".join(output.strip().splitlines()[-25:])
        extra = ""
        if "Timed out while waiting for the machine to boot" in output:
            what = "a VM failed to boot (no ssh within MINIKUBENET_VM_BOOT_TIMEOUT)"
            extra = self.console_tails(self.nodes)
        elif re.search(r"already in use|address already|conflicts with|overlap|exists but does not have", output, re.I):
            what = "a network, address or port the VMs need is already in use"
        elif re.search(r"box .*could not be found|Box file was not detected", output, re.I):
            what = f"the box {BOX_NAME} is missing (vagrant/build-box.sh builds it)"
        return f"{what}:\n{tail}{extra}"

    def up(self, box: str | None = None) -> None:
        preflight()
        check_underlay(self.underlay)
        t0 = time.monotonic()
        box = box or self.box or build_box()
        if not os.path.isfile(box):
            raise VmError(f"the box {box} is missing: build it with vagrant/build-box.sh")
        self.timings["box"] = time.monotonic() - t0
        self.driver, why = choose_driver(os.path.join(box_dir(box), "vmlinuz"))
        log(f"accelerator: {'KVM' if self.driver == 'kvm' else 'TCG (qemu)'}: {why}")
        t1 = time.monotonic()
        self.host.up()
        self.host._save(
            driver=self.driver,
            nodes=self.nodes,
            underlay=self.underlay,
            owner={"pid": os.getpid(), "start_time": start_time_of(os.getpid())} if self.owned else None,
        )
        os.makedirs(os.path.join(self.scratch, "console"), exist_ok=True)
        build_wheel(os.path.join(self.scratch, "dist"))
        self.vagrant("box", "add", "--force", "--name", BOX_NAME, box, timeout=600)
        self.timings["host"] = time.monotonic() - t1
        t2 = time.monotonic()
        log(f"vagrant up ({len(self.nodes)} nodes, {self.driver}) ...")
        self.vagrant("up", "--provider", "libvirt", timeout=self.boot_timeout + 900, stream=True, watch_boot=True)
        self.timings["vagrant_up"] = time.monotonic() - t2
        self.write_ssh_config()
        log(
            f"cluster {self.name} up: box {self.timings['box']:.0f}s, libvirtd+box add {self.timings['host']:.0f}s, "
            f"vagrant up {self.timings['vagrant_up']:.0f}s"
        )

    def write_ssh_config(self) -> str:
        cfg = self.vagrant("ssh-config", timeout=120).stdout
        path = os.path.join(self.scratch, "ssh_config")
        ctl = os.path.join(self.scratch, "ssh-%h")
        with open(path, "w") as f:
            f.write(cfg)
            f.write(
                f"\nHost *\n  ControlMaster auto\n  ControlPath {ctl}\n  ControlPersist 600\n  ServerAliveInterval 10\n"
            )
        return path

    def ssh_argv(self, node: str, command: str) -> list[str]:
        return self.host.argv(
            ["ssh", "-F", os.path.join(self.scratch, "ssh_config"), node, "sudo sh -c " + shlex.quote(command)]
        )

    def ssh(
        self, node: str, command: str, check: bool = True, timeout: float = 300, input: str | None = None
    ) -> subprocess.CompletedProcess:
        """Run ``command`` as root on ``node`` (through a persistent ssh connection)."""
        p = subprocess.run(self.ssh_argv(node, command), capture_output=True, text=True, timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise VmError(f"{node}: `{command}` failed ({p.returncode}):\n{(p.stdout + p.stderr).strip()[-2000:]}")
        return p

    def put(self, node: str, path: str, content: str, mode: str = "0644") -> None:
        self.ssh(node, f"cat > {shlex.quote(path)} && chmod {mode} {shlex.quote(path)}", input=content)

    def down(self) -> list[str]:
        t0 = time.monotonic()
        done = []
        try:
            if os.path.isdir(os.path.join(self.scratch, "dot-vagrant")):
                self.vagrant("destroy", "-f", check=False, timeout=300)
                done.append("vagrant destroy")
        except (VmError, subprocess.TimeoutExpired) as e:
            log(f"vagrant destroy: {e}")
        done += self.host.down()
        self.timings["down"] = time.monotonic() - t0
        return done


def abandoned(name: str) -> bool:
    """True if the cluster's libvirtd is gone, or the process that owned it is."""
    st = Host(name).state()
    d = st.get("daemons", {}).get("libvirtd")
    if not d or start_time_of(d["pid"]) != d.get("start_time"):
        return True
    owner = st.get("owner")
    return bool(owner) and start_time_of(owner["pid"]) != owner.get("start_time")


def list_recorded() -> list[str]:
    try:
        return sorted(n for n in os.listdir(STATE_ROOT) if NAME_RE.match(n))
    except FileNotFoundError:
        return []


def leftovers(name: str) -> list[str]:
    """What of ``name`` still exists (for tests: should be empty after down)."""
    out = []
    if netns_exists(name):
        out.append(f"netns {name}")
    if os.path.exists(os.path.join(STATE_ROOT, name)):
        out.append(f"state {STATE_ROOT}/{name}")
    if os.path.exists(os.path.join(SCRATCH_ROOT, name)):
        out.append(f"scratch {SCRATCH_ROOT}/{name} (disks, pool)")
    return out


# -- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_ns-init"]:
        ns_init(argv[1])
        return 0
    p = argparse.ArgumentParser(prog="mkvm.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="box, libvirtd in namespaces, vagrant up")
    up.add_argument("--name", default=None)
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--keep-on-failure", action="store_true")
    sub.add_parser("build-box", help="build the box (cached)").add_argument("--force", action="store_true")
    sub.add_parser("probe-kvm", help="does KVM boot the box's kernel here?")
    sub.add_parser("list", help="clusters recorded in " + STATE_ROOT)
    dn = sub.add_parser("down", help="destroy a cluster and everything it made")
    dn.add_argument("name", nargs="?")
    dn.add_argument("--all", action="store_true")
    ss = sub.add_parser("ssh", help="a command (or a shell) on a node, as root")
    ss.add_argument("name"), ss.add_argument("node")
    ss.add_argument("command", nargs=argparse.REMAINDER)
    vg = sub.add_parser("vagrant", help="any vagrant command inside a cluster's namespaces")
    vg.add_argument("name")
    vg.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    try:
        if a.cmd == "build-box":
            print(build_box(a.force))
        elif a.cmd == "probe-kvm":
            box = build_box()
            ok, why = probe_kvm(os.path.join(box_dir(box), "vmlinuz"))
            print(("kvm: " if ok else "qemu (TCG): ") + why)
        elif a.cmd == "list":
            for n in list_recorded():
                st = Host(n).state()
                print(
                    f"{n}  {len(st.get('nodes', []))} nodes, {st.get('driver', '?')}, scratch {st.get('scratch')}"
                    + ("  (abandoned: `down` removes it)" if abandoned(n) else "")
                )
        elif a.cmd == "up":
            c = Cluster(a.name, nodes=a.nodes)
            try:
                c.up()
            except BaseException:
                if not a.keep_on_failure:
                    log("removing what was made: " + ", ".join(c.down()))
                raise
            print(
                f"cluster {c.name} is up. Next: vagrant/mkvm.py ssh {c.name} node1 -- minikubenet network show; "
                f"vagrant/mkvm.py down {c.name}"
            )
        elif a.cmd == "down":
            names = list_recorded() if a.all else [a.name] if a.name else []
            if not names:
                raise VmError("name a cluster (see `mkvm.py list`) or pass --all")
            for n in names:
                st = Host(n).state()
                c = Cluster(n, nodes=len(st.get("nodes", [])) or 3, underlay=st.get("underlay", DEFAULT_UNDERLAY))
                done = c.down()
                print(f"{n}: removed {', '.join(done)}" if done else f"{n}: nothing to remove")
        elif a.cmd == "ssh":
            st = Host(a.name).state()
            c = Cluster(a.name, nodes=len(st.get("nodes", [])) or 3)
            cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
            if not os.path.exists(os.path.join(c.scratch, "ssh_config")):
                c.write_ssh_config()
            if cmd:
                return subprocess.call(c.ssh_argv(a.node, " ".join(shlex.quote(x) for x in cmd)))
            return subprocess.call(c.host.argv(["ssh", "-t", "-F", os.path.join(c.scratch, "ssh_config"), a.node]))
        elif a.cmd == "vagrant":
            st = Host(a.name).state()
            c = Cluster(a.name, nodes=len(st.get("nodes", [])) or 3, underlay=st.get("underlay", DEFAULT_UNDERLAY))
            args = a.args[1:] if a.args[:1] == ["--"] else a.args
            return subprocess.call(c.host.argv(["vagrant", *args]), env=c.env())
    except VmError as e:
        print(f"mkvm: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
