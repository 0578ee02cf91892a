"""Waiting for something to become true: the one poll-until-deadline loop.

Daemons starting, kernel state converging, a port starting to listen: every wait in
the lab, the benchmarks and the tests is "ask again every ``interval`` seconds until the
answer is truthy or ``timeout`` seconds have passed". ``wait_until`` is that loop. It
always asks once more at the deadline (a check that became true during the last sleep is
not reported as a timeout), uses the monotonic clock (wall-clock jumps do not shorten or
stretch a wait), and gives back the last answer, so a caller can say what it saw.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """``wait_until(..., what=...)`` gave up; the message says what was awaited."""


def wait_until(check: Callable[[], T], timeout: float, interval: float = 0.05, what: str | None = None) -> T:
    """Call ``check`` until it returns something truthy and return that. At the deadline,
    return the last (falsy) answer, or raise ``WaitTimeout`` naming ``what`` if given.
    Exceptions from ``check`` propagate: a check that can fail while things settle
    catches its own errors and answers False."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() >= deadline:
            if what is not None:
                raise WaitTimeout(f"{what}: not after {timeout:g}s")
            return answer
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
