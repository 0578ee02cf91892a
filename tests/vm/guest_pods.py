"""Pods on a VM node, made the way a runtime makes them (run inside the VM, as root, with
the node's installed interpreter: ``/opt/minikubenet/bin/python guest_pods.py add p1 p2``).

    add NAME...   for each: ``ip netns add NAME``, CNI ADD through the installed plugin
                  (/opt/cni/bin/minikubenet, conflist /etc/cni/net.d), then the lab's pod
                  HTTP server (minikubenet.lab.podserver) inside, as a transient systemd
                  unit; prints {"NAME": {"ip": ..., "mtu": ...}} as JSON
    del NAME...   stop the server, CNI DEL, delete the namespace
    register JSON record pods in etcd as a kubelet would (for Services): JSON is
                  [{"name", "ip", "node"}, ...]; labels app=web, container port http 8080
    ready         exit 0 when the node's agent answers STATUS as ready (stdlib only: run it
                  with ``python3 -I -S`` for a fast start under TCG)
    status        print the agent's whole STATUS answer (JSON; over the unix socket, which
                  needs no conntrack entry)
    sink PORT     listen on PORT and never accept: the kernel completes every handshake
                  into the backlog, so each client holds an established flow (stdlib only)
    hold IP PORT N FILE   open up to N TCP connections to IP:PORT (2 s each) and keep them;
                  after 3 failures in a row writes "opened K failed F" to FILE, then
                  keeps trying (64 connects in flight) and keeps whatever gets through,
                  writing "HELD SECONDS-SINCE-THE-LAST-NEW-ONE" to FILE.held, until
                  FILE.stop exists

Only the project's own pieces are used: the CNI runtime (minikubenet.cni.runtime) executes
the installed plugin binary exactly as containerd would, and the plugin asks the node's
agent for the address.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time

CONFLIST = "/etc/cni/net.d/10-minikubenet.conflist"
BIN_DIRS = ["/opt/cni/bin"]
PORT = 8080


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def wait_listening(ip: str, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the pod server at {ip}:{port} does not answer after {timeout:.0f}s") from None
            time.sleep(0.2)


def add(names: list[str]) -> dict:
    from minikubenet.cni.runtime import CniRuntime
    from minikubenet.lab import podserver

    rt = CniRuntime.from_file(CONFLIST, BIN_DIRS)
    out = {}
    for name in names:
        if not os.path.exists(f"/run/netns/{name}"):
            run("ip", "netns", "add", name)
        result = rt.add(
            f"cid-{name}", f"/run/netns/{name}", "eth0", {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": name}
        )
        ip = result["ips"][0]["address"].split("/")[0]
        mtu = int(run("ip", "netns", "exec", name, "cat", "/sys/class/net/eth0/mtu"))
        subprocess.run(["systemctl", "stop", f"pod-{name}"], capture_output=True)
        subprocess.run(["systemctl", "reset-failed", f"pod-{name}"], capture_output=True)
        run(
            "systemd-run",
            "--quiet",
            f"--unit=pod-{name}",
            "ip",
            "netns",
            "exec",
            name,
            "/usr/bin/python3",
            "-I",
            "-S",
            podserver.__file__,
            name,
            str(PORT),
        )
        out[name] = {"ip": ip, "mtu": mtu}
    for info in out.values():
        wait_listening(info["ip"], PORT)
    return out


def delete(names: list[str]) -> dict:
    from minikubenet.cni.runtime import CniRuntime

    rt = CniRuntime.from_file(CONFLIST, BIN_DIRS)
    for name in names:
        subprocess.run(["systemctl", "stop", f"pod-{name}"], capture_output=True)
        rt.delete(f"cid-{name}", f"/run/netns/{name}", "eth0")
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return {"deleted": names}


def register(pods: list[dict]) -> dict:
    from minikubenet.k8s_objects import pod_doc
    from minikubenet.store.etcd import EtcdStore, TLSFiles
    from minikubenet.store.services import ServiceStore

    # as the root etcd user: the caller sources /etc/minikubenet/etcd-admin.env
    env = os.environ.get
    endpoints = env("MINIKUBENET_ETCD_ENDPOINTS", "https://127.0.0.1:2379")
    tls = TLSFiles(env("MINIKUBENET_ETCD_CAFILE"), env("MINIKUBENET_ETCD_CERTFILE"), env("MINIKUBENET_ETCD_KEYFILE"))
    store = ServiceStore(EtcdStore(endpoints.split(","), tls=tls))
    for p in pods:
        store.put_pod(pod_doc("default", p["name"], p["ip"], p["node"], {"app": "web"}, ports=[("http", PORT, "TCP")]))
    return {"registered": [p["name"] for p in pods]}


def agent_ready(path: str = "/run/minikubenet/agent.sock") -> bool:
    """The agent's STATUS answer (what minikubenet.lab.daemons.agent_ready asks)."""
    return "result" in agent_status(path)


def agent_status(path: str = "/run/minikubenet/agent.sock") -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10.0)
    try:
        s.connect(path)
        # a complete request: the agent checks cniVersion and name before anything else
        s.sendall(
            json.dumps(
                {
                    "command": "STATUS",
                    "mode": "main",
                    "env": {},
                    "config": {"cniVersion": "1.1.0", "name": "minikubenet"},
                }
            ).encode()
        )
        s.shutdown(socket.SHUT_WR)
        return json.loads(s.makefile("rb").read() or b"{}")
    except (OSError, ValueError) as e:
        return {"unreachable": str(e)}
    finally:
        s.close()


def sink(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4096)  # capped by net.core.somaxconn (4096 on 6.1)
    while True:
        time.sleep(3600)


def hold(ip: str, port: int, n: int, path: str) -> None:
    """The noisy pod: connections that stay established (each one conntrack entry on
    every node on the path), kept open until the process is stopped."""
    held, failed, in_a_row = [], 0, 0
    while len(held) < n and in_a_row < 3:
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.settimeout(2.0)
        try:
            c.connect((ip, port))
            held.append(c)
            in_a_row = 0
        except OSError:
            c.close()
            failed += 1
            in_a_row += 1
    with open(path + ".tmp", "w") as f:
        f.write(f"opened {len(held)} failed {failed}\n")
    os.replace(path + ".tmp", path)
    # and keeps pushing, as a noisy client does: whatever entry expires or is evicted,
    # the next attempt takes its place; until FILE.stop exists (then it only holds).
    # Many connects in flight at once (non-blocking, each given up after 0.5 s, before its
    # SYN's first retransmission): a slot that frees on the node is taken by one of these
    # within milliseconds, not by a probe's SYN, which retransmits after 1, 3, 7 s. FILE.held
    # says how many flows it holds and when it last got one (the test waits until no new
    # one got through for a while: the table is full and stays full).
    pending: dict[socket.socket, float] = {}
    last_gain = last_write = time.monotonic()
    while not os.path.exists(path + ".stop"):
        while len(pending) < 64:
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            c.connect_ex((ip, port))
            pending[c] = time.monotonic()
        _, writable, _ = select.select([], list(pending), [], 0.02)
        now = time.monotonic()
        gained = False
        for c in writable:
            del pending[c]
            if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                held.append(c)
                gained = True
            else:
                c.close()
        for c, started in list(pending.items()):
            if now - started > 0.5:
                del pending[c]
                c.close()
        if gained:
            last_gain = now
        if gained or now - last_write > 0.25:
            last_write = now
            with open(path + ".held.tmp", "w") as f:
                f.write(f"{len(held)} {now - last_gain:.1f}\n")
            os.replace(path + ".held.tmp", path + ".held")
    for c in pending:
        c.close()
    while True:
        time.sleep(3600)


def main(argv: list[str]) -> int:
    if argv[1:2] == ["ready"]:
        return 0 if agent_ready() else 1
    if argv[1:2] == ["status"]:
        print(json.dumps(agent_status()))
        return 0
    if argv[1:2] == ["sink"] and len(argv) == 3:
        sink(int(argv[2]))
    if argv[1:2] == ["hold"] and len(argv) == 6:
        hold(argv[2], int(argv[3]), int(argv[4]), argv[5])
    if argv[1:2] == ["register"] and len(argv) == 3:
        print(json.dumps(register(json.loads(argv[2]))))
        return 0
    if len(argv) < 3 or argv[1] not in ("add", "del"):
        print(__doc__, file=sys.stderr)
        return 2
    doc = add(argv[2:]) if argv[1] == "add" else delete(argv[2:])
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
