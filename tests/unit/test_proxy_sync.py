"""The sync path without a kernel: incremental planning, minimal partial syncs in both
modes (checked against a model of what the kernel does with the text), the UDP
conntrack cleanup decisions, and the sync loop's timing, retries and flush handling."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings

from minikubenet.k8s_objects import Endpoint, Service, ServicePort, endpoints_to_k8s, service_to_k8s
from minikubenet.linux.conntrack import UdpFlowFilter
from minikubenet.proxy.daemon import ProxyState, SyncLoop
from minikubenet.proxy.iptables_render import plan_iptables
from minikubenet.proxy.metrics import Health, ProxyMetrics
from minikubenet.proxy.nft_render import plan_nft, render_nft_delete_chains
from minikubenet.proxy.syncers import IptablesSyncer, NftSyncer, SyncConfig, SyncError, SyncResult, udp_flows_to_clear
from minikubenet.store.services import ObjectDelete, ObjectPut, Snapshot
from tests.unit.test_proxy_iptables import SERVICE_POOL, apply_noflush, states

IP = ipaddress.IPv4Address
CIDR = "10.244.0.0/16"


def cluster(history_step):
    present, pods = history_step
    services = [SERVICE_POOL[i] for i in sorted(present)]
    endpoints = {f"ns/s{i}:p": [Endpoint(IP(f"10.244.{i}.{p}"), 8080) for p in ps] for i, ps in pods.items()}
    return services, endpoints


def by_service(services, endpoints):
    """The daemon's shapes: "ns/name" -> Service and "ns/name" -> {port key: endpoints}."""
    svc = {s.key: s for s in services}
    eps: dict = {}
    for pk, es in endpoints.items():
        eps.setdefault(pk.split(":")[0], {})[pk] = es
    return svc, eps


# --------------------------------------------------------------------------- iptables


@settings(max_examples=60, deadline=None)
@given(states)
def test_minimal_partial_syncs_always_equal_a_full_sync(history):
    """Partial syncs that also skip unchanged fixed chains (KUBE-SERVICES...) still
    leave exactly what a full sync would."""
    kernel, state = {}, None
    for step in history:
        services, endpoints = cluster(step)
        plan = plan_iptables(services, endpoints, (), CIDR)
        text = plan.render() if state is None else plan.render_partial(state, skip_unchanged_fixed=True)
        kernel = apply_noflush(kernel, text)
        state = plan.state
        assert kernel == apply_noflush({}, plan.render())


@settings(max_examples=40, deadline=None)
@given(states)
def test_incremental_planning_equals_planning_everything(history):
    syncer = IptablesSyncer(SyncConfig(cluster_cidr=CIDR))
    previous = None
    for step in history:
        services, endpoints = cluster(step)
        svc, eps = by_service(services, endpoints)
        changed = (
            None
            if previous is None
            else {
                k
                for k in set(svc) | set(previous[0]) | set(eps) | set(previous[1])
                if svc.get(k) != previous[0].get(k) or eps.get(k) != previous[1].get(k)
            }
        )
        incremental = syncer.plan(svc, eps, changed)
        assert incremental.render() == plan_iptables(services, endpoints, (), CIDR).render()
        previous = (svc, eps)


def test_an_endpoint_change_rewrites_only_that_services_chains():
    services = SERVICE_POOL[3:5]
    endpoints = {
        "ns/s3:p": [Endpoint(IP("10.244.3.1"), 8080), Endpoint(IP("10.244.3.2"), 8080)],
        "ns/s4:p": [Endpoint(IP("10.244.4.1"), 8080)],
    }
    before = plan_iptables(services, endpoints, (), CIDR)
    after = plan_iptables(services, dict(endpoints, **{"ns/s3:p": endpoints["ns/s3:p"][:1]}), (), CIDR)
    text = after.render_partial(before.state, skip_unchanged_fixed=True)
    declared = [line for line in text.splitlines() if line.startswith(":")]
    assert all("KUBE-SVC-" in d or "KUBE-SEP-" in d for d in declared), declared
    assert "-A KUBE-SERVICES" not in text
    assert len([line for line in text.splitlines() if line.startswith("-X KUBE-SEP-")]) == 1


# --------------------------------------------------------------------------- nftables


class NftModel:
    """What an nft transaction of add/flush/delete commands does to one table."""

    def __init__(self):
        self.chains: dict[str, list[str]] = {}
        self.containers: dict[str, dict[str, str]] = {}

    def apply(self, text: str) -> NftModel:
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            verb, kind, *rest = line.split(" ", 2)
            rest = rest[0].split(" ", 2)[2] if rest else ""  # drop "ip <table>"
            name, _, body = rest.partition(" ")
            if kind == "table":
                continue
            if kind == "chain":
                if verb == "add":
                    self.chains.setdefault(name, [])
                elif verb == "flush":
                    self.chains[name] = []
                else:
                    assert self.chains.pop(name) == [], f"deleting non-empty chain {name}"
            elif kind == "rule":
                self.chains[name].append(body)
            elif kind in ("map", "set"):
                if verb == "add":
                    self.containers.setdefault(name, {})
                elif verb == "flush":
                    self.containers[name] = {}
                else:
                    del self.containers[name]
            elif kind == "element":
                elem = body.strip()[2:-2]
                key = elem.split(" comment ")[0].split(" : ")[0]
                if verb == "add":
                    assert self.containers[name].get(key, elem) == elem, f"element {key} exists with another value"
                    self.containers[name][key] = elem
                else:
                    del self.containers[name][key]
        return self

    def live(self):
        """Everything but empty per-service chains (stale ones wait to be deleted)."""
        return ({c: r for c, r in self.chains.items() if r or "/" not in c}, self.containers)


@settings(max_examples=60, deadline=None)
@given(states)
def test_nft_partial_syncs_always_equal_a_full_sync(history):
    model, state, pending = NftModel(), None, []
    for step in history:
        services, endpoints = cluster(step)
        plan = plan_nft(services, endpoints, (), CIDR)
        if state is None:
            model.apply(plan.render())
        else:
            text, stale = plan.render_partial(state)
            model.apply(text)
            model.apply(render_nft_delete_chains([c for c in pending if c not in plan.service_chains()]))
            pending = stale
        state = plan.state
        assert model.live() == NftModel().apply(plan.render()).live()


@settings(max_examples=40, deadline=None)
@given(states)
def test_nft_staged_full_syncs_leave_what_one_transaction_leaves(history):
    model, previous = NftModel(), None
    for step in history:
        services, endpoints = cluster(step)
        plan = plan_nft(services, endpoints, (), CIDR)
        chains, sets = set(model.chains), set(model.containers)
        for stage in plan.render_staged(chains, sets, previous, stage_above=0, stage_ports=1):
            model.apply(stage)
        previous = plan.state
        assert model.live() == NftModel().apply(plan.render()).live()


def test_the_nft_syncer_applies_a_large_full_sync_in_stages_and_starts_over_when_one_fails(monkeypatch):
    from minikubenet.proxy import nft_render, syncers

    monkeypatch.setattr(nft_render, "STAGE_ABOVE", 1)
    monkeypatch.setattr(nft_render, "STAGE_PORTS", 1)
    monkeypatch.setattr(NftSyncer, "_existing_names", lambda self: (set(), set()))
    applied: list[str] = []
    monkeypatch.setattr(syncers, "nft_apply", applied.append)
    syncer = NftSyncer(SyncConfig(cluster_cidr=str(CIDR)))
    services, endpoints = by_service(
        SERVICE_POOL[3:5],
        {"ns/s3:p": [Endpoint(IP("10.244.3.1"), 8080)], "ns/s4:p": [Endpoint(IP("10.244.4.1"), 8080)]},
    )
    result = syncer.sync(services, endpoints)
    assert len(applied) == 4  # objects, one port, the other port, the switch
    assert result.text_bytes == sum(len(t) for t in applied) and syncer.state is not None

    def refuse_the_second(text):
        applied.append(text)
        if len(applied) == 2:
            raise SyncError("nft -f failed")

    applied.clear()
    monkeypatch.setattr(syncers, "nft_apply", refuse_the_second)
    with pytest.raises(SyncError):
        syncer.sync(services, endpoints)
    assert len(applied) == 2 and syncer.state is None  # stopped there; the next sync is a full one


def test_nft_partial_of_one_changed_endpoint_is_small():
    services = SERVICE_POOL[3:5]
    endpoints = {
        "ns/s3:p": [Endpoint(IP("10.244.3.1"), 8080), Endpoint(IP("10.244.3.2"), 8080)],
        "ns/s4:p": [Endpoint(IP("10.244.4.1"), 8080)],
    }
    before = plan_nft(services, endpoints, (), CIDR)
    after = plan_nft(services, dict(endpoints, **{"ns/s3:p": endpoints["ns/s3:p"][:1]}), (), CIDR)
    text, stale = after.render_partial(before.state)
    assert "s4" not in text and "add element" not in text
    assert len(stale) == 1 and stale[0].endswith("__10.244.3.2/8080")
    assert f"flush chain ip minikubenet-proxy {stale[0]}" in text


# --------------------------------------------------------------------------- conntrack

UDP = Service("ns", "dns", IP("10.96.0.10"), (ServicePort("dns", "UDP", 53, 5353, 30053),), type="NodePort")
TCP = Service("ns", "web", IP("10.96.0.20"), (ServicePort("http", "TCP", 80, 8080),))
EP = {i: Endpoint(IP(f"10.244.1.{i}"), 5353) for i in range(1, 4)}


def test_removed_udp_endpoints_are_cleared_by_cluster_ip_and_node_port():
    before = {"ns/dns:dns": [EP[1], EP[2]], "ns/web:http": [EP[1]]}
    after = {"ns/dns:dns": [EP[1]], "ns/web:http": []}
    flows = udp_flows_to_clear({"ns/dns": UDP, "ns/web": TCP}, before, {"ns/dns": UDP, "ns/web": TCP}, after)
    assert flows == [UdpFlowFilter(53, "10.96.0.10", "10.244.1.2"), UdpFlowFilter(30053, None, "10.244.1.2")]
    assert flows[0].argv() == [
        "conntrack",
        "-D",
        "-p",
        "udp",
        "--orig-dst",
        "10.96.0.10",
        "--orig-port-dst",
        "53",
        "--reply-src",
        "10.244.1.2",
    ]


def test_the_last_endpoint_going_away_is_cleared_too():
    """kubernetes#139628: a one-way UDP sender stays black-holed otherwise."""
    flows = udp_flows_to_clear({"ns/dns": UDP}, {"ns/dns:dns": [EP[1]]}, {"ns/dns": UDP}, {"ns/dns:dns": []})
    assert UdpFlowFilter(53, "10.96.0.10", "10.244.1.1") in flows
    deleted = udp_flows_to_clear({"ns/dns": UDP}, {"ns/dns:dns": [EP[1]]}, {}, {})
    assert UdpFlowFilter(53, "10.96.0.10", "10.244.1.1") in deleted


def test_a_udp_service_that_gets_its_first_endpoint_is_cleared_whole():
    flows = udp_flows_to_clear({"ns/dns": UDP}, {}, {"ns/dns": UDP}, {"ns/dns:dns": [EP[3]]})
    assert flows == [UdpFlowFilter(53, "10.96.0.10"), UdpFlowFilter(30053)]


def test_unready_counts_as_removed_and_unchanged_means_nothing():
    unready = Endpoint(EP[2].ip, 5353, ready=False)
    assert (
        udp_flows_to_clear(
            {"ns/dns": UDP}, {"ns/dns:dns": [EP[1], EP[2]]}, {"ns/dns": UDP}, {"ns/dns:dns": [EP[1], unready]}
        )[0].endpoint_ip
        == "10.244.1.2"
    )
    same = {"ns/dns:dns": [EP[1]]}
    assert udp_flows_to_clear({"ns/dns": UDP}, same, {"ns/dns": UDP}, same) == []


def test_an_endpoint_that_turns_terminating_but_still_serves_keeps_its_flows():
    """detectStaleConntrackEntries compares serving, not ready: with no ready endpoint
    left the rules fall back to the serving-terminating one, so its flows must live."""
    terminating = Endpoint(EP[1].ip, 5353, ready=False, serving=True, terminating=True)
    before, after = {"ns/dns:dns": [EP[1]]}, {"ns/dns:dns": [terminating]}
    assert udp_flows_to_clear({"ns/dns": UDP}, before, {"ns/dns": UDP}, after) == []


def test_a_terminating_endpoint_that_stops_serving_is_cleared():
    """ "including if it went from serving to not serving" (pkg/proxy endpoints.go)."""
    serving = Endpoint(EP[1].ip, 5353, ready=False, serving=True, terminating=True)
    gone = Endpoint(EP[1].ip, 5353, ready=False, serving=False, terminating=True)
    flows = udp_flows_to_clear({"ns/dns": UDP}, {"ns/dns:dns": [serving]}, {"ns/dns": UDP}, {"ns/dns:dns": [gone]})
    assert flows == [UdpFlowFilter(53, "10.96.0.10", "10.244.1.1"), UdpFlowFilter(30053, None, "10.244.1.1")]


def test_an_endpoint_that_never_served_has_nothing_to_clear_and_its_first_serving_one_makes_the_port_active():
    """An old endpoint that was not serving got no traffic; a port whose only endpoint
    becomes serving-terminating had none serving before: NewlyActiveUDPServices."""
    unready = Endpoint(EP[1].ip, 5353, ready=False, serving=False)
    assert udp_flows_to_clear({"ns/dns": UDP}, {"ns/dns:dns": [unready]}, {"ns/dns": UDP}, {"ns/dns:dns": []}) == []
    fallback = Endpoint(EP[2].ip, 5353, ready=False, serving=True, terminating=True)
    flows = udp_flows_to_clear({"ns/dns": UDP}, {"ns/dns:dns": [unready]}, {"ns/dns": UDP}, {"ns/dns:dns": [fallback]})
    assert flows == [UdpFlowFilter(53, "10.96.0.10"), UdpFlowFilter(30053)]


def test_external_and_load_balancer_ips_are_cleared_like_the_cluster_ip():
    """deleteStaleEndpointConntrackEntries: ClearEntriesForNAT for the ClusterIP, every
    external IP and every LB ingress IP, ClearEntriesForPortNAT for the NodePort."""
    lb = Service(
        "ns",
        "dns",
        IP("10.96.0.10"),
        (ServicePort("dns", "UDP", 53, 5353, 30053),),
        type="LoadBalancer",
        external_ips=(IP("192.0.2.7"),),
        load_balancer_ips=(IP("198.51.100.5"),),
    )
    flows = udp_flows_to_clear({"ns/dns": lb}, {"ns/dns:dns": [EP[1], EP[2]]}, {"ns/dns": lb}, {"ns/dns:dns": [EP[1]]})
    assert flows == [
        UdpFlowFilter(53, "10.96.0.10", "10.244.1.2"),
        UdpFlowFilter(53, "192.0.2.7", "10.244.1.2"),
        UdpFlowFilter(53, "198.51.100.5", "10.244.1.2"),
        UdpFlowFilter(30053, None, "10.244.1.2"),
    ]
    first = udp_flows_to_clear({"ns/dns": lb}, {}, {"ns/dns": lb}, {"ns/dns:dns": [EP[3]]})
    assert [f.dst_ip for f in first] == ["10.96.0.10", "192.0.2.7", "198.51.100.5", None]


# --------------------------------------------------------------------------- state and loop


def snapshot(services=(), endpoints=(), revision=10):
    return Snapshot(
        services={s.key: service_to_k8s(s) for s in services},
        endpoints={e["metadata"]["namespace"] + "/" + e["metadata"]["name"]: e for e in endpoints},
        revision=revision,
    )


def test_state_tracks_what_changed():
    calls = []
    state = ProxyState(on_change=lambda: calls.append(1))
    state.deliver(snapshot([TCP], [endpoints_to_k8s(TCP, {"ns/web:http": [EP[1]]})]))
    services, eps, dirty, rev = state.take()
    assert dirty == {"ns/web"} and rev == 10 and eps["ns/web"]["ns/web:http"][0].ip == EP[1].ip
    state.deliver(ObjectPut("services", "ns/web", service_to_k8s(TCP), 11))  # no change
    assert state.take()[2] == set() and len(calls) == 1
    state.deliver(ObjectPut("pods", "ns/p", {}, 12))  # not ours
    state.deliver(ObjectPut("services", "ns/bad", {"spec": {}}, 13))  # invalid: ignored
    assert state.take()[2] == set()
    state.deliver(ObjectDelete("endpoints", "ns/web", 14))
    assert state.take()[2] == {"ns/web"} and state.revision == 14
    state.deliver(snapshot([], [], 15))  # a re-list
    services, eps, dirty, rev = state.take()
    assert services == {} and dirty == {"ns/web"}


def test_an_empty_first_snapshot_still_wakes_the_loop():
    calls = []
    state = ProxyState(on_change=lambda: calls.append(1))
    state.deliver(snapshot())
    assert calls and state.synced


class FakeSyncer:
    mode = "iptables"

    def __init__(self):
        self.calls, self.fail, self.is_intact, self.all_chains = [], 0, True, True
        self.checks = 0

    def sync(self, services, endpoints, changed):
        self.calls.append(None if changed is None else set(changed))
        if self.fail:
            self.fail -= 1
            raise SyncError("iptables-restore: line 7 failed\n>    7: -A KUBE-SEP-X -m recent ...")
        return SyncResult(full=changed is None, written_rules={"nat": 3}, total_rules={"nat": 9, "filter": 2})

    def intact(self):
        self.checks += 1
        return self.is_intact

    def all_chains_intact(self):
        return self.all_chains

    def touches_ours(self, change):
        return change.table == "nat" and change.name.startswith("KUBE-")

    def calls_for_check(self, change):
        return change.op == "NEWRULE" and change.name == "FORWARD"

    def pending_work_at(self):
        return None


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_loop(**kw):
    clock, syncer = Clock(), FakeSyncer()
    state = ProxyState()
    loop = SyncLoop(state, syncer, ProxyMetrics(), Health(60), clock=clock, **kw)
    state.on_change = loop.changed
    return loop, state, syncer, clock


def test_no_rules_before_the_first_snapshot_then_a_full_sync_then_partial_ones():
    loop, state, syncer, clock = make_loop(min_sync_period=1.0)
    assert loop._deadline(clock()) > 0  # nothing to do yet: waits
    state.deliver(snapshot([TCP]))
    assert loop.step() and syncer.calls == [None]
    state.deliver(ObjectPut("endpoints", "ns/web", endpoints_to_k8s(TCP, {"ns/web:http": [EP[1]]}), 11))
    assert not loop.step()  # within min-sync-period: batched
    clock.now += 1.0
    assert loop.step() and syncer.calls[-1] == {"ns/web"}
    assert loop.health.status()[1]["appliedRevision"] == 11
    assert 'kubeproxy_sync_proxy_rules_iptables_total{table="nat"} 9' in loop.metrics.render()


def test_a_failed_sync_keeps_its_changes_and_retries_in_full_with_backoff():
    loop, state, syncer, clock = make_loop(min_sync_period=0.0, sync_period=30)
    state.deliver(snapshot([TCP]))
    loop.step()
    syncer.fail = 2
    state.deliver(ObjectPut("services", "ns/dns", service_to_k8s(UDP), 12))
    assert loop.step() and loop.metrics.restore_failures.get() == 1 and loop.metrics.partial_restore_failures.get() == 1
    assert not loop.step()  # waits for the retry time (1 s)
    clock.now += 1.0
    assert loop.step() and syncer.calls[-1] is None  # the retry is a full sync
    clock.now += 1.5
    assert not loop.step()  # backoff doubled to 2 s
    clock.now += 0.5
    assert loop.step() and loop.metrics.restore_failures.get() == 2
    assert loop.health.status()[1]["appliedRevision"] == 12
    assert "ns/dns" not in state.dirty


def test_flushed_rules_are_noticed_within_one_sync_period():
    loop, state, syncer, clock = make_loop(min_sync_period=0.0, sync_period=5)
    state.deliver(snapshot([TCP]))
    loop.step()
    syncer.is_intact = False
    clock.now += 4.9
    assert not loop.step()
    clock.now += 0.2
    assert loop.step() and syncer.calls[-1] is None


def test_a_periodic_full_sync_repairs_drift():
    loop, state, syncer, clock = make_loop(min_sync_period=0.0, sync_period=1e9, full_sync_period=100)
    state.deliver(snapshot([TCP]))
    loop.step()
    clock.now += 99
    assert not loop.step()
    clock.now += 1
    assert loop.step() and syncer.calls == [None, None]


def test_health_goes_bad_when_an_update_waits_too_long():
    clock = Clock()
    h = Health(timeout=60, clock=clock)
    assert h.status()[0]
    h.queued()
    clock.now += 61
    healthy, doc = h.status()
    assert not healthy and doc["lastUpdated"] == ""
    h.updated(5)
    assert h.status()[0] and h.status()[1]["appliedRevision"] == 5


def test_metrics_text_format():
    m = ProxyMetrics()
    m.sync_duration.observe(0.003)
    m.iptables_total.set(12, table="nat")
    text = m.render()
    assert "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram" in text
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.002"} 0' in text
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.004"} 1' in text
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="+Inf"} 1' in text
    assert "kubeproxy_sync_proxy_rules_duration_seconds_count 1" in text
    assert 'kubeproxy_sync_proxy_rules_iptables_total{table="nat"} 12' in text
    assert "kubeproxy_sync_proxy_rules_iptables_restore_failures_total 0" in text


@pytest.mark.parametrize("syncer_cls", [IptablesSyncer, NftSyncer])
def test_dry_run_renders_the_full_ruleset(syncer_cls):
    syncer = syncer_cls(SyncConfig(cluster_cidr=CIDR))
    svc, eps = by_service([TCP], {"ns/web:http": [EP[1]]})
    text = syncer.render_full(svc, eps)
    assert "10.244.1.1:5353" in text.replace(" dnat to ", " ").replace("--to-destination ", "")


def test_a_full_sync_does_not_delete_a_waiting_chain_that_is_already_gone(monkeypatch):
    from minikubenet.proxy import syncers

    monkeypatch.setattr(NftSyncer, "_existing_names", lambda self: (set(), set()))  # the table was deleted
    applied: list[str] = []
    monkeypatch.setattr(syncers, "nft_apply", applied.append)
    syncer = NftSyncer(SyncConfig(cluster_cidr=str(CIDR)))
    syncer._to_delete = [(0.0, "endpoint-AAAAAAAA-ns/s3/tcp/p__10.244.3.9/8080")]  # flushed long ago
    services, endpoints = by_service(SERVICE_POOL[3:4], {"ns/s3:p": [Endpoint(IP("10.244.3.1"), 8080)]})
    syncer.sync(services, endpoints)
    assert "delete chain" not in "".join(applied) and syncer._to_delete == []
