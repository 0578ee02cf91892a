"""Keeping a benchmark's figures: the machine they came from and a timestamped JSON file.

The README asks every figure to be recorded with its machine; the benches that write
``<out>/<name>-<time>.json`` (bgp_attach, lb_latency, policy_enforce) do it here, so the
file name and the machine line read the same in each."""

from __future__ import annotations

import json
import os
import platform
import time


def machine() -> str:
    return f"{os.cpu_count()} cores, kernel {platform.release()}, Python {platform.python_version()}"


def save(out_dir: str, name: str, doc: dict) -> str:
    """Write ``doc`` (with the machine added) to ``out_dir/name-<local time>.json``; its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}-{time.strftime('%Y-%m-%dT%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump({"machine": machine(), **doc}, f, indent=1)
    return path
