"""Running the iptables binaries: atomic restores and jump rules into our chains.

A ruleset is applied with ONE ``iptables-restore --noflush`` call: the kernel swaps
the whole table in one step, so no packet ever sees half the rules, and with
``--noflush`` only the chains named in the text (``:CHAIN - [0:0]`` flushes exactly
that chain) are replaced; everyone else's rules stay. On failure the old rules stay in
place and the error names the offending line.
"""

from __future__ import annotations

import re
import subprocess


class IptablesError(Exception):
    pass


def _context(text: str, stderr: str) -> str:
    """iptables-restore says 'line N failed'; show that line so a person can see why."""
    m = re.search(r"line:? (\d+)", stderr)
    if not m:
        return ""
    n = int(m.group(1))
    lines = text.splitlines()
    lo, hi = max(0, n - 3), min(len(lines), n + 2)
    return "\n".join(f"{'>' if i + 1 == n else ' '}{i + 1:5d}: {lines[i]}" for i in range(lo, hi))


def restore(text: str, binary: str = "iptables-restore", noflush: bool = True) -> None:
    args = [binary, "-w"] + (["--noflush"] if noflush else [])
    p = subprocess.run(args, input=text, capture_output=True, text=True)
    if p.returncode != 0:
        ctx = _context(text, p.stderr)
        raise IptablesError(f"{binary} failed: {p.stderr.strip()}" + (f"\n{ctx}" if ctx else ""))


def ensure_jump(table: str, chain: str, target: str, comment: str, binary: str = "iptables") -> None:
    """Exactly one jump from ``chain`` to ``target``, inserted at the top so that an
    earlier DROP in a built-in chain cannot shadow it."""
    spec = ["-m", "comment", "--comment", comment, "-j", target]
    check = subprocess.run([binary, "-w", "-t", table, "-C", chain] + spec, capture_output=True, text=True)
    if check.returncode == 0:
        return
    p = subprocess.run([binary, "-w", "-t", table, "-I", chain, "1"] + spec, capture_output=True, text=True)
    if p.returncode != 0:
        raise IptablesError(f"{binary} -t {table} -I {chain} -j {target}: {p.stderr.strip()}")


def available(binary: str = "iptables") -> bool:
    try:
        return subprocess.run([binary, "--version"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False
