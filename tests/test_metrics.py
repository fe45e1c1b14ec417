"""The metrics listener's process series and the event loop's task count, as a
scraper sees them (a real scrape of the metrics listener, a real session)."""

from __future__ import annotations

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sidecar.metrics import STATE_OPS, Metrics
from sidecar.replica import this_replica

from .conftest import StartSidecar, config_for
from .upstream import Backend
from .wire import echoes, scrape, until_scraped, ws_connect

PROCESS_SERIES = (
    "process_open_fds",
    "process_max_fds",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_start_time_seconds",
)


async def test_process_series_and_task_count_are_on_the_metrics_listener(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start_sidecar(config_for(backend.url), metrics_port=0)
    port = sidecar.running.metrics_port
    assert port is not None
    before = await scrape(port)
    for name in (*PROCESS_SERIES, "sidecar_asyncio_tasks"):
        assert name in before, name
    assert before["process_open_fds"] > 0 and before["process_resident_memory_bytes"] > 0
    assert before["sidecar_asyncio_tasks"] >= 1  # at least the scrape's own handler

    async with ws_connect(sidecar) as ws:
        await echoes(ws, "hello")
        during = await scrape(port)
        # Client, sidecar (both legs) and backend share this process: 4 more sockets,
        # and at least the session's relay tasks.
        assert during["process_open_fds"] >= before["process_open_fds"] + 4
        assert during["sidecar_asyncio_tasks"] >= before["sidecar_asyncio_tasks"] + 3

    # The session is gone: both come back to where they were.
    await until_scraped(port, "sidecar_asyncio_tasks", before["sidecar_asyncio_tasks"])
    await until_scraped(port, "process_open_fds", before["process_open_fds"])


async def test_the_public_port_never_serves_the_process_series(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(config_for(backend.url), metrics_port=0)
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{sidecar.port}/metrics") as r:
        text = await r.text()
    assert "process_open_fds" not in text and "sidecar_asyncio_tasks" not in text
    assert [seen.path for seen in backend.seen] == ["/metrics"]  # the backend answered


def test_the_task_count_is_left_out_when_no_loop_runs() -> None:
    registry = Metrics().registry
    assert registry.get_sample_value("sidecar_asyncio_tasks") is None
    assert registry.get_sample_value("process_open_fds") is not None


async def test_the_fleet_series_are_there_from_the_start_without_redis(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    # Registered whatever the config, at 0, so rates and alerts see their first change.
    sidecar = await start_sidecar(config_for(backend.url), metrics_port=0)
    assert sidecar.running.metrics_port is not None
    scraped = await scrape(sidecar.running.metrics_port)
    assert scraped["sidecar_state_up"] == 0
    assert scraped["sidecar_sessions_replaced_remote_total"] == 0
    for op in STATE_OPS:
        assert scraped[f'sidecar_state_errors_total{{op="{op}"}}'] == 0
        assert scraped[f'sidecar_state_operation_duration_seconds_count{{op="{op}"}}'] == 0
    (info,) = [(k, v) for k, v in scraped.items() if k.startswith("sidecar_replica_info")]
    assert info == (f'sidecar_replica_info{{replica="{this_replica()}",state="in-process"}}', 1.0)


def test_session_series_are_exported_as_prometheus_clients_metrics_exported_them() -> None:
    """The session series are plain numbers made into families at scrape time: the lines a
    scrape shows are the ones prometheus_client's Gauge, Counters and Histograms wrote for
    the same sessions (bucket bounds included: an observation on a bound counts in it)."""
    sessions = {
        # route: (handshake s, how it ended (initiator, code), duration s); None: still open
        "edge": [(0.003, ("client", "1000"), 0.5), (0.005, ("client", "1000"), 10.0), (2.7, ("sidecar", "1012"), 9e4)],
        "b": [(0.25, None, 0.0), (0.0001, ("upstream", "1006"), 3600.0)],
    }
    metrics = Metrics()
    reference = CollectorRegistry()
    active = Gauge("sidecar_ws_connections_active", "WebSocket sessions open now.", ["route"], registry=reference)
    established = Counter("sidecar_ws_connections", "WebSocket sessions established.", ["route"], registry=reference)
    closes = Counter(
        "sidecar_ws_closes",
        "WebSocket sessions ended, by who closed first (client, upstream, sidecar) and the close code.",
        ["route", "initiator", "code"],
        registry=reference,
    )
    handshakes = Histogram(
        "sidecar_ws_handshake_duration_seconds",
        "From the client's upgrade request to its 101, upstream handshake included.",
        ["route"],
        registry=reference,
    )
    durations = Histogram(
        "sidecar_ws_session_duration_seconds",
        "WebSocket session lifetimes.",
        ["route"],
        buckets=(1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0),
        registry=reference,
    )
    for route, list_ in sessions.items():
        counts = metrics.sessions.route(route)
        for handshake, end, duration in list_:
            counts.opened(handshake)
            established.labels(route).inc()
            active.labels(route).inc()
            handshakes.labels(route).observe(handshake)
            if end is not None:
                counts.closed(*end, duration)
                active.labels(route).dec()
                closes.labels(route, *end).inc()
                durations.labels(route).observe(duration)

    def lines(registry: CollectorRegistry) -> list[str]:
        names = ("_connections_active", "_connections_total", "_closes_total", "_handshake_dur", "_session_dur")
        text = generate_latest(registry).decode()
        return sorted(line for line in text.splitlines() if any(f"sidecar_ws{name}" in line for name in names))

    assert lines(metrics.registry) == lines(reference)
    assert metrics.registry.get_sample_value("sidecar_ws_connections_active", {"route": "b"}) == 1
