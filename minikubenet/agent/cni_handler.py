"""The CNI verbs as the node agent carries them out: ADD, DEL, CHECK, GC, STATUS.

The shim (cni/shim.py) has already checked the environment, the JSON and the
cniVersion; here the request meets etcd and the kernel:

- ADD is a transaction. Claim the pod IP in etcd, then plumb the veth; each step
  registers its undo, and if a later step fails the undos run, so a failed ADD leaves
  neither an IP record nor a veth behind. A repeated ADD for the same (container ID,
  interface) finds its existing record and returns the same IP.
- DEL is best effort and repeatable (SPEC §2): the netns may be gone, the IP may be
  released already; every piece that is still there is removed, and success is
  returned when nothing is left.
- CHECK compares the kernel with what ADD made and reports each difference.
- GC (CNI 1.1) releases every IP of this network on this node whose attachment is not
  in ``cni.dev/valid-attachments``.
- STATUS (CNI 1.1) is ready when the agent holds its lease and etcd answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass

from pyroute2 import IPRoute

from minikubenet.cni import result as cni_result
from minikubenet.cni.shim import (ERR_INVALID_CONFIG, ERR_INVALID_ENVIRONMENT, ERR_NOT_AVAILABLE,
                                  ERR_TRY_AGAIN_LATER, CniError)
from minikubenet.ipam.allocator import Owner, PodIPAllocator, SubnetFull
from minikubenet.linux import pod_interface
from minikubenet.linux.netns import NetnsNotFound
from minikubenet.pod_network import BRIDGE, host_veth_name, plan_attachment
from minikubenet.store.etcd import StoreError

log = logging.getLogger(__name__)

ERR_CHECK_FAILED = 100   # plugin-specific codes start at 100 (SPEC "Error")
ERR_INTERNAL = 999       # libcni's code for an error without a spec code


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS is "K=V;K2=V2" (SPEC §2)."""
    out = {}
    for part in (text or "").split(";"):
        if "=" in part:
            k, _, v = part.partition("=")
            out[k.strip()] = v.strip()
    return out


@dataclass
class NodeState:
    """What the handler needs to know about its node; filled in by the agent at start."""
    node_name: str
    subnet: object          # ipaddress.IPv4Network
    mtu: int
    allocator: PodIPAllocator
    lease_healthy: callable  # () -> bool
    store_ping: callable     # () -> None, raises StoreError


class CniHandler:
    def __init__(self, node: NodeState):
        self.node = node
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @contextlib.contextmanager
    def _container_lock(self, container_id: str):
        # The runtime never runs two operations for one container at once (SPEC §3), but
        # a retrying runtime and its timed-out first attempt can overlap: serialise them.
        with self._locks_guard:
            lock = self._locks.setdefault(container_id, threading.Lock())
        with lock:
            yield

    def handle(self, request: dict) -> dict | None:
        command = request.get("command")
        env = request.get("env") or {}
        config = request.get("config") or {}
        try:
            if command == "ADD":
                return self.add(env, config)
            if command == "DEL":
                self.delete(env, config)
                return None
            if command == "CHECK":
                self.check(env, config)
                return None
            if command == "GC":
                self.gc(config)
                return None
            if command == "STATUS":
                self.status()
                return None
            raise CniError(ERR_INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {command}")
        except StoreError as e:
            raise CniError(ERR_TRY_AGAIN_LATER, "etcd unavailable", str(e)) from None
        except NetnsNotFound as e:
            raise CniError(ERR_INVALID_ENVIRONMENT, "CNI_NETNS is not usable", str(e)) from None

    # -- ADD ------------------------------------------------------------------------------------

    def add(self, env: dict, config: dict) -> dict:
        cid, ifname, netns = env["CNI_CONTAINERID"], env["CNI_IFNAME"], env["CNI_NETNS"]
        args = parse_cni_args(env.get("CNI_ARGS", ""))
        owner = Owner(container_id=cid, ifname=ifname, node=self.node.node_name,
                      network=config.get("name", ""), netns=netns,
                      pod_namespace=args.get("K8S_POD_NAMESPACE", ""), pod_name=args.get("K8S_POD_NAME", ""))
        with self._container_lock(cid), contextlib.ExitStack() as undo:
            try:
                allocation, created = self.node.allocator.allocate(owner)
            except SubnetFull as e:
                raise CniError(ERR_TRY_AGAIN_LATER, "no free pod IP on this node", str(e)) from None
            if created:
                undo.callback(self._release_quietly, allocation)
            plan = plan_attachment(cid, ifname, netns, allocation.ip, self.node.subnet, self.node.mtu)
            with IPRoute() as host:
                undo.callback(self._detach_quietly, cid, ifname, netns)
                try:
                    macs = pod_interface.attach(host, plan)
                except NetnsNotFound:
                    raise
                except Exception as e:
                    log.exception("ADD %s/%s: plumbing failed", cid, ifname)
                    raise CniError(ERR_INTERNAL, f"could not attach {ifname} in {netns}", str(e)) from None
            undo.pop_all()  # success: keep everything
        log.info("ADD %s/%s -> %s%s", cid, ifname, allocation.ip,
                 "" if created else " (existing allocation)")
        res = cni_result.Result(
            interfaces=[cni_result.Interface(BRIDGE, macs.bridge),
                        cni_result.Interface(plan.host_veth, macs.host_veth),
                        cni_result.Interface(ifname, macs.pod, sandbox=netns, mtu=self.node.mtu)],
            ips=[cni_result.IPConfig(str(plan.address), str(plan.gateway), interface=2)],
            routes=[cni_result.Route("0.0.0.0/0", str(plan.gateway))],
            dns=config.get("dns") if isinstance(config.get("dns"), dict) else {})
        return cni_result.encode(res, config["cniVersion"])

    def _release_quietly(self, allocation) -> None:
        try:
            self.node.allocator.release(allocation)
        except Exception:
            log.exception("could not release %s while undoing a failed ADD", allocation.ip)

    def _detach_quietly(self, cid: str, ifname: str, netns: str) -> None:
        try:
            with IPRoute() as host:
                pod_interface.detach(host, cid, ifname, host_veth_name(cid, ifname), netns)
        except Exception:
            log.exception("could not remove the veth of %s/%s while undoing a failed ADD", cid, ifname)

    # -- DEL ------------------------------------------------------------------------------------

    def delete(self, env: dict, config: dict) -> None:
        cid, ifname = env["CNI_CONTAINERID"], env["CNI_IFNAME"]
        netns = env.get("CNI_NETNS") or None
        with self._container_lock(cid):
            with IPRoute() as host:
                pod_interface.detach(host, cid, ifname, host_veth_name(cid, ifname), netns)
            allocation = self.node.allocator.find(cid, ifname)
            if allocation is not None:
                self.node.allocator.release(allocation)
                log.info("DEL %s/%s released %s", cid, ifname, allocation.ip)
            else:
                log.info("DEL %s/%s: nothing allocated (already deleted?)", cid, ifname)
        with self._locks_guard:
            self._locks.pop(cid, None)

    # -- CHECK ----------------------------------------------------------------------------------

    def check(self, env: dict, config: dict) -> None:
        cid, ifname, netns = env["CNI_CONTAINERID"], env["CNI_IFNAME"], env["CNI_NETNS"]
        with self._container_lock(cid):
            allocation = self.node.allocator.find(cid, ifname)
            if allocation is None:
                raise CniError(ERR_CHECK_FAILED, f"no IP allocated to {cid}/{ifname}",
                               "the etcd record of this attachment is missing")
            prev = config.get("prevResult")
            if isinstance(prev, dict):
                want = {ip.address.split("/")[0] for ip in cni_result.decode(prev).ips}
                if want and str(allocation.ip) not in want:
                    raise CniError(ERR_CHECK_FAILED, "prevResult does not match the allocation",
                                   f"prevResult has {sorted(want)}, etcd holds {allocation.ip}")
            plan = plan_attachment(cid, ifname, netns, allocation.ip, self.node.subnet, self.node.mtu)
            with IPRoute() as host:
                problems = pod_interface.inspect(host, plan)
            if problems:
                raise CniError(ERR_CHECK_FAILED, f"{cid}/{ifname} is not as ADD left it", "; ".join(problems))

    # -- GC and STATUS (CNI 1.1) --------------------------------------------------------------

    def gc(self, config: dict) -> None:
        valid = config.get("cni.dev/valid-attachments", config.get("cni.dev/attachments"))
        if valid is None:
            valid = []
        if not isinstance(valid, list) or not all(isinstance(a, dict) for a in valid):
            raise CniError(ERR_INVALID_CONFIG, "cni.dev/valid-attachments must be a list of "
                           '{"containerID": ..., "ifname": ...} objects')
        keep = {(a.get("containerID"), a.get("ifname")) for a in valid}
        errors = []
        for allocation in self.node.allocator.list():
            o = allocation.owner
            if o.network != config.get("name") or (o.container_id, o.ifname) in keep:
                continue
            try:
                with self._container_lock(o.container_id):
                    with IPRoute() as host:
                        pod_interface.detach(host, o.container_id, o.ifname,
                                             host_veth_name(o.container_id, o.ifname), None)
                    self.node.allocator.release(allocation)
                log.info("GC released %s of %s/%s", allocation.ip, o.container_id, o.ifname)
            except Exception as e:  # carry on past errors and report them at the end (SPEC GC)
                errors.append(f"{allocation.ip}: {e}")
        if errors:
            raise CniError(ERR_INTERNAL, "GC could not release everything", "; ".join(errors))

    def status(self) -> None:
        if not self.node.lease_healthy():
            raise CniError(ERR_NOT_AVAILABLE, "the node has no valid subnet lease")
        try:
            self.node.store_ping()
        except StoreError as e:
            raise CniError(ERR_NOT_AVAILABLE, "etcd unavailable", str(e)) from None
