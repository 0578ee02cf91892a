"""A pod's UDP responder in the lab: every datagram is answered with who answered.

    datagram in  -> {"pod": NAME, "client": "<ip>:<port>"} back to the sender

It runs inside the pod's network namespace next to the HTTP server (podserver.py),
stdlib only (``python3 -I -S udpecho.py NAME PORT``), so the UDP tests can see which
endpoint a client's datagrams reach and when they move to another one.
"""

import json
import socket
import sys


def main(argv):
    name, port = argv[1], int(argv[2]) if len(argv) > 2 else 5353
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(json.dumps({"pod": name, "client": f"{peer[0]}:{peer[1]}"}).encode(), peer)


if __name__ == "__main__":
    main(sys.argv)
