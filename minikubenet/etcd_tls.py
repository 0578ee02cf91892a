"""The certificates that close etcd: a CA, etcd's server and peer certificates, and one
client certificate per daemon kind.

etcd started with ``--client-cert-auth`` accepts only clients whose certificate the CA
signed, and with auth enabled it takes the certificate's Common Name as the user name
(etcd docs, "Role-based access control": "the CN of the client certificate is used as
the user name"). So the CN of each client certificate below *is* an etcd user, and
store/etcd_rbac.py gives each user only its key prefixes. A pod has no certificate:
it cannot even finish the TLS handshake.

    <dir>/ca.crt, ca.key                     the lab's CA (the key stays, to issue more)
    <dir>/server.crt, server.key             etcd's client-facing certificate: SANs are
                                             every member address, 127.0.0.1, localhost
    <dir>/peer.crt, peer.key                 member to member (server and client auth)
    <dir>/<user>.crt, <user>.key             agent, proxy, endpoints-controller, root

Keys are ECDSA P-256 (what cfssl and kubeadm default to for new clusters: small, fast
handshakes; Go's and gRPC's TLS stacks both take them). Files are 0600 in a 0700
directory, written through a temporary name so a reader never sees half a key.

Made with ``cryptography`` (the x509 builder); no ``openssl`` command line.

    python -m minikubenet.etcd_tls DIR --member 10.0.0.11 [--member ...]

writes the whole set (the VM cluster's provisioning uses it).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from minikubenet import private_files
from minikubenet.store.etcd import TLSFiles
from minikubenet.store.etcd_rbac import ROOT_USER, USERS

VALIDITY = datetime.timedelta(days=365)
CA_VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class CertFiles:
    """One certificate and its key on disk."""

    cert: str
    key: str


@dataclass(frozen=True)
class EtcdPki:
    """Where the files of one etcd PKI live (nothing is read or made by this class)."""

    dir: str

    def _pair(self, name: str) -> CertFiles:
        return CertFiles(os.path.join(self.dir, f"{name}.crt"), os.path.join(self.dir, f"{name}.key"))

    @property
    def ca(self) -> CertFiles:
        return self._pair("ca")

    @property
    def server(self) -> CertFiles:
        return self._pair("server")

    @property
    def peer(self) -> CertFiles:
        return self._pair("peer")

    def client(self, user: str) -> CertFiles:
        return self._pair(user)

    def client_tls(self, user: str) -> TLSFiles:
        """What a client of ``user`` passes to EtcdStore (and as --etcd-* flags)."""
        c = self.client(user)
        return TLSFiles(ca=self.ca.cert, cert=c.cert, key=c.key)


# --------------------------------------------------------------------------- issuing


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "minikubenet"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(common_name: str = "minikubenet etcd CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def subject_alt_names(addresses: list[str]) -> list[x509.GeneralName]:
    """IP SANs for addresses, DNS SANs for names; always 127.0.0.1 and localhost (the
    CLI inside etcd's own namespace or host talks to loopback)."""
    out: list[x509.GeneralName] = []
    for a in [*addresses, "127.0.0.1", "localhost"]:
        try:
            name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(a))
        except ValueError:
            name = x509.DNSName(a)
        if name not in out:
            out.append(name)
    return out


def issue(
    ca_key, ca_cert: x509.Certificate, common_name: str, *, server: bool, client: bool, addresses: Sequence[str] = ()
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf certificate signed by the CA. ``server``: for TLS servers (SANs from
    ``addresses``); ``client``: for TLS client authentication (its CN is the etcd user)."""
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(subject_alt_names(list(addresses))), critical=False)
    return key, b.sign(ca_key, hashes.SHA256())


def issue_server(ca_key, ca_cert, member_addresses: list[str]):
    """etcd's client-facing certificate, valid for every member address. Client
    authentication too: etcd 3.4's gRPC gateway dials its own gRPC port with this
    certificate, and with --client-cert-auth a server-only certificate is refused
    ("x509: certificate specifies an incompatible key usage" in etcd's log)."""
    return issue(ca_key, ca_cert, "etcd-server", server=True, client=True, addresses=member_addresses)


def issue_peer(ca_key, ca_cert, member_addresses: list[str]):
    """Member-to-member: each side is server and client (etcd --peer-client-cert-auth)."""
    return issue(ca_key, ca_cert, "etcd-peer", server=True, client=True, addresses=member_addresses)


def issue_client(ca_key, ca_cert, user: str):
    return issue(ca_key, ca_cert, user, server=False, client=True)


# --------------------------------------------------------------------------- files


def _write_private(path: str, data: bytes) -> None:
    private_files.write_atomic(path, data)  # 0600 from the first byte


def _save(files: CertFiles, key, cert: x509.Certificate) -> None:
    _write_private(
        files.key,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    _write_private(files.cert, cert.public_bytes(serialization.Encoding.PEM))


def create_pki(directory: str, member_addresses: list[str], users: tuple[str, ...] = (ROOT_USER, *USERS)) -> EtcdPki:
    """The whole set in ``directory`` (made 0700): CA, server and peer certificates for
    ``member_addresses``, one client certificate per user."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    pki = EtcdPki(directory)
    ca_key, ca_cert = make_ca()
    _save(pki.ca, ca_key, ca_cert)
    _save(pki.server, *issue_server(ca_key, ca_cert, member_addresses))
    _save(pki.peer, *issue_peer(ca_key, ca_cert, member_addresses))
    for user in users:
        _save(pki.client(user), *issue_client(ca_key, ca_cert, user))
    return pki


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minikubenet.etcd_tls", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="where to write the files (made 0700)")
    p.add_argument("--member", action="append", default=[], help="an etcd member's address or name (repeat)")
    args = p.parse_args(argv)
    try:
        pki = create_pki(args.dir, args.member)
    except (OSError, ValueError) as e:
        print(f"etcd_tls: {e}", file=sys.stderr)
        return 1
    print(f"etcd certificates in {pki.dir}: ca, server, peer, {', '.join((ROOT_USER, *USERS))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
