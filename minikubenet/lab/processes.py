"""Starting and stopping the lab's daemons: always inside a namespace, always by PID.

A process is started with ``ip netns exec <ns> <argv>`` (which execs, so the PID we get
is the daemon's own), in its own session, with umask 077, logging to a 0600 file in
the lab's directory.
We record its PID together with its start time from /proc/<pid>/stat, so that a PID
reused by some unrelated process after a crash is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

from minikubenet import private_files


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    start_time: int
    what: str
    log: str

    def alive(self) -> bool:
        return start_time_of(self.pid) == self.start_time and not is_zombie(self.pid)


def start_time_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command may contain spaces: fields after the last ')' are fixed
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def is_zombie(pid: int) -> bool:
    """An exited child not yet reaped still has a /proc entry, in state Z."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def start_in_netns(netns: str, argv: list[str], log_path: str, what: str, env: dict | None = None) -> ProcessRecord:
    private_files.make_dir(os.path.dirname(log_path))
    with private_files.open_file(log_path, "ab") as log:
        # umask 077: what the daemon writes (etcd's data, the agent's files) is root's alone
        p = subprocess.Popen(
            ["ip", "netns", "exec", netns] + argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            umask=0o077,
        )
    st = None
    for _ in range(100):
        st = start_time_of(p.pid)
        if st is not None:
            break
        time.sleep(0.01)
    return ProcessRecord(pid=p.pid, start_time=st or 0, what=what, log=log_path)


def stop(pids: list[int], timeout: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL what is left. Reaps our own children."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    pending.discard(pid)
                    continue
            except ChildProcessError:
                pass
            if start_time_of(pid) is None:
                pending.discard(pid)
        time.sleep(0.05)
    for pid in pending:
        try:
            os.kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        except ProcessLookupError:
            pass


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"
