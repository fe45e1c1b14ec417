"""Prometheus collectors. Names and labels are a contract: dashboards depend on them.

Labels are bounded: route names, reasons, directions, initiators and close codes;
never paths, agent ids or addresses. Each app gets its own registry, served only
on the metrics listener.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

NO_ROUTE = "none"  # the route label when nothing matched

_SESSION_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.ws_rejections = Counter(
            "sidecar_ws_rejections", "WebSocket upgrades refused, by reason.", ["route", "reason"], registry=r
        )
        self.http_rejections = Counter(
            "sidecar_http_rejections", "Plain HTTP requests refused, by reason.", ["route", "reason"], registry=r
        )
        self.ws_active = Gauge("sidecar_ws_connections_active", "WebSocket sessions open now.", ["route"], registry=r)
        self.ws_connections = Counter(
            "sidecar_ws_connections", "WebSocket sessions established.", ["route"], registry=r
        )
        self.ws_messages = Counter(
            "sidecar_ws_messages",
            "WebSocket messages relayed; direction is upstream (client to backend) or downstream.",
            ["route", "direction"],
            registry=r,
        )
        self.ws_bytes = Counter(
            "sidecar_ws_bytes", "WebSocket payload bytes relayed.", ["route", "direction"], registry=r
        )
        self.ws_closes = Counter(
            "sidecar_ws_closes",
            "WebSocket sessions ended, by who closed first (client, upstream, sidecar) and the close code.",
            ["route", "initiator", "code"],
            registry=r,
        )
        self.ws_handshake_duration = Histogram(
            "sidecar_ws_handshake_duration_seconds",
            "From the client's upgrade request to its 101, upstream handshake included.",
            ["route"],
            registry=r,
        )
        self.ws_session_duration = Histogram(
            "sidecar_ws_session_duration_seconds",
            "WebSocket session lifetimes.",
            ["route"],
            buckets=_SESSION_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            "sidecar_http_requests",
            "Plain HTTP requests answered, by status class.",
            ["route", "status_class"],
            registry=r,
        )
        self.http_duration = Histogram(
            "sidecar_http_request_duration_seconds",
            "Plain HTTP request durations, to the end of the response body.",
            ["route"],
            registry=r,
        )
