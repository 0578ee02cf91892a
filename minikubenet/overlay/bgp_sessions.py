"""BGP sessions as BIRD reports them, and which peers count as unreachable.

The bgp backend peers with every other lease's PublicIP. A lease whose address does
not answer (a node gone without its lease, a wrong PublicIP, a filtered port 179) leaves
a session that never reaches Established: BIRD keeps retrying it (``connect retry time``)
and says why in the ``Info`` column of ``birdc show protocols`` ("Active  Socket:
Connection refused", "Connect", "Idle ..."). Without a check nobody would notice: the
route to that node's pods is simply missing. This module turns BIRD's table into
sessions (pure: text in, records out) and picks the ones that are still not
Established after a grace period counted from when the peer was configured, so a
session being set up is not reported while it comes up (connect delay 0 + one round
trip; ~0.1 s on the lab).

The agent reports them in the CNI STATUS answer's warnings and as a metric; `lab status`
flags them (it reads BIRD's table itself).
"""

from __future__ import annotations

from dataclasses import dataclass

# A reachable peer is Established well within this (connect delay 0, retry 1 s); a peer
# still not up after it is reported.
GRACE_S = 5.0


@dataclass(frozen=True)
class Session:
    name: str  # BIRD protocol name (overlay/bird_config.peer_name)
    state: str  # BIRD's protocol state: up, start, down
    since: str  # when it entered that state, as BIRD prints it
    info: str  # the BGP state and BIRD's last error, e.g. "Active  Socket: Connection refused"

    @property
    def established(self) -> bool:
        return self.state == "up" and self.info.split()[:1] == ["Established"]

    def describe(self) -> str:
        return f"BGP session {self.name} not established (BIRD: {self.state} {self.info or '-'}, since {self.since})"


def parse_protocols(text: str) -> list[Session]:
    """The BGP rows of ``birdc show protocols``:

    Name       Proto      Table      State  Since         Info
    node_10_1  BGP        ---        start  08:50:01.123  Active        Socket: Connection refused
    """
    sessions = []
    for row in text.splitlines():
        cols = row.split()
        if len(cols) >= 5 and cols[1] == "BGP":
            sessions.append(Session(cols[0], cols[3], cols[4], " ".join(cols[5:])))
    return sessions


def unreachable(
    sessions: list[Session], configured_at: dict[str, float], now: float, grace: float = GRACE_S
) -> list[Session]:
    """The sessions not Established although their peer was configured more than
    ``grace`` seconds ago (a session BIRD has that we did not configure is ignored: it
    is on its way out)."""
    return [
        s for s in sessions if not s.established and s.name in configured_at and now - configured_at[s.name] >= grace
    ]
