"""Files and directories only their owner (root) may read: 0600 and 0700.

What the agent and the lab write says how the node is wired (subnet.env, the lab's
state.json), carries pod names and addresses (logs, IP records in the etcd data
dir), or is a socket that plumbs pods. None of it is for other users of the machine.
The mode is set explicitly, not left to the umask of whoever started us: ``mkdir`` and
``open`` only ever take bits away from the mode they are given, and a file that
already exists keeps its mode unless it is changed.
"""

from __future__ import annotations

import os

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_dir(path: str) -> None:
    """``mkdir -p`` where every directory it creates, and ``path`` itself, is 0700
    (``os.makedirs(mode=...)`` gives the mode only to the last one)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if parent != path and not os.path.isdir(parent):
        make_dir(parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    os.chmod(path, DIR_MODE)


def open_file(path: str, mode: str = "w"):
    """``open(path, mode)`` for writing ("w", "wb", "a", "ab"), the file 0600 even if
    it existed before with another mode."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def write_atomic(path: str, data: bytes | str, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` all at once: a reader (or a crash) sees the old file
    or the new one, never half of either. The bytes go to a temporary file in the same
    directory (``rename`` is atomic only within one filesystem), created with ``mode``
    from the first byte (0600 unless told otherwise; an existing temp file is fchmod'ed),
    flushed to disk, then renamed over ``path``; on any error the temp file is removed."""
    if isinstance(data, str):
        data = data.encode()
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
