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
# The running version (the usual *_build_info pattern: join on it in dashboards and alerts).
BUILD_INFO = Gauge("outdial_build_info", "1, labelled with the running version", ["service", "version"])
# Input and load limits (core/limits.py, docs/security.md): limit = rate, streams, uploads,
# list_items, batch, line, file_size, columns; role = the caller's role.
LIMIT_REJECTED = Counter(
    "outdial_limit_rejected_total", "Requests refused by an input or load limit", ["service", "limit", "role"]
)
LIMIT_OPEN = Gauge(
    "outdial_limit_open", "Server streams and uploads open (held concurrency slots)", ["service", "kind"]
)


def start_metrics_server(host: str, port: int) -> None:
    """Serve /metrics on host:port (a daemon thread); port 0 disables it."""
    if port:
        start_http_server(port, addr=host)


# ---------------------------------------------------------------- domain metrics (low-cardinality labels)
# Per campaign labels are bounded by the number of active campaigns; numbers and agents are never labels.

CALLS_PLACED = Counter("outdial_calls_placed_total", "Calls originated by the dialer", ["campaign"])
CALLS_BLOCKED = Counter(
    "outdial_calls_blocked_total",
    "Dials refused by the dial-time gate, by first reason",
    ["campaign", "reason"],
)
CALLS_RELEASED = Counter(
    "outdial_calls_released_total",
    "Ringing calls released after the legal ring minimum because no agent could take them (capacity loss)",
    ["campaign"],
)
CALLS_ENDED = Counter("outdial_calls_ended_total", "Calls ended, by outcome", ["campaign", "outcome"])
LINES_IN_FLIGHT = Gauge("outdial_lines_in_flight", "Calls in flight (lease holder's view)", ["campaign"])
DIAL_LEVEL = Gauge("outdial_dial_level", "Lines per agent the pacing algorithm asks for", ["campaign"])
ABANDON_RATE = Gauge(
    "outdial_abandon_rate", "Abandoned / live answers over the campaign's legal window", ["campaign"]
)
DNC_DECISIONS = Counter(
    "outdial_dnc_decisions_total", "DNC gate decisions", ["dial_time", "result", "reason"]
)
OFFERS = Counter("outdial_offers_total", "Live calls offered to agents, by result", ["result"])
OFFER_SECONDS = Histogram(
    "outdial_offer_seconds",
    "OfferCall: from the call's answer to the offer delivered on the agent's stream",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0),
)
LEAD_ROWS = Counter("outdial_lead_rows_total", "Lead file rows read by UploadLeads, by result", ["result"])

# The SIP/RTP gateway (issue 11).
SIP_REQUESTS = Counter(
    "outdial_gateway_sip_requests_total", "SIP requests received outside a dialog, by method", ["method"]
)
SIP_REJECTED = Counter(
    "outdial_gateway_sip_rejected_total",
    "SIP input refused or dropped: malformed, digest failures, requests from unknown sources",
    ["why"],
)
GATEWAY_CALLS = Counter(
    "outdial_gateway_calls_total", "Calls placed on the trunk, by final event", ["outcome"]
)
GATEWAY_IN_FLIGHT = Gauge("outdial_gateway_calls_in_flight", "Trunk calls not yet ended")
GATEWAY_AGENT_LEGS = Gauge("outdial_gateway_agent_legs", "Agents' phone legs up")
GATEWAY_TRUNK_UP = Gauge("outdial_gateway_trunk_up", "1 while the trunk is not degraded")
GATEWAY_MEDIA_UP = Gauge("outdial_gateway_media_up", "1 while rtpengine answers")
BRIDGE_SECONDS = Histogram(
    "outdial_gateway_bridge_seconds",
    "Time to bridge a customer's media to an agent's leg in rtpengine",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
)
