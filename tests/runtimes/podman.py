"""podman with its CNI backend on a lab node, configured entirely from scratch files.

podman 4.3 still speaks CNI (``network_backend = "cni"``): it runs the conflist from
``network_config_dir`` with the plugins from ``cni_plugin_dirs``, calling VERSION
before ADD and DEL; when a container exits, conmon's ``podman container cleanup``
sends the DEL. Its storage, run dir and temp dirs are scratch dirs, and every call
runs in one persistent private mount namespace (scratch_ns.PersistentMounts) so its
lock in /dev/shm, its netns files in /run/netns and its result cache in
/var/lib/cni stay in scratch too.

Quirks: root here lacks CAP_SYS_RESOURCE, so podman's default rlimits make runc fail
with EPERM; the config asks for low ones (``default_ulimits``). And podman refuses a
run root longer than 50 characters, but only when conmon's cleanup command passes it
as ``--runroot``: a long scratch path makes every ``--rm`` container wait 20 s for a
cleanup that failed. The run root and temp dir are therefore podman's defaults under
/run, which inside the private mount namespace is the scratch overlay anyway.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.runtimes import scratch_ns


def available() -> str | None:
    for tool in ("podman", "runc", "conmon", "nsenter", "unshare"):
        if not shutil.which(tool):
            return f"`{tool}` is not installed (apt: podman runc)"
    return None


class Podman:
    def __init__(self, netns: str, scratch: str, network: str, conf_dir: str, plugin_dirs: list[str]):
        self.netns, self.dir, self.network = netns, scratch, network
        self.conf_dir, self.plugin_dirs = conf_dir, plugin_dirs
        self.mounts: scratch_ns.PersistentMounts | None = None

    def _write_configs(self) -> None:
        d = self.dir
        for sub in ("storage", "tmp"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        dirs = ", ".join(f'"{p}"' for p in self.plugin_dirs)
        with open(os.path.join(d, "containers.conf"), "w") as f:
            f.write(f"""[containers]
default_sysctls = []
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = [{dirs}]
network_config_dir = "{self.conf_dir}"
default_network = "{self.network}"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "/run/libpod"
image_copy_tmp_dir = "{d}/tmp"
runtime = "runc"
""")
        with open(os.path.join(d, "storage.conf"), "w") as f:
            f.write(f"""[storage]
driver = "overlay"
graphroot = "{d}/storage"
runroot = "/run/containers/storage"
""")

    def start(self) -> None:
        self._write_configs()
        binds = {
            "/var/lib/cni": os.path.join(self.dir, "cnicache"),
            "/run/netns": os.path.join(self.dir, "netns"),
            "/dev/shm": os.path.join(self.dir, "shm"),
        }
        self.mounts = scratch_ns.PersistentMounts(self.dir, binds)

    def run(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CONTAINERS_CONF": os.path.join(self.dir, "containers.conf"),
            "CONTAINERS_STORAGE_CONF": os.path.join(self.dir, "storage.conf"),
            "TMPDIR": os.path.join(self.dir, "tmp"),
            "HOME": self.dir,
        }
        p = subprocess.run(
            self.mounts.argv(self.netns, ["podman", *args]),
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and p.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")
        return p

    def stop(self) -> None:
        """Remove every container, then stop what is left (conmon and its children) by PID."""
        if self.mounts is None:
            return
        self.run("rm", "--all", "--force", "--time", "0", check=False)
        inode = self.mounts.inode()
        if inode is not None and inode != scratch_ns.ns_inode(os.getpid(), "mnt"):
            scratch_ns.stop_tree(scratch_ns.pids_in_mount_ns(inode))
        self.mounts.close()
        self.mounts = None
