"""Running a real runtime on a lab node without touching the host.

containerd, ctr and podman have paths compiled in: ``/etc/cni/net.d``, ``/opt/cni/bin``,
``/var/lib/cni`` (libcni's result cache), ``/run/netns`` (where pod namespaces are
mounted), ``/run/containerd`` (shim sockets), ``/dev/shm`` (podman's lock). Each runs in
a *private mount namespace* in which ``/etc``, ``/opt``, ``/var/lib`` and ``/run`` are
overlays whose writable layer is a scratch dir, and the paths that matter are bind
mounts of scratch dirs. Whatever the runtime writes lands in the scratch dir; the
host's own /etc, /opt, /var/lib and /run never change. The namespace disappears with
its last process.

It also runs in a lab node's *network namespace* (``ip netns exec <lab>-n1``), so its
pods hang off that node's bridge and reach the other nodes of the lab.

Every process such a runtime leaves (containerd's shims, conmon, the pods' processes)
is found by PID and stopped by PID: the shims share the runtime's mount namespace,
the pods' processes are their descendants.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from minikubenet.lab import processes

OVERLAID = ("etc", "opt", "var/lib", "run")


def mount_script(scratch: str, binds: dict[str, str]) -> str:
    """Shell lines: overlay each of OVERLAID, then bind ``binds`` (target <- source)."""
    lines = []
    for d in OVERLAID:
        n = d.replace("/", "_")
        up, work = os.path.join(scratch, "ovl", f"{n}.up"), os.path.join(scratch, "ovl", f"{n}.work")
        os.makedirs(up, exist_ok=True)
        os.makedirs(work, exist_ok=True)
        lines.append(f"mount -t overlay overlay -o lowerdir=/{d},upperdir={up},workdir={work} /{d}")
    for target, source in binds.items():
        os.makedirs(source, exist_ok=True)
        lines.append(f"mkdir -p {shlex.quote(target)} && mount --bind {shlex.quote(source)} {shlex.quote(target)}")
    return "\n".join(lines)


def private_mounts(scratch: str, binds: dict[str, str], argv: list[str]) -> list[str]:
    """argv that runs ``argv`` inside a fresh private mount namespace (overlays + binds)."""
    script = mount_script(scratch, binds) + '\nexec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script, "sh", *argv]


def in_private_mounts(netns: str, scratch: str, binds: dict[str, str], argv: list[str]) -> list[str]:
    """argv that runs ``argv`` in node ``netns`` inside a fresh private mount namespace.

    ``nsenter --net``, not ``ip netns exec``: the latter remounts /sys for the new
    network namespace, which hides /sys/fs/cgroup, and runc needs the cgroup mounts."""
    return ["nsenter", f"--net=/run/netns/{netns}", *private_mounts(scratch, binds, argv)]


class PersistentMounts:
    """A private mount namespace that outlives the command that made it (podman needs
    one across many calls: its lock, netns files and result cache must stay put).
    Pinned by a bind mount of nsfs on ``<scratch>/ns/mnt``; ``close`` unmounts it."""

    def __init__(self, scratch: str, binds: dict[str, str]):
        self.dir = os.path.join(scratch, "ns")
        self.pin = os.path.join(self.dir, "mnt")
        os.makedirs(self.dir, exist_ok=True)
        subprocess.run(["mount", "--bind", self.dir, self.dir], check=True)
        subprocess.run(["mount", "--make-private", self.dir], check=True)
        open(self.pin, "w").close()
        script = mount_script(scratch, binds)
        p = subprocess.run(
            ["unshare", f"--mount={self.pin}", "--propagation", "private", "sh", "-ec", script],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            self.close()
            raise RuntimeError(f"could not build the mount namespace: {p.stderr.strip()}")

    def argv(self, netns: str, argv: list[str]) -> list[str]:
        """Run in this mount namespace and node ``netns`` (nsenter opens both first)."""
        return ["nsenter", f"--net=/run/netns/{netns}", f"--mount={self.pin}", *argv]

    def inode(self) -> int | None:
        try:
            return os.stat(self.pin).st_ino
        except OSError:
            return None

    def close(self) -> None:
        subprocess.run(["umount", self.pin], capture_output=True)
        subprocess.run(["umount", self.dir], capture_output=True)


# -- processes -------------------------------------------------------------------------------------


def ns_inode(pid: int, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def _all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def pids_in_mount_ns(inode: int | None) -> list[int]:
    if inode is None:
        return []
    return [p for p in _all_pids() if p != os.getpid() and ns_inode(p, "mnt") == inode]


def with_descendants(roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        parent = _ppid(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    out, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo += children.get(pid, [])
    return sorted(out)


def stop_tree(roots: list[int]) -> None:
    """Stop ``roots`` and everything below them, children first, by PID."""
    pids = with_descendants([p for p in roots if p != os.getpid()])
    processes.stop(sorted(set(pids) - set(roots)), timeout=2.0)  # a pod's PID 1 ignores SIGTERM
    processes.stop(sorted(roots))
