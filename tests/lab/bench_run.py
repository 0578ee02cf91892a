"""Running a benchmark of bench/ end to end from a test (the smoke tests
tests/lab/test_bench_*.py): as a user runs it, with a time limit, and stopped with
SIGTERM if it overruns (each bench takes its labs down on SIGTERM)."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def netns_names() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


def run_bench(module: str, *args: str, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    """``python -m bench.<module> ARGS`` from the repository; (the finished process, its
    output, stdout and stderr together)."""
    p = subprocess.Popen(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.terminate()  # SIGTERM: the bench's finally takes its labs down
            p.communicate(timeout=60)
    return p, out
