"""NetworkPolicy (networking.k8s.io/v1): Kubernetes' pod firewall, enforced per node.

selectors.py        label selectors (matchLabels, matchExpressions)
model.py            policies and pods parsed; ``verdict(src, dst, port, proto)``: the
                    semantics, pure, the reference every rendering is tested against
plan.py             one node's plan: which local pods are isolated, each policy's rules
                    compiled to address/port "atoms" (named ports resolved)
iptables_render.py  the plan as ``iptables-restore`` text (filter FORWARD)
nft_render.py       the plan as ``nft -f`` text (own table, sets)
daemon.py           ``minikubenet-policy``: watch etcd, render, one atomic apply per sync
"""
