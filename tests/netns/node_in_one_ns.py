"""A lab node folded into one network namespace, for the proxy's render-and-load tests:
one interface carrying the node's IP, the golden cluster's pod IPs and a client pod IP,
a route for the service range, TCP servers that answer "<their address> <peer>", and a
client that connects from a chosen source address. Shared by
test_iptables_render_loads.py and test_nft_render_loads.py."""

from __future__ import annotations

import subprocess
import sys
import time

# The golden cluster's node and endpoint addresses, and the client pod's (10.244.9.9).
ADDRESSES = (
    "192.168.56.11",
    "10.244.1.11",
    "10.244.2.12",
    "10.244.3.13",
    "10.244.1.21",
    "10.244.2.22",
    "10.244.1.31",
    "10.244.2.32",
    "10.244.9.9",
)

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64)
while True:
    c, peer = s.accept()
    c.sendall(f"{c.getsockname()[0]} {peer[0]}".encode()); c.close()
"""

CLIENT = """
import socket, sys
src, dst, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for _ in range(n):
    c = socket.socket(); c.settimeout(3); c.bind((src, 0))
    try:
        c.connect((dst, port)); print(c.recv(100).decode())
    except OSError as e:
        print(type(e).__name__)
    c.close()
"""


def run(ns, *argv, input=None):
    p = subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(argv)} failed: {p.stderr}\n{input or ''}"
    return p.stdout


def plumb_node(ns):
    """The addresses on one veth (this kernel may have no dummy driver; the peer stays
    unused) and the service range routed through it, so connects go through OUTPUT."""
    run(ns, "ip", "link", "add", "mkn0", "type", "veth", "peer", "name", "mkn1")
    run(ns, "ip", "link", "set", "mkn1", "up")
    for ip in ADDRESSES:
        run(ns, "ip", "addr", "add", f"{ip}/32", "dev", "mkn0")
    run(ns, "ip", "link", "set", "mkn0", "up")
    run(ns, "ip", "route", "add", "10.96.0.0/12", "dev", "mkn0")


def start_server(ns, port):
    """A server on ``port`` (all addresses), once it listens; the caller kills it."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, str(port)])
    for _ in range(100):
        if "LISTEN" in run(ns, "ss", "-Hltn", f"sport = :{port}") or proc.poll() is not None:
            break
        time.sleep(0.05)
    return proc


def connect(ns, src, dst, port, n):
    """``n`` connections from ``src``: each answer, or the error's name."""
    return run(ns, sys.executable, "-c", CLIENT, src, dst, str(port), str(n)).split("\n")[:-1]
