"""The proxy tests' shared input: the k8s-shaped cluster in tests/unit/golden/proxy_cluster.json."""

from __future__ import annotations

import json
from pathlib import Path

from minikubenet.k8s_objects import endpoints_from_k8s, service_from_k8s

GOLDEN = Path(__file__).parent / "unit" / "golden"


def load_cluster(*names):
    """(services, endpoints by service port, the raw document); only ``names`` if given."""
    doc = json.loads((GOLDEN / "proxy_cluster.json").read_text())
    services = [service_from_k8s(d, doc["service_cidr"]) for d in doc["services"]]
    endpoints = {}
    for d in doc["endpoints"]:
        endpoints.update(endpoints_from_k8s(d))
    if names:
        services = [s for s in services if s.name in names]
    return services, endpoints, doc
