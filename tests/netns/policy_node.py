"""One node with real pods for the policy tests: a node namespace with bridge ``cni0``
(gateways 10.244.1.1/24 and 10.244.2.1/24: pods of one subnet talk across the bridge,
of two subnets through the node's routing), one namespace per pod of the x/y/z layout
(namespaces x, y, z; pods a, b, c), each serving TCP 80 and 81 (accept) and UDP 80 and
81 (echo), and a probe that tries every (destination, port, protocol) from one pod at
once. Used by test_policy_kernel.py. Everything is under the test's random prefix."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time

from minikubenet.policy.model import Cluster, NamedPort, Pod

PORTS = [(80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP")]

SERVER = r"""
import selectors, socket
sel = selectors.DefaultSelector()
for port in (80, 81):
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("0.0.0.0", port)); t.listen(64)
    u = socket.socket(type=socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
    sel.register(t, selectors.EVENT_READ, "t"); sel.register(u, selectors.EVENT_READ, "u")
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.data == "t":
            c, _ = key.fileobj.accept(); c.close()
        else:
            data, peer = key.fileobj.recvfrom(100); key.fileobj.sendto(data, peer)
"""

PROBE = r"""
import json, selectors, socket, sys, time
targets = json.loads(sys.argv[1]); timeout = float(sys.argv[2])
sel = selectors.DefaultSelector(); out = {}
for ip, port, proto in targets:
    k = f"{ip}:{port}/{proto}"; out[k] = False
    if proto == "TCP":
        s = socket.socket(); s.setblocking(False); s.connect_ex((ip, port))
        sel.register(s, selectors.EVENT_WRITE, (k, "t"))
    else:
        s = socket.socket(type=socket.SOCK_DGRAM); s.setblocking(False); s.connect((ip, port)); s.send(b"x")
        sel.register(s, selectors.EVENT_READ, (k, "u"))
end = time.monotonic() + timeout
while sel.get_map() and time.monotonic() < end:
    for key, _ in sel.select(max(0.0, end - time.monotonic())):
        k, kind = key.data; s = key.fileobj
        try:
            if kind == "t":
                out[k] = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            else:
                out[k] = s.recv(10) == b"x"
        except OSError:
            out[k] = False
        sel.unregister(s); s.close()
print(json.dumps(out))
"""


def sh(*argv: str, input: str | None = None) -> str:
    p = subprocess.run(argv, input=input, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p.stdout


class PolicyNode:
    """The node namespace (``self.node``) and its 9 pods (``self.pods``, model Pods on node "n1")."""

    def __init__(self):
        self.tag = secrets.token_hex(3)
        self.node = f"mkntest-pl-{self.tag}"
        self.pods: list[Pod] = []
        self.netns: dict[str, str] = {}
        self.servers: list[subprocess.Popen] = []

    def up(self) -> PolicyNode:
        sh("ip", "netns", "add", self.node)
        n = ["ip", "-n", self.node]
        sh(*n, "link", "set", "lo", "up")
        sh(*n, "link", "add", "cni0", "type", "bridge")
        sh(*n, "addr", "add", "10.244.1.1/24", "dev", "cni0")
        sh(*n, "addr", "add", "10.244.2.1/24", "dev", "cni0")
        sh(*n, "link", "set", "cni0", "up")
        sh(
            "ip",
            "netns",
            "exec",
            self.node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.bridge.bridge-nf-call-iptables=1",
        )
        i = 0
        for ns in ("x", "y", "z"):
            for name in ("a", "b", "c"):
                i += 1
                subnet = 1 if ns == "x" else 2
                ip = f"10.244.{subnet}.{10 + i}"
                pns = f"{self.node}-{ns}{name}"
                veth = f"plv{self.tag}{i}"
                sh("ip", "netns", "add", pns)
                sh(*n, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pns)
                sh(*n, "link", "set", veth, "master", "cni0", "up")
                p = ["ip", "-n", pns]
                sh(*p, "link", "set", "lo", "up")
                sh(*p, "addr", "add", f"{ip}/24", "dev", "eth0")
                sh(*p, "link", "set", "eth0", "up")
                sh(*p, "route", "add", "default", "via", f"10.244.{subnet}.1")
                pod = Pod(
                    ns,
                    name,
                    ip,
                    "n1",
                    {"pod": name},
                    (
                        NamedPort("serve-80-tcp", 80),
                        NamedPort("serve-81-tcp", 81),
                        NamedPort("serve-80-udp", 80, "UDP"),
                        NamedPort("serve-81-udp", 81, "UDP"),
                    ),
                )
                self.pods.append(pod)
                self.netns[pod.key] = pns
                srv = subprocess.Popen(
                    ["ip", "netns", "exec", pns, sys.executable, "-I", "-S", "-c", SERVER],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                self.servers.append(srv)
        for srv in self.servers:
            assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        return self

    def cluster(self, policies=()) -> Cluster:
        from minikubenet.policy.model import namespace_labels

        return Cluster(
            list(policies),
            self.pods,
            {ns: namespace_labels({"metadata": {"name": ns, "labels": {"ns": ns}}}) for ns in ("x", "y", "z")},
        )

    def probe(self, src: Pod, dsts: list[Pod], ports=PORTS, timeout: float = 0.6) -> dict[tuple[str, int, str], bool]:
        targets = [(d.ip, port, proto) for d in dsts for port, proto in ports]
        out = sh(
            "ip",
            "netns",
            "exec",
            self.netns[src.key],
            sys.executable,
            "-I",
            "-S",
            "-c",
            PROBE,
            json.dumps(targets),
            str(timeout),
        )
        got = json.loads(out)
        by_ip = {d.ip: d.key for d in dsts}
        return {
            (by_ip[k.split(":")[0]], int(k.split(":")[1].split("/")[0]), k.split("/")[1]): v for k, v in got.items()
        }

    def exec_node(self, *argv: str, input: str | None = None) -> str:
        return sh("ip", "netns", "exec", self.node, *argv, input=input)

    def down(self) -> None:
        for srv in self.servers:
            srv.kill()
            srv.wait()
        for pns in self.netns.values():
            subprocess.run(["ip", "netns", "del", pns], check=False)
        subprocess.run(["ip", "netns", "del", self.node], check=False)
        time.sleep(0)
