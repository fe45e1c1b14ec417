"""Log lines: one per event, structured, and never a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from websockets.exceptions import InvalidStatus

from sidecar.logs import JsonFormatter, TextFormatter, configure

from .conftest import AGENT, GOOD, SECRET, Sidecar
from .wire import formatted, log_fields, until, ws_connect

WRONG = "wrong-token-must-not-be-logged"


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == "sidecar"]


async def test_session_lifecycle_is_logged_without_secrets(sidecar: Sidecar, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sidecar")
    async with ws_connect(sidecar, "/ws/edge") as ws:
        await ws.send("hello")
        await ws.recv()
        await ws.close(code=4000, reason="done")
    with pytest.raises(InvalidStatus):
        async with ws_connect(sidecar, headers={**GOOD, "Authorization": f"Bearer {WRONG}"}):
            pass
    await until(lambda: log_fields(caplog, "ws.closed"))
    events = {line["event"]: line for line in lines(caplog)}
    established = events["ws.established"]
    assert (established["route"], established["alias"], established["agent_id"]) == ("edge", "/ws/edge", AGENT)
    assert str(established["upstream"]).endswith("/edge/ws")
    closed = events["ws.closed"]
    assert (closed["code"], closed["reason"], closed["initiator"]) == (4000, "done", "client")
    assert (closed["messages_up"], closed["bytes_up"], closed["messages_down"], closed["bytes_down"]) == (1, 5, 1, 5)
    rejected = events["ws.rejected"]
    assert (rejected["reason"], rejected["status"], rejected["agent_id"]) == ("invalid_token", 401, AGENT)
    assert rejected["client"] == "127.0.0.1"
    everything = "\n".join(formatted(caplog.records))
    assert SECRET not in everything and WRONG not in everything
    assert SECRET[:8] not in everything  # not even in part


async def test_invalid_agent_id_is_not_logged(sidecar: Sidecar, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sidecar")
    headers = {"Authorization": f"Bearer {SECRET}"}
    with pytest.raises(InvalidStatus):
        async with ws_connect(sidecar, "/edge/ws?edge_agent_id=evil%0AX-Injected:%201", headers):
            pass
    (line,) = [x for x in lines(caplog) if x["event"] == "ws.rejected"]
    assert line["reason"] == "invalid_agent_id"
    assert "agent_id" not in line
    assert "X-Injected" not in json.dumps(lines(caplog))


def test_text_format_is_key_value() -> None:
    record = logging.LogRecord("sidecar", logging.INFO, __file__, 1, "ws.closed", None, None)
    record.fields = {"code": 1000, "reason": "a b"}
    assert TextFormatter().format(record).endswith('INFO    ws.closed code=1000 reason="a b"')


@pytest.fixture
def served_log() -> Iterator[io.StringIO]:
    """The log as ``serve`` configures it (``sidecar.logs.configure``), written here;
    the logging setup restored after."""
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


async def test_offered_subprotocols_are_not_logged(sidecar: Sidecar, served_log: io.StringIO) -> None:
    # Browser clients carry credentials in the subprotocol list (there is no other header
    # they can set); aiohttp would warn with the whole list, once per handshake.
    credential = "base64url.bearer.authorization.k8s.io.c2VjcmV0LWluLWEtc3VicHJvdG9jb2w"
    async with ws_connect(sidecar, "/ws/edge", subprotocols=[credential, "chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v1"
        await ws.send("hello")
        await ws.recv()
    logged = served_log.getvalue()
    assert '"event": "ws.established"' in logged  # the log was being written
    assert credential not in logged


async def test_every_line_names_its_replica(
    sidecar: Sidecar, served_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Several replicas write to one log on Railway: each line says which one wrote it.
    monkeypatch.setenv("RAILWAY_REPLICA_ID", "replica-7")
    configure("info", "json")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(served_log)
    async with ws_connect(sidecar, "/ws/edge") as ws:
        await ws.send("hello")
        await ws.recv()
    await until(lambda: '"ws.closed"' in served_log.getvalue())
    logged = [json.loads(line) for line in served_log.getvalue().splitlines()]
    assert {line["event"] for line in logged} >= {"ws.established", "ws.closed"}
    assert all(line["replica"] == "replica-7" for line in logged)
