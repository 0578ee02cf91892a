"""Who may touch which keys: etcd's role-based access control, one user per daemon kind.

With ``--client-cert-auth`` and auth enabled, etcd takes the Common Name of the client
certificate as the user name (etcd_tls.py issues one certificate per user below), and
a request is allowed only if one of the user's roles grants it on the whole key range
(etcd auth/store.go ``isOpPermitted``; a watch on a prefix needs read on that whole
prefix, a transaction needs read on every key it compares and write on every key it
writes, a put with a lease needs write on every key of that lease).

What each daemon really does (store/etcd.py, store/services.py, store/keys.py):

    agent                   read   <network>/config          the network config
                            rw     <network>/subnets/        its subnet lease (put with a TTL lease,
                                                             list + watch every node's lease)
                            rw     <project>/ipam/           pod IP records (compare-and-create)
                            rw     <project>/ipam-claims/    claim markers of ADDs in flight (agent/reconcile.py)
    proxy                   read   <network>/config          the pod network (--cluster-cidr default)
                            read   <project>/services/, endpoints/, pods/   list + watch
    endpoints-controller    read   <project>/services/, pods/               list + watch
                            rw     <project>/endpoints/      it writes Endpoints (compare-and-swap)
    policy                  read   <project>/networkpolicies/, namespaces/, pods/   list + watch
    root                    everything: the CLI (`network init`, `svc create`), the lab

Lease grant and keep-alive need no key permission in etcd 3.4 (any authenticated user);
attaching a lease to a key needs write on that key, which the agent has.

``etcdctl_commands`` is the plan, as the etcdctl commands an operator would type;
``apply`` runs it through any etcdctl runner (the lab's runs it inside etcd's
namespace, the VM cluster's on node1) and ends with ``auth enable``. It is run once,
on a new etcd: once auth is enabled it reports so and changes nothing.

    python -m minikubenet.store.etcd_rbac [--etcd-prefix ...] [--project-prefix ...]

runs ``etcdctl`` with the ETCDCTL_* variables of its environment (a root certificate).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

from minikubenet.store.keys import KeyLayout

ROOT_USER = "root"
AGENT, PROXY, ENDPOINTS_CONTROLLER = "agent", "proxy", "endpoints-controller"
POLICY = "policy"  # the NetworkPolicy controller (policy/daemon.py)
USERS = (AGENT, PROXY, ENDPOINTS_CONTROLLER, POLICY)


@dataclass(frozen=True)
class Grant:
    permission: str  # "read" | "write" | "readwrite"
    key: str
    prefix: bool  # True: every key starting with ``key``


def grants(layout: KeyLayout | None = None) -> dict[str, list[Grant]]:
    """user (= role) name -> what it may do, from the key layout in use."""
    layout = layout or KeyLayout()
    project = layout.project_prefix

    def kind(name: str) -> str:  # store/services.py ServiceKeys.prefix
        return f"{project}/{name}/"

    config = Grant("read", layout.config, prefix=False)
    return {
        AGENT: [
            config,
            Grant("readwrite", layout.subnets, True),
            Grant("readwrite", layout.ipam, True),
            Grant("readwrite", layout.ipam_claims, True),
        ],
        PROXY: [
            config,
            Grant("read", kind("services"), True),
            Grant("read", kind("endpoints"), True),
            Grant("read", kind("pods"), True),
        ],
        # readwrite services: the load-balancer controller it hosts writes their status
        ENDPOINTS_CONTROLLER: [
            Grant("readwrite", kind("services"), True),
            Grant("read", kind("pods"), True),
            Grant("readwrite", kind("endpoints"), True),
        ],
        POLICY: [
            Grant("read", kind("networkpolicies"), True),
            Grant("read", kind("namespaces"), True),
            Grant("read", kind("pods"), True),
        ],
    }


def etcdctl_commands(layout: KeyLayout | None = None) -> list[list[str]]:
    """The etcdctl arguments that set up the users and roles, ``auth enable`` last."""
    cmds = [["user", "add", ROOT_USER, "--no-password"], ["user", "grant-role", ROOT_USER, "root"]]
    for user, user_grants in grants(layout).items():
        cmds.append(["role", "add", user])
        for g in user_grants:
            cmds.append(
                ["role", "grant-permission", user, g.permission, g.key] + (["--prefix=true"] if g.prefix else [])
            )
        cmds += [["user", "add", user, "--no-password"], ["user", "grant-role", user, user]]
    cmds.append(["auth", "enable"])
    return cmds


class RbacError(Exception):
    pass


def apply(etcdctl: Callable[[list[str]], subprocess.CompletedProcess], layout: KeyLayout | None = None) -> bool:
    """Run the plan with ``etcdctl(args)`` (which returns a CompletedProcess with text
    output). False when auth was enabled already (nothing changed)."""
    status = etcdctl(["auth", "status"])
    if status.returncode == 0 and "Authentication Status: true" in status.stdout:
        return False
    for args in etcdctl_commands(layout):
        p = etcdctl(args)
        if p.returncode != 0:
            raise RbacError(f"etcdctl {' '.join(args)}: {(p.stderr or p.stdout).strip()}")
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minikubenet.store.etcd_rbac", description=__doc__.split("\n\n")[0])
    p.add_argument("--etcd-prefix", default="/coreos.com/network")
    p.add_argument("--project-prefix", default="/minikubenet")
    args = p.parse_args(argv)
    env = {**os.environ, "ETCDCTL_API": "3"}

    def run(a: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(["etcdctl", *a], capture_output=True, text=True, env=env)

    try:
        changed = apply(run, KeyLayout(args.etcd_prefix, args.project_prefix))
    except (RbacError, ValueError, OSError) as e:
        print(f"etcd_rbac: {e}", file=sys.stderr)
        return 1
    print("etcd: users and roles created, auth enabled" if changed else "etcd: auth already enabled, nothing changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
