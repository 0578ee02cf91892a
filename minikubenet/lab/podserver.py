"""The process that plays a pod's application in the lab: a tiny HTTP server.

    GET /          -> {"pod": NAME, "ip": <the address the client reached>}
    GET /bytes?n=N -> N bytes (for large-transfer and MTU checks)

It runs inside the pod's network namespace (``ip netns exec <pod> python3 -I -S
podserver.py``) and uses only the standard library, so it starts in a few ms and needs
no virtualenv.
"""

import http.server
import json
import socketserver
import sys
import urllib.parse

CHUNK = b"x" * 65536


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/bytes":
            n = int(urllib.parse.parse_qs(url.query).get("n", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            while n > 0:
                piece = CHUNK[: min(n, len(CHUNK))]
                self.wfile.write(piece)
                n -= len(piece)
            return
        body = json.dumps(
            {"pod": self.server.pod_name, "ip": self.connection.getsockname()[0], "client": self.client_address[0]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv):
    name, port = argv[1], int(argv[2]) if len(argv) > 2 else 8080
    srv = Server(("0.0.0.0", port), Handler)
    srv.pod_name = name
    srv.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
