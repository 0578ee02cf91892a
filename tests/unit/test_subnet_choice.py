"""minikubenet.subnet_lease.choose_subnet: which node subnet to claim (pure, no etcd).

Flannel's tryAcquireLease (reference C.2): (1) the lease with our PublicIP, if it still
fits the config; (2) else the subnet from our previous subnet.env, if nobody holds it;
(3) else a random free one among the first 100 free; none free -> "out of subnets".
"""

import dataclasses
import json
import random
from ipaddress import IPv4Network as N

import pytest

from minikubenet.network_config import parse_config
from minikubenet.subnet_lease import Choice, OutOfSubnets, choose_subnet
from minikubenet.subnet_lease_record import SubnetLeaseRecord

ME = "172.31.0.11"


def config(network="10.244.0.0/16", **kw):
    return parse_config(json.dumps({"Network": network, **kw}))


def lease(subnet: str, public_ip: str) -> SubnetLeaseRecord:
    return SubnetLeaseRecord(
        N(subnet), public_ip, "vxlan", {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"}, lease_id=7, raw=b"{}"
    )


def rng(seed=1) -> random.Random:
    return random.Random(seed)


def test_reuses_the_lease_holding_our_public_ip():
    mine = lease("10.244.9.0/24", ME)
    others = [lease("10.244.1.0/24", "172.31.0.12"), lease("10.244.2.0/24", "172.31.0.13")]
    c = choose_subnet(config(), others + [mine], ME, previous=N("10.244.3.0/24"), rng=rng())
    assert c.subnet == N("10.244.9.0/24")
    assert c.existing is mine  # to be rewritten (new VtepMAC, renewed TTL), not created
    assert ME in c.reason


def test_our_lease_wins_over_the_previous_subnet_env():
    c = choose_subnet(config(), [lease("10.244.9.0/24", ME)], ME, previous=N("10.244.4.0/24"), rng=rng())
    assert c.subnet == N("10.244.9.0/24")


def test_our_old_lease_that_no_longer_fits_the_config_is_not_reused():
    cfg = config(SubnetMin="10.244.10.0", SubnetMax="10.244.20.0")
    c = choose_subnet(cfg, [lease("10.244.9.0/24", ME)], ME, previous=None, rng=rng())
    assert c.subnet != N("10.244.9.0/24")
    assert c.existing is None
    assert c.subnet in cfg.subnets()


def test_our_old_lease_of_another_size_is_not_reused():
    cfg = config(SubnetLen=25)
    c = choose_subnet(cfg, [lease("10.244.9.0/24", ME)], ME, previous=None, rng=rng())
    assert c.subnet.prefixlen == 25 and c.existing is None


def test_previous_subnet_from_subnet_env_when_free():
    others = [lease("10.244.1.0/24", "172.31.0.12")]
    c = choose_subnet(config(), others, ME, previous=N("10.244.42.0/24"), rng=rng())
    assert c.subnet == N("10.244.42.0/24")
    assert c.existing is None
    assert "subnet.env" in c.reason


def test_previous_subnet_taken_by_another_node_is_not_reused():
    others = [lease("10.244.42.0/24", "172.31.0.12")]
    c = choose_subnet(config(), others, ME, previous=N("10.244.42.0/24"), rng=rng())
    assert c.subnet != N("10.244.42.0/24")
    assert c.subnet in config().subnets()


@pytest.mark.parametrize(
    "previous",
    [
        "10.244.0.0/24",  # the network's first subnet is never leased (SubnetMin default)
        "10.245.3.0/24",  # outside Network (the config changed)
        "10.244.3.0/25",  # wrong size
    ],
)
def test_previous_subnet_that_does_not_fit_the_config_is_not_reused(previous):
    c = choose_subnet(config(), [], ME, previous=N(previous), rng=rng())
    assert c.subnet != N(previous)
    assert c.subnet in config().subnets()


@pytest.mark.parametrize("seed", range(20))
def test_a_free_subnet_is_never_a_taken_one(seed):
    cfg = config("10.244.0.0/20")  # subnets .1 .. .15
    taken = [lease(f"10.244.{i}.0/24", f"172.31.0.{100 + i}") for i in range(1, 16) if i not in (6, 11)]
    c = choose_subnet(cfg, taken, ME, previous=None, rng=random.Random(seed))
    assert c.subnet in (N("10.244.6.0/24"), N("10.244.11.0/24"))
    assert c.existing is None


def test_random_choice_is_reproducible_with_a_seeded_rng_and_spreads():
    cfg = config()
    a = [choose_subnet(cfg, [], ME, None, rng=random.Random(s)).subnet for s in range(30)]
    b = [choose_subnet(cfg, [], ME, None, rng=random.Random(s)).subnet for s in range(30)]
    assert a == b
    assert len(set(a)) > 5  # random, so that racing nodes rarely collide
    # like flannel: only among the first 100 free subnets
    first_100 = set(cfg.subnets()[:100])
    assert set(a) <= first_100


def test_leases_outside_the_range_do_not_count_against_it():
    cfg = config("10.244.0.0/22")  # .1 .2 .3
    foreign = [lease("10.99.0.0/24", "172.31.0.50"), lease("10.244.0.0/24", "172.31.0.51")]
    c = choose_subnet(cfg, foreign, ME, None, rng=rng())
    assert c.subnet in cfg.subnets()


def test_full_network_raises_out_of_subnets_naming_network_and_count():
    cfg = config("10.244.0.0/22")  # leasable: 10.244.1-3.0/24
    taken = [lease(f"10.244.{i}.0/24", f"172.31.0.{20 + i}") for i in (1, 2, 3)]
    with pytest.raises(OutOfSubnets) as e:
        choose_subnet(cfg, taken, ME, previous=N("10.244.2.0/24"), rng=rng())
    msg = str(e.value)
    assert "10.244.0.0/22" in msg
    assert "3" in msg and "/24" in msg


def test_full_network_count_ignores_leases_outside_the_range():
    cfg = config("10.244.0.0/22")
    taken = [lease(f"10.244.{i}.0/24", f"172.31.0.{20 + i}") for i in (1, 2, 3)]
    taken += [lease("10.244.0.0/24", "172.31.0.60"), lease("10.250.0.0/24", "172.31.0.61")]
    with pytest.raises(OutOfSubnets, match=r"all 3 /24 subnets are taken \(3 leases\)"):
        choose_subnet(cfg, taken, ME, previous=None, rng=rng())


def test_full_network_still_gives_us_our_own_lease_back():
    cfg = config("10.244.0.0/22")
    taken = [lease("10.244.1.0/24", "172.31.0.21"), lease("10.244.2.0/24", ME), lease("10.244.3.0/24", "172.31.0.23")]
    c = choose_subnet(cfg, taken, ME, previous=None, rng=rng())
    assert c.subnet == N("10.244.2.0/24")


def test_a_subnet_overlapping_an_existing_lease_of_another_size_is_taken():
    cfg = config("10.244.0.0/22")  # leasable: 10.244.1.0/24, .2.0/24, .3.0/24
    taken = [lease("10.244.1.0/24", "172.31.0.21"), lease("10.244.2.0/23", "172.31.0.22")]  # covers .2 and .3
    with pytest.raises(OutOfSubnets):
        choose_subnet(cfg, taken, ME, previous=N("10.244.3.0/24"), rng=rng())


def test_choice_is_a_frozen_value():
    c = choose_subnet(config(), [], ME, None, rng=rng())
    assert isinstance(c, Choice)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.subnet = N("10.244.1.0/24")  # type: ignore[misc]
