"""ADD is a transaction, checked without root: the handler over the fake pod plumbing
(tests/unit/fake_plumbing.py) and a fake allocator. A failure at any step of ADD leaves
no veth and no IP record behind; the ownership refusals change nothing; DEL removes only
what carries the attachment's mark (agent/cni_handler.py, linux/pod_plumbing.py)."""

from __future__ import annotations

import pytest

from minikubenet.agent.cni_handler import CniHandler, NodeState
from minikubenet.cni.shim import CniError
from minikubenet.ipam.allocator import SubnetFull
from minikubenet.linux.netns import NetnsNotFound
from minikubenet.linux.pod_plumbing import NotOurs
from minikubenet.pod_network import attachment_macs, host_veth_name, ownership_mark
from minikubenet.store.etcd import StoreError
from tests.unit.fake_plumbing import Boom, Device, FakePodPlumbing
from tests.unit.test_cni_verbs import SUBNET, FakeAllocator

NETNS = "/run/netns/pod1"


class FailingAllocator(FakeAllocator):
    def __init__(self, error: BaseException | None = None):
        super().__init__()
        self.error = error

    def allocate(self, owner, claimed=False):
        if self.error is not None:
            raise self.error
        return super().allocate(owner, claimed)


def setup(error=None):
    kernel, alloc = FakePodPlumbing(), FailingAllocator(error)
    kernel.add_pod(NETNS)
    h = CniHandler(NodeState("n1", SUBNET, 1450, alloc, lambda: True, lambda: None), kernel)
    return h, kernel, alloc


def request(command, cid="c1", ifname="eth0", netns=NETNS, **conf):
    return {
        "command": command,
        "mode": "main",
        "env": {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_NETNS": netns},
        "config": {"cniVersion": "1.0.0", "name": "net", "type": "minikubenet", **conf},
    }


def add(h, **kw):
    try:
        return h.handle(request("ADD", **kw))
    finally:
        h._claims.submit(lambda: None).result()  # the claim thread is idle again


def test_add_plumbs_and_records_and_del_removes_both():
    h, kernel, alloc = setup()
    out = add(h)
    assert out["ips"][0]["address"] == "10.244.7.2/24"
    assert kernel.veths() == sorted([host_veth_name("c1", "eth0"), f"{NETNS}:eth0"])
    assert kernel.pods[NETNS]["eth0"].addresses == {"10.244.7.2/24"}
    assert [o.container_id for o in alloc.held.values()] == ["c1"]
    assert not kernel.open_handles, "the pod's netlink handle is closed"
    assert add(h)["ips"] == out["ips"], "a repeated ADD returns the same IP"
    for _ in range(2):  # DEL is repeatable
        h.handle(request("DEL"))
        assert kernel.veths() == [] and alloc.held == {}
    h.close()


@pytest.mark.parametrize(
    "step, error",
    [
        ("open_pod", Boom("no socket")),
        ("open_pod", NetnsNotFound("gone")),
        ("survey", Boom("dump failed")),
        ("create_pair", Boom("EEXIST, then the kernel said no")),
        ("create_pair", NotOurs("vethXXXX is someone else's")),
        ("configure_pod", Boom("no such device")),
        ("configure_pod", NetnsNotFound("the namespace went away")),
    ],
)
def test_a_failure_at_any_kernel_step_of_add_leaves_nothing(step, error):
    h, kernel, alloc = setup()
    kernel.fail[step] = error
    with pytest.raises(CniError):
        add(h)
    assert kernel.veths() == [], f"a veth was left after {step} failed"
    assert alloc.held == {}, f"an IP record was left after {step} failed"
    assert not kernel.open_handles
    h.close()


@pytest.mark.parametrize(
    "error, code", [(SubnetFull("10.244.7.0/24 is full"), 11), (StoreError("etcd did not answer"), 11)]
)
def test_a_failed_ip_claim_removes_the_veth_made_meanwhile(error, code):
    h, kernel, alloc = setup(error)
    with pytest.raises(CniError) as e:
        add(h)
    assert e.value.code == code
    assert "create_pair" in kernel.calls and "detach" in kernel.calls
    assert kernel.veths() == [] and alloc.held == {}
    h.close()


def test_a_failed_repeat_add_keeps_the_record_it_did_not_create():
    h, kernel, alloc = setup()
    first = add(h)
    kernel.fail["configure_pod"] = Boom("no")
    with pytest.raises(CniError):
        add(h)
    assert [o.container_id for o in alloc.held.values()] == ["c1"], "the first ADD's record is kept"
    del kernel.fail["configure_pod"]
    assert add(h)["ips"] == first["ips"]
    h.close()


# -- refusals: nothing is changed -----------------------------------------------------------------


def test_another_containers_eth0_is_refused_and_left_intact():
    h, kernel, alloc = setup()
    theirs = Device(
        "eth0",
        alias=ownership_mark("other", "eth0"),
        mac=attachment_macs("other", "eth0")[1],
        up=True,
        addresses={"10.244.7.9/24"},
    )
    kernel.add_pod(NETNS, theirs)
    with pytest.raises(CniError) as e:
        add(h)
    assert e.value.code == 999 and "already exists" in e.value.msg
    assert kernel.pods[NETNS]["eth0"] is theirs and theirs.addresses == {"10.244.7.9/24"}
    assert "create_pair" not in kernel.calls, "refused before anything was changed"
    assert kernel.veths() == [f"{NETNS}:eth0"] and alloc.held == {}
    h.handle(request("DEL"))  # the runtime's DEL after the refusal
    assert kernel.pods[NETNS]["eth0"] is theirs
    h.close()


def test_a_nodes_namespace_is_refused():
    h, kernel, alloc = setup()
    kernel.add_pod(NETNS, Device("cni0", "bridge"), Device("eth0", ""))
    with pytest.raises(CniError) as e:
        add(h)
    assert e.value.code == 8  # skel's "invalid netns" (SPEC error codes: 4 is "invalid environment")
    assert "create_pair" not in kernel.calls and alloc.held == {} and kernel.veths() == []
    h.close()


def test_a_foreign_host_veth_by_our_name_is_refused_and_kept():
    h, kernel, alloc = setup()
    name = host_veth_name("c1", "eth0")
    kernel.node[name] = Device(name, alias="someone-else", mac="02:00:00:00:00:99")
    with pytest.raises(CniError) as e:
        add(h)
    assert e.value.code == 999
    assert kernel.node[name].alias == "someone-else"
    assert kernel.veths() == [name] and alloc.held == {}
    h.close()


def test_gc_and_check_go_through_the_plumbing():
    h, kernel, alloc = setup()
    out = add(h)
    h.handle(request("CHECK", prevResult=out))
    kernel.pods[NETNS]["eth0"].addresses.clear()
    with pytest.raises(CniError) as e:
        h.handle(request("CHECK", prevResult=out))
    assert e.value.code == 100
    h.handle(
        dict(
            request("GC", **{"cni.dev/valid-attachments": []}),
            config={"cniVersion": "1.1.0", "name": "net", "cni.dev/valid-attachments": []},
        )
    )
    assert kernel.veths() == [], "GC removed the stale veth (both ends go with the host end)"
    assert alloc.held == {}
    h.close()


def test_the_benchmarks_timing_wrapper_goes_through_the_seam():
    """bench/cni_add_del.py times the handler by injecting wrappers, not by patching."""
    import collections

    from bench.cni_add_del import TimedPlumbing, TimedStore

    acc = collections.defaultdict(float)
    kernel = FakePodPlumbing()
    kernel.add_pod(NETNS)
    alloc = FakeAllocator()
    h = CniHandler(NodeState("n1", SUBNET, 1450, alloc, lambda: True, lambda: None), TimedPlumbing(kernel, acc))
    add(h)
    h.handle(request("DEL"))
    assert kernel.veths() == [] and alloc.held == {}
    assert {k.split(" (")[0] for k in acc} >= {
        "netlink pod: open raw socket in netns",
        "netlink host: create_pair",
        "netlink pod: configure_pod",
        "netlink: detach",
    }
    assert TimedStore(alloc, acc).find("c1", "eth0") is None, "unlabelled calls pass straight through"
    h.close()
