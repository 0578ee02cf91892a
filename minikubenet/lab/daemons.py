"""The daemons a lab node runs, started inside its namespace: etcd and the agent.

Shared by the lab, the tests and the benchmarks, so every one of them runs the same
real etcd (Debian's ``etcd`` binary) and the same real ``minikubenet-agent``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

from minikubenet.etcd_tls import EtcdPki
from minikubenet.lab import processes
from minikubenet.lab.probes import ProbeFailed, wait_listening
from minikubenet.lab.processes import ProcessRecord
from minikubenet.linux.netns import path_of, socket_in
from minikubenet.store.etcd import TLSFiles


class DaemonFailed(Exception):
    pass


def etcd_binary() -> str:
    path = shutil.which("etcd")
    if not path:
        raise DaemonFailed("the `etcd` binary is not on PATH: install Debian's etcd-server (./setup.sh does)")
    return path


def etcd_member_argv(
    name: str,
    data_dir: str,
    client_ip: str,
    cluster: dict[str, str],
    state: str,
    port: int = 2379,
    pki: EtcdPki | None = None,
) -> list[str]:
    """The command line of ONE etcd member: ``name`` with its ``data_dir``, serving
    clients on ``client_ip`` and loopback, its peers on ``client_ip``:port+1.
    ``cluster`` is every member's name -> IP (the member itself included); ``state`` is
    "new" for the first start of the cluster, "existing" for a member that restarts on
    its data dir (etcd then reads the membership from its data, not from the flags).
    With ``pki`` (etcd_tls.py) over TLS only, clients and peers, and only for clients
    with a certificate of its CA."""
    scheme = "https" if pki else "http"
    urls = f"{scheme}://{client_ip}:{port}" + (f",{scheme}://127.0.0.1:{port}" if client_ip != "127.0.0.1" else "")
    argv = [
        etcd_binary(),
        "--name",
        name,
        "--data-dir",
        data_dir,
        "--listen-client-urls",
        urls,
        "--advertise-client-urls",
        f"{scheme}://{client_ip}:{port}",
        "--listen-peer-urls",
        f"{scheme}://{client_ip}:{port + 1}",
        "--initial-advertise-peer-urls",
        f"{scheme}://{client_ip}:{port + 1}",
        "--initial-cluster",
        ",".join(f"{n}={scheme}://{ip}:{port + 1}" for n, ip in cluster.items()),
        "--initial-cluster-state",
        state,
        "--listen-metrics-urls",
        f"http://127.0.0.1:{ETCD_HEALTH_PORT}",
        # a lab etcd keeps little history; compaction keeps its memory small
        "--auto-compaction-retention",
        "1h",
        "--logger",
        "zap",
        "--log-level",
        "warn",
    ]
    if len(cluster) == 1:
        # One member has no peer to wait for: a restarted member elects itself after one
        # election timeout (randomised 1-2x), so a short one makes a restart quick.
        # (Several members keep etcd's defaults, 100/1000 ms: a shorter timeout on a
        # busy machine would start needless elections.)
        argv += ["--heartbeat-interval", "50", "--election-timeout", "250"]
    if pki:
        argv += etcd_tls_argv(pki)
    return argv


def start_etcd_member(
    netns: str, argv: list[str], client_ip: str, log_path: str, what: str, port: int = 2379
) -> ProcessRecord:
    """Start one member (argv from ``etcd_member_argv``) and wait until it listens."""
    rec = processes.start_in_netns(netns, argv, log_path, what)
    wait_tcp(netns, client_ip, port, rec, timeout=20.0)
    return rec


def etcd_tls_argv(pki: EtcdPki) -> list[str]:
    """etcd's flags for TLS with client-certificate authentication, clients and peers
    (etcd op-guide/security.md): a client without a certificate signed by the CA is
    refused in the handshake; with auth enabled (store/etcd_rbac.py) the certificate's
    CN is the user whose roles decide every request."""
    return [
        "--client-cert-auth",
        "--trusted-ca-file",
        pki.ca.cert,
        "--cert-file",
        pki.server.cert,
        "--key-file",
        pki.server.key,
        "--peer-client-cert-auth",
        "--peer-trusted-ca-file",
        pki.ca.cert,
        "--peer-cert-file",
        pki.peer.cert,
        "--peer-key-file",
        pki.peer.key,
    ]


ETCD_HEALTH_PORT = 2381  # --listen-metrics-urls: /health and /metrics, loopback of the member's netns only


def etcd_healthy(netns: str, ip: str = "127.0.0.1", port: int = ETCD_HEALTH_PORT, timeout: float = 1.0) -> bool:
    """etcd's own health check (``GET /health``): true when the member is up, the
    cluster has a leader, and a read through it succeeds. Asked on the member's metrics
    listener, plain HTTP on the loopback of its own namespace: the client port takes
    only clients with a certificate, and nothing outside the namespace (a pod) reaches
    this one. ``ip`` is kept for the callers' sake; the check always asks loopback."""
    s = socket_in(path_of(netns), socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        body = data.partition(b"\r\n\r\n")[2]
        return json.loads(body or b"{}").get("health") == "true"
    except (OSError, ValueError, AttributeError):
        return False
    finally:
        s.close()


def wait_tcp(netns: str, ip: str, port: int, rec: ProcessRecord, timeout: float) -> None:
    """Until the daemon ``rec`` accepts on ip:port (lab/probes.py's wait, with the
    daemon's log in the message when it dies or never listens)."""
    try:
        wait_listening(netns, ip, port, timeout, alive=rec.alive)
    except ProbeFailed:
        if not rec.alive():
            raise DaemonFailed(
                f"{rec.what} exited; its log ({rec.log}) ends with:\n{processes.tail(rec.log)}"
            ) from None
        raise DaemonFailed(
            f"{rec.what} does not listen on {ip}:{port} after {timeout:.0f}s; log {rec.log}:\n{processes.tail(rec.log)}"
        ) from None


def etcdctl(netns: str, endpoint: str, *args: str, tls: TLSFiles | None = None) -> str:
    p = etcdctl_run(netns, endpoint, list(args), tls)
    if p.returncode != 0:
        raise DaemonFailed(f"etcdctl {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


AGENT_METRICS_PORT = 10261  # the agent's --metrics-bind-address port (its default too)


def etcdctl_run(netns: str, endpoint: str, args: list[str], tls: TLSFiles | None = None) -> subprocess.CompletedProcess:
    # everything through the environment: etcdctl refuses a flag that an ETCDCTL_*
    # variable also sets ("conflicting environment variable ... is shadowed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env.update((tls or TLSFiles()).env(endpoint))
    return subprocess.run(["ip", "netns", "exec", netns, "etcdctl", *args], capture_output=True, text=True, env=env)


def agent_argv(
    etcd_endpoint: str, public_ip: str, run_dir: str, node_name: str, extra=(), tls: TLSFiles | None = None
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "minikubenet.agent.main",
        "--etcd-endpoints",
        etcd_endpoint,
        *(tls.argv() if tls else []),
        "--public-ip",
        public_ip,
        "--run-dir",
        run_dir,
        "--node-name",
        node_name,
        *extra,
    ]


POLICY_HEALTHZ_PORT = 10257  # minikubenet-policy's /healthz, loopback of the node namespace
POLICY_METRICS_PORT = 10258


def policy_argv(etcd_endpoint: str, node_name: str, mode: str, tls: TLSFiles | None = None) -> list[str]:
    """The node's NetworkPolicy controller (policy/daemon.py), in the proxy's mode; it
    syncs as fast as the lab's proxies (at most every 0.1 s, a flush check every 5 s)."""
    return [
        sys.executable,
        "-m",
        "minikubenet.policy.daemon",
        "--etcd-endpoints",
        etcd_endpoint,
        *(tls.argv() if tls else []),
        "--node-name",
        node_name,
        "--mode",
        mode,
        "--min-sync-period",
        "0.1",
        "--sync-period",
        "5",
        "--healthz-bind-address",
        f"127.0.0.1:{POLICY_HEALTHZ_PORT}",
        "--metrics-bind-address",
        f"127.0.0.1:{POLICY_METRICS_PORT}",
    ]


def agent_ready(socket_path: str) -> bool:
    """True when the agent at ``socket_path`` answers STATUS with "ready" (it holds a
    lease and etcd answers). A stale socket file from a killed agent refuses connections."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5.0)
    try:
        s.connect(socket_path)
        s.sendall(
            json.dumps(
                {
                    "command": "STATUS",
                    "mode": "main",
                    "env": {},
                    "config": {"cniVersion": "1.1.0", "name": "minikubenet"},
                }
            ).encode()
        )
        s.shutdown(socket.SHUT_WR)
        answer = json.loads(s.makefile("rb").read() or b"{}")
        return "result" in answer
    except (OSError, ValueError):
        return False
    finally:
        s.close()
