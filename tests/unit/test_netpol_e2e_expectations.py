"""The expected matrices of the upstream netpol e2e cases (tests/lab/test_netpol_e2e.py)
against the pure policy model (minikubenet.policy.model ``verdict``), without a lab.

The lab tests state each expectation by hand, from the upstream suite; the model is
another, independent reading of the NetworkPolicy semantics. Here every case runs
through a driver that keeps the cluster as data (policies, namespace labels, pod labels,
made-up pod IPs in one /24 per node) and asks the model for each cell: both readings must
agree on every pair (the diagonal excepted, as upstream). This runs in milliseconds, so
a wrong expectation or a wrong model is caught before any lab is built."""

from __future__ import annotations

import inspect
import json

import pytest

model = pytest.importorskip(
    "minikubenet.policy.model", reason="the policy model (minikubenet.policy) is not in this tree"
)
if not all(hasattr(model, n) for n in ("Cluster", "Address", "verdict", "policy_from_k8s", "pod_from_k8s")):
    pytest.skip(
        "minikubenet.policy.model has no Cluster/Address/verdict/policy_from_k8s/pod_from_k8s", allow_module_level=True
    )

from minikubenet.k8s_objects import pod_doc  # noqa: E402
from minikubenet.lab.reachability import Reachability, compare  # noqa: E402
from tests.lab import test_netpol_e2e as e2e  # noqa: E402

NODE_SUBNET = {"a": 1, "b": 2, "c": 3}  # pod a on n1, b on n2, c on n3, as in the lab


class ModelDriver:
    """The lab driver's interface (apply, delete, relabel, ip_of, check) over data."""

    def __init__(self):
        self.policies: dict[str, dict] = {}
        self.namespaces = {ns: {"ns": ns, e2e.NAME_LABEL: ns} for ns in e2e.NAMESPACES}
        self.labels = {ref: {"pod": ref.split("/")[1]} for ref in e2e.PODS}

    def apply(self, *docs) -> None:
        for d in json.loads(json.dumps(docs)):
            meta = d["metadata"]
            if d["kind"] == "NetworkPolicy":
                self.policies[f"{meta['namespace']}/{meta['name']}"] = d
            else:
                self.namespaces[meta["name"]] = {**meta.get("labels", {}), e2e.NAME_LABEL: meta["name"]}

    def delete(self, *docs) -> None:
        for d in docs:
            self.policies.pop(f"{d['metadata']['namespace']}/{d['metadata']['name']}")

    def relabel(self, ref: str, labels: dict) -> None:
        self.labels[ref] = dict(labels)

    def ip_of(self, ref: str) -> str:
        ns, name = ref.split("/")
        return f"10.244.{NODE_SUBNET[name]}.{10 + e2e.NAMESPACES.index(ns)}"

    def check(self, port: int, protocol: str, expected: Reachability) -> None:
        pods = {}
        for ref in e2e.PODS:
            ns, name = ref.split("/")
            doc = pod_doc(
                ns,
                name,
                self.ip_of(ref),
                f"n{NODE_SUBNET[name]}",
                self.labels[ref],
                ports=[(f"serve-{p}-{q.lower()}", p, q) for p in (80, 81) for q in ("TCP", "UDP")],
            )
            pods[ref] = model.pod_from_k8s(doc)
        cluster = model.Cluster(
            [model.policy_from_k8s(d) for d in self.policies.values()], list(pods.values()), self.namespaces
        )
        observed = {
            (a, b): bool(
                model.verdict(
                    cluster, model.Address(pods[a].ip, pods[a]), model.Address(pods[b].ip, pods[b]), port, protocol
                )
            )
            for a in e2e.PODS
            for b in e2e.PODS
        }
        wrong, text = compare(e2e.PODS, expected.expected, observed)
        assert not wrong, f"{port}/{protocol}: the model and the expectation differ:\n{text}"


def cases():
    """Every case of the lab module, with each of its parameter sets."""
    out = []
    for name, fn in vars(e2e).items():
        if not name.startswith("test_") or not callable(fn):
            continue
        marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
        if not marks:
            out.append(pytest.param(fn, {}, id=name))
            continue
        argname, values = marks[0].args[0], marks[0].args[1]
        ids = marks[0].kwargs.get("ids") or [str(v) for v in values]
        out += [pytest.param(fn, {argname: v}, id=f"{name}[{i}]") for v, i in zip(values, ids)]
    return out


@pytest.mark.parametrize("case, params", cases())
def test_the_expected_matrix_is_the_models(case, params):
    assert set(inspect.signature(case).parameters) == {"clean", *params}
    case(ModelDriver(), **params)


def test_a_wrong_expectation_is_caught():
    driver = ModelDriver()
    driver.apply(e2e.policy("deny-ingress", ingress=[]))
    with pytest.raises(AssertionError, match="the model and the expectation differ"):
        driver.check(80, "TCP", e2e.all_open())
