"""deploy/minikubenet.yaml, validated offline (issue 15 item 5): against the Kubernetes
schemas kubernetes-validate bundles, strict, and against what a schema cannot know
(minikubenet/deploy_check.py). Each kind of mistake a person makes is tried and must
be named with its field path, through ``minikubenet deploy check`` without a traceback.
"""

from __future__ import annotations

import copy
import os

import pytest
import yaml

from minikubenet import deploy_check
from minikubenet.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFESTS = os.path.join(REPO, "deploy", "minikubenet.yaml")
FILES = {k: f"-----BEGIN {k}-----\nMIIB\n-----END {k}-----\n".encode() for k in deploy_check.SECRET_KEYS}


def shipped() -> list[dict]:
    with open(MANIFESTS) as f:
        return deploy_check.load(f.read(), MANIFESTS)


def filled() -> list[dict]:
    """The shipped manifests with the Secret filled in, as `deploy secret` makes it."""
    return [deploy_check.secret_manifest(FILES) if d["kind"] == "Secret" else d for d in shipped()]


def text(docs: list[dict]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def daemonset(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "DaemonSet")


@pytest.mark.parametrize("version", ["1.30.0", deploy_check.KUBERNETES_VERSION])
def test_the_shipped_manifests_match_the_kubernetes_schemas_strictly(version):
    docs = shipped()
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "ConfigMap", "Secret", "DaemonSet"]
    assert deploy_check.schema_findings(docs, version) == []


def test_filled_in_the_deployment_has_no_finding_at_all():
    assert deploy_check.check(text(filled())) == []


def test_the_daemonset_is_the_seeds_shape():
    spec = daemonset(shipped())["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert [c["name"] for c in spec["containers"]] == ["agent", "proxy"]
    assert all(c["securityContext"]["privileged"] for c in spec["containers"] + spec["initContainers"])
    host = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert {"/opt/cni/bin", "/etc/cni/net.d", "/run/minikubenet"} <= host
    init = spec["initContainers"][0]
    assert init["args"][0] == "install" and "--bin-dir=/host/opt/cni/bin" in init["args"]
    envs = {e["name"] for c in spec["containers"] for e in c["env"]}
    assert "MINIKUBENET_ETCD_ENDPOINTS" in envs  # the seed's ETCD_ENDPOINTS


def test_the_shipped_secret_is_named_as_still_to_be_filled():
    findings = [str(f) for f in deploy_check.check(text(shipped()))]
    assert len(findings) == 5 and all("is empty" in f for f in findings), findings
    assert any("data.agent.key" in f for f in findings)


def test_a_wrong_image_name_is_named_with_its_field_path():
    docs = filled()
    daemonset(docs)["spec"]["template"]["spec"]["containers"][1]["image"] = "localhost/minikubnet:0.1.0"
    [f] = deploy_check.check(text(docs))
    assert f.path == "spec.template.spec.containers[1].image"
    assert "'localhost/minikubnet:0.1.0' is not the image deploy/build-image.sh builds" in f.message
    assert deploy_check.IMAGE in f.message


def test_a_missing_secret_is_named():
    docs = [d for d in filled() if d["kind"] != "Secret"]
    findings = [str(f) for f in deploy_check.check(text(docs))]
    assert "manifests: no Secret: the deployment needs one (deploy/minikubenet.yaml has it)" in findings
    assert any(
        "volumes[7].secret.secretName: Secret minikubenet-system/minikubenet-etcd-certs is missing" in f
        for f in findings
    ), findings


def test_a_misspelt_field_fails_the_schema_with_its_path():
    docs = filled()
    c = daemonset(docs)["spec"]["template"]["spec"]["containers"][0]
    c["volumeMount"] = c.pop("volumeMounts")
    findings = deploy_check.check(text(docs))
    assert any(
        f.path == "spec.template.spec.containers[0]" and "'volumeMount' was unexpected" in f.message for f in findings
    ), findings


def test_other_broken_references_are_named():
    docs = filled()
    spec = daemonset(docs)["spec"]["template"]["spec"]
    spec["hostNetwork"] = False
    spec["containers"][0]["env"][1]["valueFrom"]["configMapKeyRef"]["key"] = "etcd-endpoints"
    spec["containers"][0]["volumeMounts"][0]["name"] = "rundir"
    secret = next(d for d in docs if d["kind"] == "Secret")
    del secret["data"]["proxy.key"]
    said = "\n".join(str(f) for f in deploy_check.check(text(docs)))
    assert "hostNetwork: must be true" in said
    assert "has no key 'etcd-endpoints'" in said
    assert "containers[0].volumeMounts[0].name: no volume named 'rundir'" in said
    assert "no key 'proxy.key' (MINIKUBENET_ETCD_KEYFILE of proxy reads it)" in said


def test_yaml_that_is_not_yaml_names_the_line():
    with pytest.raises(deploy_check.ManifestError, match=r"not valid YAML \(line 2, column 12\): mapping values"):
        deploy_check.load("kind: Secret\n apiVersion: v1\n")


def test_the_cli_prints_findings_and_exits_1_without_a_traceback(tmp_path, capsys):
    docs = copy.deepcopy(filled())
    daemonset(docs)["spec"]["template"]["spec"]["initContainers"][0]["image"] = "minikubenet:latest"
    path = tmp_path / "m.yaml"
    path.write_text(text(docs))
    assert main(["deploy", "check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "initContainers[0].image: 'minikubenet:latest' is not the image" in out
    assert "1 problem (above)" in err and "Traceback" not in err
    path.write_text(text(filled()))
    assert main(["deploy", "check", str(path)]) == 0


def test_deploy_secret_makes_the_secret_from_a_pki_directory(tmp_path, capsys):
    for k, v in FILES.items():
        (tmp_path / k).write_bytes(v)
    assert main(["deploy", "secret", "--pki", str(tmp_path)]) == 0
    secret = yaml.safe_load(capsys.readouterr().out)
    assert secret == deploy_check.secret_manifest(FILES)
    (tmp_path / "proxy.key").unlink()
    assert main(["deploy", "secret", "--pki", str(tmp_path)]) == 1
    assert "proxy.key" in capsys.readouterr().err


def test_a_document_that_is_not_an_object_is_named():
    with pytest.raises(deploy_check.ManifestError, match="document 2 is not a Kubernetes object"):
        deploy_check.load("kind: Namespace\napiVersion: v1\n---\n- just\n- a list\n")


def test_json_manifests_load_too_as_a_list(monkeypatch):
    import builtins
    import json

    docs = filled()
    real_import = builtins.__import__

    def no_yaml(name, *a, **kw):  # a node's venv: no PyYAML
        if name == "yaml":
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_yaml)
    as_list = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    assert [d["kind"] for d in deploy_check.load(as_list)] == [d["kind"] for d in docs]
    assert len(deploy_check.load(json.dumps(docs))) == len(docs)
    with pytest.raises(deploy_check.ManifestError, match="needs PyYAML"):
        deploy_check.load("kind: Namespace\n")
