"""Putting the CNI plugin binary where runtimes look for it.

A runtime executes plugins with a bare environment, so the installed file must find
its interpreter by itself: we write the shim with a ``#!`` line naming the real Python
binary (not a pyenv/virtualenv wrapper: a pyenv shim costs ~110 ms per call) and the
flags ``-I -S`` (isolated, no site-packages: the shim needs only the standard library,
and skipping ``site`` saves start-up time).
"""

from __future__ import annotations

import os
import sys

from minikubenet.cni import shim

PLUGIN_NAME = "minikubenet"


def base_interpreter() -> str:
    """The real interpreter binary behind this (possibly virtual) environment."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def render_plugin(interpreter: str | None = None) -> str:
    with open(shim.__file__) as f:
        body = f.read()
    lines = body.split("\n", 1)
    if lines[0].startswith("#!"):
        body = lines[1]
    return f"#!{interpreter or base_interpreter()} -IS\n{body}"


def install_plugin_binary(bin_dir: str, name: str = PLUGIN_NAME) -> str:
    """Write the plugin into ``bin_dir`` atomically; returns its path."""
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, name)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(render_plugin())
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path
