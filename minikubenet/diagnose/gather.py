"""Filling diagnose/cluster.py's view: etcd's keys and every node's kernel.

``view_from_etcd`` is pure: it reads a dump of etcd's keys (the network config, the
leases, the pod IP records, Services and Pods) into a ClusterView. Where the dump comes
from differs: in the lab, ``etcdctl`` inside the etcd namespace (the lab's etcd is not
reachable from the host's namespace, by design); on a real node, the store with the
node's client certificate. The kernel side is linux/live_state.py, one node per thread
(each read runs its tools in child processes, so the threads stay in our namespace).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from minikubenet.diagnose.cluster import ClusterView, IpRecord, Lease, NodeInfo, PodInfo, ServiceInfo
from minikubenet.linux import live_state
from minikubenet.network_config import ConfigError, parse_config
from minikubenet.policy.model import Cluster as PolicyCluster
from minikubenet.policy.model import PolicyError, namespace_labels, pod_from_k8s, policy_from_k8s
from minikubenet.store.keys import KeyLayout, subnet_from_key


def view_from_etcd(
    kvs: Iterable[tuple[str, bytes | str]],
    layout: KeyLayout = KeyLayout(),
    node_names: dict[ipaddress.IPv4Address, str] | None = None,
) -> ClusterView:
    """``kvs``: (key, value) pairs of etcd. ``node_names``: underlay IP -> node name when
    the caller knows them (the lab); otherwise a node is named by its lease's PublicIP."""
    node_names = node_names or {}
    config = None
    leases: list[Lease] = []
    records: list[IpRecord] = []
    services: dict[str, ServiceInfo] = {}
    pod_docs: dict[str, dict] = {}
    policies, namespaces = [], {}
    for key, raw in kvs:
        value = raw.decode() if isinstance(raw, bytes) else raw
        try:
            if key == layout.config:
                config = parse_config(value)
            elif key.startswith(layout.subnets):
                doc, subnet = json.loads(value), subnet_from_key(key)
                if subnet is not None:
                    leases.append(
                        Lease(
                            subnet,
                            ipaddress.IPv4Address(doc["PublicIP"]),
                            doc.get("BackendType", ""),
                            (doc.get("BackendData") or {}).get("VtepMAC"),
                        )
                    )
            elif key.startswith(layout.ipam):
                subnet = subnet_from_key(key.rsplit("/", 1)[0])
                doc = json.loads(value)
                pod = f"{doc['podNamespace']}/{doc['podName']}" if doc.get("podName") else doc["containerID"]
                if subnet is not None:
                    records.append(
                        IpRecord(
                            ipaddress.IPv4Address(key.rsplit("/", 1)[1]),
                            subnet,
                            doc["containerID"],
                            doc.get("ifname", "eth0"),
                            doc.get("node", ""),
                            pod,
                        )
                    )
            elif key.startswith(f"{layout.project_prefix}/services/"):
                doc = json.loads(value)
                meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
                ip = spec.get("clusterIP")
                if ip and ip != "None":
                    svc = ServiceInfo(
                        meta.get("namespace", "default"),
                        meta["name"],
                        ipaddress.IPv4Address(ip),
                        tuple(
                            (p.get("name", ""), int(p["port"]), p.get("protocol", "TCP"))
                            for p in spec.get("ports") or []
                        ),
                    )
                    services[svc.key] = svc
            elif key.startswith(f"{layout.project_prefix}/pods/"):
                doc = json.loads(value)
                meta = doc.get("metadata") or {}
                pod_docs[f"{meta.get('namespace', 'default')}/{meta.get('name')}"] = doc
            elif key.startswith(f"{layout.project_prefix}/networkpolicies/"):
                policies.append(policy_from_k8s(json.loads(value)))
            elif key.startswith(f"{layout.project_prefix}/namespaces/"):
                doc = json.loads(value)
                namespaces[(doc.get("metadata") or {}).get("name", "")] = namespace_labels(doc)
        except (ValueError, KeyError, TypeError, ConfigError, PolicyError):
            continue  # a malformed object: doctor's other checks and the daemons report those
    if config is None:
        raise LookupError(f"no network config at {layout.config}: is this the cluster's etcd?")
    view = ClusterView(
        pod_network=config.network,
        backend=config.backend,
        leases=leases,
        ip_records=records,
        services=services,
        direct_routing=config.backend == "vxlan" and config.backend_options.get("DirectRouting") is True,
    )
    for lease in leases:
        name = node_names.get(lease.public_ip, str(lease.public_ip))
        view.nodes[name] = NodeInfo(name, lease.public_ip, lease.subnet, lease.vtep_mac)
    for ip, name in node_names.items():
        view.nodes.setdefault(name, NodeInfo(name, ip, None))
    by_ip = {r.ip: r for r in records}
    for key, doc in pod_docs.items():  # Pod objects first: they carry namespace and name
        ip_text = (doc.get("status") or {}).get("podIP")
        if not ip_text:
            continue
        ip = ipaddress.IPv4Address(ip_text)
        rec = by_ip.get(ip)
        node = (doc.get("spec") or {}).get("nodeName") or (rec.node if rec else "")
        ns, _, name = key.partition("/")
        view.pods[key] = PodInfo(ns, name, ip, node, rec.container_id if rec else "", rec.ifname if rec else "eth0")
    policy_pods = []
    for doc in pod_docs.values():
        try:
            policy_pods.append(pod_from_k8s(doc))
        except (PolicyError, ValueError, KeyError, TypeError, AttributeError):
            continue  # a malformed Pod: the policy daemon skips (and counts) it too
    view.policy = PolicyCluster(policies, policy_pods, namespaces)
    known = {p.ip for p in view.pods.values()}
    for rec in records:  # then every IP record without a Pod object
        if rec.ip in known:
            continue
        ns, _, name = rec.pod.rpartition("/")
        pod = PodInfo(ns or "default", name, rec.ip, rec.node, rec.container_id, rec.ifname)
        view.pods.setdefault(pod.key, pod)
    return view


def read_nodes(view: ClusterView, netns_of: dict[str, str | None]) -> None:
    """Every node's snapshot into ``view`` (in parallel); a node that cannot be read is
    recorded in ``view.unreadable`` with the reason."""

    def one(item):
        name, netns = item
        try:
            return name, live_state.read_node(name, netns), None
        except live_state.NodeUnreadable as e:
            return name, None, str(e)

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(netns_of)))) as pool:
        for name, snap, why in pool.map(one, netns_of.items()):
            if snap is not None:
                view.snapshots[name] = snap
            else:
                view.unreadable[name] = why or "unreadable"


def from_lab(lab, nodes: Iterable[str] | None = None) -> ClusterView:
    """The view of a running lab: etcd through etcdctl in its namespace, every node's
    namespace read (or only ``nodes``)."""
    from minikubenet.lab import daemons

    t = lab.topo
    view = view_from_etcd(((k, v) for k, v in lab.etcd_dump("/")), node_names={n.ip: n.name for n in t.nodes})
    # the lab knows which pod is which: its pods are named n1-p1, their container IDs <lab>-n1-p1
    by_cid = {p.container_id: p for p in t.pods()}
    for key, pod in list(view.pods.items()):
        spec = by_cid.get(pod.container_id) or by_cid.get(pod.name)
        if spec is not None and pod.name != spec.name and key not in (f"default/{spec.name}",):
            view.pods.pop(key)
            view.pods[f"default/{spec.name}"] = PodInfo(
                "default", spec.name, pod.ip, pod.node or spec.node, pod.container_id, pod.ifname
            )
    for n in t.nodes:
        info = view.nodes.get(n.name)
        if info is not None:
            alive = daemons.agent_ready(os.path.join(lab.run_dir(n.name), "agent.sock"))
            view.nodes[n.name] = NodeInfo(info.name, info.ip, info.subnet, info.vtep_mac, alive)
    wanted = set(nodes) if nodes else {n.name for n in t.nodes}
    read_nodes(view, {n.name: n.netns for n in t.nodes if n.name in wanted})
    if t.racks > 1:  # the router between the racks: trace follows its routes
        try:
            view.routers[t.router_netns] = live_state.read_node(t.router_netns, t.router_netns)
        except live_state.NodeUnreadable:
            pass  # the walk then stops at the router ("leaves for")
    return view


def from_host(store, node_name: str, node_ip: ipaddress.IPv4Address | None) -> ClusterView:
    """The view from a real node: etcd through the store, only this host's kernel."""
    # Prefix by prefix: a node's client certificate may read only some of them (its
    # etcd user's role, store/etcd_rbac.py); what it may not read stays out of the view.
    from minikubenet.store.etcd import StoreError

    kvs = []
    for prefix in (
        store.layout.config,
        store.layout.subnets,
        store.layout.ipam,
        f"{store.layout.project_prefix}/services/",
        f"{store.layout.project_prefix}/pods/",
        f"{store.layout.project_prefix}/networkpolicies/",
        f"{store.layout.project_prefix}/namespaces/",
    ):
        try:
            kvs += [(key, value) for key, value, _lease in store.dump(prefix)]
        except StoreError:
            continue
    names = {node_ip: node_name} if node_ip is not None else {}
    view = view_from_etcd(kvs, store.layout, names)
    read_nodes(view, {node_name: None})
    return view
