"""The lab: a whole minikubenet cluster built out of network namespaces on one machine.

``Lab.up()`` makes a ``Topology`` (topology.py) real, step by step:

1. the underlay: a switch namespace with a bridge, one veth port per node and for etcd;
2. etcd (Debian's binary) in its own namespace, or with ``etcd_members`` > 1 a cluster
   of members, each in a namespace of its own with its own address and data dir;
   closed: TLS with client certificates made now (etcd_tls.py, in ``<root>/<lab>/pki``,
   0700) and one etcd user per daemon kind allowed only its keys (store/etcd_rbac.py);
   then the network config written into it with ``minikubenet network init``, as an
   operator would. A pod has no certificate, so it can neither read nor write anything
   in etcd. Every daemon and tool gets every member's URL (``etcd_endpoints``); a killed
   member can be started again on its data and rejoins;
3. each node: a namespace with its underlay address, its own run dir and CNI conf dir,
   and its own ``minikubenet-agent``;
4. each pod: a namespace attached by executing the real CNI binary exactly as a
   runtime does (cni/runtime.py), then a tiny HTTP server inside it (podserver.py).

Everything it makes is written to ``<root>/<lab>/state.json`` *before* it is made, and
every name starts with the lab's name, so ``Lab.down()`` removes exactly the lab —
also after a crash or a half-finished ``up`` — and nothing else: processes by PID
(those recorded, and any process still inside one of the lab's namespaces), then the
namespaces, then the lab's directory. The directory and everything the lab and its
daemons write there (state.json, logs, configs, etcd's data, each agent's run dir) is
root's alone: 0700 directories, 0600 files (private_files.py; daemons run with umask 077).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from minikubenet import etcd_tls, private_files
from minikubenet.cni.install import install_plugin_binary
from minikubenet.cni.runtime import CniRuntime
from minikubenet.lab import daemons, podserver, probes, processes
from minikubenet.lab import services as lab_services
from minikubenet.lab.processes import ProcessRecord
from minikubenet.lab.topology import POD_PORT, NodeSpec, PodSpec, Topology, build_topology, lb_pool_spec
from minikubenet.linux import named_netns
from minikubenet.linux.named_netns import run
from minikubenet.overlay import bgp_sessions
from minikubenet.pod_network import NODE_MARK_PREFIX
from minikubenet.store import etcd_rbac
from minikubenet.store.etcd import TLSFiles
from minikubenet.waiting import wait_until

LAB_ROOT = "/run/minikubenet-lab"
REFERENCE_PLUGIN_DIR = "/usr/lib/cni"


class LabError(Exception):
    pass


class LabExists(LabError):
    """``up`` of a lab that is already there: nothing was built, nothing may be removed."""


class Lab:
    # The mode of the minikubenet-proxy started on every node by up() (lab/services.py);
    # None: no proxies, no endpoints controller, no service check.
    proxy_mode: str | None = "iptables"
    # Receive packet steering on every device a node receives on (linux/rps.py): the
    # sending CPU sends, another receives, as between two machines. None: kernel default,
    # the lab's default too: whether RPS helps depends on the machine (lab/rps_probe.py).
    rps_cpus: str | None = None
    # "auto": once the pods are up, a short probe measures pod -> pod with RPS off and on
    # and keeps the faster (lab/rps_probe.py); up() then sets rps_cpus and rps_note.
    rps_auto: bool = False
    rps_note: str = ""
    # With --racks and the bgp backend: how the nodes peer (lab/router.py BGP_MODES).
    bgp_mode: str = "mesh"
    # vxlan: plain routes to the nodes of the same segment, VXLAN only to the others
    # (flannel's DirectRouting, Calico's CrossSubnet).
    direct_routing: bool = False

    def __init__(self, topo: Topology, root: str = LAB_ROOT, say=print):
        self.topo = topo
        self.dir = os.path.join(root, topo.name)
        self.say = say
        self.bin_dir = os.path.join(self.dir, "bin")
        self.pki = etcd_tls.EtcdPki(os.path.join(self.dir, "pki"))
        self.pod_ips: dict[str, str] = {}
        self._state_lock = threading.Lock()  # nodes and pods are built in parallel

    # -- paths and records --------------------------------------------------------------------

    def node_dir(self, node: str) -> str:
        return os.path.join(self.dir, "nodes", node)

    def run_dir(self, node: str) -> str:
        return os.path.join(self.node_dir(node), "run")

    def conf_file(self, node: str) -> str:
        return os.path.join(self.node_dir(node), "net.d", "10-minikubenet.conflist")

    def etcd_tls(self, user: str = etcd_rbac.ROOT_USER) -> TLSFiles:
        """The client certificate of one etcd user (agent, proxy, endpoints-controller,
        root) and the lab's CA."""
        return self.pki.client_tls(user)

    def admin_env(self) -> dict[str, str]:
        """etcdctl's and our CLI's environment for the root user, every member's URL
        (what ``lab exec etcd -- ...`` runs with)."""
        return self.etcd_tls().env(self.topo.etcd_endpoints)

    def etcdctl(self, *args: str) -> str:
        """etcdctl as root inside etcd's namespace."""
        return daemons.etcdctl(self.topo.etcd_netns, self.topo.etcd_endpoints, *args, tls=self.etcd_tls())

    @property
    def state_file(self) -> str:
        return os.path.join(self.dir, "state.json")

    def _load_state(self) -> dict:
        try:
            with open(self.state_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {"netns": [], "processes": []}

    def _record(self, **kinds) -> None:
        """Append to the state file before (netns) or right after (PIDs) creating things."""
        with self._state_lock:
            state = self._load_state()
            state.setdefault("params", self.params())
            state.setdefault("bgp_mode", self.bgp_mode)
            for kind, items in kinds.items():
                state.setdefault(kind, []).extend(items)
            private_files.make_dir(self.dir)
            private_files.write_atomic(self.state_file, json.dumps(state, indent=1))

    def params(self) -> dict:
        t = self.topo
        return {
            "name": t.name,
            "nodes": len(t.nodes),
            "pods_per_node": len(t.nodes[0].pods) if t.nodes else 0,
            "backend": t.backend,
            "underlay": str(t.underlay),
            "pod_network": str(t.pod_network),
            "mtu": t.mtu,
            "subnet_len": t.subnet_len,
            "etcd_members": t.etcd_members,
            "racks": t.racks,
        }

    @classmethod
    def existing(cls, name: str, root: str = LAB_ROOT, say=print) -> Lab:
        """The lab as recorded on disk (for status, exec and down)."""
        path = os.path.join(root, name, "state.json")
        try:
            with open(path) as f:
                state = json.load(f)
            params = state["params"]
        except (OSError, ValueError, KeyError):
            raise LabError(f"no lab named {name!r} is up (nothing at {path})") from None
        lab = cls(build_topology(**params), root, say)
        lab.bgp_mode = state.get("bgp_mode", "mesh")
        if "rps_cpus" in state:  # what `lab up --rps auto` chose (rps_probe.py)
            lab.rps_cpus = state["rps_cpus"]
        return lab

    def _netns(self, name: str) -> None:
        self._record(netns=[name])
        named_netns.add(name)

    def _start(self, netns: str, argv: list[str], log: str, what: str) -> ProcessRecord:
        rec = processes.start_in_netns(netns, argv, log, what)
        self._record(processes=[asdict(rec)])
        return rec

    # -- up -----------------------------------------------------------------------------------------

    def up(self) -> None:
        t = self.topo
        if os.path.exists(self.state_file) or named_netns.list_names(f"{t.name}-"):
            raise LabExists(
                f"lab {t.name!r} already exists (or left pieces behind): "
                f"run `minikubenet lab down --name {t.name}` first"
            )
        for tool in ("ip", "iptables", "etcd", "etcdctl", "ping") + (("bird", "birdc") if t.backend == "bgp" else ()):
            if not shutil.which(tool):
                raise LabError(f"`{tool}` is not installed: run ./setup.sh (it installs the lab's packages)")
        started = time.monotonic()
        self._record()
        private_files.make_dir(self.bin_dir)
        os.chmod(install_plugin_binary(self.bin_dir), 0o700)
        self.say(
            f"lab {t.name}: {len(t.nodes)} nodes, backend {t.backend}, underlay {t.underlay}, pods {t.pod_network}"
        )
        self._build_underlay()
        if self._bgp_client_ip():
            self._start_bgp_client()
        etcd_tls.create_pki(self.pki.dir, [str(m.ip) for m in t.etcd_member_specs()])
        self._start_etcd()
        self._close_etcd()
        self._network_init()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(self._start_node, t.nodes))
        self.say(f"  nodes ready: {', '.join(n.name for n in t.nodes)}")
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(self._start_pod, t.pods()))
        self.say(f"  pods ready: {len(t.pods())} ({time.monotonic() - started:.1f}s since start)")
        if t.backend == "bgp":
            t0 = time.monotonic()
            self.wait_bgp_converged()
            self.say(
                f"  BGP converged: every node has a route to every other node's subnet "
                f"({time.monotonic() - t0:.1f}s after the pods)"
            )
        if self.rps_auto:
            from minikubenet.lab import rps_probe

            self.rps_cpus, self.rps_note = rps_probe.probe(self)
            self.say(f"  receive packet steering probe: {self.rps_note}")
            with self._state_lock:  # for Lab.existing: `lab pod add` applies it to new pods
                state = self._load_state()
                state["rps_cpus"] = self.rps_cpus
                private_files.write_atomic(self.state_file, json.dumps(state, indent=1))
        if self.proxy_mode:
            lab_services.start(self, self.proxy_mode)

    def _build_underlay(self) -> None:
        t = self.topo
        self._netns(t.switch_netns)
        sw = t.switch_netns
        for rack in range(t.racks):  # one L2 segment per rack (topology.py)
            run(["ip", "-n", sw, "link", "add", t.bridge(rack), "type", "bridge"])
            run(["ip", "-n", sw, "link", "set", t.bridge(rack), "up"])
        if t.racks > 1:
            self._build_router()
        for m in t.etcd_member_specs():
            self._netns(m.netns)
            self._plug(m.netns, m.switch_port, m.ip)

    def _build_router(self) -> None:
        """The router namespace: .1 on every rack's segment, forwarding between them
        (lab/router.py). ip_forward is set in its own namespace only."""
        t = self.topo
        self._netns(t.router_netns)
        for rack in range(t.racks):
            self._plug(t.router_netns, f"rt{rack}", t.router_ip(rack), rack, ifname=f"eth{rack}", routes=False)
        run(["ip", "netns", "exec", t.router_netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        if t.backend == "bgp":
            from minikubenet.lab import router

            conf, sock, log = router.files(self.dir)
            private_files.make_dir(os.path.dirname(conf))
            # in rr mode the router peers with each rack's route reflector only
            peers = self.route_reflectors() if self.bgp_mode == "rr" else t.nodes
            private_files.write_atomic(conf, router.render(t.router_ip(0), [n.ip for n in peers], log))
            self._start(t.router_netns, ["bird", "-f", "-c", conf, "-s", sock], log + ".out", "router BIRD")

    def _plug(
        self,
        netns: str,
        port: str,
        ip: ipaddress.IPv4Address,
        rack: int = 0,
        ifname: str = "eth0",
        routes: bool = True,
    ) -> None:
        """A veth from the switch (end ``port`` on the rack's bridge) to ``netns`` (end
        ``ifname``, with ``ip``); with racks, ``routes``: the other racks via the router."""
        t = self.topo
        sw = t.switch_netns
        run(
            [
                "ip",
                "-n",
                sw,
                "link",
                "add",
                port,
                "mtu",
                str(t.mtu),
                "type",
                "veth",
                "peer",
                "name",
                ifname,
                "mtu",
                str(t.mtu),
                "netns",
                netns,
            ]
        )
        run(["ip", "-n", sw, "link", "set", port, "master", t.bridge(rack), "up"])
        run(["ip", "-n", netns, "addr", "add", f"{ip}/{t.rack_net(rack).prefixlen}", "dev", ifname])
        run(["ip", "-n", netns, "link", "set", ifname, "up"])
        if routes:
            for other in t.other_racks(rack):
                run(["ip", "-n", netns, "route", "add", str(other), "via", str(t.router_ip(rack)), "dev", ifname])

    # -- etcd ---------------------------------------------------------------------------------------

    def _etcd_what(self, member: str) -> str:
        """The process record's name: "etcd" alone, "etcd m2" in a cluster."""
        return "etcd" if self.topo.etcd_members == 1 else f"etcd {member}"

    def start_etcd_member(self, member: str, state: str = "existing") -> ProcessRecord:
        """Start one member on its data dir ("new": the cluster's first start)."""
        t = self.topo
        m = t.etcd_member(member)
        log = os.path.join(self.dir, "logs", f"etcd-{m.name}.log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        argv = daemons.etcd_member_argv(
            m.name,
            os.path.join(self.dir, "etcd", m.name),
            str(m.ip),
            {o.name: str(o.ip) for o in t.etcd_member_specs()},
            state,
            pki=self.pki,
        )
        # start_etcd_member records nothing itself: record its PID as soon as we have it
        rec = daemons.start_etcd_member(m.netns, argv, str(m.ip), log, self._etcd_what(m.name))
        self._record(processes=[asdict(rec)])
        return rec

    def _start_etcd(self, state: str = "new") -> None:
        t = self.topo
        # a new cluster's members wait for each other: start all, then wait for a leader
        for m in t.etcd_member_specs():
            self.start_etcd_member(m.name, state)
        self.wait_etcd_healthy()
        where = ", ".join(f"{m.name} {m.client_url} ({m.netns})" for m in t.etcd_member_specs())
        self.say(f"  etcd up: {where}")

    def wait_etcd_healthy(self, members: list[str] | None = None, timeout: float = 30.0) -> None:
        t = self.topo
        specs = [t.etcd_member(n) for n in members] if members else t.etcd_member_specs()
        if not wait_until(lambda: all(daemons.etcd_healthy(m.netns, str(m.ip)) for m in specs), timeout):
            raise LabError(
                f"etcd is not healthy after {timeout:.0f}s: "
                f"{', '.join(m.name for m in specs if not daemons.etcd_healthy(m.netns, str(m.ip)))}"
            )

    def etcd_member_record(self, member: str) -> ProcessRecord | None:
        """The running process of one member, or None."""
        for r in reversed(self._load_state().get("processes", [])):
            if r["what"] == self._etcd_what(member):
                rec = ProcessRecord(**r)
                return rec if rec.alive() else None
        return None

    def kill_etcd_member(self, member: str, signum: int = signal.SIGKILL) -> None:
        """Kill one member's process (default: kill -9, as a crash)."""
        rec = self.etcd_member_record(member)
        if rec is None:
            raise LabError(f"etcd member {member} is not running")
        os.kill(rec.pid, signum)
        wait_until(lambda: not rec.alive() or processes.is_zombie(rec.pid), 10, interval=0.01)

    def _close_etcd(self) -> None:
        """One etcd user per daemon kind with only its key prefixes, then ``auth enable``."""

        def run(args):
            return daemons.etcdctl_run(self.topo.etcd_netns, self.topo.etcd_endpoints, args, self.etcd_tls())

        try:
            etcd_rbac.apply(run)
        except etcd_rbac.RbacError as e:
            raise LabError(f"etcd access control: {e}") from None
        self.say(
            f"  etcd closed: TLS with client certificates ({self.pki.dir}), users "
            f"{', '.join(etcd_rbac.USERS)} and {etcd_rbac.ROOT_USER}, auth enabled"
        )

    def restart_etcd(self) -> None:
        """Stop every member and start them again on the same data: agents must ride it out."""
        for m in self.topo.etcd_member_specs():
            rec = self.etcd_member_record(m.name)
            if rec:
                processes.stop([rec.pid])
        self._start_etcd(state="existing")

    def etcd_members_status(self) -> list[dict]:
        """Each member: name, URL, namespace, PID (None: not running), healthy, leader."""
        t = self.topo
        leader_ids, member_ids = set(), {}
        for m in t.etcd_member_specs():
            try:
                doc = json.loads(
                    daemons.etcdctl(
                        m.netns,
                        m.client_url,
                        "endpoint",
                        "status",
                        "-w",
                        "json",
                        "--dial-timeout",
                        "500ms",
                        "--command-timeout",
                        "1s",
                        tls=self.etcd_tls(),
                    )
                )[0]["Status"]
                member_ids[m.name] = doc["header"]["member_id"]
                leader_ids.add(doc["leader"])
            except (daemons.DaemonFailed, ValueError, KeyError, IndexError):
                pass
        out = []
        for m in t.etcd_member_specs():
            rec = self.etcd_member_record(m.name)
            out.append(
                {
                    "name": m.name,
                    "url": m.client_url,
                    "netns": m.netns,
                    "pid": rec.pid if rec else None,
                    "healthy": daemons.etcd_healthy(m.netns, str(m.ip)),
                    "leader": m.name in member_ids and member_ids[m.name] in leader_ids,
                }
            )
        return out

    def etcd_leader(self) -> str | None:
        return next((m["name"] for m in self.etcd_members_status() if m["leader"]), None)

    def _network_init(self) -> None:
        t = self.topo
        argv = [
            "ip",
            "netns",
            "exec",
            t.etcd_netns,
            sys.executable,
            "-m",
            "minikubenet",
            "network",
            "init",
            "--etcd-endpoints",
            t.etcd_endpoints,
            *self.etcd_tls().argv(),
            "--network",
            str(t.pod_network),
            "--subnet-len",
            str(t.subnet_len),
            "--backend",
            t.backend,
        ]
        client_ip = self._bgp_client_ip()
        if client_ip:
            # every node of the client's segment peers with the client network too
            argv += ["--bgp-peer", f"{client_ip}@{t.rack_net(0)}" if t.racks > 1 else client_ip]
        if t.backend == "bgp" and self.bgp_mode == "rr":
            # Calico's in-cluster route reflectors: the first node of each rack
            for rr in self.route_reflectors():
                argv += ["--route-reflector", str(rr.ip)]
        if t.backend == "bgp" and t.racks > 1:
            # every node (rr mode: every route reflector) peers with its rack's router
            # (lab/router.py), which reflects between racks
            for rack in range(t.racks):
                if self.bgp_mode == "rr":
                    rr_ip = next(n.ip for n in self.route_reflectors() if n.rack == rack)
                    argv += ["--bgp-peer", f"{t.router_ip(rack)}@{rr_ip}/32"]
                else:
                    argv += ["--bgp-peer", f"{t.router_ip(rack)}@{t.rack_net(rack)}"]
            if self.bgp_mode == "tor":
                argv.append("--no-node-mesh")
        if t.backend == "vxlan" and self.direct_routing:
            argv.append("--direct-routing")
        p = subprocess.run(argv, capture_output=True, text=True)
        if p.returncode != 0:
            raise LabError(f"network init failed: {p.stderr.strip() or p.stdout.strip()}")

    def _bgp_peering(self) -> str:
        racks = self.topo.racks > 1
        if self.bgp_mode == "rr":
            rrs = ", ".join(n.name for n in self.route_reflectors())
            return f"route reflectors {rrs} (rr)" + (", which peer with the router" if racks else "")
        if self.bgp_mode == "tor":
            return "every node with its rack's router (tor)"
        return "node-to-node mesh" + (" inside each rack, the router between racks" if racks else "") + " (mesh)"

    def route_reflectors(self) -> list[NodeSpec]:
        """``--bgp-mode rr``: the first node of each rack is its route reflector."""
        firsts: dict[int, NodeSpec] = {}
        for n in self.topo.nodes:
            firsts.setdefault(n.rack, n)
        return list(firsts.values())

    def _bgp_client_ip(self) -> str | None:
        """With bgp, the client namespace of the LoadBalancer check is a BGP speaker
        (lab/bgp_client.py); None without bgp or on an underlay too small for it."""
        from minikubenet.lab import loadbalancer

        t = self.topo
        if t.backend != "bgp" or not lb_pool_spec(t.underlay):
            return None
        return str(t.underlay[loadbalancer.CLIENT_HOST])

    def _start_bgp_client(self) -> None:
        from minikubenet.lab import loadbalancer

        ns, _ip = loadbalancer.ensure_client(self)
        conf, sock, log = self._configure_bgp_client(reload=False)
        self._start(ns, ["bird", "-f", "-c", conf, "-s", sock], log + ".out", "client BIRD")

    def _configure_bgp_client(self, reload: bool) -> tuple[str, str, str]:
        """Write the client network's bird.conf for the lab's nodes; ``reload``: tell the
        running BIRD (``birdc configure``: the sessions it has stay up)."""
        from minikubenet.lab import bgp_client, loadbalancer

        ip = self._bgp_client_ip()
        assert ip is not None
        conf, sock, log = bgp_client.files(self.dir)
        private_files.make_dir(os.path.dirname(conf))
        on_segment = [n.ip for n in self.topo.nodes if n.rack == 0]  # sessions are direct
        text = bgp_client.render(ipaddress.IPv4Address(ip), on_segment, log)
        private_files.write_atomic(conf, text)
        if reload:
            run(["ip", "netns", "exec", loadbalancer.client_netns(self), "birdc", "-s", sock, "configure"])
        return conf, sock, log

    def _start_node(self, node: NodeSpec) -> None:
        self._prepare_node(node)
        self.start_agent(node.name)

    def _prepare_node(self, node: NodeSpec) -> None:
        """The node's namespace, its underlay port and its CNI config; no agent yet."""
        self._netns(node.netns)
        self._plug(node.netns, node.switch_port, node.ip, node.rack)
        # the node mark: a CNI ADD aimed at this namespace is refused (pod_network.py)
        run(["ip", "-n", node.netns, "link", "set", "eth0", "alias", f"{NODE_MARK_PREFIX}{node.name}:underlay"])
        if self.rps_cpus:
            # sysfs shows the devices of the namespace it was mounted in: ip netns exec mounts the node's
            run(
                [
                    "ip",
                    "netns",
                    "exec",
                    node.netns,
                    "sh",
                    "-c",
                    f"for q in /sys/class/net/eth0/queues/rx-*/rps_cpus; do echo {self.rps_cpus} > $q; done",
                ]
            )
        private_files.make_dir(os.path.dirname(self.conf_file(node.name)))
        with private_files.open_file(self.conf_file(node.name), "w") as f:
            json.dump(self.conflist(node.name), f, indent=2)

    def add_node(self, start_agent: bool = True) -> NodeSpec:
        """Grow a running lab by one node (with the same number of pods per node)."""
        p = self.params()
        p["nodes"] += 1
        self.topo = build_topology(**p)
        with self._state_lock:
            state = self._load_state()
            state["params"] = self.params()
            with private_files.open_file(self.state_file, "w") as f:
                json.dump(state, f, indent=1)
        node = self.topo.nodes[-1]
        self._prepare_node(node)
        if self._bgp_client_ip():
            self._configure_bgp_client(reload=True)  # the client network peers with the new node too
        if start_agent:
            self.start_agent(node.name)
            for pod in node.pods:
                self._start_pod(pod)
        return node

    def start_pod(self, pod: PodSpec) -> str:
        """Create one pod of the topology (its node's agent must be up); returns its IP."""
        self._start_pod(pod)
        return self.pod_ips[pod.name]

    def start_agent(self, node_name: str, extra=()) -> ProcessRecord:
        """Start the node's agent and wait until it has written subnet.env."""
        node = self.topo.node(node_name)
        log = os.path.join(self.dir, "logs", f"agent-{node.name}.log")
        if self.rps_cpus:
            extra = ("--rps-cpus", self.rps_cpus, *extra)
        # metrics on the node's own address, so a scraper on the underlay reaches them
        extra = ("--metrics-bind-address", f"{node.ip}:{daemons.AGENT_METRICS_PORT}", "--sync-period", "5", *extra)
        argv = daemons.agent_argv(
            self.topo.etcd_endpoints,
            str(node.ip),
            self.run_dir(node.name),
            node.name,
            extra,
            tls=self.etcd_tls(etcd_rbac.AGENT),
        )
        rec = self._start(node.netns, argv, log, f"agent {node.name}")
        sock = os.path.join(self.run_dir(node.name), "agent.sock")
        if not wait_until(lambda: daemons.agent_ready(sock) or not rec.alive(), 60):
            raise LabError(f"the agent on {node.name} is not ready after 60s; {log}:\n{processes.tail(log)}")
        if not daemons.agent_ready(sock):
            raise LabError(f"the agent on {node.name} exited; {log} ends with:\n{processes.tail(log)}")
        return rec

    def agent_record(self, node_name: str) -> ProcessRecord | None:
        for r in reversed(self._load_state().get("processes", [])):
            if r["what"] == f"agent {node_name}":
                rec = ProcessRecord(**r)
                return rec if rec.alive() else None
        return None

    def stop_agent(self, node_name: str) -> None:
        rec = self.agent_record(node_name)
        if rec:
            processes.stop([rec.pid])

    def conflist(self, node: str) -> dict:
        return {
            "cniVersion": "1.0.0",
            "name": "minikubenet",
            "plugins": [{"type": "minikubenet", "agentSocket": os.path.join(self.run_dir(node), "agent.sock")}],
        }

    def runtime(self, node: str) -> CniRuntime:
        return CniRuntime.from_file(
            self.conf_file(node), [self.bin_dir, REFERENCE_PLUGIN_DIR], node_netns=self.topo.node(node).netns
        )

    def _start_pod(self, pod: PodSpec) -> None:
        self._netns(pod.netns)
        result = self.runtime(pod.node).add(
            pod.container_id,
            f"/run/netns/{pod.netns}",
            "eth0",
            {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": pod.name},
        )
        ip = result["ips"][0]["address"].split("/")[0]
        self.pod_ips[pod.name] = ip
        log = os.path.join(self.dir, "logs", f"pod-{pod.name}.log")
        # stdlib-only server: the real interpreter with -I -S, no virtualenv needed
        self._start(
            pod.netns, [sys.executable, "-I", "-S", podserver.__file__, pod.name, str(POD_PORT)], log, f"pod {pod.name}"
        )
        probes.wait_listening(pod.netns, "127.0.0.1", POD_PORT)

    # -- looking at it ------------------------------------------------------------------------------

    def etcd_dump(self, prefix: str = "/") -> list[tuple[str, str]]:
        out = self.etcdctl("get", "--prefix", prefix, "-w", "json")
        import base64

        doc = json.loads(out)
        return [
            (base64.b64decode(kv["key"]).decode(), base64.b64decode(kv["value"]).decode()) for kv in doc.get("kvs", [])
        ]

    def leases(self) -> dict[str, dict]:
        """node name -> {"subnet", "public_ip", ...} from etcd."""
        by_ip = {str(n.ip): n.name for n in self.topo.nodes}
        out = {}
        for key, value in self.etcd_dump("/coreos.com/network/subnets/"):
            doc = json.loads(value)
            subnet = key.rsplit("/", 1)[1].replace("-", "/")
            out[by_ip.get(doc.get("PublicIP"), doc.get("PublicIP"))] = {"subnet": subnet, **doc}
        return out

    def pods(self) -> dict[str, dict]:
        """pod name -> {"ip", "node", ...} from the pod IP records in etcd."""
        out = {}
        for key, value in self.etcd_dump("/minikubenet/ipam/"):
            doc = json.loads(value)
            out[doc.get("podName") or doc["containerID"]] = {"ip": key.rsplit("/", 1)[1], **doc}
        return out

    def _rps_in_use(self) -> str:
        """What the first node's underlay port really has (the kernel's word, not ours)."""
        if not self.topo.nodes:
            return "-"
        p = subprocess.run(
            ["ip", "netns", "exec", self.topo.nodes[0].netns, "cat", "/sys/class/net/eth0/queues/rx-0/rps_cpus"],
            capture_output=True,
            text=True,
        )
        mask = p.stdout.strip().replace(",", "")
        if p.returncode != 0 or not mask:
            return "unknown"
        return "off (the kernel's default)" if int(mask, 16) == 0 else f"CPU mask {mask.lstrip('0')} (linux/rps.py)"

    def report(self) -> str:
        t = self.topo
        leases, pods = self.leases(), self.pods()
        lines = [
            f"lab {t.name}: backend {t.backend}, underlay {t.underlay} (MTU {t.mtu}), etcd {t.etcd_endpoints}"
            + (
                f"; {t.racks} racks: "
                + ", ".join(str(t.rack_net(r)) for r in range(t.racks))
                + f" via {t.router_netns}"
                if t.racks > 1
                else ""
            ),
            f"receive packet steering on the nodes' devices: {self._rps_in_use()}"
            + (f" (lab up's probe: {self.rps_note})" if self.rps_note else ""),
            *([f"BGP peering: {self._bgp_peering()}"] if t.backend == "bgp" else []),
            "",
            "ETCD   CLIENT URL               PID      HEALTH     NAMESPACE",
        ]
        for m in self.etcd_members_status():
            health = ("healthy" if m["healthy"] else "unhealthy") + (" *" if m["leader"] else "")
            lines.append(f"{m['name']:<6} {m['url']:<24} {m['pid'] or 'down':<8} {health:<10} {m['netns']}")
        lines += ["(* the leader)", "", "NODE   PUBLIC IP      SUBNET            NAMESPACE"]
        for n in t.nodes:
            lease = leases.get(n.name, {})
            lines.append(f"{n.name:<6} {str(n.ip):<14} {lease.get('subnet', '-'):<17} {n.netns}")
        lines += ["", "POD      IP             NODE   NAMESPACE"]
        for p in t.pods():
            rec = pods.get(p.name, {})
            lines.append(f"{p.name:<8} {rec.get('ip', '-'):<14} {p.node:<6} {p.netns}")
        lines += ["", "ETCD KEYS"]
        lines += [f"  {k}" for k, _ in self.etcd_dump("/")]
        return "\n".join(lines)

    # -- checks ---------------------------------------------------------------------------------------

    def check_same_node(self) -> list[str]:
        """Pods reach every pod on their node, their node, and the node reaches them.
        Returns the list of lines it checked; raises LabError on the first failure."""
        ips = {name: rec["ip"] for name, rec in self.pods().items()}
        leases = self.leases()
        done = []
        for node in self.topo.nodes:
            gateway = str(ipaddress.IPv4Network(leases[node.name]["subnet"]).network_address + 1)
            for src in node.pods:
                for dst in node.pods:
                    answer = probes.whoami(src.netns, ips[dst.name], POD_PORT)
                    if answer.get("pod") != dst.name:
                        raise LabError(f"{src.name} -> {dst.name} ({ips[dst.name]}) answered {answer}")
                    done.append(f"{src.name} -> {dst.name} {ips[dst.name]} ok")
                for target in (gateway, str(node.ip)):
                    if not probes.ping(src.netns, target):
                        raise LabError(f"{src.name} cannot ping its node {node.name} at {target}")
                    done.append(f"{src.name} -> node {node.name} {target} ok")
                answer = probes.whoami(node.netns, ips[src.name], POD_PORT)
                if answer.get("pod") != src.name:
                    raise LabError(f"node {node.name} -> {src.name} answered {answer}")
                done.append(f"node {node.name} -> {src.name} ok")
        return done

    def check_cross_node(self) -> list[str]:
        """The whole pod network: every pod reaches every pod on every node; a 1 MB TCP
        transfer and DF-set pings of the largest payload that fits the overlay MTU cross
        every checked node pair in both directions, and one byte more does not fit."""
        t = self.topo
        ips = {name: rec["ip"] for name, rec in self.pods().items()}
        pods = t.pods()
        done = []

        def probe(pair):
            src, dst = pair
            answer = probes.whoami(src.netns, ips[dst.name], POD_PORT)
            if answer.get("pod") != dst.name:
                raise LabError(f"{src.name} -> {dst.name} ({ips[dst.name]}) answered {answer}")
            return f"{src.name} -> {dst.name} ok"

        with ThreadPoolExecutor(max_workers=16) as pool:
            done += list(pool.map(probe, [(a, b) for a in pods for b in pods]))
        pod_mtu = t.mtu - 50 if t.backend == "vxlan" else t.mtu
        biggest = pod_mtu - 28  # 20 bytes IPv4 header + 8 bytes ICMP header
        firsts = [n.pods[0] for n in t.nodes if n.pods]
        for a, b in self._node_pairs(firsts):
            for src, dst in ((a, b), (b, a)):
                probes.transfer(src.netns, ips[dst.name], POD_PORT, 1 << 20)
                if not probes.ping(src.netns, ips[dst.name], size=biggest, dont_fragment=True):
                    raise LabError(
                        f"{src.name} -> {dst.name}: a DF ping of {biggest} bytes (= MTU {pod_mtu}) does not get through"
                    )
                if not probes.too_big_for_path(src.netns, ips[dst.name], biggest + 1):
                    raise LabError(
                        f"{src.name} -> {dst.name}: {biggest + 1} bytes with DF set were sent "
                        f"although the pod MTU is {pod_mtu}"
                    )
                done.append(f"{src.name} -> {dst.name}: 1 MB over TCP, DF ping {biggest} ok, {biggest + 1} refused")
        return done

    def check_services(self) -> list[str]:
        """A ClusterIP service over the pods of every node, balanced across the overlay."""
        if not self.proxy_mode:
            return []
        from minikubenet.lab.loadbalancer import check_load_balancer

        return lab_services.check_service(self) + check_load_balancer(self)

    @staticmethod
    def _node_pairs(items: list) -> list[tuple]:
        """All pairs for a few nodes; for many, a star from the first plus a ring, which
        still crosses every node in both directions without n² pings."""
        if len(items) <= 5:
            return [(a, b) for i, a in enumerate(items) for b in items[i + 1 :]]
        pairs = {(items[0], b) for b in items[1:]}
        pairs |= {(items[i], items[i + 1]) for i in range(1, len(items) - 1)}
        return sorted(pairs, key=lambda p: (p[0].name, p[1].name))

    def overlay_report(self) -> str:
        """Each node's VXLAN device and the per-peer entries the agent programmed."""
        lines = []
        for n in self.topo.nodes:
            ns = n.netns
            dev = _ip_json(ns, "-d", "link", "show", "type", "vxlan")
            for d in dev:
                info = d.get("linkinfo", {}).get("info_data", {})
                lines.append(
                    f"{n.name}: {d['ifname']} vni {info.get('id')} port {info.get('port')} "
                    f"mtu {d.get('mtu')} local {info.get('local')} learning {info.get('learning')}"
                )
                for r in _ip_json(ns, "route", "show", "dev", d["ifname"]):
                    lines.append(f"    route {r['dst']} via {r.get('gateway', '-')} {' '.join(r.get('flags', []))}")
                for e in _ip_json(ns, "neigh", "show", "dev", d["ifname"]):
                    lines.append(f"    neigh {e['dst']} lladdr {e.get('lladdr')} {' '.join(e.get('state', []))}")
                fdb = subprocess.run(
                    ["bridge", "-n", ns, "-j", "fdb", "show", "dev", d["ifname"]], capture_output=True, text=True
                ).stdout
                for e in json.loads(fdb or "[]"):
                    if e.get("dst"):
                        lines.append(f"    fdb   {e['mac']} dst {e['dst']} {e.get('state', '')}")
                # DirectRouting: the peers of the node's own segment get plain routes on eth0
                for r in _ip_json(ns, "route", "show", "dev", "eth0"):
                    dst, gw = r.get("dst", ""), r.get("gateway")
                    if gw and "/" in dst and ipaddress.IPv4Network(dst).subnet_of(self.topo.pod_network):
                        lines.append(f"    route {dst} via {gw} dev eth0 (DirectRouting: same segment, no tunnel)")
            if not dev and self.topo.backend == "bgp":
                lines += self._bgp_report(n)
            elif not dev:
                for r in _ip_json(ns, "route", "show", "proto", "static"):
                    lines.append(f"{n.name}: route {r['dst']} via {r.get('gateway', '-')} dev {r.get('dev')}")
        if self.topo.backend == "bgp":
            lines += self._bgp_client_report()
        if self.topo.racks > 1:
            lines += self._router_report()
        return "\n".join(lines)

    def _router_report(self) -> list[str]:
        """The router between racks: its BGP sessions (bgp) and its routing table."""
        t = self.topo
        racks = ", ".join(f"rack {r} {t.rack_net(r)} (.1 = {t.router_ip(r)})" for r in range(t.racks))
        lines = [f"router {t.router_netns}: {racks}"]
        if t.backend == "bgp":
            from minikubenet.lab import router

            _conf, sock, _log = router.files(self.dir)
            p = subprocess.run(
                ["ip", "netns", "exec", t.router_netns, "birdc", "-s", sock, "show", "protocols"],
                capture_output=True,
                text=True,
            )
            for s in bgp_sessions.parse_protocols(p.stdout):
                flag = "" if s.established else "   <- NOT ESTABLISHED"
                lines.append(f"    {s.name:22} {s.state:5} since {s.since}  {s.info}{flag}")
        for r in _ip_json(t.router_netns, "route", "show"):
            how = f"via {r['gateway']}" if r.get("gateway") else "connected"
            lines.append(f"    route {r['dst']} {how} dev {r.get('dev')} proto {r.get('protocol', '-')}")
        return lines

    def wait_bgp_converged(self, timeout: float = 30.0) -> None:
        """Until every node has a BIRD route to every other node's subnet, through the
        gateway it should end up with: the node itself on the same segment (with racks
        in tor mode: the router), the rack's router across racks (lab/router.py)."""
        t = self.topo

        def gateway(node: NodeSpec, other: NodeSpec) -> str:
            if t.racks > 1 and (other.rack != node.rack or self.bgp_mode == "tor"):
                return str(t.router_ip(node.rack))
            return str(other.ip)

        def converged() -> bool:
            subnets = {n: lease["subnet"] for n, lease in self.leases().items()}
            for n in t.nodes:
                have = {r["dst"]: r.get("gateway") for r in _ip_json(n.netns, "route", "show", "proto", "bird")}
                if any(have.get(subnets.get(o.name, "")) != gateway(n, o) for o in t.nodes if o.name != n.name):
                    return False
            return True

        if not wait_until(converged, timeout, interval=0.1):
            raise LabError(f"BGP did not converge in {timeout:.0f}s: see `lab status` and the nodes' bird.log")

    def _bgp_report(self, node: NodeSpec) -> list[str]:
        """BIRD's sessions on a node (state, peer, since) and the routes it installed."""
        sock = os.path.join(self.run_dir(node.name), "bird", "bird.ctl")
        p = subprocess.run(
            ["ip", "netns", "exec", node.netns, "birdc", "-s", sock, "show", "protocols"],
            capture_output=True,
            text=True,
        )
        lines = [f"{node.name}: BGP sessions (BIRD)"]
        for s in bgp_sessions.parse_protocols(p.stdout):
            # a session not Established is flagged: its peer's pods are unreachable from here
            flag = "" if s.established else "   <- NOT ESTABLISHED: peer unreachable?"
            lines.append(f"    {s.name:22} {s.state:5} since {s.since}  {s.info}{flag}")
        if p.returncode != 0:
            lines.append(f"    (birdc: {(p.stderr or p.stdout).strip()[:120]})")
        for r in _ip_json(node.netns, "route", "show", "proto", "bird"):
            lines.append(f"    learned {r['dst']} via {r.get('gateway', '-')} dev {r.get('dev')}")
        return lines

    def _bgp_client_report(self) -> list[str]:
        """What the client network learned from the nodes (pod subnets, LB /32s)."""
        from minikubenet.lab import loadbalancer

        ns = loadbalancer.client_netns(self)
        if not self._bgp_client_ip() or not os.path.exists(f"/run/netns/{ns}"):
            return []
        lines = [f"client network {ns} ({self._bgp_client_ip()}, BIRD): learned over BGP"]
        for r in _ip_json(ns, "route", "show", "proto", "bird"):
            lines.append(f"    learned {r['dst']} via {r.get('gateway', '-')} dev {r.get('dev')}")
        return lines

    # -- down ---------------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything this lab made, and nothing else. Safe to run twice."""
        state = self._load_state()
        names = sorted(set(state.get("netns", [])) | set(named_netns.list_names(f"{self.topo.name}-")))
        pids = [r["pid"] for r in state.get("processes", []) if processes.start_time_of(r["pid"]) == r["start_time"]]
        pids += named_netns.pids_in(names)
        processes.stop(sorted(set(pids)))
        # pods first, the switch last (reverse creation order)
        for name in sorted(names, key=lambda n: (n.count("-"), n), reverse=True):
            named_netns.delete(name)
        shutil.rmtree(self.dir, ignore_errors=True)
        return names


def _ip_json(netns: str, *args: str) -> list:
    out = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True).stdout
    return json.loads(out or "[]")
