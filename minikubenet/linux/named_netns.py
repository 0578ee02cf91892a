"""Named network namespaces (``ip netns`` style, bind-mounted under /run/netns) and the
processes living in them. Used by the lab and the tests to build and remove test hosts.

Finding "every process inside namespace X" compares namespace inodes
(``/proc/<pid>/ns/net`` against ``/run/netns/X``); that is how ``lab down`` stops
exactly the lab's processes, by PID, even after a crash lost its records.
"""

from __future__ import annotations

import os
import subprocess

from minikubenet.linux.netns import NETNS_RUN_DIR


def run(argv: list[str], check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, input=input)
    if check and p.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {p.stderr.strip() or p.stdout.strip()}")
    return p


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_RUN_DIR, name))


def add(name: str) -> None:
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def delete(name: str) -> None:
    if exists(name):
        run(["ip", "netns", "delete", name], check=False)


def list_names(prefix: str = "") -> list[str]:
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def inode(name: str) -> int | None:
    try:
        return os.stat(os.path.join(NETNS_RUN_DIR, name)).st_ino
    except OSError:
        return None


def pids_in(names: list[str]) -> list[int]:
    """PIDs of every process whose network namespace is one of ``names``."""
    wanted = {i for i in (inode(n) for n in names) if i is not None}
    if not wanted:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            link = os.readlink(f"/proc/{entry}/ns/net")  # "net:[4026532177]"
        except OSError:
            continue
        if int(link[5:-1]) in wanted:
            out.append(int(entry))
    return out
