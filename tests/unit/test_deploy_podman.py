"""minikubenet/deploy_podman.py: the DaemonSet's container spec turned into podman runs,
field by field, and what it refuses (pure; the real runs are tests/netns/test_deploy_image.py)."""

from __future__ import annotations

import os

import pytest

from minikubenet import deploy_check, deploy_podman
from minikubenet.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFESTS = os.path.join(REPO, "deploy", "minikubenet.yaml")


def docs() -> list[dict]:
    with open(MANIFESTS) as f:
        out = deploy_check.load(f.read())
    files = {k: f"{k}-content".encode() for k in deploy_check.SECRET_KEYS}
    return [deploy_check.secret_manifest(files) if d["kind"] == "Secret" else d for d in out]


def pod(d: list[dict]) -> dict:
    return next(x for x in d if x["kind"] == "DaemonSet")["spec"]["template"]["spec"]


def test_expand_follows_kubernetes():
    env = {"A": "x", "B": "y"}
    assert deploy_podman.expand("--n=$(A)-$(B)", env) == "--n=x-y"
    assert deploy_podman.expand("$(C) $$(A) $$", env) == "$(C) $(A) $"


def test_the_runs_are_the_spec():
    p = deploy_podman.plan(docs(), "node7", "/run/s")
    assert [(r.name, r.init) for r in p.runs] == [("install-cni", True), ("agent", False), ("proxy", False)]
    agent = list(p.runs[1].argv)
    assert agent[:6] == ["run", "--name", "minikubenet-agent", "--network=host", "-d", "--restart=always"]
    assert "--privileged" in agent
    assert "NODE_NAME=node7" in agent and "MINIKUBENET_ETCD_ENDPOINTS=https://10.0.0.1:2379" in agent
    assert "/run/netns:/run/netns:rslave" in agent and "/lib/modules:/lib/modules:ro" in agent
    assert "/run/s/minikubenet-etcd-certs:/etc/minikubenet/pki:ro" in agent
    image = agent.index(deploy_check.IMAGE)
    assert agent[image - 2 : image] == ["--entrypoint", "/opt/minikubenet/bin/minikubenet-agent"]
    assert agent[image + 1 :] == [
        "--node-name=node7",
        "--iface=",
        "--run-dir=/run/minikubenet",
        "--metrics-bind-address=127.0.0.1:10261",
    ]
    proxy = list(p.runs[2].argv)
    assert proxy[-2:] == ["--node-name=node7", "--mode=iptables"]  # $(PROXY_MODE) from the ConfigMap
    assert p.secret_files["/run/s/minikubenet-etcd-certs/agent.key"] == (b"agent.key-content", 0o400)
    assert "/run/minikubenet" in p.directories and p.files == ["/run/xtables.lock"]


def test_host_root_and_network_are_applied_to_every_host_path():
    p = deploy_podman.plan(docs(), "n2", "/s", network="ns:/run/netns/lab-n2", host_root="/tmp/h")
    assert all(d.startswith("/tmp/h/") for d in p.directories)
    assert all("--network=ns:/run/netns/lab-n2" in r.argv for r in p.runs)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda s: s["containers"][0].update(livenessProbe={}), r"containers\[0\].livenessProbe: not translated"),
        (lambda s: s.update(hostNetwork=False), "only a host-network pod"),
        (lambda s: s["volumes"].append({"name": "e", "emptyDir": {}}), r"volumes\[8\]: only hostPath and secret"),
        (
            lambda s: s["containers"][1]["env"][1]["valueFrom"]["configMapKeyRef"].update(key="nope"),
            r"containers\[1\].env\[1\]: ConfigMap minikubenet-system/minikubenet-config key 'nope' is missing",
        ),
    ],
)
def test_what_cannot_be_translated_is_refused_with_its_path(change, message):
    d = docs()
    change(pod(d))
    with pytest.raises(deploy_podman.PodmanPlanError, match=message):
        deploy_podman.plan(d, "n", "/s")


def test_a_missing_secret_is_refused_by_the_cli_without_a_traceback(tmp_path, capsys):
    import yaml

    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump_all([d for d in docs() if d["kind"] != "Secret"]))
    assert main(["deploy", "podman", str(path), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "Secret minikubenet-system/minikubenet-etcd-certs is missing" in err and "Traceback" not in err
