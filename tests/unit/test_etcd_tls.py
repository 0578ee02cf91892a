"""The etcd PKI (etcd_tls.py) and the etcd users and roles (store/etcd_rbac.py): what
each certificate says and who may touch which keys, without an etcd."""

from __future__ import annotations

import ipaddress
import os
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from minikubenet import etcd_tls
from minikubenet.store import etcd_rbac
from minikubenet.store.etcd import TLSFiles
from minikubenet.store.keys import KeyLayout


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return etcd_tls.create_pki(str(tmp_path_factory.mktemp("pki") / "etcd"), ["172.31.0.2", "10.0.0.12", "etcd-1"])


def load(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def cn(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def usages(cert: x509.Certificate) -> set:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_every_file_is_private(pki):
    assert stat.S_IMODE(os.stat(pki.dir).st_mode) == 0o700
    names = sorted(os.listdir(pki.dir))
    assert "ca.key" in names and "root.crt" in names and not [n for n in names if n.endswith(".tmp")]
    for name in names:
        assert stat.S_IMODE(os.stat(os.path.join(pki.dir, name)).st_mode) == 0o600, name


def test_the_server_certificate_names_every_member_and_loopback(pki):
    cert = load(pki.server.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("172.31.0.2", "10.0.0.12", "127.0.0.1")
    }
    assert set(san.get_values_for_type(x509.DNSName)) == {"etcd-1", "localhost"}
    # client auth too: etcd's own gRPC gateway dials itself with it
    assert usages(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert usages(load(pki.peer.cert)) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_one_client_certificate_per_user_signed_by_the_ca(pki):
    ca = load(pki.ca.cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for user in (etcd_rbac.ROOT_USER, *etcd_rbac.USERS):
        cert = load(pki.client(user).cert)
        assert cn(cert) == user  # etcd's user name under --client-cert-auth
        assert usages(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        cert.verify_directly_issued_by(ca)


def test_client_tls_flags_and_environment(pki):
    tls = pki.client_tls("proxy")
    assert tls == TLSFiles(pki.ca.cert, pki.client("proxy").cert, pki.client("proxy").key)
    assert tls.argv() == ["--etcd-cafile", tls.ca, "--etcd-certfile", tls.cert, "--etcd-keyfile", tls.key]
    env = tls.env("https://127.0.0.1:2379")
    assert env["ETCDCTL_CACERT"] == env["MINIKUBENET_ETCD_CAFILE"] == tls.ca
    assert env["ETCDCTL_CERT"] == tls.cert and env["ETCDCTL_KEY"] == tls.key
    assert env["ETCDCTL_ENDPOINTS"] == env["MINIKUBENET_ETCD_ENDPOINTS"] == "https://127.0.0.1:2379"
    assert TLSFiles().argv() == [] and "ETCDCTL_CERT" not in TLSFiles().env("http://x:2379")


def _allowed(grants, permission: str, key: str) -> bool:
    return any(
        g.permission in (permission, "readwrite") and (key.startswith(g.key) if g.prefix else key == g.key)
        for g in grants
    )


@pytest.mark.parametrize("layout", [KeyLayout(), KeyLayout("/cluster2/network", "/cluster2/mkn")])
def test_each_user_may_touch_only_its_keys(layout):
    g = etcd_rbac.grants(layout)
    net, proj = layout.network_prefix, layout.project_prefix
    lease, ip = f"{net}/subnets/10.244.1.0-24", f"{proj}/ipam/10.244.1.0-24/10.244.1.5"
    claim = f"{proj}/ipam-claims/10.244.1.0-24/10.244.1.5"
    svc, eps, pod = f"{proj}/services/default/web", f"{proj}/endpoints/default/web", f"{proj}/pods/default/p"
    config = f"{net}/config"
    expect = {
        etcd_rbac.AGENT: {"read": {config, lease, ip, claim}, "write": {lease, ip, claim}},
        etcd_rbac.PROXY: {"read": {config, svc, eps, pod}, "write": set()},
        etcd_rbac.ENDPOINTS_CONTROLLER: {"read": {svc, pod, eps}, "write": {svc, eps}},
    }
    every = {config, lease, ip, claim, svc, eps, pod, f"{proj}/serviceips/10.96.0.1", f"{proj}/nodeports/tcp/30080"}
    for user, allowed in expect.items():
        for perm in ("read", "write"):
            assert {k for k in every if _allowed(g[user], perm, k)} == allowed[perm], (user, perm)


def test_the_plan_creates_users_then_enables_auth():
    cmds = etcd_rbac.etcdctl_commands()
    assert cmds[0] == ["user", "add", "root", "--no-password"] and cmds[-1] == ["auth", "enable"]
    for user in etcd_rbac.USERS:
        assert ["user", "grant-role", user, user] in cmds
    assert ["role", "grant-permission", "proxy", "read", "/minikubenet/services/", "--prefix=true"] in cmds


def test_apply_changes_nothing_when_auth_is_on_already():
    import subprocess

    calls = []

    def etcdctl(args):
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, "Authentication Status: true\nAuthRevision: 9\n", "")

    assert etcd_rbac.apply(etcdctl) is False
    assert calls == [["auth", "status"]]


def test_apply_stops_at_the_first_refusal():
    import subprocess

    def etcdctl(args):
        if args[:2] == ["auth", "status"]:
            return subprocess.CompletedProcess(args, 0, "Authentication Status: false\n", "")
        return subprocess.CompletedProcess(args, 1 if args[0] == "role" else 0, "", "Error: etcdserver: boom")

    with pytest.raises(etcd_rbac.RbacError, match="role add agent: Error: etcdserver: boom"):
        etcd_rbac.apply(etcdctl)


def test_a_refusal_is_not_reported_as_an_outage():
    """PERMISSION_DENIED is StoreForbidden, naming the missing role; UNAVAILABLE stays
    StoreUnavailable (what the CNI handler and the watches retry)."""
    import grpc

    from minikubenet.store.etcd import StoreForbidden, StoreUnavailable, _wrap_errors

    class Denied(grpc.RpcError):
        def __init__(self, code):
            self._code = code

        def code(self):
            return self._code

        def details(self):
            return "etcdserver: permission denied"

    class Store:
        endpoints_text = "https://10.0.0.1:2379"

        @_wrap_errors
        def create_pod_ip(self, code):
            raise Denied(code)

    with pytest.raises(StoreForbidden, match="refused create_pod_ip: etcdserver: permission denied"):
        Store().create_pod_ip(grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(StoreUnavailable):
        Store().create_pod_ip(grpc.StatusCode.UNAVAILABLE)


def test_every_command_takes_the_tls_options_from_flags_or_environment(monkeypatch):
    """flannel's flag names on the agent, the proxy, the controller and the CLI; the
    MINIKUBENET_ETCD_* variables are their defaults (what `lab exec etcd` sets)."""
    monkeypatch.setenv("MINIKUBENET_ETCD_CAFILE", "/pki/ca.crt")
    monkeypatch.setenv("MINIKUBENET_ETCD_CERTFILE", "/pki/root.crt")
    monkeypatch.setenv("MINIKUBENET_ETCD_KEYFILE", "/pki/root.key")
    from minikubenet.agent.main import build_parser as agent_parser
    from minikubenet.cli import build_parser as cli_parser
    from minikubenet.proxy.daemon import build_parser as proxy_parser

    want = TLSFiles("/pki/ca.crt", "/pki/root.crt", "/pki/root.key")
    assert TLSFiles.from_args(cli_parser().parse_args(["get", "pods"])) == want
    assert TLSFiles.from_args(proxy_parser().parse_args([])) == want
    args = agent_parser().parse_args(["--etcd-certfile", "/pki/agent.crt", "--etcd-keyfile", "/pki/agent.key"])
    assert TLSFiles.from_args(args) == TLSFiles("/pki/ca.crt", "/pki/agent.crt", "/pki/agent.key")
