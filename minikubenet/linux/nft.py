"""Running the ``nft`` binary: one transaction per ruleset, and the listings the proxy reads.

Beside linux/iptables.py, for kube-proxy's nftables mode (proxy/syncers.py). ``nft -f``
applies its whole input as one nf_tables transaction: all of it or none of it, and on
failure nft names the offending line itself. The transaction's child is started through
linux/nft_monitor.run(), which records its pid first, so the proxy's own change
notifications are known to be its own (nft_monitor.OwnProcesses).
"""

from __future__ import annotations

import subprocess

from minikubenet.linux import nft_monitor

NFT = "nft"


class NftError(Exception):
    """The kernel (or nft) refused a transaction; the previous rules are still in place."""


def apply(text: str) -> None:
    """One ``nft -f -`` transaction."""
    try:
        p = nft_monitor.run([NFT, "-f", "-"], text)  # its notifications are known to be ours
    except FileNotFoundError:
        raise NftError("the `nft` binary is not installed (Debian: apt install nftables)") from None
    if p.returncode != 0:
        raise NftError(f"nft -f failed (exit {p.returncode}):\n{p.stderr.strip()}")


def _list(*what: str) -> str | None:
    p = subprocess.run([NFT, "list", *what], capture_output=True, text=True)
    return p.stdout if p.returncode == 0 else None


def list_table(family: str, table: str) -> str | None:
    """``nft list table FAMILY TABLE``, or None if there is no such table."""
    return _list("table", family, table)


def list_chain(family: str, table: str, chain: str) -> str | None:
    """``nft list chain FAMILY TABLE CHAIN``, or None if the table or chain is missing."""
    return _list("chain", family, table, chain)


def table_exists(family: str, table: str) -> bool:
    listing = _list("tables", family)
    return listing is not None and f"table {family} {table}" in listing
