"""BIRD's protocol table read into sessions, and which peers count as unreachable."""

from __future__ import annotations

from minikubenet.overlay import bgp_sessions

TABLE = """BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     08:50:01.120
pod_subnet Static     master4    up     08:50:01.120
kernel1    Kernel     master4    up     08:50:01.120
node_10_99_0_2 BGP        ---        up     08:50:01.310  Established
node_10_99_0_200 BGP        ---        start  08:50:02.001  Active        Socket: No route to host
node_10_99_0_3 BGP        ---        start  08:50:02.001  Connect
"""


def test_only_the_bgp_rows_are_sessions_with_their_state_and_last_error():
    sessions = bgp_sessions.parse_protocols(TABLE)
    assert [s.name for s in sessions] == ["node_10_99_0_2", "node_10_99_0_200", "node_10_99_0_3"]
    assert [s.established for s in sessions] == [True, False, False]
    assert sessions[1].info == "Active Socket: No route to host"
    assert "No route to host" in sessions[1].describe() and "node_10_99_0_200" in sessions[1].describe()


def test_a_peer_is_reported_only_after_the_grace_period_and_only_if_we_configured_it():
    sessions = bgp_sessions.parse_protocols(TABLE)
    configured = {"node_10_99_0_2": 0.0, "node_10_99_0_200": 0.0, "node_10_99_0_3": 9.0}
    down = bgp_sessions.unreachable(sessions, configured, now=10.0, grace=5.0)
    assert [s.name for s in down] == ["node_10_99_0_200"]  # _3 is still coming up
    assert bgp_sessions.unreachable(sessions, {"node_10_99_0_2": 0.0}, now=10.0) == []  # _200: on its way out
    assert [s.name for s in bgp_sessions.unreachable(sessions, configured, now=20.0)] == [
        "node_10_99_0_200",
        "node_10_99_0_3",
    ]
