"""LoadBalancer services on bare metal: the address pool, the controller that writes
status.loadBalancer.ingress, and the layer-2 announcement (MetalLB's role)."""
