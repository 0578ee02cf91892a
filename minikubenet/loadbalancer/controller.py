"""The load-balancer controller: writes status.loadBalancer.ingress of LoadBalancer
services from the configured address pool (``pool.allocate``), and takes it away
when a service stops being a LoadBalancer. Runs beside the endpoints controller (as
kube-controller-manager hosts both kinds) when that is started with ``--lb-pool``.

Each write is a compare-and-swap on the service (``ServiceStore.set_load_balancer_
ingress``): a service edited meanwhile is simply looked at again on the next pass,
never overwritten with a stale spec. Services waiting for an address carry the
reason as a status condition (``LoadBalancerPending``: MetalLB's "no available IPs").
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Mapping, Sequence

from minikubenet.k8s_objects import Service, ValidationError, service_from_k8s
from minikubenet.loadbalancer.pool import Assignment, allocate
from minikubenet.store.services import ServiceStore

log = logging.getLogger("minikubenet.loadbalancer")


def parsed_services(docs: Mapping[str, dict]) -> dict[str, Service]:
    out = {}
    for key, doc in docs.items():
        try:
            out[key] = service_from_k8s(doc)
        except ValidationError:
            continue                 # the endpoints controller reports malformed ones
    return out


def _pending_message(doc: dict) -> str:
    for c in (doc.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "LoadBalancerPending":
            return str(c.get("message", ""))
    return ""


def plan_status(docs: Mapping[str, dict], pool: Sequence[ipaddress.IPv4Address]) -> dict[str, Assignment]:
    """"ns/name" -> the status to write, only for services whose status differs."""
    services = parsed_services(docs)
    wanted = allocate(services, pool)
    changes = {}
    for key, svc in services.items():
        a = wanted.get(key, Assignment(None))
        have = (svc.load_balancer_ips[0] if svc.load_balancer_ips else None, _pending_message(docs[key]))
        raw_ingress = ((docs[key].get("status") or {}).get("loadBalancer") or {}).get("ingress")
        if svc.type != "LoadBalancer" and not raw_ingress and not have[1]:
            continue                 # never was a LoadBalancer: nothing to clear
        if have != (a.ip, a.message if a.ip is None else "") or (svc.type != "LoadBalancer" and raw_ingress):
            changes[key] = a
    return changes


def reconcile(store: ServiceStore, pool: Sequence[ipaddress.IPv4Address],
              docs: Mapping[str, dict] | None = None) -> int:
    """One pass; returns the number of services whose status was written."""
    docs = store.list_services() if docs is None else docs
    written = 0
    for key, a in sorted(plan_status(docs, pool).items()):
        ns, name = key.split("/", 1)
        # The message of a corrected IP is logged, not kept: the status is then right.
        if store.set_load_balancer_ingress(ns, name, [str(a.ip)] if a.ip else [],
                                           message="" if a.ip else a.message):
            written += 1
            if a.ip:
                log.info("service %s: ingress IP %s%s", key, a.ip, f" ({a.message})" if a.message else "")
            else:
                log.warning("service %s waits: %s", key, a.message or "not a LoadBalancer any more")
    return written
