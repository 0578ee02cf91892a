#!/usr/bin/env python3
"""The IPAM plugin binary ``minikubenet-ipam``: pod IPs from the agent's etcd records,
for any main plugin that delegates IPAM (SPEC §4 "Plugin delegation").

A main plugin such as the reference ``bridge`` runs an IPAM plugin named by its
``ipam.type``, with the same ``CNI_*`` environment and the *whole* network config on
stdin. This one forwards the request to the node agent with ``"mode": "ipam"``; the
agent claims an IP in etcd exactly as for its own pods (one key per IP, created in a
transaction, owner = container ID + interface) and answers with the abbreviated
result the spec defines for IPAM plugins: ``ips`` (address + gateway, no interface
index) and ``routes``; the main plugin makes the interfaces. DEL releases the IP,
CHECK confirms the record, GC releases what is no longer valid, STATUS reports.

Example, the reference bridge on the agent's own bridge, IPs from minikubenet::

    {"cniVersion": "1.0.0", "name": "pods", "plugins": [
      {"type": "bridge", "bridge": "cni0", "isGateway": true, "mtu": 1450,
       "ipam": {"type": "minikubenet-ipam", "agentSocket": "/run/minikubenet/agent.sock"}}]}

It is the same code as ``minikubenet`` (shim.py) in another mode: this file is what
``cni-plugins/minikubenet-ipam`` points at; ``minikubenet install`` writes a copy of
shim.py with ``MODE = "ipam"`` baked in instead.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

import shim  # noqa: E402  (the directory above, whatever the symlink's name)

if __name__ == "__main__":
    shim.exit_now(shim.main(mode="ipam"))
