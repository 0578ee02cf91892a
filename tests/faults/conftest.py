"""The fault tier: what a careless runtime, a hostile pod or a crash does to a node, and
that nothing is lost and nothing foreign is touched.

Each scenario of the "Safe to install" issue is a test here. Tests that measure something
(time to repair, ADD recovery after an etcd restart, leaked records after a crash) hand
their figure to ``report()``; the figures are printed together at the end of the run, so
the README's reliability section can quote them from any CI log.
"""

from __future__ import annotations

import sys

# figures for the summary at the end of the run: (label, text)
REPORT: list[tuple[str, str]] = []


def report(label: str, text: str) -> None:
    REPORT.append((label, text))
    print(f"{label}: {text}", file=sys.stderr)


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("fault tier")
        for label, text in REPORT:
            terminalreporter.write_line(f"{label}: {text}")
