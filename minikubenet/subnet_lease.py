"""A node's subnet lease: which /24 of the cluster network this node hands to its pods.

The mechanism is flannel's (pkg/subnet/etcd/local_manager.go, tryAcquireLease):

1. a lease whose ``PublicIP`` is ours is our own from before a restart: take it again;
2. else the subnet named in our previous ``subnet.env``, if nobody holds it now;
3. else a random free subnet (random, so that racing nodes rarely pick the same one);
4. claim it with a compare-and-create transaction; if another node won the race,
   start over (at most ``RACE_RETRIES`` times).

The key is attached to an etcd lease with a TTL (default 24 h), renewed well before it
runs out. A node that vanishes loses its subnet when the TTL expires; a node that comes
back in time keeps it, and so its pods keep their addresses.

``choose_subnet`` is the pure part; ``SubnetLeaser`` talks to the store.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
from dataclasses import dataclass

from minikubenet.metrics import Counter
from minikubenet.network_config import NetworkConfig
from minikubenet.store.etcd import EtcdStore, StoreError
from minikubenet.subnet_lease_record import SubnetLeaseRecord

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 24 * 3600
RACE_RETRIES = 10
RENEW_RETRY_S, MAX_RENEW_RETRY_S = 0.5, 10.0  # after a failed renewal


class OutOfSubnets(Exception):
    pass


@dataclass(frozen=True)
class Choice:
    subnet: ipaddress.IPv4Network
    existing: SubnetLeaseRecord | None  # our own lease from before, to be rewritten
    reason: str


def choose_subnet(
    config: NetworkConfig,
    leases: list[SubnetLeaseRecord],
    public_ip: str,
    previous: ipaddress.IPv4Network | None,
    rng: random.Random | None = None,
) -> Choice:
    """Decide which subnet this node should hold. Pure: no I/O."""
    usable = set(config.subnets())
    for rec in leases:
        if rec.public_ip == public_ip and rec.subnet in usable:
            return Choice(rec.subnet, rec, f"our lease for PublicIP {public_ip}")
    taken = {rec.subnet for rec in leases}

    def free(subnet) -> bool:
        # overlap, not equality: a leftover lease of another SubnetLen must still count
        return not any(subnet.overlaps(t) for t in taken)

    if previous is not None and previous in usable and free(previous):
        return Choice(previous, None, "the subnet in our previous subnet.env")
    candidates = [s for s in config.subnets() if free(s)]
    if not candidates:
        raise OutOfSubnets(
            f"network {config.network} is full: all {len(usable)} /{config.subnet_len} subnets are taken "
            f"({len(taken & usable)} leases). Remove stale leases under the subnets prefix or use a larger Network."
        )
    # Like flannel: pick among the first 100 free ones at random.
    return Choice((rng or random).choice(candidates[:100]), None, "a free subnet")


class SubnetLeaser:
    """Acquires this node's lease and keeps it renewed in a background thread."""

    def __init__(
        self,
        store: EtcdStore,
        config: NetworkConfig,
        public_ip: str,
        backend_type: str,
        backend_data: dict,
        ttl: int = DEFAULT_TTL_S,
    ):
        self.store = store
        self.config = config
        self.public_ip = public_ip
        self.backend_type = backend_type
        self.backend_data = backend_data
        self.ttl = ttl
        self.record: SubnetLeaseRecord | None = None
        self.etcd_lease = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.healthy = False
        # exported by the agent (agent/metrics.py)
        self.renewals = Counter(
            "minikubenet_agent_lease_renewals_total",
            "Renewals of this node's subnet lease: result=ok, failed (etcd unreachable; "
            "retried) or reclaimed (the lease had expired and the subnet was claimed again)",
        )

    def acquire(self, previous: ipaddress.IPv4Network | None = None) -> SubnetLeaseRecord:
        for _ in range(RACE_RETRIES):
            choice = choose_subnet(self.config, self.store.list_leases(), self.public_ip, previous)
            rec = SubnetLeaseRecord(choice.subnet, self.public_ip, self.backend_type, self.backend_data)
            lease = self.store.grant(self.ttl)
            if choice.existing is not None:
                got = self.store.replace_lease(
                    SubnetLeaseRecord(
                        choice.existing.subnet,
                        self.public_ip,
                        self.backend_type,
                        self.backend_data,
                        raw=choice.existing.raw,
                    ),
                    lease,
                )
            else:
                got = self.store.create_lease(rec, lease)
            if got:
                rec.lease_id = lease.id
                self.record, self.etcd_lease, self.healthy = rec, lease, True
                log.info("leased subnet %s (%s), TTL %ds", rec.subnet, choice.reason, self.ttl)
                return rec
            log.info("lost the race for %s, trying again", choice.subnet)
            try:
                self.store.revoke(lease)
            except Exception:  # best effort: the unused lease expires anyway
                pass
        raise OutOfSubnets(f"could not claim a subnet of {self.config.network} after {RACE_RETRIES} races")

    def renew_interval(self) -> float:
        # Renew at a third of the TTL, so two renewals can fail before the lease expires.
        return max(1.0, self.ttl / 3)

    def start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renew", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _renew_loop(self) -> None:
        assert self.record is not None, "renewing starts after acquire()"
        interval = self.renew_interval()
        retry = RENEW_RETRY_S
        while not self._stop.wait(interval):
            try:
                ttl = self.store.refresh(self.etcd_lease)
                if ttl <= 0:
                    # The lease expired (etcd down for longer than the TTL, or etcd lost
                    # its data): claim again; our own subnet first, so pods keep their IPs.
                    log.warning("etcd lease for %s expired; claiming the subnet again", self.record.subnet)
                    self.acquire(previous=self.record.subnet)
                self.renewals.inc(result="ok" if ttl > 0 else "reclaimed")
                self.healthy = True
                interval, retry = self.renew_interval(), RENEW_RETRY_S
            except (StoreError, OutOfSubnets) as e:
                self.healthy = False
                self.renewals.inc(result="failed")
                # soon after etcd is back (0.5 s doubling to 10 s), not a fixed 10 s later
                log.warning("could not renew the lease on %s: %s; retrying in %.1fs", self.record.subnet, e, retry)
                interval, retry = min(retry, self.renew_interval()), min(retry * 2, MAX_RENEW_RETRY_S)
