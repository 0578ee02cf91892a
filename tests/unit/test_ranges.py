"""minikubenet.ipam.ranges: which addresses of a node subnet may be handed to pods.

Same rules as the reference host-local plugin (reference B.2 "Range defaults"): the
gateway is network+1, the first pod gets network+2, the network and broadcast addresses
are never handed out, /31 and /32 are too small, and allocation resumes round-robin
after the last address handed out.
"""

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest

from minikubenet.ipam import ranges


@pytest.mark.parametrize(
    "subnet, gateway",
    [
        ("10.244.1.0/24", "10.244.1.1"),
        ("10.244.0.0/16", "10.244.0.1"),
        ("192.168.7.64/26", "192.168.7.65"),
        ("10.0.0.0/30", "10.0.0.1"),
    ],
)
def test_gateway_is_the_first_host_address(subnet, gateway):
    assert ranges.gateway(N(subnet)) == A(gateway)


@pytest.mark.parametrize(
    "subnet, first, last, capacity",
    [
        ("10.244.1.0/24", "10.244.1.2", "10.244.1.254", 253),
        ("10.244.0.0/23", "10.244.0.2", "10.244.1.254", 509),
        ("10.1.2.0/25", "10.1.2.2", "10.1.2.126", 125),
        ("10.1.2.128/25", "10.1.2.130", "10.1.2.254", 125),
        ("10.0.0.0/29", "10.0.0.2", "10.0.0.6", 5),
        ("10.0.0.0/30", "10.0.0.2", "10.0.0.2", 1),  # gateway .1, pod .2, broadcast .3
    ],
)
def test_pod_range_and_capacity(subnet, first, last, capacity):
    net = N(subnet)
    assert ranges.pod_range(net) == (A(first), A(last))
    assert ranges.pod_capacity(net) == capacity


@pytest.mark.parametrize("subnet", ["10.244.1.0/24", "10.0.0.0/29", "10.0.0.0/30", "10.244.0.0/22"])
def test_candidates_never_include_network_gateway_or_broadcast(subnet):
    net = N(subnet)
    got = list(ranges.candidates(net))
    assert net.network_address not in got
    assert net.broadcast_address not in got
    assert ranges.gateway(net) not in got
    assert all(ip in net for ip in got)


def test_a_24_offers_253_distinct_addresses_from_2_to_254_in_order():
    got = list(ranges.candidates(N("10.244.1.0/24")))
    assert len(got) == 253 == len(set(got))
    assert got[0] == A("10.244.1.2")  # the first pod IP, as host-local's first ADD
    assert got[-1] == A("10.244.1.254")
    assert got == sorted(got)


@pytest.mark.parametrize(
    "after, first_three",
    [
        ("10.244.1.2", ["10.244.1.3", "10.244.1.4", "10.244.1.5"]),
        ("10.244.1.100", ["10.244.1.101", "10.244.1.102", "10.244.1.103"]),
        # the last pod address: wrap around to the first one
        ("10.244.1.254", ["10.244.1.2", "10.244.1.3", "10.244.1.4"]),
        # not a pod address at all (gateway, network, broadcast, another subnet): start at the beginning
        ("10.244.1.1", ["10.244.1.2", "10.244.1.3", "10.244.1.4"]),
        ("10.244.1.0", ["10.244.1.2", "10.244.1.3", "10.244.1.4"]),
        ("10.244.1.255", ["10.244.1.2", "10.244.1.3", "10.244.1.4"]),
        ("10.244.9.7", ["10.244.1.2", "10.244.1.3", "10.244.1.4"]),
    ],
)
def test_candidates_start_after_the_last_one_handed_out(after, first_three):
    got = list(ranges.candidates(N("10.244.1.0/24"), after=A(after)))
    assert got[:3] == [A(x) for x in first_three]


@pytest.mark.parametrize("after", ["10.244.1.2", "10.244.1.77", "10.244.1.253", "10.244.1.254"])
def test_round_robin_visits_every_address_once_and_ends_with_after(after):
    net = N("10.244.1.0/24")
    got = list(ranges.candidates(net, after=A(after)))
    assert len(got) == 253
    assert set(got) == set(ranges.candidates(net))
    assert got[-1] == A(after)  # the address just handed out is the very last one retried


def test_round_robin_in_a_tiny_subnet():
    got = list(ranges.candidates(N("10.0.0.0/29"), after=A("10.0.0.5")))
    assert got == [A("10.0.0.6"), A("10.0.0.2"), A("10.0.0.3"), A("10.0.0.4"), A("10.0.0.5")]


@pytest.mark.parametrize("subnet", ["10.0.0.0/31", "10.0.0.4/32"])
def test_too_small_subnets_are_refused_with_the_subnet_named(subnet):
    net = N(subnet)
    for call in (lambda: ranges.pod_range(net), lambda: ranges.pod_capacity(net), lambda: list(ranges.candidates(net))):
        with pytest.raises(ValueError, match=r"too small") as e:
            call()
        assert subnet in str(e.value)
