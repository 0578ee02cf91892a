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


class FakeBird:
    """BirdDaemon's surface that BgpPeers uses, with a fixed protocol table."""

    log_file = "/run/x/bird.log"

    def __init__(self, table: str):
        self.table, self.applied = table, []

    def apply(self, text: str) -> bool:
        self.applied.append(text)
        return True

    def show(self, what: str) -> str:
        return self.table

    def running(self) -> bool:
        return True


def test_the_bgp_planner_reports_the_silent_peer_once_its_grace_is_over(monkeypatch):
    import ipaddress

    from minikubenet.agent.backends import bgp
    from minikubenet.subnet_lease_record import SubnetLeaseRecord

    clock = [100.0]
    monkeypatch.setattr(bgp.time, "monotonic", lambda: clock[0])
    peers = bgp.BgpPeers(
        FakeBird(TABLE), ipaddress.IPv4Address("10.99.0.1"), ipaddress.IPv4Network("10.244.1.0/24"), 64512
    )
    leases = [
        SubnetLeaseRecord(ipaddress.IPv4Network(f"10.244.{i}.0/24"), f"10.99.0.{ip}", "bgp", {})
        for i, ip in ((2, 2), (3, 200))
    ]
    peers.leases_changed(leases)
    assert peers.health_warnings() == []  # just configured: still coming up
    clock[0] += bgp_sessions.GRACE_S
    (warning,) = peers.health_warnings()
    assert "node_10_99_0_200" in warning and "No route to host" in warning
    assert peers.peer_counts() == {"established": 1, "not_established": 1}
    peers.leases_changed(leases[:1])  # its lease gone: no longer ours to report
    assert peers.health_warnings() == [] and peers.peer_counts() == {"established": 1, "not_established": 0}
