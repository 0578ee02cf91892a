"""The kernel-facing layer: the only code in minikubenet that changes kernel state.

Everything above it builds plans (dataclasses, rule text); the functions here apply
them with netlink (pyroute2), sysctl files and the iptables binaries. Each ``ensure_*``
is idempotent: "already exists" and "already gone" are outcomes, not errors.
"""
