"""minikubenet-proxy: a kube-proxy-like service proxy, one per node.

A Service is a virtual IP (the ClusterIP) plus a port; nothing in the cluster owns that
address. Every node rewrites packets sent to it: the first packet of a connection is
DNATed to one ready pod (an *endpoint*), and conntrack rewrites the rest of the flow,
both ways. This package is the pure core of that rewriting, in kube-proxy's shape:

    ../k8s_objects.py  Service / Endpoint / Pod, parsed and validated from k8s-shaped JSON;
                       derive_endpoints(): which pods back a service port (the domain the
                       proxy shares with the store and the endpoints controller)
    model.py           RenderOptions (kube-proxy's flags) and kube-proxy's orderings
    naming.py          chain names, computed exactly as kube-proxy computes them
    iptables_render.py services + endpoints -> the exact ``iptables-restore`` text
                       (kube-proxy's iptables mode: KUBE-SERVICES -> KUBE-SVC -> KUBE-SEP),
                       full and partial (only changed services) syncs
    nft_render.py      the same for nftables: one table, verdict maps, numgen
    tracer.py          walks rendered iptables text like a packet would, for tests and
                       for people asking "where does my packet go?"

Nothing above touches the kernel; ``minikubenet.linux`` applies the text. Around that
pure core, the running proxy:

    endpoints_controller.py  the one place endpoints are derived: pods x selectors ->
                             Endpoints objects in etcd (kube-controller-manager's job)
    syncers.py         one sync = one iptables-restore / nft -f; full and partial syncs,
                       flush detection, stale UDP conntrack cleanup
    daemon.py          minikubenet-proxy: watch etcd, decide when to sync, metrics, healthz
    metrics.py         Prometheus text format and kube-proxy's health semantics

The `minikubenet svc ...` and `minikubenet get ...` commands are minikubenet/cli/services.py.
"""
