"""``minikubenet-agent``: the node daemon, one per node (flannel's flanneld, plus the
CNI work that flannel leaves to the reference plugins).

Start-up, in order, each step a clear error if it cannot be done:

1. connect to etcd and read the network config (waiting a while for both);
2. find the node's underlay interface and public IP, and from its MTU the pod MTU
   (underlay − 50 with VXLAN: 20 IPv4 + 8 UDP + 8 VXLAN + 14 inner Ethernet);
3. prepare the backend (agent/backends/): with VXLAN create ``flannel.<VNI>`` now,
   because its MAC goes into the lease;
4. lease a subnet for this node (subnet_lease.py) and keep renewing it;
5. create the bridge ``cni0`` with the gateway address, enable forwarding, install
   the masquerade rules;
6. start the overlay: every remote lease programmed (neighbour, FDB, route, or a
   host-gw route), then follow the watch;
7. repair what an agent killed during ADD left (agent/reconcile.py: claimed IP records
   never completed, half-made veths with our mark), then open the CNI socket and write
   ``subnet.env`` (its presence means "ready");
8. serve CNI requests until SIGTERM, re-checking the masquerade rules and the
   conntrack table every ``--sync-period`` (agent/upkeep.py) and serving Prometheus
   metrics on ``--metrics-bind-address`` (agent/metrics.py); on exit the lease is kept, so a restarted agent
   gets the same subnet back and its pods keep their addresses. A start-up that fails
   after step 3 removes the VXLAN device it created.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading

from minikubenet import subnet_env
from minikubenet.agent import backends
from minikubenet.agent.cni_handler import CniHandler, NodeState
from minikubenet.agent.cni_server import CniServer
from minikubenet.agent.metrics import AgentMetrics
from minikubenet.agent.reconcile import reconcile
from minikubenet.agent.upkeep import DEFAULT_SYNC_PERIOD_S, ConntrackPressure, MasqueradeRules, Upkeep
from minikubenet.ipam.allocator import PodIPAllocator
from minikubenet.linux import iptables, rps, sysctl
from minikubenet.linux.addresses import UnderlayNotFound, find_underlay
from minikubenet.linux.bridge import BridgeError, ensure_bridge
from minikubenet.linux.netlink_pod_plumbing import NetlinkPodPlumbing
from minikubenet.linux.netns import node_iproute
from minikubenet.masquerade import render_masquerade
from minikubenet.metrics import MetricsServer, metrics_routes, parse_bind, serve
from minikubenet.network_config import ConfigError
from minikubenet.overlay.controller import OverlayController
from minikubenet.pod_network import BRIDGE
from minikubenet.store.etcd import EtcdStore, StoreError, TLSFiles, add_etcd_tls_options
from minikubenet.store.keys import KeyLayout
from minikubenet.subnet_lease import DEFAULT_TTL_S, OutOfSubnets, SubnetLeaser
from minikubenet.waiting import wait_until

log = logging.getLogger("minikubenet.agent")


class AgentError(Exception):
    """A start-up failure with a message a person can act on."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minikubenet-agent", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--etcd-endpoints",
        default=os.environ.get("MINIKUBENET_ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
        help="comma-separated etcd client URLs",
    )
    add_etcd_tls_options(p)
    p.add_argument("--etcd-prefix", default="/coreos.com/network", help="flannel's key prefix")
    p.add_argument("--project-prefix", default="/minikubenet", help="prefix of pod IP records")
    p.add_argument("--node-name", default=socket.gethostname())
    p.add_argument(
        "--public-ip", help="this node's address on the underlay (default: from --iface or the default route)"
    )
    p.add_argument("--iface", help="the underlay interface")
    p.add_argument("--run-dir", default="/run/minikubenet", help="socket and subnet.env live here")
    p.add_argument("--subnet-file", help="default: RUN_DIR/subnet.env")
    p.add_argument("--socket", help="CNI socket path (default: RUN_DIR/agent.sock)")
    p.add_argument("--subnet-lease-ttl", type=int, default=DEFAULT_TTL_S, help="seconds (default 24 h)")
    p.add_argument("--no-ip-masq", dest="ip_masq", action="store_false", help="do not masquerade pod traffic")
    p.add_argument(
        "--startup-timeout", type=float, default=60.0, help="how long to wait for etcd and the network config"
    )
    p.add_argument(
        "--rps-cpus",
        default="",
        help="receive packet steering for the devices the agent makes (cni0, flannel.<VNI>, each "
        "pod's host-side veth): a CPU mask as in /sys/class/net/*/queues/rx-*/rps_cpus, e.g. 2. "
        "'off' sets none (also on devices an earlier run steered). Default: leave the kernel's "
        "setting (none). The lab sets it: see linux/rps.py",
    )
    p.add_argument(
        "--sync-period",
        type=float,
        default=DEFAULT_SYNC_PERIOD_S,
        help="seconds between checks that the masquerade/forward rules are intact (restored if not) "
        "and of the conntrack table's fill level",
    )
    p.add_argument(
        "--metrics-bind-address",
        default="127.0.0.1:10261",
        help="host:port for Prometheus metrics on /metrics (conntrack, rule repairs); '' to disable",
    )
    p.add_argument("--log-level", default="info")
    return p


def wait_for_config(store: EtcdStore, timeout: float):
    """The network config, once etcd has one (an invalid one is an error at once)."""
    why = [""]

    def config():
        try:
            found = store.get_config()
        except StoreError as e:
            why[0] = str(e)
        except ConfigError as e:
            raise AgentError(f"the network config at {store.layout.config} is invalid: {e}") from None
        else:
            if found is not None:
                return found
            why[0] = (
                f"no network config at {store.layout.config}; "
                "write one with `minikubenet network init --network 10.244.0.0/16`"
            )
        log.info("waiting: %s", why[0])
        return None

    found = wait_until(config, timeout, interval=1.0)
    if found is None:
        raise AgentError(why[0])
    return found


class Agent:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.subnet_file = args.subnet_file or os.path.join(args.run_dir, "subnet.env")
        self.socket_path = args.socket or os.path.join(args.run_dir, "agent.sock")
        self.store: EtcdStore | None = None
        self.leaser: SubnetLeaser | None = None
        self.server: CniServer | None = None
        self.overlay: OverlayController | None = None
        self.metrics = AgentMetrics()
        self.metrics_server: MetricsServer | None = None
        self.upkeep: Upkeep | None = None
        self._backend: backends.BackendBase | None = None
        self._prepared: backends.Prepared | None = None  # a VXLAN device this start created, until the agent is up

    def start(self) -> None:
        a = self.args
        if not a.sync_period > 0:
            raise AgentError(f"--sync-period must be a positive number of seconds, got {a.sync_period}")
        if a.metrics_bind_address:
            try:
                parse_bind(a.metrics_bind_address)
            except ValueError as e:
                raise AgentError(f"--metrics-bind-address: {e}") from None
        try:
            # None: leave the kernel's setting; "0" (given as off): set none, also on
            # devices a previous run steered
            rps_cpus = rps.check_mask(a.rps_cpus) if a.rps_cpus else None
        except rps.RpsError as e:
            raise AgentError(str(e)) from None
        try:
            layout = KeyLayout(a.etcd_prefix, a.project_prefix)
            self.store = EtcdStore(a.etcd_endpoints.split(","), layout=layout, tls=TLSFiles.from_args(a))
        except (ValueError, OSError) as e:
            raise AgentError(f"bad etcd settings: {e}") from None
        config = wait_for_config(self.store, a.startup_timeout)
        log.info("network %s, /%d per node, backend %s", config.network, config.subnet_len, config.backend)

        with node_iproute() as ipr:
            try:
                underlay = find_underlay(ipr, a.public_ip, a.iface)
            except UnderlayNotFound as e:
                raise AgentError(str(e)) from None
        try:
            self._backend = backends.for_config(config.backend)
            prepared = self._backend.prepare(config, underlay, a.run_dir)
        except backends.BackendError as e:
            raise AgentError(str(e)) from None
        self._prepared = prepared
        mtu = prepared.pod_mtu
        log.info("underlay %s %s mtu %d -> pod mtu %d", underlay.ifname, underlay.ip, underlay.mtu, mtu)

        previous = subnet_env.read(self.subnet_file)
        leaser = self.leaser = SubnetLeaser(
            self.store, config, underlay.ip, prepared.backend_type, prepared.backend_data, ttl=a.subnet_lease_ttl
        )
        try:
            lease = self.leaser.acquire(previous.subnet if previous else None)
        except OutOfSubnets as e:
            raise AgentError(str(e)) from None
        self.leaser.start_renewing()

        gateway = lease.subnet.network_address + 1
        with node_iproute() as ipr:
            try:
                ensure_bridge(ipr, BRIDGE, ipaddress.IPv4Interface(f"{gateway}/{lease.subnet.prefixlen}"), mtu)
            except BridgeError as e:
                raise AgentError(str(e)) from None
        if rps_cpus is not None:
            try:
                for dev in [BRIDGE] + prepared.devices:
                    rps.set_rps_cpus(dev, rps_cpus)
            except rps.RpsError as e:
                raise AgentError(str(e)) from None
            log.info("receive packet steering: CPUs %s on %s and every pod's host-side veth", rps_cpus, BRIDGE)
        sysctl.write("net.ipv4.ip_forward", 1)
        rules = MasqueradeRules(render_masquerade(config.network, lease.subnet, ipmasq=a.ip_masq))
        try:
            rules.install()
        except (iptables.IptablesError, FileNotFoundError) as e:
            raise AgentError(f"could not install masquerade rules: {e}") from None
        if a.metrics_bind_address:
            try:
                self.metrics_server = serve(a.metrics_bind_address, metrics_routes(self.metrics))
            except (OSError, ValueError) as e:
                raise AgentError(f"cannot serve metrics on {a.metrics_bind_address}: {e}") from None

        # Every remote node is programmed before we say "ready": a pod created now can
        # reach the whole cluster at once.
        overlay = self.overlay = self._backend.start(self.store, config, underlay, lease.subnet, prepared)
        self._prepared = None  # from here on the device is in use: keep it on exit
        self.metrics.attach(
            malformed=overlay.bad.current,
            malformed_seen=overlay.bad.seen,
            lease_renewals=leaser.renewals,
            overlay_entries=overlay.wanted_entries,
            overlay_programmed=overlay.programmed,
            overlay_withdrawn=overlay.withdrawn,
            overlay_corrected=overlay.corrected,
        )
        # the bgp planner reads its sessions from BIRD; other backends have no peers to report
        backend_warnings = getattr(overlay.backend, "health_warnings", None)
        if hasattr(overlay.backend, "peer_counts"):
            self.metrics.watch_bgp(overlay.backend.peer_counts)
        conntrack = ConntrackPressure()
        self.upkeep = Upkeep(rules, conntrack, self.metrics, a.sync_period).start()

        allocator = PodIPAllocator(self.store, lease.subnet)
        self.metrics.watch_ipam(allocator)
        # before the socket opens: no ADD can run while half-made pods are removed
        plumbing = NetlinkPodPlumbing()
        reconcile(allocator, a.node_name, mtu, plumbing)
        node = NodeState(
            node_name=a.node_name,
            subnet=lease.subnet,
            mtu=mtu,
            allocator=allocator,
            lease_healthy=lambda: leaser.healthy,
            store_ping=self.store.ping,
            rps_cpus=None if rps_cpus == "0" else rps_cpus,
            conntrack=conntrack.current,
            backend_warnings=backend_warnings,
        )
        self.server = CniServer(
            self.socket_path, CniHandler(node, plumbing), on_answer=self.metrics.observe_cni_request
        )
        subnet_env.write(self.subnet_file, subnet_env.SubnetEnv(config.network, lease.subnet, mtu, a.ip_masq))
        log.info("ready: subnet %s, CNI socket %s, %s", lease.subnet, self.socket_path, self.subnet_file)

    def serve(self) -> None:
        assert self.server is not None, "serve() after start()"
        self.server.serve_forever(poll_interval=0.5)

    def stop(self) -> None:
        if self.upkeep:
            self.upkeep.stop()
        if self.metrics_server:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        if self.overlay:
            self.overlay.stop()
        if self._prepared and self._backend:
            self._backend.undo(self._prepared)
        if self.leaser:
            self.leaser.stop()
        if self.server:
            self.server.shutdown()
            self.server.close()
            self.server.cni_handler.close()
        if self.store:
            self.store.close()  # gRPC's channel threads would otherwise keep the process alive


def main(argv: list[str] | None = None) -> int:
    # Everything the agent writes (subnet.env, the run dir, the socket) is root's alone:
    # 0600 files, 0700 directories, whoever started us with whatever umask.
    os.umask(0o077)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {args.node_name} %(name)s %(levelname)s %(message)s",
    )
    agent = Agent(args)
    try:
        agent.start()
    except (AgentError, StoreError) as e:
        log.error("cannot start: %s", e)
        agent.stop()
        return 1

    def on_signal(signum, frame):
        log.info("signal %d: stopping (the subnet lease is kept for a restart)", signum)
        threading.Thread(target=agent.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.serve()
    if agent.server:
        agent.server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
