"""minikubenet: a minimal, real, Kubernetes-style pod network.

Read docs/architecture.md first (the layers and which may import which), then the
README's "The parts". Each concept lives in one small module: ``cni/`` speaks the CNI
protocol, ``ipam/`` does address arithmetic and pod IP allocation, ``store/`` talks to
etcd, ``linux/`` touches the kernel, ``agent/`` is the node daemon, ``proxy/`` the
service proxy and ``lab/`` builds a whole cluster out of network namespaces.
"""

__version__ = "0.1.0"
