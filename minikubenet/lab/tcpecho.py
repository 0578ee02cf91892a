"""Request/response over TCP, for latency measurements: an echo server and two clients.

    python3 -I -S tcpecho.py serve PORT
    python3 -I -S tcpecho.py rr HOST PORT COUNT [SIZE]
    python3 -I -S tcpecho.py calls PORT HOPS REQUESTS [SIZE] HOST [HOST ...]

``serve`` answers every message of SIZE bytes with the same bytes (one thread, every
connection on one ``selectors`` loop). ``rr`` opens one connection and sends COUNT
messages one after another, each waiting for its answer (netperf's TCP_RR, in Python):
it prints the round-trip times in microseconds as a JSON list. ``calls`` is the seed's
"one user request spawns 20 internal RPC calls": for each of REQUESTS user requests it
makes HOPS sequential calls, each a new connection (connect, SIZE bytes there, SIZE back,
close) to the next HOST in turn, and prints each user request's total in microseconds.
A new connection per call means each call also pays the TCP handshake and a new
conntrack entry, as an RPC without a connection pool does; ``rr`` measures the steady
state of one kept connection.

Standard library only, like podserver.py: it runs in pods' and nodes' namespaces with
the system interpreter. Every message is SIZE bytes (default 64) and TCP_NODELAY is set
on both ends, so each message is one segment sent at once (no Nagle delay). The Python
loop adds the same few microseconds to every path; ratios between paths measured with
this tool are therefore a little closer to 1 than the network's alone.
"""

import json
import selectors
import socket
import sys
import time


def _recv_exactly(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
    return buf


def serve(port):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(128)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s is lsock:
                try:
                    conn, _ = lsock.accept()
                except BlockingIOError:
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if data:
                s.sendall(data)  # small answers: the socket buffer takes them at once
            else:
                sel.unregister(s)
                s.close()


def _connect(host, port):
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def rr(host, port, count, size):
    msg = b"x" * size
    out = []
    with _connect(host, port) as s:
        for _ in range(count):
            t0 = time.perf_counter_ns()
            s.sendall(msg)
            _recv_exactly(s, size)
            out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def calls(hosts, port, hops, requests, size):
    msg = b"x" * size
    out = []
    for _ in range(requests):
        t0 = time.perf_counter_ns()
        for hop in range(hops):
            with _connect(hosts[hop % len(hosts)], port) as s:
                s.sendall(msg)
                _recv_exactly(s, size)
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def main(argv):
    mode = argv[1] if len(argv) > 1 else ""
    if mode == "serve":
        serve(int(argv[2]))
    elif mode == "rr":
        size = int(argv[5]) if len(argv) > 5 else 64
        print(json.dumps(rr(argv[2], int(argv[3]), int(argv[4]), size)))
    elif mode == "calls":
        port, hops, requests, size = (int(a) for a in argv[2:6])
        print(json.dumps(calls(argv[6:], port, hops, requests, size)))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
