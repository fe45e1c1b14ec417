"""Log lines Railway can read: a ``message`` and ``level`` on each JSON line, one
``request_id`` from the edge to the backend, and per-session lines summarised in a burst
(Railway drops lines past about 500 a second per replica)."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import aiohttp
import pytest

from sidecar import logs
from sidecar.logs import MESSAGES, SUMMARISED, JsonFormatter, Summary, configure, message

from .conftest import GOOD, ROOT, SECRET, StartSidecar, config_for, edge_yaml
from .upstream import Backend
from .wire import closed_by_peer, log_fields, rejected, until, ws_connect

RAILWAY_ID = "Xq3vT9bSQkWn_f1DPVlJxR-603496532"  # as Railway's edge sends X-Railway-Request-Id
GENERATED = re.compile(r"[0-9a-f]{32}")


def json_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == "sidecar" and r.getMessage() == name]


# --- message and level ----------------------------------------------------------------------


def logged_event_names() -> set[str]:
    """Every event name sidecar/ passes to ``event(level, name, ...)`` (a literal, or
    either branch of a conditional)."""
    names: set[str] = set()
    for path in (ROOT / "sidecar").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "event" and len(node.args) >= 2:
                names |= {c.value for c in ast.walk(node.args[1]) if isinstance(c, ast.Constant)}
    return {n for n in names if isinstance(n, str) and re.fullmatch(r"[a-z_]+\.[a-z_0-9.]+", n)}


def test_every_event_the_sidecar_logs_has_a_message() -> None:
    names = logged_event_names()
    assert {"ws.closed", "ws.rejected", "http.rejected", "sidecar.started"} <= names  # the scan works
    assert sorted(names - MESSAGES.keys()) == []
    assert set(SUMMARISED) <= names


@pytest.mark.parametrize(
    ("name", "fields", "sentence"),
    [
        (
            "ws.closed",
            {"route": "edge", "agent_id": "edge_7", "code": 1012, "reason": "service restart", "initiator": "sidecar"},
            "session closed by the sidecar with 1012 (service restart) on route edge for agent edge_7",
        ),
        # A part whose field is absent (or empty) is left out.
        ("ws.closed", {"code": 1006, "reason": "", "initiator": "client"}, "session closed by the client with 1006"),
        (
            "ws.rejected",
            {"reason": "invalid_token", "status": 401, "route": "edge"},
            "refused a WebSocket upgrade with 401 invalid_token on route edge",
        ),
        ("ws.established", {"route": "edge", "agent_id": "a1"}, "session open on route edge for agent a1"),
        (
            "log.summary",
            {"of": "ws.closed", "by": "code", "counts": {"1012": 940, "1001": 3}, "lines": 943},
            "943 more ws.closed lines in the last second, by code: 1012: 940, 1001: 3 (each at debug)",
        ),
        ("sidecar.stopped", {}, "stopped"),
        ("some.new_event", {"x": 1}, "some.new_event"),  # not in the table: its name
    ],
)
def test_messages(name: str, fields: dict[str, object], sentence: str) -> None:
    assert message(name, fields) == sentence


@pytest.fixture
def served_log() -> Iterator[io.StringIO]:
    """The log as ``serve`` configures it (JSON), written here; the setup restored after."""
    root, websocket = logging.getLogger(), logging.getLogger("aiohttp.websocket")
    saved = (root.handlers[:], root.level, logging.getLogger("sidecar").level, websocket.level)
    configure("info", "json")
    buffer = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    yield buffer
    root.handlers[:], level, sidecar_level, websocket_level = saved
    root.setLevel(level)
    logging.getLogger("sidecar").setLevel(sidecar_level)
    websocket.setLevel(websocket_level)


async def test_each_json_line_has_message_and_level_beside_event_and_its_fields(
    backend: Backend, start_sidecar: StartSidecar, served_log: io.StringIO
) -> None:
    sidecar = await start_sidecar(config_for(backend.url, edge_yaml()))
    async with ws_connect(sidecar, headers={**GOOD, "X-Railway-Request-Id": RAILWAY_ID}) as ws:
        await ws.send("hi")
        await ws.recv()
    await rejected(sidecar, "/edge/ws", {**GOOD, "Authorization": "Bearer wrong"})
    await until(lambda: '"ws.closed"' in served_log.getvalue())
    lines = {line["event"]: line for line in map(json.loads, served_log.getvalue().splitlines())}
    closed, refused = lines["ws.closed"], lines["ws.rejected"]
    assert (closed["level"], closed["message"]) == ("info", "session closed by the client with 1000 on route edge")
    assert (closed["code"], closed["initiator"], closed["request_id"]) == (1000, "client", RAILWAY_ID)
    assert refused["level"] == "warning"
    assert refused["message"] == "refused a WebSocket upgrade with 401 invalid_token on route edge"
    assert refused["reason"] == "invalid_token" and GENERATED.fullmatch(str(refused["request_id"]))
    assert SECRET not in served_log.getvalue()


# --- one request id, from the edge to the backend ----------------------------------------


@pytest.mark.parametrize(
    ("sent", "chosen"),
    [
        # Railway's edge's id, on every request through it ...
        ({"X-Railway-Request-Id": RAILWAY_ID}, RAILWAY_ID),
        # ... which replaces a client's own: one id goes upstream.
        ({"X-Railway-Request-Id": RAILWAY_ID, "X-Request-Id": "client-1"}, RAILWAY_ID),
        ({"X-Railway-Request-Id": RAILWAY_ID, "X_Request_Id": "client-1"}, RAILWAY_ID),  # in any spelling
        # Without it, the client's.
        ({"X-Request-Id": "7f0c2a9e-8d1b-4c55-9a57-0e1f3b6d2c44"}, "7f0c2a9e-8d1b-4c55-9a57-0e1f3b6d2c44"),
        # One that fails the check is replaced: too long, characters that do not belong.
        ({"X-Request-Id": "a" * 129}, None),
        ({"X-Request-Id": "id with spaces"}, None),
        ({"X-Request-Id": 'x"},{"admin":true'}, None),
        ({"X-Railway-Request-Id": "é-not-ascii", "X-Request-Id": "client-2"}, "client-2"),
        # None at all: one made up.
        ({}, None),
    ],
)
async def test_the_request_id_is_logged_and_forwarded_as_the_one_x_request_id(
    backend: Backend,
    start_sidecar: StartSidecar,
    caplog: pytest.LogCaptureFixture,
    sent: dict[str, str],
    chosen: str | None,
) -> None:
    caplog.set_level(logging.DEBUG, logger="sidecar")
    sidecar = await start_sidecar(config_for(backend.url))  # the shipped routes.yaml
    async with ws_connect(sidecar, headers={**GOOD, **sent}) as ws:
        await ws.send("hi")
        await ws.recv()
    message_url = sidecar.url("/edge/message", "http")
    async with aiohttp.ClientSession() as http, http.post(message_url, headers={**GOOD, **sent}, data=b"x") as answer:
        assert answer.status == 200
    await until(lambda: log_fields(caplog, "ws.closed") and log_fields(caplog, "http.request"))
    ws_seen, http_seen = backend.seen
    ids = []
    for seen in (ws_seen, http_seen):
        forwarded = [v for k, values in seen.headers.items() if k.replace("_", "-") == "x-request-id" for v in values]
        assert len(forwarded) == 1, seen.headers  # one id, whatever the client sent
        ids.append(forwarded[0])
    for request_id in ids:
        assert request_id == chosen if chosen is not None else GENERATED.fullmatch(request_id)
    assert ids[0] != ids[1] or chosen is not None  # made up: one per request
    # Every line of the session and of the request carries it.
    assert [f["request_id"] for f in log_fields(caplog, "ws.established")] == [ids[0]]
    assert [f["request_id"] for f in log_fields(caplog, "ws.closed")] == [ids[0]]
    assert [f["request_id"] for f in log_fields(caplog, "http.request")] == [ids[1]]


async def test_a_refusal_before_any_route_carries_its_request_id(
    backend: Backend, start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    sidecar = await start_sidecar(config_for(backend.url, edge_yaml()))
    await rejected(sidecar, "/nowhere", {**GOOD, "X-Railway-Request-Id": RAILWAY_ID})
    [refused] = log_fields(caplog, "ws.rejected")
    assert (refused["reason"], refused["request_id"]) == ("no_route", RAILWAY_ID)
    assert backend.seen == []


# --- log volume: a burst is summarised ------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_past_the_burst_lines_are_debug_and_counted_then_one_summary_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sidecar")
    clock = Clock()
    summary = Summary(clock, burst=3)
    levels = [summary.level(logging.INFO, "ws.closed", {"code": code}) for code in (1012,) * 5 + (1001,)]
    assert levels == [logging.INFO] * 3 + [logging.DEBUG] * 3
    # other events have bursts of their own
    assert summary.level(logging.WARNING, "ws.rejected", {"reason": "draining"}) == logging.WARNING
    assert caplog.records == []  # nothing written until the second is over
    clock.now += 1.0
    assert summary.level(logging.INFO, "ws.closed", {"code": 1012}) == logging.INFO  # a new second
    [line] = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    assert line["level"] == "info" and line["event"] == "log.summary"
    assert (line["of"], line["by"], line["counts"], line["lines"]) == ("ws.closed", "code", {"1012": 2, "1001": 1}, 3)


def test_a_line_of_another_event_writes_the_counts_first(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sidecar")
    summary = Summary(Clock(), burst=1)
    for reason in ("invalid_token", "invalid_token", "rate_limited"):
        summary.level(logging.WARNING, "ws.rejected", {"reason": reason})
    assert summary.level(logging.DEBUG, "http.request", {}) == logging.DEBUG  # a debug line: no flush
    assert caplog.records == []
    assert summary.level(logging.INFO, "sidecar.stopping", {}) == logging.INFO
    [record] = caplog.records
    assert record.__dict__["fields"]["counts"] == {"invalid_token": 1, "rate_limited": 1}


def test_a_line_below_the_level_is_neither_written_nor_counted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At warning (the benchmarks' level), a session's info lines cost no summary bookkeeping.
    caplog.set_level(logging.WARNING, logger="sidecar")
    summary = Summary(Clock(), burst=1)
    monkeypatch.setattr(logs, "SUMMARY", summary)
    for _ in range(3):
        logs.event(logging.INFO, "ws.closed", code=1000)
    assert caplog.records == [] and summary._seen == {} and summary._counts == {}
    logs.event(logging.WARNING, "ws.rejected", reason="invalid_token")
    assert [r.getMessage() for r in caplog.records] == ["ws.rejected"] and summary._seen == {"ws.rejected": 1}


async def test_a_drain_of_many_sessions_is_summarised_by_close_code_each_kept_at_debug(
    backend: Backend, start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="sidecar")
    # The summary's second on a clock of the test's: the 40 closes are one burst however
    # slowly a loaded machine runs them, and the second ends when the test says.
    clock = [0.0]
    monkeypatch.setattr(logs, "SUMMARY", Summary(clock=lambda: clock[0]))
    sidecar = await start_sidecar(config_for(backend.url, edge_yaml()))
    sessions = await asyncio.gather(*(ws_connect(sidecar) for _ in range(40)))
    at_once = asyncio.Event()
    at_once.set()  # every session closed together (a second SIGTERM)
    await sidecar.running.drain(at_once)
    for ws in sessions:
        assert await closed_by_peer(ws) == (1012, "service restart: reconnect")
    await until(lambda: len([r for r in caplog.records if r.getMessage() == "ws.closed"]) == 40)
    clock[0] += logs.WINDOW  # the second is over: its summary is written (on the loop's timer)
    await until(lambda: any(f["of"] == "ws.closed" for f in log_fields(caplog, "log.summary")))
    closed = [r for r in caplog.records if r.getMessage() == "ws.closed"]
    assert len(closed) == 40  # every one, at debug at least
    loud = [r for r in closed if r.levelno == logging.INFO]
    assert len(loud) == 20  # the first 20 of the second one by one
    counted = [f for f in log_fields(caplog, "log.summary") if f["of"] == "ws.closed"]
    assert sum(f["lines"] for f in counted) == 40 - len(loud)
    assert {code for f in counted for code in f["counts"]} == {"1012"}
    [summary] = json_lines(caplog, "log.summary")[-1:]
    assert str(summary["message"]).endswith("by code: 1012: " + str(counted[-1]["lines"]) + " (each at debug)")


def test_docs_logs_names_every_summarised_event_and_what_it_is_counted_by() -> None:
    docs = (ROOT / "docs" / "logs.md").read_text()
    for name, by in SUMMARISED.items():
        assert f"`{name}`" in docs and by in docs
