"""``minikubenet``: the command line for operators and lab users.

    minikubenet network init --network 10.244.0.0/16 --subnet-len 24 --backend vxlan
    minikubenet network show
    minikubenet lab up [--nodes 3] [--pods-per-node 2] [--backend vxlan] [--check]
    minikubenet lab status | down | exec NODE_OR_POD -- CMD...

Every failure a user can cause ends in one line on stderr and exit code 1 (2 for bad
usage), never a traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import time

EXIT_ERROR = 1


class CliError(Exception):
    pass


# -- network ------------------------------------------------------------------------------------

def _store(args):
    from minikubenet.store.etcd import EtcdStore, TLSFiles
    from minikubenet.store.keys import KeyLayout
    try:
        return EtcdStore(args.etcd_endpoints.split(","), layout=KeyLayout(args.etcd_prefix, args.project_prefix),
                         tls=TLSFiles.from_args(args))
    except (ValueError, OSError) as e:
        raise CliError(f"bad etcd settings: {e}") from None


def cmd_network_init(args) -> int:
    from minikubenet.network_config import ConfigError, check_no_overlap, make_config
    try:
        config = make_config(args.network, args.subnet_len, args.backend, args.vni, args.port,
                             args.direct_routing)
        others = {"service network": ipaddress.IPv4Network(args.service_network)}
        check_no_overlap(config, others)
    except (ConfigError, ValueError) as e:
        raise CliError(str(e)) from None
    store = _store(args)
    existing = store.get_config_raw()
    if existing is not None:
        from minikubenet.network_config import parse_config
        try:
            current = parse_config(existing)
        except ConfigError:
            current = None
        if current == config and current.backend_options == config.backend_options:
            print(f"{store.layout.config} already holds this config: {config.to_json()}")
            return 0
        leases = store.list_leases()
        outside = [str(rec.subnet) for rec in leases if not rec.subnet.subnet_of(config.network)
                   or rec.subnet.prefixlen != config.subnet_len]
        if outside:
            raise CliError(f"nodes hold subnets that the new config would not contain ({', '.join(outside)}); "
                           "stop their agents and remove their leases first")
        if not args.force:
            raise CliError(f"{store.layout.config} already holds a different config ({existing.decode()}); "
                           "pass --force to replace it")
    store.put_config(config)
    print(f"wrote {store.layout.config}: {config.to_json()}")
    return 0


def cmd_network_show(args) -> int:
    store = _store(args)
    raw = store.get_config_raw()
    if raw is None:
        raise CliError(f"no network config at {store.layout.config}; run `minikubenet network init`")
    print(f"{store.layout.config}: {raw.decode()}")
    for rec in store.list_leases():
        print(f"{store.layout.subnet(rec.subnet)}: {rec.attrs_json()}")
    return 0


# -- lab --------------------------------------------------------------------------------------------

def cmd_lab_up(args) -> int:
    from minikubenet.lab.cluster import Lab, LabError, LabExists
    from minikubenet.lab.topology import build_topology
    try:
        topo = build_topology(args.name, args.nodes, args.pods_per_node, args.underlay, args.pod_network,
                              args.backend, args.mtu, etcd_members=args.etcd_members)
    except ValueError as e:
        raise CliError(str(e)) from None
    lab = Lab(topo)
    if args.rps_cpus != "auto":
        from minikubenet.linux import rps
        try:
            mask = rps.check_mask(args.rps_cpus)
        except rps.RpsError as e:
            raise CliError(str(e)) from None
        lab.rps_cpus = None if mask == "0" else mask
    started = time.monotonic()
    try:
        lab.up()
    except LabExists as e:
        raise CliError(str(e)) from None      # the running lab is not ours to remove
    except (LabError, Exception) as e:
        # A half-built lab is removed again: up either completes or leaves nothing.
        print(f"minikubenet: lab up failed: {e}", file=sys.stderr)
        if not args.keep_on_failure:
            print("minikubenet: removing what was built", file=sys.stderr)
            lab.down()
        return EXIT_ERROR
    print(f"lab {topo.name} is up in {time.monotonic() - started:.1f}s")
    if args.check:
        try:
            same = lab.check_same_node()
            print(f"check: {len(same)} same-node paths ok (pod<->pod, pod->node, node->pod)")
            cross = lab.check_cross_node()
            print(f"check: {len(cross)} cross-node checks ok (every pod -> every pod; per node pair "
                  "1 MB over TCP and DF pings at the MTU), for example:")
            for line in [c for c in cross if "1 MB" in c][:3]:
                print(f"  {line}")
            services = lab.check_services()
            if services:
                print(f"check: a ClusterIP service over pods on every node, through minikubenet-proxy "
                      f"({lab.proxy_mode} mode):")
                for line in services:
                    print(f"  {line}")
        except Exception as e:
            print(f"minikubenet: check failed: {e}", file=sys.stderr)
            return EXIT_ERROR
    print()
    print(lab.report())
    print()
    print(lab.overlay_report())
    prog = _prog()
    name = "" if topo.name == "mkn" else f" --name {topo.name}"
    print(f"\nNext: `{prog} lab exec{name} n1-p1 -- ip route`, `{prog} lab status{name}`, "
          f"`{prog} lab down{name}`")
    return 0


def _prog() -> str:
    """How the user ran us, for hints they can paste (.venv/bin/minikubenet or python -m)."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "minikubenet":
        return os.path.relpath(argv0) if not argv0.startswith("/usr/") else "minikubenet"
    return f"{os.path.relpath(sys.executable)} -m minikubenet"


def _existing_lab(name):
    from minikubenet.lab.cluster import Lab, LabError
    try:
        return Lab.existing(name)
    except LabError as e:
        raise CliError(str(e)) from None


def cmd_lab_status(args) -> int:
    lab = _existing_lab(args.name)
    print(lab.report())
    print()
    print(lab.overlay_report())
    return 0


def cmd_lab_down(args) -> int:
    from minikubenet.lab.cluster import Lab, LabError
    from minikubenet.lab.topology import build_topology, validate_name
    try:
        validate_name(args.name)
        lab = Lab.existing(args.name)
    except LabError:
        lab = Lab(build_topology(args.name, nodes=1, pods_per_node=0))  # only the name matters now
    except ValueError as e:
        raise CliError(str(e)) from None
    removed = lab.down()
    print(f"lab {args.name}: removed {len(removed)} namespaces" if removed else f"lab {args.name}: nothing to remove")
    return 0


def cmd_lab_mtu_pitfall(args) -> int:
    from minikubenet.lab import mtu_pitfall
    try:
        mtu_pitfall.run(_existing_lab(args.name))
    except ValueError as e:
        raise CliError(str(e)) from None
    return 0


def cmd_lab_etcd_member(args) -> int:
    """Kill (-9, as a crash) or start again one etcd member of a lab."""
    from minikubenet.lab.cluster import LabError
    lab = _existing_lab(args.name)
    try:
        lab.topo.etcd_member(args.member)        # KeyError naming the lab's members
        if args.action == "kill":
            lab.kill_etcd_member(args.member)
        else:
            if lab.etcd_member_record(args.member):
                raise CliError(f"etcd member {args.member} is running already")
            lab.start_etcd_member(args.member, state="existing")
            lab.wait_etcd_healthy([args.member])
    except (KeyError, LabError) as e:
        raise CliError(str(e).strip('"')) from None
    for m in lab.etcd_members_status():
        print(f"{m['name']} {m['url']} {'healthy' if m['healthy'] else 'unhealthy'}{' (leader)' if m['leader'] else ''}")
    return 0


def cmd_lab_exec(args) -> int:
    # `lab exec n1 --name x -- cmd`: argparse leaves a --name after the target in the
    # command; take it out as long as it comes before the "--".
    head = args.command[:args.command.index("--")] if "--" in args.command else []
    if "--name" in head and head.index("--name") + 1 < len(head):
        i = args.command.index("--name")
        args.name = args.command[i + 1]
        args.command = args.command[:i] + args.command[i + 2:]
    lab = _existing_lab(args.name)
    t = lab.topo
    targets = {"etcd": t.etcd_netns, "sw": t.switch_netns}
    targets.update({f"etcd{i}": m.netns for i, m in enumerate(t.etcd_member_specs(), 1) if i > 1})
    targets.update({n.name: n.netns for n in t.nodes})
    targets.update({p.name: p.netns for p in t.pods()})
    if args.target not in targets:
        raise CliError(f"no {args.target!r} in lab {t.name}; one of: {', '.join(targets)}")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise CliError("give a command after --, e.g. `lab exec n1 -- ip route`")
    env = None
    if args.target == "etcd":
        # etcd takes only clients with a certificate: etcdctl and our CLI run there as the
        # lab's root user (ETCDCTL_* and MINIKUBENET_ETCD_*), as the README shows them
        env = {**os.environ, **lab.admin_env()}
    return subprocess.call(["ip", "netns", "exec", targets[args.target]] + command, env=env)


# -- parser -------------------------------------------------------------------------------------------

NAME_HELP = ("the lab's name, the prefix of every namespace it creates: 1-8 lowercase letters "
             "or digits, starting with a letter (default mkn)")


def _etcd_options(p):
    p.add_argument("--etcd-endpoints", default=os.environ.get("MINIKUBENET_ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
                   help="comma-separated etcd URLs (default $MINIKUBENET_ETCD_ENDPOINTS or http://127.0.0.1:2379); "
                        "with TLS also --etcd-cafile, --etcd-certfile, --etcd-keyfile")
    p.add_argument("--etcd-prefix", default="/coreos.com/network")
    p.add_argument("--project-prefix", default="/minikubenet")
    from minikubenet.store.etcd import add_etcd_tls_options
    add_etcd_tls_options(p)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minikubenet", description="A minimal, real, Kubernetes-style pod network.")
    sub = p.add_subparsers(dest="group", required=True)

    net = sub.add_parser("network", help="the cluster network config in etcd").add_subparsers(dest="cmd", required=True)
    init = net.add_parser("init", help="write the network config (flannel's layout)")
    _etcd_options(init)
    init.add_argument("--network", required=True, help="pod network, e.g. 10.244.0.0/16")
    init.add_argument("--subnet-len", type=int, default=24, help="prefix length of each node's subnet")
    init.add_argument("--backend", default="vxlan", help="vxlan or host-gw")
    init.add_argument("--vni", type=int), init.add_argument("--port", type=int)
    init.add_argument("--direct-routing", action="store_true", help="vxlan: plain routes to same-segment peers")
    init.add_argument("--service-network", default="10.96.0.0/12", help="must not overlap the pod network")
    init.add_argument("--force", action="store_true", help="replace a different existing config")
    init.set_defaults(func=cmd_network_init)
    show = net.add_parser("show", help="print the config and the subnet leases")
    _etcd_options(show)
    show.set_defaults(func=cmd_network_show)

    lab = sub.add_parser("lab", help="a multi-node cluster in network namespaces").add_subparsers(dest="cmd", required=True)
    up = lab.add_parser("up", help="build the lab")
    up.add_argument("--name", default="mkn", help=NAME_HELP)
    up.add_argument("--nodes", type=int, default=3, help="number of node namespaces (default 3)")
    up.add_argument("--pods-per-node", type=int, default=2, help="pods created on each node (default 2)")
    up.add_argument("--backend", default="vxlan", choices=["vxlan", "host-gw"])
    up.add_argument("--underlay", default="172.31.0.0/24",
                    help="the nodes' network, inside the lab's namespaces only (default 172.31.0.0/24)")
    up.add_argument("--pod-network", default="10.244.0.0/16", help="the cluster network (default 10.244.0.0/16)")
    up.add_argument("--mtu", type=int, default=1500, help="underlay MTU")
    up.add_argument("--etcd-members", type=int, default=1,
                    help="etcd cluster size: each member in a namespace of its own (default 1; 3 survives "
                         "the loss of one member)")
    up.add_argument("--rps-cpus", default="auto",
                    help="receive packet steering on the nodes' devices: a CPU mask, 'off', or 'auto' "
                         "(every CPU but the first, so receiving runs apart from sending as between machines)")
    up.add_argument("--check", action="store_true", help="prove connectivity and print a report")
    up.add_argument("--keep-on-failure", action="store_true", help="leave a failed lab up for debugging")
    up.set_defaults(func=cmd_lab_up)
    for name, func, text in (("status", cmd_lab_status, "print the report"),
                             ("mtu-pitfall", cmd_lab_mtu_pitfall,
                              "show pods at MTU 1500 on a 1450 overlay stalling, next to the correct setup"),
                             ("down", cmd_lab_down, "remove everything the lab created")):
        c = lab.add_parser(name, help=text)
        c.add_argument("--name", default="mkn", help=NAME_HELP)
        c.set_defaults(func=func)
    em = lab.add_parser("etcd-member", help="kill -9 one etcd member, or start it again on its data (it rejoins)")
    em.add_argument("--name", default="mkn", help=NAME_HELP)
    em.add_argument("action", choices=["kill", "start"])
    em.add_argument("member", help="m1, m2, ... (see `lab status`)")
    em.set_defaults(func=cmd_lab_etcd_member)
    ex = lab.add_parser("exec", help="run a command inside a node's or pod's namespace")
    ex.add_argument("--name", default="mkn", help=NAME_HELP)
    ex.add_argument("target", help="n1, n1-p1, etcd (etcd2, etcd3: further etcd members) or sw")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_lab_exec)

    # Command groups that live next to their subject register themselves here.
    for module in EXTENSIONS:
        try:
            mod = __import__(module, fromlist=["register_cli"])
        except ModuleNotFoundError as e:
            if e.name != module:   # a missing optional module is fine, a broken one is not
                raise
            continue
        if hasattr(mod, "register_cli"):
            mod.register_cli(sub)
    return p


# Modules with a ``register_cli(subparsers)`` function adding their own commands:
# install/uninstall (cni/install.py), svc and get (proxy/cli.py).
EXTENSIONS = ("minikubenet.cni.install", "minikubenet.proxy.cli")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from minikubenet.store.etcd import StoreError
    try:
        return args.func(args)
    except (CliError, StoreError) as e:
        print(f"minikubenet: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `... | head`: the reader went away; that is not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
