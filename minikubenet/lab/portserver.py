"""The application of a pod made with ``lab pod add``: it serves every port it is given.

    python3 -I -S portserver.py NAME 80/TCP 81/TCP 80/UDP ...

    TCP: accept, send {"pod": NAME, "port": P, "client": "<ip>"} and close
    UDP: answer every datagram with the same JSON, to its sender
    SCTP: as TCP, over a one-to-one SCTP socket (RFC 6458 section 4; only where the
          kernel has SCTP: `lab pod add` checks before it makes the pod)

This is what the upstream network-policy e2e tests run in their pods (agnhost serving
every port of the model), so ``lab probe`` can ask "does x/a reach y/b on 81/TCP?" for
every pair and port. The TCP server writes first and reads nothing, so a prober that
connects and reads until EOF never meets a reset from unread data. One process, one
thread: ``selectors`` waits on every socket at once. Standard library only, like
podserver.py, so it starts in a few ms inside the pod's namespace.
"""

import json
import selectors
import socket
import sys


def main(argv):
    name, specs = argv[1], argv[2:]
    sel = selectors.DefaultSelector()
    for spec in specs:
        port, _, proto = spec.partition("/")
        kind = socket.SOCK_DGRAM if proto.upper() == "UDP" else socket.SOCK_STREAM
        ipproto = socket.IPPROTO_SCTP if proto.upper() == "SCTP" else 0
        s = socket.socket(socket.AF_INET, kind, ipproto)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", int(port)))
        if kind == socket.SOCK_STREAM:
            s.listen(128)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, (kind, int(port)))
    while True:
        for key, _ in sel.select():
            kind, port = key.data
            try:
                if kind == socket.SOCK_STREAM:
                    conn, peer = key.fileobj.accept()
                    conn.setblocking(True)
                    conn.settimeout(1.0)
                    conn.sendall(answer(name, port, peer))
                    conn.close()
                else:
                    _, peer = key.fileobj.recvfrom(2048)
                    key.fileobj.sendto(answer(name, port, peer), peer)
            except OSError:
                pass  # a client that went away is its own problem


def answer(name, port, peer):
    return json.dumps({"pod": name, "port": port, "client": peer[0]}).encode()


if __name__ == "__main__":
    main(sys.argv)
