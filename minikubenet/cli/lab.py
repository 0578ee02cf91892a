"""``minikubenet lab ...``: a multi-node cluster built out of network namespaces on this
machine (minikubenet/lab/), for learning and for the test suite.

    minikubenet lab up [--nodes 3] [--pods-per-node 2] [--backend vxlan] [--check]
    minikubenet lab status | down | mtu-pitfall | exec NODE_OR_POD -- CMD... | etcd-member kill|start mN
    minikubenet lab pod add|delete|list ... | probe     (cli/lab_pods.py)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from minikubenet.cli.common import EXIT_ERROR, NAME_HELP, CliError, prog
from minikubenet.cli.lab_pods import print_lab_pods, register_lab


def cmd_lab_up(args) -> int:
    from minikubenet.lab.cluster import Lab, LabError, LabExists
    from minikubenet.lab.topology import build_topology

    try:
        topo = build_topology(
            args.name,
            args.nodes,
            args.pods_per_node,
            args.underlay,
            args.pod_network,
            args.backend,
            args.mtu,
            etcd_members=args.etcd_members,
            racks=args.racks,
        )
        if args.bgp_mode is not None and args.backend != "bgp":
            raise ValueError("--bgp-mode is an option of --backend bgp")
        if args.bgp_mode == "tor" and args.racks < 2:
            raise ValueError(f"--bgp-mode {args.bgp_mode} needs --racks 2 or more (the router it peers with)")
        if args.direct_routing and args.backend != "vxlan":
            raise ValueError("--direct-routing is an option of --backend vxlan")
    except ValueError as e:
        raise CliError(str(e)) from None
    lab = Lab(topo)
    lab.bgp_mode = args.bgp_mode or "mesh"
    lab.direct_routing = args.direct_routing
    from minikubenet.linux import rps

    if args.rps_cpus is not None:  # an explicit mask wins over --rps
        try:
            mask = rps.check_mask(args.rps_cpus)
        except rps.RpsError as e:
            raise CliError(str(e)) from None
        lab.rps_cpus = None if mask == "0" else mask
    elif args.rps == "on":
        lab.rps_cpus = rps.all_but_first_cpu()
    elif args.rps == "auto":
        lab.rps_auto = True  # lab/rps_probe.py, once the pods are up
    started = time.monotonic()
    try:
        lab.up()
    except LabExists as e:
        raise CliError(str(e)) from None  # the running lab is not ours to remove
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
            print(
                f"check: {len(cross)} cross-node checks ok (every pod -> every pod; per node pair "
                "1 MB over TCP and DF pings at the MTU), for example:"
            )
            for line in [c for c in cross if "1 MB" in c][:3]:
                print(f"  {line}")
            services = lab.check_services()
            if services:
                print(
                    f"check: a ClusterIP service over pods on every node and a LoadBalancer reached from "
                    f"outside the nodes, through minikubenet-proxy "
                    f"({lab.proxy_mode} mode):"
                )
                for line in services:
                    print(f"  {line}")
        except Exception as e:
            print(f"minikubenet: check failed: {e}", file=sys.stderr)
            return EXIT_ERROR
    print()
    print(lab.report())
    print()
    print(lab.overlay_report())
    prog_name = prog()
    name = "" if topo.name == "mkn" else f" --name {topo.name}"
    print(
        f"\nNext: `{prog_name} lab exec{name} n1-p1 -- ip route`, `{prog_name} lab status{name}`, "
        f"`{prog_name} lab down{name}`"
    )
    return 0


def _existing_lab(name):
    from minikubenet.lab.cluster import LAB_ROOT, Lab, LabError

    try:
        # MINIKUBENET_LAB_ROOT: the tests' labs live in a temporary directory
        return Lab.existing(name, root=os.environ.get("MINIKUBENET_LAB_ROOT", LAB_ROOT))
    except LabError as e:
        raise CliError(str(e)) from None


def cmd_lab_status(args) -> int:
    lab = _existing_lab(args.name)
    print(lab.report())
    from minikubenet.lab.pods import list_pods

    if list_pods(lab):  # `lab pod add` pods
        print()
        print_lab_pods(lab)
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
        lab.topo.etcd_member(args.member)  # KeyError naming the lab's members
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
        print(
            f"{m['name']} {m['url']} {'healthy' if m['healthy'] else 'unhealthy'}{' (leader)' if m['leader'] else ''}"
        )
    return 0


def cmd_lab_exec(args) -> int:
    # `lab exec n1 --name x -- cmd`: argparse leaves a --name after the target in the
    # command; take it out as long as it comes before the "--".
    head = args.command[: args.command.index("--")] if "--" in args.command else []
    if "--name" in head and head.index("--name") + 1 < len(head):
        i = args.command.index("--name")
        args.name = args.command[i + 1]
        args.command = args.command[:i] + args.command[i + 2 :]
    lab = _existing_lab(args.name)
    t = lab.topo
    targets = {"etcd": t.etcd_netns, "sw": t.switch_netns}
    targets.update({f"etcd{i}": m.netns for i, m in enumerate(t.etcd_member_specs(), 1) if i > 1})
    targets.update({n.name: n.netns for n in t.nodes})
    targets.update({p.name: p.netns for p in t.pods()})
    from minikubenet.lab.pods import list_pods

    targets.update({p.key: p.netns for p in list_pods(lab)})  # `lab pod add` pods: NS/NAME
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


def register(sub) -> None:
    lab = sub.add_parser("lab", help="a multi-node cluster in network namespaces").add_subparsers(
        dest="cmd", required=True
    )
    up = lab.add_parser("up", help="build the lab")
    up.add_argument("--name", default="mkn", help=NAME_HELP)
    up.add_argument("--nodes", type=int, default=3, help="number of node namespaces (default 3)")
    up.add_argument("--pods-per-node", type=int, default=2, help="pods created on each node (default 2)")
    up.add_argument("--backend", default="vxlan", choices=["vxlan", "host-gw", "bgp"])
    up.add_argument(
        "--underlay",
        default="172.31.0.0/24",
        help="the nodes' network, inside the lab's namespaces only (default 172.31.0.0/24)",
    )
    up.add_argument("--pod-network", default="10.244.0.0/16", help="the cluster network (default 10.244.0.0/16)")
    up.add_argument("--mtu", type=int, default=1500, help="underlay MTU")
    up.add_argument(
        "--etcd-members",
        type=int,
        default=1,
        help="etcd cluster size: each member in a namespace of its own (default 1; 3 survives the loss of one member)",
    )
    up.add_argument(
        "--rps",
        default="off",
        choices=["off", "on", "auto"],
        help="receive packet steering on the nodes' devices: off (the kernel's default; the default), "
        "on (every CPU but the first receives, apart from the sending CPU, as between machines), or "
        "auto (a short pod -> pod probe once the pods are up keeps whichever is faster on this machine)",
    )
    up.add_argument("--rps-cpus", default=None, help="an explicit RPS CPU mask (e.g. 2) or 'off', instead of --rps")
    up.add_argument(
        "--racks",
        type=int,
        default=1,
        help="L2 segments joined by a router namespace (default 1: one segment; host-gw needs 1)",
    )
    up.add_argument(
        "--bgp-mode",
        choices=["mesh", "tor", "rr"],
        default=None,
        help="bgp peering: mesh (node-to-node mesh, inside a rack with racks; the default), tor (every node "
        "peers with its rack's router only) or rr (the first node of each rack is a route reflector for the "
        "others; with racks the reflectors peer with the router)",
    )
    up.add_argument(
        "--direct-routing",
        action="store_true",
        help="vxlan: plain routes inside a rack, encapsulation only between racks (Calico's CrossSubnet)",
    )
    up.add_argument("--check", action="store_true", help="prove connectivity and print a report")
    up.add_argument("--keep-on-failure", action="store_true", help="leave a failed lab up for debugging")
    up.set_defaults(func=cmd_lab_up)
    for name, func, text in (
        ("status", cmd_lab_status, "print the report"),
        (
            "mtu-pitfall",
            cmd_lab_mtu_pitfall,
            "show pods at MTU 1500 on a 1450 overlay stalling, next to the correct setup",
        ),
        ("down", cmd_lab_down, "remove everything the lab created"),
    ):
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
    ex.add_argument(
        "target", help="n1, n1-p1, NS/POD (a `lab pod add` pod), etcd (etcd2, etcd3: further etcd members) or sw"
    )
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_lab_exec)
    register_lab(lab)
