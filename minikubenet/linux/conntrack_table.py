"""How full the conntrack table is, and what the kernel dropped because of it.

Every NATed or stateful-filtered connection (pod egress masquerade, every Service) needs
a conntrack entry. When the table is full the kernel first evicts a not-yet-assured
entry ("early_drop"); when it cannot, the new connection's first packet is dropped
("drop", and the kernel logs ``nf_conntrack: table full, dropping packet``). Pods see
connection timeouts, nothing else. So the agent exports these numbers, read from:

    /proc/sys/net/netfilter/nf_conntrack_count   entries now (of this network namespace)
    /proc/sys/net/netfilter/nf_conntrack_max     the limit
    /proc/net/stat/nf_conntrack                  per-CPU counters, one hex row per CPU under
                                                 a header naming the columns (``drop``,
                                                 ``early_drop``, ``insert_failed``, ...)

Reading two sysctl files and one proc file costs microseconds; ``conntrack -S`` / ``-C``
(conntrack-tools) print the same counters but cost a process each time.

Namespaces (checked on Linux 6.18): in a network namespace other than the initial one,
``nf_conntrack_count`` and the stat counters are that namespace's own (the kernel keeps
the count per netns, ``nf_conntrack_net.count``, and the stats per netns), while
``nf_conntrack_max`` shows the one global limit and is read-only there. The kernel
compares *this namespace's* count with that limit when it allocates an entry
(``__nf_conntrack_alloc``), so count/max is the right fill level for a lab node too.
The stat file's column set differs between kernels (``searched`` became ``clashres``,
``chainlength`` appeared), so columns are found by the header's names, never by position.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

PROC = "/proc"
WARN_FRACTION = 0.90  # the agent warns above 90 % of the table


class ConntrackUnavailable(Exception):
    """nf_conntrack is not loaded (nothing to report) or /proc is not readable."""


@dataclass(frozen=True)
class ConntrackTable:
    count: int
    max: int
    stats: dict = field(default_factory=dict)  # column name -> sum over CPUs

    @property
    def fill(self) -> float:
        """count / max (0 when there is no limit: ``nf_conntrack_max`` = 0)."""
        return self.count / self.max if self.max > 0 else 0.0

    @property
    def full(self) -> bool:
        return self.max > 0 and self.count >= self.max

    def stat(self, name: str) -> int:
        return self.stats.get(name, 0)

    def warning(self, threshold: float = WARN_FRACTION) -> str | None:
        """A sentence for the log and the STATUS answer when the table is above
        ``threshold``, else None."""
        if self.max <= 0 or self.fill <= threshold:
            return None
        return (
            f"conntrack table {self.fill:.0%} full ({self.count} of {self.max} entries; "
            f"drop {self.stat('drop')}, early_drop {self.stat('early_drop')}, "
            f"insert_failed {self.stat('insert_failed')}): "
            f"{'new connections are being dropped' if self.full else 'new connections will be dropped when it is full'}; "
            "raise net.netfilter.nf_conntrack_max or find who opens so many connections"
        )


def parse_stat(text: str) -> dict[str, int]:
    """``/proc/net/stat/nf_conntrack`` -> {column: value}. Every column is a per-CPU
    counter summed over the rows, except ``entries``, which every row repeats (the
    table's size, not a per-CPU count): it is taken once."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    names, out = lines[0], {}
    for row in lines[1:]:
        for name, value in zip(names, row):
            try:
                n = int(value, 16)
            except ValueError:
                continue
            if name == "entries":
                out[name] = n
            else:
                out[name] = out.get(name, 0) + n
    return out


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip())


def read(proc: str = PROC) -> ConntrackTable:
    """The table as this process's network namespace sees it."""
    base = os.path.join(proc, "sys/net/netfilter")
    try:
        count = _read_int(os.path.join(base, "nf_conntrack_count"))
        limit = _read_int(os.path.join(base, "nf_conntrack_max"))
    except FileNotFoundError:
        raise ConntrackUnavailable(
            "nf_conntrack is not loaded (no /proc/sys/net/netfilter/nf_conntrack_count)"
        ) from None
    except (OSError, ValueError) as e:
        raise ConntrackUnavailable(f"cannot read the conntrack count: {e}") from None
    try:
        with open(os.path.join(proc, "net/stat/nf_conntrack")) as f:
            stats = parse_stat(f.read())
    except OSError:
        stats = {}
    return ConntrackTable(count=count, max=limit, stats=stats)
