"""minikubenet: a minimal, real, Kubernetes-style pod network.

Read DESIGN in the README first. Each concept lives in one small module:
``cni/`` speaks the CNI protocol, ``ipam/`` does address arithmetic and pod IP
allocation, ``store/`` is the only code that talks to etcd, ``linux/`` the only
code that touches the kernel, ``agent/`` is the node daemon and ``lab/`` builds
a whole cluster out of network namespaces.
"""

__version__ = "0.1.0"
