"""The CNI verbs as the node agent carries them out: ADD, DEL, CHECK, GC, STATUS.

The shim (cni/shim.py) has already checked the environment, the JSON and the
cniVersion; here the request meets etcd and the kernel. A request comes in one of two
modes:

- ``main`` (the ``minikubenet`` plugin): allocate the pod IP *and* plumb the veth.
- ``ipam`` (the ``minikubenet-ipam`` plugin, run by another main plugin such as the
  reference ``bridge``): allocate only, and answer with the abbreviated IPAM result
  (``ips`` with a gateway, ``routes``; the caller makes the interfaces).

The verbs:

- ADD is a transaction. First it looks at the pod's namespace and refuses, changing
  nothing, a namespace that is a node's own (it holds a bridge, a VXLAN device or a
  device marked as a node's) or one where ``CNI_IFNAME`` exists and is not this
  attachment's leftover (the reference ``bridge`` answers the same:
  "container veth name provided (eth0) already exists", code 999). Then it claims the
  pod IP in etcd (the record and its claim marker) and, meanwhile, creates the veth pair,
  both ends marked with ``minikubenet:<container ID>:<ifname>`` (pod_network.py); then
  addresses the pod. Each step registers its undo, and if a later step fails the
  undos run, so a failed ADD leaves neither an IP record nor a veth behind. After the
  answer the claim marker is removed (off the answer's path; a crash before that
  is repaired at the next start, agent/reconcile.py). A repeated ADD for the same
  (container ID, interface) finds its existing record and returns the same IP. If a
  plugin ran before us in the chain, its ``prevResult`` is carried into ours (SPEC §5).
- DEL is best effort and repeatable (SPEC §2): the netns may be gone, the IP may be
  released already, ``prevResult`` may be missing; every piece that is still there and
  carries this attachment's mark is removed, and success is returned when nothing of
  ours is left. An interface by our name with another owner's mark is logged, never
  removed: a runtime's DEL after a refused ADD leaves the other pod intact.
- CHECK compares the kernel and etcd with the ``prevResult`` the runtime cached after
  ADD, and reports each difference (an interface that is not ours is one). It changes
  nothing.
- GC (CNI 1.1) releases every IP of this network on this node whose attachment is not
  in ``cni.dev/valid-attachments`` (or libcni's older spelling ``cni.dev/attachments``)
  and removes the veth it left (if it carries the mark); a missing or malformed list
  releases nothing.
- STATUS (CNI 1.1) is ready when the agent holds its lease and etcd answers, and the
  conntrack table is not full. A full table drops every new connection of every pod on
  the node: code 51 ("not available, existing containers may have limited
  connectivity"), so the runtime reports the network not ready and no pod is placed
  here until it drains. Above 90 % STATUS still succeeds, but the answer carries the
  warning (``status_warnings``; the shim prints it on stderr, which libcni hands to the
  runtime's log: stdout stays empty, as the spec's STATUS output).

The pod's namespace arrives as an open file descriptor next to its path (see the
shim): the kernel work uses ``/proc/self/fd/N``, the result and the etcd record keep
the runtime's path.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from minikubenet.cni import result as cni_result
from minikubenet.cni.shim import (
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENVIRONMENT,
    ERR_INVALID_NETNS,
    ERR_NOT_AVAILABLE,
    ERR_NOT_AVAILABLE_DEGRADED,
    ERR_TRY_AGAIN_LATER,
    CniError,
)
from minikubenet.ipam.allocator import Allocation, Owner, PodIPAllocator, SubnetFull
from minikubenet.linux import rps
from minikubenet.linux.netns import NetnsNotFound
from minikubenet.linux.pod_plumbing import NotOurs, PodPlumbing
from minikubenet.pod_network import (
    BRIDGE,
    LinkSeen,
    PodLink,
    attachment_macs,
    host_namespace_reason,
    host_veth_name,
    owns,
    plan_attachment,
)
from minikubenet.store.etcd import StoreError

if TYPE_CHECKING:
    from minikubenet.linux.conntrack_table import ConntrackTable

log = logging.getLogger(__name__)

ERR_CHECK_FAILED = 100  # plugin-specific codes start at 100 (SPEC "Error")
ERR_INTERNAL = 999  # libcni's code for an error without a spec code

# libcni ≥ 1.2 sends both spellings: the spec said "cni.dev/attachments" until it was
# renamed (containernetworking/cni#1101). An attachment listed under either is valid.
VALID_ATTACHMENT_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS is "K=V;K2=V2" (SPEC §2)."""
    out = {}
    for part in (text or "").split(";"):
        if "=" in part:
            k, _, v = part.partition("=")
            out[k.strip()] = v.strip()
    return out


def parse_valid_attachments(config: dict) -> set[tuple[str, str]]:
    """The (containerID, ifname) pairs a GC must keep. Raises CniError (and so releases
    nothing) when neither key is there or an entry is not ``{"containerID", "ifname"}``.
    ``null`` is an empty list: Go's encoder writes a nil slice that way."""
    present = [k for k in VALID_ATTACHMENT_KEYS if k in config]
    if not present:
        raise CniError(
            ERR_INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments",
            "the runtime must list the attachments that are still valid; without the list nothing is released",
        )
    keep = set()
    for key in present:
        entries = config[key] if config[key] is not None else []
        if not isinstance(entries, list):
            raise CniError(ERR_INVALID_CONFIG, f"{key} must be a list, got {type(entries).__name__}")
        for i, entry in enumerate(entries):
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("containerID"), str)
                and entry["containerID"]
                and isinstance(entry.get("ifname"), str)
                and entry["ifname"]
            ):
                raise CniError(
                    ERR_INVALID_CONFIG,
                    f"{key}[{i}] is not an attachment",
                    f'expected {{"containerID": ..., "ifname": ...}}, got {entry!r}; nothing was released',
                )
            keep.add((entry["containerID"], entry["ifname"]))
    return keep


def ipam_routes(ipam: dict, gateway: str) -> list[cni_result.Route]:
    """The routes an IPAM result carries: ``ipam.routes`` as configured (host-local does
    the same), else a default route via the node's bridge address."""
    routes = ipam.get("routes")
    if routes is None:
        return [cni_result.Route("0.0.0.0/0", gateway)]
    if not isinstance(routes, list) or not all(isinstance(r, dict) and isinstance(r.get("dst"), str) for r in routes):
        raise CniError(ERR_INVALID_CONFIG, 'ipam.routes must be a list of {"dst": ..., "gw": ...}')
    return [cni_result.Route(r["dst"], r.get("gw", "") or "") for r in routes]


@dataclass
class NodeState:
    """What the handler needs to know about its node; filled in by the agent at start."""

    node_name: str
    subnet: ipaddress.IPv4Network
    mtu: int
    allocator: PodIPAllocator
    lease_healthy: Callable[[], bool]
    store_ping: Callable[[], None]  # raises StoreError
    rps_cpus: str | None = None  # receive packet steering for pod veths (linux/rps.py)
    conntrack: Callable[[], ConntrackTable | None] | None = None  # agent/upkeep.py
    backend_warnings: Callable[[], list[str]] | None = None  # bgp: unreachable peers (agent/backends/bgp.py)


@dataclass(frozen=True)
class Call:
    """One request, unpacked: who, where, and which namespace path the kernel work uses."""

    command: str
    mode: str  # "main" or "ipam"
    env: dict
    config: dict
    kernel_netns: str | None  # /proc/self/fd/N when the shim passed the namespace, else CNI_NETNS

    @property
    def pod_netns(self) -> str:
        """``kernel_netns`` for the verbs that need one (ADD, CHECK): the request checks
        (agent/request_checks.py) refused those without a namespace already."""
        if self.kernel_netns is None:
            raise CniError(ERR_INVALID_NETNS, "no network namespace given", "CNI_NETNS is empty")
        return self.kernel_netns

    @property
    def container_id(self) -> str:
        return self.env.get("CNI_CONTAINERID", "")

    @property
    def ifname(self) -> str:
        return self.env.get("CNI_IFNAME", "")

    @property
    def netns(self) -> str:
        return self.env.get("CNI_NETNS", "")

    @property
    def network(self) -> str:
        return self.config.get("name", "")


class CniHandler:
    """The verbs over ``node`` (etcd through its allocator) and ``plumbing``, the kernel
    (linux/pod_plumbing.py: the real netlink one unless a test or the benchmark gives
    another)."""

    CLAIM_THREADS = 8  # ADDs whose IP claim runs beside their veth work (the allocator
    # itself does one etcd claim at a time; the others queue there)
    COMPLETE_THREADS = 2

    def __init__(self, node: NodeState, plumbing: PodPlumbing | None = None):
        self.node = node
        if plumbing is None:
            from minikubenet.linux.netlink_pod_plumbing import NetlinkPodPlumbing  # pyroute2 only when real

            plumbing = NetlinkPodPlumbing()
        self.kernel: PodPlumbing = plumbing
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._claims = concurrent.futures.ThreadPoolExecutor(self.CLAIM_THREADS, thread_name_prefix="ip-claim")
        # marking records complete after the answer: threads of their own, so a burst of
        # them never queues in front of the claims that ADDs wait for
        self._completions = concurrent.futures.ThreadPoolExecutor(
            self.COMPLETE_THREADS, thread_name_prefix="ip-complete"
        )

    def close(self) -> None:
        """Stop the claim threads (the agent calls this on exit)."""
        self._claims.shutdown(wait=True, cancel_futures=True)
        # a completion not written now is written by the next start (agent/reconcile.py)
        self._completions.shutdown(wait=True, cancel_futures=True)
        self.kernel.close()

    @contextlib.contextmanager
    def _container_lock(self, container_id: str):
        # The runtime never runs two operations for one container at once (SPEC §3), but
        # a retrying runtime and its timed-out first attempt can overlap: serialise them.
        with self._locks_guard:
            lock = self._locks.setdefault(container_id, threading.Lock())
        with lock:
            yield

    def handle(self, request: dict, netns_fd: int | None = None) -> dict | None:
        env = request.get("env") or {}
        kernel_netns = f"/proc/self/fd/{netns_fd}" if netns_fd is not None else (env.get("CNI_NETNS") or None)
        call = Call(
            command=str(request.get("command")),
            mode=request.get("mode") or "main",
            env=env,
            config=request.get("config") or {},
            kernel_netns=kernel_netns,
        )
        try:
            if call.mode not in ("main", "ipam"):
                raise CniError(ERR_INVALID_CONFIG, f"unknown plugin mode {call.mode!r}")
            if call.command == "ADD":
                return self.add(call)
            if call.command == "DEL":
                self.delete(call)
                return None
            if call.command == "CHECK":
                self.check(call)
                return None
            if call.command == "GC":
                self.gc(call)
                return None
            if call.command == "STATUS":
                self.status()
                return None
            raise CniError(ERR_INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {call.command}")
        except StoreError as e:
            raise CniError(ERR_TRY_AGAIN_LATER, "etcd unavailable", str(e)) from None
        except NetnsNotFound as e:
            raise CniError(ERR_INVALID_ENVIRONMENT, "CNI_NETNS is not usable", str(e)) from None

    # -- shared pieces ----------------------------------------------------------------------------

    def _owner(self, call: Call) -> Owner:
        """The record ADD writes; in main mode it names the pod interface's MAC."""
        args = parse_cni_args(call.env.get("CNI_ARGS", ""))
        return Owner(
            container_id=call.container_id,
            ifname=call.ifname,
            node=self.node.node_name,
            network=call.network,
            netns=call.netns,
            pod_namespace=args.get("K8S_POD_NAMESPACE", ""),
            pod_name=args.get("K8S_POD_NAME", ""),
            mac=attachment_macs(call.container_id, call.ifname)[1] if call.mode == "main" else "",
        )

    def _find(self, call: Call) -> Allocation | None:
        """This attachment's IP on this network (a record of another network is not ours)."""
        a = self.node.allocator.find(call.container_id, call.ifname)
        if a is not None and a.owner.network not in ("", call.network):
            return None
        return a

    def _refuse_own_namespace(self, call: Call) -> None:
        """ADD into the node's own namespace would replace the node's interfaces (skel: code 8)."""
        try:
            pod, own = os.stat(call.pod_netns), os.stat("/proc/self/ns/net")
        except (OSError, TypeError):
            return
        if (pod.st_dev, pod.st_ino) == (own.st_dev, own.st_ino):
            raise CniError(
                ERR_INVALID_NETNS,
                "CNI_NETNS is the node's own network namespace",
                f"{call.netns} is where the agent runs; a pod needs a namespace of its own",
            )

    @staticmethod
    def _refuse_foreign(call: Call, link: PodLink, devices: list[LinkSeen]) -> None:
        """Refuse, before anything is changed, a namespace that is some node's own, and a
        CNI_IFNAME that exists there without this attachment's mark."""
        reason = host_namespace_reason(devices)
        if reason:
            raise CniError(
                ERR_INVALID_NETNS,
                "CNI_NETNS is a node's network namespace, not a pod's",
                f"{call.netns}: {reason}; nothing was changed",
            )
        existing = next((d for d in devices if d.name == call.ifname), None)
        if existing is not None and not owns(
            link.mark, existing.alias, existing.mac, attachment_macs(call.container_id, call.ifname)[1]
        ):
            # the reference bridge plugin's words and code (plugins/main/bridge: setupVeth)
            raise CniError(
                ERR_INTERNAL,
                f"container veth name provided ({call.ifname}) already exists",
                f"{call.ifname} in {call.netns} carries {existing.alias or 'no mark'!r}, not "
                f"{link.mark!r}: it belongs to another container; nothing was changed",
            )

    def _allocate(self, call: Call) -> tuple[Allocation, bool]:
        """In main mode the record is claimed until the pod is plumbed; in IPAM mode the
        calling plugin makes (and owns) the interface, so there is nothing of ours to
        finish or check: complete at once."""
        try:
            return self.node.allocator.allocate(self._owner(call), claimed=call.mode == "main")
        except SubnetFull as e:
            raise CniError(ERR_TRY_AGAIN_LATER, "no free pod IP on this node", str(e)) from None

    @property
    def _gateway(self) -> ipaddress.IPv4Address:
        return self.node.subnet.network_address + 1

    # -- ADD --------------------------------------------------------------------------------------

    def add(self, call: Call) -> dict:
        if call.mode == "ipam":
            return self._add_ipam(call)
        self._refuse_own_namespace(call)
        cid, ifname = call.container_id, call.ifname
        link = PodLink(cid, ifname, call.pod_netns, self.node.mtu)
        with self._container_lock(cid), contextlib.ExitStack() as undo:
            kernel = self.kernel
            pod = self._plumb(call, kernel.open_pod, call.kernel_netns)  # gone: code 4
            undo.callback(pod.close)
            self._refuse_foreign(call, link, self._plumb(call, kernel.survey, pod))
            # Claiming the IP is a round trip to etcd (~1 ms) and creating the veth pair is
            # ~1 ms of kernel work that needs no IP: both at once, the claim on a worker
            # thread (it waits on gRPC with the GIL released). Undo in reverse: remove the
            # veth (only if it carries our mark), then release the IP if this ADD created
            # the record.
            claiming = self._claims.submit(self._allocate, call)
            undo.callback(self._release_claim_quietly, claiming)
            undo.callback(self._detach_quietly, cid, ifname, call.kernel_netns)
            macs = self._plumb(call, kernel.create_pair, link)
            if self.node.rps_cpus:
                self._steer(link.host_veth)
            allocation, created = claiming.result()  # CniError (subnet full) or StoreError
            plan = plan_attachment(link, allocation.ip, self.node.subnet)
            self._plumb(call, kernel.configure_pod, plan, pod)
            undo.pop_all()  # success: keep everything
            pod.close()
        # Off the answer's path: a crash before this lands leaves a claim on a complete pod,
        # which the next start marks complete (agent/reconcile.py). A repeated ADD does it
        # too: the first attempt may have been cut short.
        self._completions.submit(self._complete_quietly, allocation)
        log.info("ADD %s/%s -> %s%s", cid, ifname, allocation.ip, "" if created else " (existing allocation)")
        res = cni_result.Result(
            interfaces=[
                cni_result.Interface(BRIDGE, macs.bridge),
                cni_result.Interface(link.host_veth, macs.host_veth),
                cni_result.Interface(ifname, macs.pod, sandbox=call.netns, mtu=self.node.mtu),
            ],
            ips=[cni_result.IPConfig(str(plan.address), str(plan.gateway), interface=2)],
            routes=[cni_result.Route("0.0.0.0/0", str(plan.gateway))],
            dns=dns if isinstance(dns := call.config.get("dns"), dict) else {},
        )
        return self._with_prev_result(call, cni_result.encode(res, call.config["cniVersion"]))

    def _add_ipam(self, call: Call) -> dict:
        routes = ipam_routes(call.config["ipam"], str(self._gateway))
        with self._container_lock(call.container_id):
            allocation, created = self._allocate(call)
        log.info(
            "IPAM ADD %s/%s -> %s%s",
            call.container_id,
            call.ifname,
            allocation.ip,
            "" if created else " (existing allocation)",
        )
        res = cni_result.Result(
            ips=[cni_result.IPConfig(f"{allocation.ip}/{self.node.subnet.prefixlen}", str(self._gateway))],
            routes=routes,
        )
        return cni_result.encode(res, call.config["cniVersion"])

    @staticmethod
    def _with_prev_result(call: Call, ours: dict) -> dict:
        prev = call.config.get("prevResult")
        return cni_result.merge(prev, ours) if isinstance(prev, dict) else ours

    @staticmethod
    def _plumb(call: Call, step, *args):
        """A kernel step of ADD: a vanished namespace stays NetnsNotFound (code 4), any
        other failure is logged with its traceback and becomes "could not attach"."""
        try:
            return step(*args)
        except NetnsNotFound:
            raise
        except NotOurs as e:
            raise CniError(
                ERR_INTERNAL, str(e), "a device by that name belongs to someone else; it was left as it is"
            ) from None
        except Exception as e:
            log.exception("ADD %s/%s: plumbing failed", call.container_id, call.ifname)
            raise CniError(ERR_INTERNAL, f"could not attach {call.ifname} in {call.netns}", str(e)) from None

    def _steer(self, host_veth: str) -> None:
        """RPS on the pod's host-side veth: a tuning, so a failure is only logged."""
        try:
            rps.set_rps_cpus(host_veth, self.node.rps_cpus or "0")
        except rps.RpsError as e:
            log.warning("%s", e)

    def _release_claim_quietly(self, claiming: concurrent.futures.Future) -> None:
        """Undo of a claim that may still be in flight: wait for it, release what it created."""
        try:
            allocation, created = claiming.result()
        except Exception:
            # Nothing to release, as far as we know: a claim that etcd committed but whose
            # answer timed out leaves a record that a retried ADD finds, or GC removes.
            return
        if created:
            self._release_quietly(allocation)

    def _complete_quietly(self, allocation: Allocation) -> None:
        try:
            self.node.allocator.complete(allocation)
        except Exception as e:
            log.warning(
                "could not mark %s of %s/%s complete (the next start will): %s",
                allocation.ip,
                allocation.owner.container_id,
                allocation.owner.ifname,
                e,
            )

    def _release_quietly(self, allocation) -> None:
        try:
            self.node.allocator.release(allocation)
        except Exception:
            log.exception("could not release %s while undoing a failed ADD", allocation.ip)

    def _detach_quietly(self, cid: str, ifname: str, netns: str | None) -> None:
        try:
            left_alone = self.kernel.detach(cid, ifname, host_veth_name(cid, ifname), netns)
            for note in left_alone:
                log.info("undo of ADD %s/%s: left alone, not ours: %s", cid, ifname, note)
        except Exception:
            log.exception("could not remove the veth of %s/%s", cid, ifname)

    # -- DEL --------------------------------------------------------------------------------------

    def delete(self, call: Call) -> None:
        """Remove what is there; ``prevResult`` is not needed (our record names the IP)."""
        cid, ifname = call.container_id, call.ifname
        with self._container_lock(cid):
            if call.mode == "main":
                left_alone = self.kernel.detach(cid, ifname, host_veth_name(cid, ifname), call.kernel_netns)
                for note in left_alone:
                    log.warning("DEL %s/%s: left alone, not ours: %s", cid, ifname, note)
            allocation = self._find(call)
            if allocation is not None:
                self.node.allocator.release(allocation)
                log.info("%sDEL %s/%s released %s", "IPAM " if call.mode == "ipam" else "", cid, ifname, allocation.ip)
            else:
                log.info("DEL %s/%s: nothing allocated (already deleted?)", cid, ifname)
        with self._locks_guard:
            self._locks.pop(cid, None)

    # -- CHECK ------------------------------------------------------------------------------------

    def check(self, call: Call) -> None:
        prev = call.config.get("prevResult")
        if not isinstance(prev, dict):
            raise CniError(
                ERR_INVALID_CONFIG,
                "required prevResult missing",
                "CHECK compares the node with the result of ADD; the runtime must pass it",
            )
        cid, ifname = call.container_id, call.ifname
        with self._container_lock(cid):
            allocation = self._find(call)
            if allocation is None:
                raise CniError(
                    ERR_CHECK_FAILED,
                    f"no IP allocated to {cid}/{ifname}",
                    "the etcd record of this attachment is missing",
                )
            problems = self._compare_with_prev(call, prev, allocation)
            if call.mode == "main" and not problems:
                plan = plan_attachment(
                    PodLink(cid, ifname, call.pod_netns, self.node.mtu), allocation.ip, self.node.subnet
                )
                problems = self.kernel.inspect(plan)
                problems += self._compare_mac(call, prev)
            if problems:
                raise CniError(ERR_CHECK_FAILED, f"{cid}/{ifname} is not as ADD left it", "; ".join(problems))

    def _compare_with_prev(self, call: Call, prev: dict, allocation: Allocation) -> list[str]:
        sandbox = call.netns if call.mode == "main" else None
        want = cni_result.addresses_of(prev, call.ifname if call.mode == "main" else None, sandbox)
        if str(allocation.ip) not in want:
            return [f"prevResult has {sorted(want) or 'no address'} for {call.ifname}, etcd holds {allocation.ip}"]
        return []

    def _compare_mac(self, call: Call, prev: dict) -> list[str]:
        want = cni_result.mac_of(prev, call.ifname, call.netns)
        if not want:
            return []
        have = self.kernel.pod_mac(call.pod_netns, call.ifname)
        return [] if have == want else [f"{call.ifname} has MAC {have}, prevResult says {want}"]

    # -- GC and STATUS (CNI 1.1) ----------------------------------------------------------------

    def gc(self, call: Call) -> None:
        keep = parse_valid_attachments(call.config)
        errors = []
        for allocation in self.node.allocator.list():
            o = allocation.owner
            if o.network != call.network or (o.container_id, o.ifname) in keep:
                continue
            try:
                self._collect(call.mode, allocation)
            except Exception as e:  # carry on past errors and report them at the end (SPEC GC)
                errors.append(f"{allocation.ip}: {e}")
        if errors:
            raise CniError(ERR_INTERNAL, "GC could not release everything", "; ".join(errors))

    def _collect(self, mode: str, allocation: Allocation) -> None:
        """Release one stale attachment: its veth (ours only in main mode), then its IP."""
        o = allocation.owner
        with self._container_lock(o.container_id):
            if mode == "main":
                # the spec lets GC assume the pod's namespace is gone: the host end is enough
                left_alone = self.kernel.detach(
                    o.container_id, o.ifname, host_veth_name(o.container_id, o.ifname), None
                )
                for note in left_alone:
                    log.warning("GC %s/%s: left alone, not ours: %s", o.container_id, o.ifname, note)
            released = self.node.allocator.release(allocation)
        log.info(
            "GC %s %s of %s/%s",
            "released" if released else "found already released",
            allocation.ip,
            o.container_id,
            o.ifname,
        )

    def status(self) -> None:
        if not self.node.lease_healthy():
            raise CniError(
                ERR_NOT_AVAILABLE_DEGRADED,
                "the node has no valid subnet lease",
                "other nodes may drop their routes to this node's pods",
            )
        try:
            self.node.store_ping()
        except StoreError as e:
            raise CniError(ERR_NOT_AVAILABLE, "etcd unavailable", str(e)) from None
        table = self.node.conntrack() if self.node.conntrack else None
        if table is not None and table.full:
            raise CniError(ERR_NOT_AVAILABLE_DEGRADED, "the conntrack table is full", table.warning())

    def status_warnings(self) -> list[str]:
        """Sentences for a successful STATUS answer: the conntrack table above 90 %, and
        the backend's own (bgp: each peer whose session is not Established - the node
        works, but it cannot reach that peer's pods)."""
        table = self.node.conntrack() if self.node.conntrack else None
        warning = table.warning() if table is not None else None
        backend = self.node.backend_warnings() if self.node.backend_warnings else []
        return ([warning] if warning else []) + backend
