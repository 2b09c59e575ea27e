"""Prometheus metrics. Each process exposes /metrics on its own port (see Settings.metrics_port_for)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_TOTAL = Counter("outdial_rpc_total", "RPCs handled", ["service", "method", "code"])
RPC_SECONDS = Histogram(
    "outdial_rpc_seconds",
    "RPC handling time",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DEPENDENCY_UP = Gauge("outdial_dependency_up", "1 when the dependency answers", ["service", "dependency"])
SERVING = Gauge("outdial_serving", "1 while the service reports SERVING", ["service"])


def start_metrics_server(host: str, port: int) -> None:
    """Serve /metrics on host:port (a daemon thread); port 0 disables it."""
    if port:
        start_http_server(port, addr=host)
