"""Prometheus collectors. Names and labels are a contract: dashboards depend on them.

Labels are bounded: route names, reasons, directions, initiators and close codes;
never paths, agent ids or addresses. Each app gets its own registry, served only
on the metrics listener. Besides the sidecar's own series, the registry carries
prometheus_client's standard ``process_*`` series (open fds, RSS, CPU ...) and the
event loop's task count, both computed at scrape time: nothing per request.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString

from .config import Config

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

NO_ROUTE = "none"  # the route label when nothing matched


def close_code_label(code: int) -> str:
    """A close code as a label: RFC 6455's range (1000-4999) as itself, else
    ``invalid``, so a peer cannot mint label values."""
    return str(code) if 1000 <= code <= 4999 else "invalid"


_SESSION_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
# Operations on the fleet's shared state (sidecar.fleet): the op label's values.
STATE_OPS = ("connect", "claim", "replace", "renew", "release", "budget", "budget_overflow", "control", "admin")
_STATE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


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
        # sidecar_ws_connections_active, _connections_total, _closes_total, _handshake_duration_seconds
        # and _session_duration_seconds
        self.sessions = SessionCollector()
        r.register(self.sessions)
        self.relayed = RelayCollector()
        r.register(self.relayed)
        self.ws_cut_off = Counter(
            "sidecar_ws_cut_off",
            "WebSocket peers the sidecar cut off, by peer (client, upstream) and cause: dead (did not "
            "answer its keep-alive ping) or stalled (took no data for stall_timeout while some waited).",
            ["route", "peer", "cause"],
            registry=r,
        )
        self.http_requests = Counter(
            "sidecar_http_requests",
            "Plain HTTP requests answered, by status class.",
            ["route", "status_class"],
            registry=r,
        )
        self.config_reloads = Counter(
            "sidecar_config_reloads", "Config reloads (SIGHUP), by result: success or failure.", ["result"], registry=r
        )
        # Both series from the start, at 0: rate() and increase() see a counter's first
        # increment only from an earlier sample, so a first failed reload would not alert.
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        self.config_info = Gauge(
            "sidecar_config_info",
            "The loaded config: its file and the first 12 hex digits of its SHA-256 (value 1).",
            ["source", "sha256"],
            registry=r,
        )
        self.http_duration = Histogram(
            "sidecar_http_request_duration_seconds",
            "Plain HTTP request durations, to the end of the response body.",
            ["route"],
            registry=r,
        )
        self.jwks_refreshes = Counter(
            "sidecar_jwks_refreshes",
            "JWKS fetches (jwt.jwks_url), by result: success, or failure (the last good keys are kept).",
            ["result"],
            registry=r,
        )
        for result in ("success", "failure"):
            self.jwks_refreshes.labels(result)
        self.jwks_last_success = Gauge(
            "sidecar_jwks_last_success_timestamp_seconds",
            "When each auth policy's JWKS (jwt.jwks_url) was last fetched well (Unix time; 0: not yet).",
            ["policy"],
            registry=r,
        )
        self.ws_token_expiries = Counter(
            "sidecar_ws_token_expiries",
            "WebSocket sessions the sidecar closed (4401) because their signed token expired.",
            ["route"],
            registry=r,
        )
        self.auth_clients_evicted = Counter(
            "sidecar_auth_clients_evicted",
            "Client keys dropped from the failed-authentication table because it held limits.tracked_clients: "
            "unblocked keys only (a blocked key is never dropped), each one's count starts over.",
            registry=r,
        )
        self.state_up = Gauge(
            "sidecar_state_up",
            "1 while the fleet's shared state (Redis, state.redis) answers; 0 while it does not "
            "(each replica then decides alone), and when none is configured (in-process).",
            registry=r,
        )
        self.state_errors = Counter(
            "sidecar_state_errors",
            "Operations on the shared state that failed, timed out, or were skipped while it was down, "
            "by operation: each one a decision this replica made alone (fail-open).",
            ["op"],
            registry=r,
        )
        self.state_duration = Histogram(
            "sidecar_state_operation_duration_seconds",
            "Round trips to the shared state, by operation (failed ones included, up to state.timeout).",
            ["op"],
            buckets=_STATE_BUCKETS,
            registry=r,
        )
        for op in STATE_OPS:
            self.state_errors.labels(op)
            self.state_duration.labels(op)
        self.replaced_remote = Counter(
            "sidecar_sessions_replaced_remote",
            "Sessions this replica closed (4409) because another replica admitted a newer session "
            "for their agent id (duplicate_agent: replace).",
            registry=r,
        )
        self.replica_info = Gauge(
            "sidecar_replica_info",
            "This replica's id (RAILWAY_REPLICA_ID, else host:pid) and where its shared state lives: "
            "redis or in-process (value 1).",
            ["replica", "state"],
            registry=r,
        )
        self.http = RequestSeries(self.http_requests, self.http_duration)
        ProcessCollector(registry=r)  # process_open_fds, process_resident_memory_bytes, ...
        r.register(TaskCollector())

    def loaded(self, config: Config) -> None:
        """``sidecar_config_info`` names the config now in use (one series)."""
        self.config_info.clear()
        self.config_info.labels(config.source, config.digest[:12]).set(1)
        for route in config.routes:  # at 0 from the start: rate() sees the first expiry
            if route.websocket:
                self.ws_token_expiries.labels(route.name)

    def replica(self, replica: str, state: str) -> None:
        """``sidecar_replica_info`` names this replica and where its state lives (one series)."""
        self.replica_info.clear()
        self.replica_info.labels(replica, state).set(1)


class RequestSeries:
    """The plain HTTP request counter and duration histogram, their children looked up once
    per route and status class: ``labels()`` takes a lock and builds a key on every call,
    which a request should not pay for."""

    def __init__(self, requests: Counter, durations: Histogram) -> None:
        self._requests = requests
        self._durations = durations
        self._counted: dict[tuple[str, int], Counter] = {}
        self._timed: dict[str, Histogram] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        """One request on ``route`` answered with ``status`` after ``seconds``."""
        key = (route, status // 100)
        counter = self._counted.get(key)
        if counter is None:
            counter = self._counted[key] = self._requests.labels(route, f"{status // 100}xx")
        counter.inc()
        timer = self._timed.get(route)
        if timer is None:
            timer = self._timed[route] = self._durations.labels(route)
        timer.observe(seconds)


_HANDSHAKE_BUCKETS = Histogram.DEFAULT_BUCKETS  # the handshake histogram's, as it always had


class RouteSessions:
    """One route's session counts and timings, plain numbers (see :class:`SessionCollector`)."""

    __slots__ = ("_closes", "active", "durations", "established", "handshakes", "name")

    def __init__(self, name: str, closes: dict[tuple[str, str, str], int]) -> None:
        self.name = name
        self.established = 0
        self.active = 0
        self._closes = closes
        # Per bucket (each bound's own, not cumulative), then the sum: as a Histogram keeps them.
        self.handshakes = Timings(_HANDSHAKE_BUCKETS)
        self.durations = Timings(_SESSION_BUCKETS_INF)

    def opened(self, handshake: float) -> None:
        """A session established (its 101 sent ``handshake`` seconds after the request): counted, and open."""
        self.established += 1
        self.active += 1
        timings = self.handshakes
        timings.counts[bisect_left(timings.bounds, handshake)] += 1
        timings.total += handshake

    def closed(self, initiator: str, code: str, duration: float) -> None:
        """An open session ended after ``duration`` seconds: who closed first, the code as a label."""
        self.active -= 1
        key = (self.name, initiator, code)
        self._closes[key] = self._closes.get(key, 0) + 1
        timings = self.durations
        timings.counts[bisect_left(timings.bounds, duration)] += 1
        timings.total += duration


class Timings:
    """A histogram's state as plain numbers: observations per bucket (the first bound not below
    the value, as prometheus_client's Histogram finds it) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def buckets(self) -> list[tuple[str, float]]:
        """The cumulative counts by ``le``, written as prometheus_client writes a bound."""
        cumulative, out = 0, []
        for bound, count in zip(self.bounds, self.counts, strict=True):
            cumulative += count
            out.append((str(floatToGoString(bound)), float(cumulative)))  # type: ignore[no-untyped-call]
        return out


_SESSION_BUCKETS_INF = (*_SESSION_BUCKETS, INF)


class SessionCollector(Collector):
    """The session series, as prometheus_client's Gauge, Counters and Histograms exported them
    (names, types, help, labels, buckets): ``sidecar_ws_connections_active``,
    ``sidecar_ws_connections_total``, ``sidecar_ws_closes_total``,
    ``sidecar_ws_handshake_duration_seconds`` and ``sidecar_ws_session_duration_seconds``.
    Plain numbers while sessions come and go, families only when Prometheus scrapes: a
    session pays no lock, no label lookup and no observation call for them."""

    def __init__(self) -> None:
        self._routes: dict[str, RouteSessions] = {}
        self._closes: dict[tuple[str, str, str], int] = {}

    def route(self, name: str) -> RouteSessions:
        counts = self._routes.get(name)
        if counts is None:
            counts = self._routes[name] = RouteSessions(name, self._closes)
        return counts

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        active = GaugeMetricFamily("sidecar_ws_connections_active", "WebSocket sessions open now.", labels=["route"])
        established = CounterMetricFamily("sidecar_ws_connections", "WebSocket sessions established.", labels=["route"])
        handshakes = HistogramMetricFamily(
            "sidecar_ws_handshake_duration_seconds",
            "From the client's upgrade request to its 101, upstream handshake included.",
            labels=["route"],
        )
        durations = HistogramMetricFamily(
            "sidecar_ws_session_duration_seconds", "WebSocket session lifetimes.", labels=["route"]
        )
        for name, counts in list(self._routes.items()):
            active.add_metric([name], counts.active)
            established.add_metric([name], counts.established)
            handshakes.add_metric([name], counts.handshakes.buckets(), counts.handshakes.total)
            durations.add_metric([name], counts.durations.buckets(), counts.durations.total)
        closes = CounterMetricFamily(
            "sidecar_ws_closes",
            "WebSocket sessions ended, by who closed first (client, upstream, sidecar) and the close code.",
            labels=["route", "initiator", "code"],
        )
        for labels, count in list(self._closes.items()):
            closes.add_metric(list(labels), count)
        yield from (active, established, closes, handshakes, durations)


class TaskCollector(Collector):
    """``sidecar_asyncio_tasks``: the event loop's unfinished tasks, counted when
    Prometheus scrapes (from the loop that serves /metrics). Each open WebSocket
    session holds a few; a count that does not come back down is a leak."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # no running loop (a registry read outside the app): nothing to count
            return
        yield GaugeMetricFamily("sidecar_asyncio_tasks", "Unfinished asyncio tasks in the event loop.", value=tasks)


@dataclass(eq=False)
class Tally:
    """What one session relayed in one direction (``upstream``: client to backend,
    ``downstream``). Plain ints on the relay's hot path; :class:`RelayCollector`
    adds them up only when Prometheus scrapes."""

    route: str
    direction: str
    messages: int = 0
    bytes: int = 0


class RelayCollector(Collector):
    """``sidecar_ws_messages_total`` and ``sidecar_ws_bytes_total``: the sessions that
    ended plus, at scrape time, the ones still open."""

    def __init__(self) -> None:
        self._live: set[Tally] = set()
        self._ended: dict[tuple[str, str], tuple[int, int]] = {}

    def open(self, route: str, direction: str) -> Tally:
        tally = Tally(route, direction)
        self._live.add(tally)
        return tally

    def close(self, tally: Tally) -> None:
        self._live.discard(tally)
        key = (tally.route, tally.direction)
        messages, nbytes = self._ended.get(key, (0, 0))
        self._ended[key] = (messages + tally.messages, nbytes + tally.bytes)

    def collect(self) -> Iterator[CounterMetricFamily]:
        totals = dict(self._ended)
        for tally in list(self._live):
            key = (tally.route, tally.direction)
            messages, nbytes = totals.get(key, (0, 0))
            totals[key] = (messages + tally.messages, nbytes + tally.bytes)
        labels = ["route", "direction"]
        messages_family = CounterMetricFamily(
            "sidecar_ws_messages",
            "WebSocket messages relayed; direction is upstream (client to backend) or downstream.",
            labels=labels,
        )
        bytes_family = CounterMetricFamily("sidecar_ws_bytes", "WebSocket payload bytes relayed.", labels=labels)
        for (route, direction), (messages, nbytes) in sorted(totals.items()):
            messages_family.add_metric([route, direction], messages)
            bytes_family.add_metric([route, direction], nbytes)
        yield messages_family
        yield bytes_family
