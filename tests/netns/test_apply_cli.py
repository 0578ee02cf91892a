"""``minikubenet apply -f`` / ``delete -f`` / ``get netpol|ns`` against a real etcd (the
one-node lab's, with TLS and the root user, run inside its namespace as a user would with
``lab exec etcd -- minikubenet ...``): standard manifests in, tables out; a bad document
is refused with its field path, exit code 1 and nothing stored."""

from __future__ import annotations

import json

from tests.netns.test_svc_cli import keys, mkn

MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: a}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - {key: ns, operator: In, values: ["y"]}
    ports:
    - {port: serve-80-tcp, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: s-x-a, namespace: x}
spec:
  selector: {pod: a}
  ports: [{name: http, port: 80}]
"""

BAD = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: good, namespace: x}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: Exists, values: [a]}]}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/24, except: [10.0.1.0/28]}
    ports: [{port: 90, endPort: 80}, {port: a-very-long-port-name}]
---
apiVersion: v1
kind: Pod
metadata: {name: p}
"""


def test_apply_get_delete(one_node):
    p = mkn(one_node, "apply", "-f", "-", stdin=MANIFESTS)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "namespace/x created",
        "networkpolicy.networking.k8s.io/allow-client-a-via-ns-selector created",
        "service/s-x-a created",
    ]
    assert mkn(one_node, "apply", "-f", "-", stdin=MANIFESTS).stdout.count("unchanged") == 3
    netpols = mkn(one_node, "get", "netpol", "-A").stdout.splitlines()
    assert netpols[0].split() == ["NAMESPACE", "NAME", "POD-SELECTOR"]
    assert netpols[1].split() == ["x", "allow-client-a-via-ns-selector", "pod=a"]
    ns = mkn(one_node, "get", "ns").stdout
    assert "kubernetes.io/metadata.name=x,ns=x" in ns
    stored = json.loads(mkn(one_node, "get", "networkpolicies", "-n", "x", "-o", "json").stdout)[0]
    assert stored["spec"]["ingress"][0]["ports"] == [{"port": "serve-80-tcp", "protocol": "TCP"}]
    assert mkn(one_node, "get", "svc", "-n", "x").stdout.count("s-x-a") == 1

    p = mkn(one_node, "delete", "-f", "-", stdin=MANIFESTS)
    assert p.returncode == 0, p.stderr
    assert 'networkpolicy.networking.k8s.io "allow-client-a-via-ns-selector" deleted' in p.stdout
    assert keys(one_node, "/minikubenet/networkpolicies/") == [] and keys(one_node, "/minikubenet/namespaces/") == []
    p = mkn(one_node, "delete", "-f", "-", stdin=MANIFESTS)
    assert p.returncode == 1 and 'Error from server (NotFound): namespaces "x" not found' in p.stderr

    # deleting only the Namespace takes what is stored in it along (the namespace controller)
    assert mkn(one_node, "apply", "-f", "-", stdin=MANIFESTS).returncode == 0
    p = mkn(one_node, "delete", "-f", "-", stdin=MANIFESTS.split("---")[0])
    assert p.returncode == 0 and p.stdout.strip() == 'namespace "x" deleted', p.stdout + p.stderr
    assert keys(one_node, "/minikubenet/networkpolicies/") == [] and keys(one_node, "/minikubenet/services/") == []


def test_a_bad_file_is_refused_with_field_paths_and_nothing_stored(one_node):
    before = keys(one_node)
    p = mkn(one_node, "apply", "-f", "-", stdin=BAD)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    for expected in (
        "document 2 (NetworkPolicy x/bad):",
        "spec.podSelector.matchExpressions[0].values: Forbidden: may not be specified when `operator` "
        "is 'Exists' or 'DoesNotExist'",
        'spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: "10.0.1.0/28": must be a strict subset',
        "spec.ingress[0].ports[0].endPort: Invalid value: 80: must be greater than or equal to `port`",
        'spec.ingress[0].ports[1].port: Invalid value: "a-very-long-port-name": must be no more than 15',
        'document 3 (Pod p):\n  no matches for kind "Pod" in version "v1"',
    ):
        assert expected in p.stderr, p.stderr
    assert keys(one_node) == before
    p = mkn(one_node, "apply", "-f", "/nonexistent.yaml")
    assert p.returncode == 1 and "cannot read /nonexistent.yaml" in p.stderr
    p = mkn(one_node, "apply", "-f", "-", stdin="a: [b\n")
    assert p.returncode == 1 and "error parsing -" in p.stderr
