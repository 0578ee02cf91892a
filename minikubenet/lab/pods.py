"""Pods with a Kubernetes namespace, labels and named ports in a running lab
(``minikubenet lab pod add|delete|list``), the pods NetworkPolicies select.

    lab pod add a --namespace x --node n1 --labels pod=a --ports 80/TCP,81/TCP,80/UDP,http=81/TCP

makes a pod the way the lab makes its own (cluster.py ``_start_pod``): a network
namespace ``<lab>-pod-<ns>.<name>``, attached by executing the real CNI binary with
``K8S_POD_NAMESPACE``/``K8S_POD_NAME`` as a kubelet passes them, then the pod's
application inside it (portserver.py: a TCP accept and a UDP echo on every port). Its
Pod object goes to etcd (store/services.py, at /minikubenet/pods/<ns>/<name>) with its
labels and its ports as container ports, so a policy's ``port: serve-80-tcp`` resolves
on it. An unnamed port gets the name the upstream e2e tests give theirs:
``serve-<port>-<proto>`` (serve-80-tcp). Its Namespace object is created if there is
none (with only the kubernetes.io/metadata.name label; ``apply -f`` a Namespace to add
labels).

What the lab made is recorded in its state file first (``k8s_pods``, beside the
namespaces and PIDs), so ``lab pod delete`` and ``lab down`` remove exactly it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field

from minikubenet import private_files
from minikubenet.label_validation import dns1123_label_errors, label_key_errors, label_value_errors
from minikubenet.netpol_validation import port_name_errors

PROTOCOLS = ("TCP", "UDP", "SCTP")  # what portserver.py serves (SCTP where the kernel has it)


class PodSpecError(ValueError):
    """A --ports, --labels or name the lab cannot make a pod from."""


@dataclass(frozen=True)
class PodPort:
    name: str
    port: int
    protocol: str

    @property
    def spec(self) -> str:
        return f"{self.port}/{self.protocol}"


@dataclass
class LabPod:
    namespace: str
    name: str
    node: str
    netns: str
    container_id: str
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[PodPort] = field(default_factory=list)
    ip: str = ""
    pid: int = 0
    start_time: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_state(cls, d: dict) -> LabPod:
        return cls(**{**d, "ports": [PodPort(**p) for p in d.get("ports", [])]})

    def doc(self) -> dict:
        """The Pod object as a kubelet would report it (proxy/model.py pod_doc)."""
        from minikubenet.k8s_objects import pod_doc

        return pod_doc(
            self.namespace,
            self.name,
            self.ip or None,
            self.node,
            self.labels,
            ports=[(p.name, p.port, p.protocol) for p in self.ports],
        )


# --------------------------------------------------------------------------- parsing (pure)


def parse_ports(text: str) -> list[PodPort]:
    """ "80/TCP,81/TCP,80/UDP,http=81/TCP" -> PodPorts; unnamed ones named serve-<port>-<proto>
    (the upstream netpol e2e model's names). Raises PodSpecError."""
    ports: list[PodPort] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, eq, rest = item.rpartition("=")
        number, slash, proto = rest.partition("/")
        proto = (proto or "TCP").upper()
        if not number.isdigit() or not 1 <= int(number) <= 65535:
            raise PodSpecError(f"--ports {item!r}: expected [NAME=]PORT[/PROTO] with PORT 1-65535")
        if proto not in PROTOCOLS:
            raise PodSpecError(
                f"--ports {item!r}: protocol {proto} is not served in the lab (one of {', '.join(PROTOCOLS)})"
            )
        name = name if eq else f"serve-{number}-{proto.lower()}"
        problems = port_name_errors(name)
        if problems:
            raise PodSpecError(f"--ports {item!r}: port name {name!r} {'; '.join(problems)}")
        ports.append(PodPort(name, int(number), proto))
    names = [p.name for p in ports]
    served = [p.spec for p in ports]
    for dup in sorted({s for s in served if served.count(s) > 1}):
        raise PodSpecError(f"--ports: {dup} is given twice")
    for dup in sorted({n for n in names if names.count(n) > 1}):
        raise PodSpecError(f"--ports: the port name {dup!r} is given twice")
    return ports


def parse_labels(text: str) -> dict[str, str]:
    """ "pod=a,app=web" -> {"pod": "a", "app": "web"}; every key and value checked as the
    API server checks labels. Raises PodSpecError."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise PodSpecError(f"--labels {item!r}: expected key=value")
        problems = label_key_errors(key) + label_value_errors(value)
        if problems:
            raise PodSpecError(f"--labels {item!r}: {'; '.join(problems)}")
        out[key] = value
    return out


def check_name(what: str, value: str) -> str:
    problems = dns1123_label_errors(value)
    if problems:
        raise PodSpecError(f"{what} {value!r}: {problems[0]}")
    return value


def parse_ref(ref: str) -> tuple[str, str]:
    """ "x/a" -> ("x", "a"); "a" -> ("default", "a")."""
    ns, slash, name = ref.rpartition("/")
    return (ns if slash else "default"), name


# --------------------------------------------------------------------------- in a lab


def list_pods(lab) -> list[LabPod]:
    return [LabPod.from_state(d) for d in lab._load_state().get("k8s_pods", [])]


def find_pod(lab, ref: str) -> LabPod | None:
    ns, name = parse_ref(ref)
    return next((p for p in list_pods(lab) if p.namespace == ns and p.name == name), None)


def _save(lab, pod: LabPod | None, remove: str | None = None) -> None:
    """Add (or replace) ``pod`` in the state file, or remove the pod keyed ``remove``."""
    with lab._state_lock:
        state = lab._load_state()
        pods = [
            d
            for d in state.get("k8s_pods", [])
            if f"{d['namespace']}/{d['name']}" not in {remove, pod.key if pod else None}
        ]
        if pod is not None:
            pods.append(asdict(pod))
        state["k8s_pods"] = pods
        private_files.write_atomic(lab.state_file, json.dumps(state, indent=1))


def add_pod(lab, namespace: str, name: str, node: str, labels: dict[str, str], ports: list[PodPort]) -> LabPod:
    """Create the pod (see the module text); returns it with its IP. Raises PodSpecError
    for bad input (nothing made) and LabError when the lab fails at it."""
    from minikubenet.lab import portserver, probes, reachability
    from minikubenet.lab import services as lab_services
    from minikubenet.lab.cluster import LabError

    check_name("--namespace", namespace)
    check_name("pod name", name)
    try:
        lab.topo.node(node)
    except KeyError as e:
        raise PodSpecError(str(e).strip('"')) from None
    if find_pod(lab, f"{namespace}/{name}"):
        raise PodSpecError(f"pod {namespace}/{name} exists already in lab {lab.topo.name}")
    if not ports:
        raise PodSpecError("give at least one port (--ports 80/TCP,...)")
    if any(p.protocol == "SCTP" for p in ports):
        missing = reachability.sctp_missing()
        if missing:
            raise PodSpecError(f"--ports: {missing}")
    netns = f"{lab.topo.name}-pod-{namespace}.{name}"
    pod = LabPod(namespace, name, node, netns, container_id=netns, labels=labels, ports=ports)
    _save(lab, pod)  # recorded before anything is made
    lab._netns(netns)
    try:
        result = lab.runtime(node).add(
            pod.container_id, f"/run/netns/{netns}", "eth0", {"K8S_POD_NAMESPACE": namespace, "K8S_POD_NAME": name}
        )
        pod.ip = result["ips"][0]["address"].split("/")[0]
        if lab.rps_cpus:
            # `lab up --rps auto` may have chosen RPS after the agent started without it:
            # the new host-side veth gets the lab's setting like every other node device
            from minikubenet.lab import rps_probe

            rps_probe.apply_to_netns(lab.topo.node(node).netns, lab.rps_cpus)
        log = os.path.join(lab.dir, "logs", f"pod-{namespace}.{name}.log")
        rec = lab._start(
            netns,
            [sys.executable, "-I", "-S", portserver.__file__, name, *[p.spec for p in ports]],
            log,
            f"pod {namespace}/{name}",
        )
        pod.pid, pod.start_time = rec.pid, rec.start_time
        _save(lab, pod)
        for p in ports:
            if p.protocol != "UDP":
                probes.wait_listening(netns, "127.0.0.1", p.port, protocol=p.protocol)
        lab_services.store_call(lab, "ensure-namespace", name=namespace)
        lab_services.store_call(lab, "put-pods", pods=[pod.doc()])
    except Exception as e:
        delete_pod(lab, pod.key)
        raise LabError(f"pod {pod.key} could not be made (removed again): {e}") from None
    return pod


def relabel_pod(lab, ref: str, labels: dict[str, str]) -> LabPod:
    """Give the pod these labels (all of them: as ``kubectl label --overwrite`` plus
    removals), in the state file and in its Pod object."""
    from minikubenet.lab import services as lab_services

    pod = find_pod(lab, ref)
    if pod is None:
        raise PodSpecError(f"no pod {'/'.join(parse_ref(ref))} in lab {lab.topo.name} (see `lab pod list`)")
    pod.labels = dict(labels)
    lab_services.store_call(lab, "put-pods", pods=[pod.doc()])
    _save(lab, pod)
    return pod


def delete_pod(lab, ref: str) -> LabPod:
    """Remove the pod: its Pod object, its application, its CNI attachment (DEL), its
    namespace. Raises PodSpecError when the lab has no such pod."""
    from minikubenet.lab import processes
    from minikubenet.lab import services as lab_services
    from minikubenet.linux import named_netns

    pod = find_pod(lab, ref)
    if pod is None:
        raise PodSpecError(f"no pod {'/'.join(parse_ref(ref))} in lab {lab.topo.name} (see `lab pod list`)")
    lab_services.store_call(lab, "delete-pod", namespace=pod.namespace, name=pod.name)
    if pod.pid and processes.start_time_of(pod.pid) == pod.start_time:
        processes.stop([pod.pid])
    if named_netns.exists(pod.netns):
        try:
            lab.runtime(pod.node).delete(
                pod.container_id,
                f"/run/netns/{pod.netns}",
                "eth0",
                {"K8S_POD_NAMESPACE": pod.namespace, "K8S_POD_NAME": pod.name},
            )
        except Exception as e:  # noqa: BLE001 - the namespace goes anyway; the agent's GC frees the IP
            lab.say(f"CNI DEL of {pod.key} failed ({e}); removing its namespace anyway")
        named_netns.delete(pod.netns)
    _save(lab, None, remove=pod.key)
    return pod
