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

from minikubenet.linux import nft_monitor


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


def restore(
    text: str,
    binary: str = "iptables-restore",
    noflush: bool = True,
    wait: tuple[str, ...] = ("-w",),
    counters: bool = False,
) -> None:
    """Apply ``text`` in one atomic ``iptables-restore``.

    wait      the xtables-lock flags; kube-proxy passes ``-w 5 -W 100000`` (wait up to 5 s,
              retry every 100 ms: kubernetes PR #85771) so a busy lock delays, not fails, a sync
    counters  ``--counters``: keep the packet counters given in the text ([0:0] here)
    """
    args = [binary, *wait] + (["--noflush"] if noflush else []) + (["--counters"] if counters else [])
    p = nft_monitor.run(args, text)  # its nf_tables notifications are known to be ours
    if p.returncode != 0:
        ctx = _context(text, p.stderr)
        raise IptablesError(f"{binary} failed (exit {p.returncode}): {p.stderr.strip()}" + (f"\n{ctx}" if ctx else ""))


def ensure_jump(table: str, chain: str, target: str, comment: str, binary: str = "iptables") -> None:
    """Exactly one jump from ``chain`` to ``target``, inserted at the top so that an
    earlier DROP in a built-in chain cannot shadow it."""
    ensure_rule(table, chain, ["-m", "comment", "--comment", comment, "-j", target], binary)


def ensure_rule(table: str, chain: str, rule_args: list[str], binary: str = "iptables") -> bool:
    """Exactly one rule ``rule_args`` in ``chain``: ``-C`` to check, else ``-I ... 1``
    (kube-proxy's EnsureRule with Prepend). Returns True when it had to insert it."""
    check = subprocess.run([binary, "-w", "-t", table, "-C", chain, *rule_args], capture_output=True, text=True)
    if check.returncode == 0:
        return False
    p = subprocess.run([binary, "-w", "-t", table, "-I", chain, "1", *rule_args], capture_output=True, text=True)
    if p.returncode != 0:
        raise IptablesError(f"{binary} -t {table} -I {chain} {' '.join(rule_args)}: {p.stderr.strip()}")
    return True


def delete_rule(table: str, chain: str, rule_args: list[str], binary: str = "iptables") -> None:
    """Remove every copy of a rule; a rule (or chain) that is not there is no error."""
    while subprocess.run([binary, "-w", "-t", table, "-D", chain, *rule_args], capture_output=True).returncode == 0:
        pass


def save(table: str, binary: str = "iptables-save") -> str:
    """``iptables-save -t table``. Slow with many rules on the nf_tables backend (over a
    second at 10 000 services, DESIGN.md): for full syncs and cleanup, never every sync."""
    p = subprocess.run([binary, "-t", table], capture_output=True, text=True)
    if p.returncode != 0:
        raise IptablesError(f"{binary} -t {table} failed: {p.stderr.strip()}")
    return p.stdout


def list_chain(table: str, chain: str, binary: str = "iptables") -> list[str] | None:
    """The rules of one chain as ``-S`` prints them (first line ``-N chain`` or ``-P``),
    or None if the chain does not exist. Cheap: the kernel dumps only that chain."""
    p = subprocess.run([binary, "-w", "-t", table, "-S", chain], capture_output=True, text=True)
    if p.returncode != 0:
        return None
    return p.stdout.splitlines()


def is_legacy(binary: str = "iptables") -> bool:
    """Does ``binary`` use the legacy (setsockopt) backend? ``iptables --version`` says
    "(legacy)" or "(nf_tables)"; legacy changes send no nf_tables notifications."""
    try:
        p = subprocess.run([binary, "--version"], capture_output=True, text=True)
    except FileNotFoundError:
        return False
    return "legacy" in p.stdout


def available(binary: str = "iptables") -> bool:
    try:
        return subprocess.run([binary, "--version"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False
