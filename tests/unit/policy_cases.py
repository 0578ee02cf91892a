"""Small cluster builders shared by the policy tests (unit, hypothesis, kernel)."""

from __future__ import annotations

from minikubenet.policy.model import Cluster, NamedPort, Pod, namespace_labels, policy_from_k8s


def netpol(name: str, spec: dict, namespace: str = "x") -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def ns_doc(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(
    ns: str,
    name: str,
    ip: str,
    node: str = "n1",
    ports=(("serve-80-tcp", 80, "TCP"), ("serve-81-tcp", 81, "TCP")),
    **labels: str,
) -> Pod:
    return Pod(ns, name, ip, node, {"pod": name, **labels}, tuple(NamedPort(*p) for p in ports))


def xyz_cluster(policies=(), ns_labels=None) -> Cluster:
    """The upstream e2e layout: namespaces x, y, z; pods a, b, c in each (9 pods)."""
    pods, i = [], 1
    for ns in ("x", "y", "z"):
        for name in ("a", "b", "c"):
            pods.append(pod(ns, name, f"10.244.{1 + (i % 2)}.{10 + i}", node="n1" if i % 2 else "n2"))
            i += 1
    labels = ns_labels or {}
    namespaces = {ns: namespace_labels(ns_doc(ns, ns=ns, **labels.get(ns, {}))) for ns in ("x", "y", "z")}
    return Cluster([policy_from_k8s(p) for p in policies], pods, namespaces)
