"""Prometheus metrics in plain Python: counters, gauges, histograms and a tiny HTTP server.

Every minikubenet daemon that exports metrics (the proxy, the agent, the endpoints
controller) uses these classes; each daemon keeps its own set of metrics as attributes
of a ``MetricSet`` and serves it with ``serve(bind, metrics_routes(metric_set))``.

The text format is simple enough to write by hand (no client library needed): one
``# HELP`` and ``# TYPE`` line per metric, then ``name{label="v"} value`` lines; a
histogram is cumulative ``_bucket{le="..."}`` counters plus ``_sum`` and ``_count``
(https://prometheus.io/docs/instrumenting/exposition_formats/).
"""

from __future__ import annotations

import http.server
import socketserver
import threading
from typing import Callable

# kube-proxy: metrics.ExponentialBuckets(0.001, 2, 15) -> 1 ms .. 16.4 s
SYNC_BUCKETS = tuple(0.001 * 2**i for i in range(15))


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def _escape(value) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(x: float) -> str:
    return repr(float(x)) if x != int(x) or abs(x) > 1e15 else str(int(x))


class _Metric:
    type = ""

    def __init__(self, name: str, help_text: str):
        self.name, self.help = name, help_text
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.type}"]

    def lines(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    type = "counter"

    def __init__(self, name: str, help_text: str):
        super().__init__(name, help_text)
        self.values: dict[tuple, float] = {}

    def inc(self, amount: float = 1, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self.values[key] = self.values.get(key, 0) + amount

    def get(self, **labels) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)

    def lines(self) -> list[str]:
        values = self.values or {(): 0}
        return [f"{self.name}{_labels(dict(k))} {_number(v)}" for k, v in sorted(values.items())]


class Gauge(Counter):
    type = "gauge"

    def set(self, value: float, **labels) -> None:
        with self._lock:
            self.values[tuple(sorted(labels.items()))] = value


class ObservedCounter(Gauge):
    """A counter someone else keeps (the kernel's drop counters): we copy its value on
    each scrape, so it is a ``counter`` for Prometheus but set, not incremented, here."""

    type = "counter"


class Histogram(_Metric):
    """Cumulative buckets, sum and count; one series per label set (``observe(v,
    command="ADD")``), or a single unlabelled one."""

    type = "histogram"

    def __init__(self, name: str, help_text: str, buckets=SYNC_BUCKETS):
        super().__init__(name, help_text)
        self.buckets = tuple(buckets)
        self.series: dict[tuple, list] = {}  # label key -> [bucket counts, sum, count]

    def _series(self, labels: dict) -> list:
        key = tuple(sorted(labels.items()))
        if key not in self.series:
            self.series[key] = [[0] * len(self.buckets), 0.0, 0]
        return self.series[key]

    def observe(self, value: float, **labels) -> None:
        with self._lock:
            series = self._series(labels)
            for i, upper in enumerate(self.buckets):
                if value <= upper:
                    series[0][i] += 1
            series[1] += value
            series[2] += 1

    # the unlabelled series, as the proxy's sync histograms use it
    @property
    def counts(self) -> list[int]:
        return self._series({})[0]

    @property
    def sum(self) -> float:
        return self._series({})[1]

    @property
    def count(self) -> int:
        return self._series({})[2]

    def get_count(self, **labels) -> int:
        found = self.series.get(tuple(sorted(labels.items())))
        return found[2] if found else 0

    def lines(self) -> list[str]:
        out: list[str] = []
        for key, (counts, total, n) in sorted((self.series or {(): [[0] * len(self.buckets), 0.0, 0]}).items()):
            labels = dict(key)
            out += [
                f"{self.name}_bucket{_labels({**labels, 'le': f'{b:g}'})} {c}" for b, c in zip(self.buckets, counts)
            ]
            out += [
                f"{self.name}_bucket{_labels({**labels, 'le': '+Inf'})} {n}",
                f"{self.name}_sum{_labels(labels)} {_number(total)}",
                f"{self.name}_count{_labels(labels)} {n}",
            ]
        return out


class MetricSet:
    """A daemon's metrics: every ``_Metric`` attribute is exported, in definition order.
    ``collect()`` runs before each rendering: values read from the kernel are read then."""

    def all(self) -> list[_Metric]:
        return [m for m in vars(self).values() if isinstance(m, _Metric)]

    def collect(self) -> None:
        pass

    def render(self) -> str:
        self.collect()
        lines: list[str] = []
        for m in self.all():
            lines += m.header() + m.lines()
        return "\n".join(lines) + "\n"


class MetricsServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def parse_bind(bind: str) -> tuple[str, int]:
    """``host:port`` (host may be empty: every address) -> (host, port); ValueError with
    a sentence a person can act on otherwise."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{bind!r} is not host:port (e.g. 127.0.0.1:10261)")
    return host, int(port)


def serve(bind: str, routes: dict[str, Callable[[], tuple[int, str, str]]]) -> MetricsServer:
    """An HTTP server on ``host:port`` in a background thread; ``routes`` maps a path to
    a function returning (status, content type, body)."""
    host, port = parse_bind(bind)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            route = routes.get(self.path.split("?")[0])
            status, ctype, body = route() if route else (404, "text/plain", "not found\n")
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            pass

    server = MetricsServer((host or "0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name=f"http-{bind}", daemon=True).start()
    return server


def metrics_routes(metrics: MetricSet) -> dict:
    return {"/metrics": lambda: (200, "text/plain; version=0.0.4", metrics.render())}
