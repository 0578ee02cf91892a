"""Operating tools over live state: ``minikubenet trace`` and ``minikubenet doctor``.

Both read what the nodes' kernels hold now (linux/live_state.py) and what etcd holds
(the leases, the pod IP records, the Services and Pods), and reason about it purely:

    cluster.py   the cluster as both tools see it: nodes, pods, services, leases, and
                 every node's NodeSnapshot (or why it could not be read)
    trace.py     one packet's path, hop by hop, each hop with the kernel entry or rule
                 that decided it, ending in "delivered to ns/pod" or "dropped by ..."
    doctor.py    checks, each a finding with the fix; an error makes the exit code 1
    gather.py    builds the cluster view from a lab or from this host and etcd

The pure parts take snapshots, so their tests need neither root nor a lab.
"""
