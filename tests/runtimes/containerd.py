"""containerd on a lab node, started by hand the way a node's init system would.

Debian's containerd 1.6 with a scratch root, state and socket (``config.toml`` below),
in the node's network namespace and a private mount namespace (scratch_ns.py). Its
CRI plugin is the path kubelet uses: it runs the CNI plugins from ``cni_bin_dir``
with the first conflist in ``cni_conf_dir``. ``ctr`` is its plain client.

Quirk of this machine: root lacks CAP_SYS_RESOURCE, and the CRI gives sandboxes
``oom_score_adj=-998`` by default, which runc then fails to set; hence
``restrict_oom_score_adj``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from minikubenet.lab import processes
from tests.runtimes import scratch_ns

CRI_PLUGIN = "io.containerd.grpc.v1.cri"


class RuntimeFailed(Exception):
    pass


def available() -> str | None:
    """Why containerd cannot be used here, or None."""
    for tool in ("containerd", "ctr", "runc", "unshare", "nsenter"):
        if not shutil.which(tool):
            return f"`{tool}` is not installed (apt: containerd runc util-linux)"
    return None


class Containerd:
    def __init__(
        self,
        netns: str,
        scratch: str,
        cni_bin_dir: str = "",
        cni_conf_dir: str = "",
        cri: bool = True,
        sandbox_image: str = "localhost/mknpause:latest",
        ctr_cni_bin_dir: str = "",
        ctr_cni_conf_dir: str = "",
    ):
        self.netns, self.dir = netns, scratch
        self.cni_bin_dir, self.cni_conf_dir = cni_bin_dir, cni_conf_dir
        # `ctr run --cni` reads the hard-coded /etc/cni/net.d and /opt/cni/bin: inside the
        # daemon's mount namespace (where every ctr call runs) those are these scratch dirs
        self.ctr_cni_bin_dir = ctr_cni_bin_dir or os.path.join(scratch, "ctr-cni-bin")
        self.ctr_cni_conf_dir = ctr_cni_conf_dir or os.path.join(scratch, "ctr-net.d")
        self.cri, self.sandbox_image = cri, sandbox_image
        self.sock = os.path.join(scratch, "containerd.sock")
        self.log = os.path.join(scratch, "containerd.log")
        self.proc: subprocess.Popen | None = None
        self.mnt_ns: int | None = None

    def config(self) -> str:
        d = self.dir
        text = f"""version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
"""
        if not self.cri:
            return text + f'disabled_plugins = ["{CRI_PLUGIN}"]\n'
        return (
            text
            + f"""[plugins."{CRI_PLUGIN}"]
  sandbox_image = "{self.sandbox_image}"
  restrict_oom_score_adj = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."{CRI_PLUGIN}".cni]
    bin_dir = "{self.cni_bin_dir}"
    conf_dir = "{self.cni_conf_dir}"
    max_conf_num = 1
"""
        )

    def start(self, timeout: float = 30.0) -> None:
        os.makedirs(self.dir, exist_ok=True)
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write(self.config())
        binds = {
            "/var/lib/cni": os.path.join(self.dir, "cnicache"),
            "/run/netns": os.path.join(self.dir, "netns"),
            "/etc/cni/net.d": self.ctr_cni_conf_dir,
            "/opt/cni/bin": self.ctr_cni_bin_dir,
        }
        argv = scratch_ns.in_private_mounts(self.netns, self.dir, binds, [shutil.which("containerd"), "--config", cfg])
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.sock) or self.ctr("version", check=False).returncode != 0:
            if self.proc.poll() is not None:
                raise RuntimeFailed(f"containerd exited; {self.log}:\n{processes.tail(self.log)}")
            if time.monotonic() > deadline:
                raise RuntimeFailed(f"containerd does not answer after {timeout}s:\n{processes.tail(self.log)}")
            time.sleep(0.05)
        # only now is the PID containerd itself, inside its own mount namespace
        inode = scratch_ns.ns_inode(self.proc.pid, "mnt")
        if inode is None or inode == scratch_ns.ns_inode(os.getpid(), "mnt"):
            raise RuntimeFailed("containerd is not in a private mount namespace")
        self.mnt_ns = inode

    def ctr(self, *args: str, namespace: str = "k8s.io", check: bool = True, timeout: float = 60.0):
        """``ctr`` in the daemon's network and mount namespaces: its FIFOs, its libcni cache
        and its CNI dirs are the daemon's scratch ones, never the host's."""
        argv = [
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            f"--mount=/proc/{self.proc.pid}/ns/mnt",
            "ctr",
            "--address",
            self.sock,
            "--namespace",
            namespace,
            *args,
        ]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeFailed(f"ctr {' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")
        return p

    def import_image(self, tar: str, namespace: str = "k8s.io") -> None:
        self.ctr("image", "import", tar, namespace=namespace)

    def exec_in(self, task: str, *cmd: str, namespace: str = "k8s.io", timeout: float = 30.0):
        """Run a command in a running task (a CRI sandbox's pause process, or a ctr container)."""
        exec_id = f"x{time.monotonic_ns()}"
        return self.ctr(
            "task", "exec", "--exec-id", exec_id, task, *cmd, namespace=namespace, check=False, timeout=timeout
        )

    def stop(self) -> None:
        """containerd, its shims and anything still running below them, by PID."""
        if self.proc is None:
            return
        pids = scratch_ns.pids_in_mount_ns(self.mnt_ns) if self.mnt_ns else []
        scratch_ns.stop_tree(sorted(set(pids) | {self.proc.pid}))
        self.proc = None
