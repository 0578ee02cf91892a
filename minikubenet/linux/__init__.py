"""The kernel-facing layer: the only code in minikubenet that changes kernel state.

Everything above it builds plans (dataclasses, rule text); the functions here apply
them with netlink (pyroute2), sysctl files and the iptables binaries. Each ``ensure_*``
is idempotent: "already exists" and "already gone" are outcomes, not errors.

Code above this layer reaches the kernel through it and never opens a netlink socket
or runs ``nft``/``iptables`` itself (tests/unit/test_kernel_boundary.py). The CNI
handler gets its kernel as an object, ``pod_plumbing.PodPlumbing`` (netlink, or a fake
in the unit tests); the overlay loop as ``overlay_routes.NetlinkKernel``; the proxy
runs its rules through ``iptables.py`` and ``nft.py``.
"""
