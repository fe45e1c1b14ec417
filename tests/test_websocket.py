"""WebSocket routes end to end: real backend, real sidecar, python `websockets` as the client."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any
from unittest.mock import ANY

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sidecar import websocket
from sidecar.frames import Scanner
from sidecar.legs import Leg
from sidecar.relay import Relay

from .conftest import AGENT, GOOD, OLD_SECRET, SECRET, Sidecar, StartSidecar, config_for, edge_yaml
from .relaying import _accept_for
from .upstream import Backend
from .wire import (
    closed_by_peer,
    echoes,
    exchange,
    flooded_non_reader,
    handshake,
    log_fields,
    masked_frame,
    open_raw_websocket,
    parse_response,
    raw_upstream,
    read_frame,
    rejected,
    statuses,
    until,
    ws_connect,
)

# --- aliases, headers, the handshake --------------------------------------------------


@pytest.mark.parametrize("alias", ["/edge/ws", "/ws/edge"])
async def test_both_aliases_reach_the_one_backend_endpoint_with_query_kept(
    sidecar: Sidecar, backend: Backend, alias: str
) -> None:
    headers = {**GOOD, "X-Forwarded-For": "6.6.6.6"}
    async with ws_connect(sidecar, f"{alias}?edge_agent_id={AGENT}&v=a%20b", headers) as ws:
        await echoes(ws, "hello")
    seen = backend.seen[0]
    assert seen.path == "/edge/ws"
    assert seen.query_string == f"edge_agent_id={AGENT}&v=a%20b"  # byte for byte
    assert seen.headers["x-edge-agent-id"] == [AGENT]
    assert seen.headers["authorization"] == [f"Bearer {SECRET}"]  # the shipped routes.yaml forwards it
    assert seen.headers["x-forwarded-for"] == ["127.0.0.1"]  # set by the sidecar, not the client's


async def test_agent_id_from_query_alone_is_sent_upstream_as_header(sidecar: Sidecar, backend: Backend) -> None:
    headers = {"Authorization": f"Bearer {SECRET}"}
    async with ws_connect(sidecar, "/edge/ws?edge_agent_id=edge_1", headers) as ws:
        await ws.send("x")
        await ws.recv()
    assert backend.seen[0].headers["x-edge-agent-id"] == ["edge_1"]


async def test_previous_secret_is_accepted_during_rotation(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(config_for(backend.url, EDGE_SECRET_PREVIOUS=OLD_SECRET))
    async with ws_connect(sidecar, headers={**GOOD, "Authorization": f"Bearer {OLD_SECRET}"}) as ws:
        await echoes(ws, "rotated")


async def test_subprotocol_is_the_one_the_upstream_chose(sidecar: Sidecar, backend: Backend) -> None:
    async with ws_connect(sidecar, subprotocols=["chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v1"
    async with ws_connect(sidecar, subprotocols=["chat.v9"]) as ws:
        assert ws.subprotocol is None
    assert backend.seen[0].headers["sec-websocket-protocol"] == ["chat.v1"]


# --- the relay -----------------------------------------------------------------------


async def test_text_stays_text_binary_stays_binary_order_kept(sidecar: Sidecar) -> None:
    async with ws_connect(sidecar) as ws:
        for i in range(50):
            await ws.send(f"text {i}")
            await ws.send(bytes([i, 0, 255]))
        for i in range(50):
            assert await ws.recv() == f"text {i}"
            assert await ws.recv() == bytes([i, 0, 255])


async def test_fragmented_message_arrives_whole(sidecar: Sidecar) -> None:
    async with ws_connect(sidecar) as ws:
        await ws.send(["frag", "men", "ted ✓"])
        assert await ws.recv() == "fragmented ✓"
        await ws.send([b"\x00", b"\x01\x02"])
        assert await ws.recv() == b"\x00\x01\x02"


async def test_ping_payload_is_answered(sidecar: Sidecar) -> None:
    async with ws_connect(sidecar) as ws:
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 10)  # resolves only on a pong with the same payload


async def test_also_works_with_aiohttp_client(sidecar: Sidecar) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(sidecar.url("/ws/edge"), headers=GOOD) as ws:
        await ws.send_bytes(b"\x01" * 70000)
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.BINARY and msg.data == b"\x01" * 70000
        await ws.close(code=4100, message=b"aiohttp done")
        assert ws.close_code == 4100


async def test_client_close_code_and_reason_reach_upstream(sidecar: Sidecar, backend: Backend) -> None:
    async with ws_connect(sidecar) as ws:
        await ws.send("x")
        await ws.recv()
        await ws.close(code=4001, reason="agent shutting down")
        assert ws.close_code == 4001  # the echo, RFC 6455 section 5.5.1
    await until(lambda: backend.closes)
    assert backend.closes == [(4001, "agent shutting down")]
    await until(lambda: sidecar.sample("sidecar_ws_closes_total", route="edge", initiator="client", code="4001") == 1)


async def test_upstream_close_code_and_reason_reach_client(sidecar: Sidecar) -> None:
    async with ws_connect(sidecar) as ws:
        await ws.send("close 4002 backend restarting")
        assert await closed_by_peer(ws) == (4002, "backend restarting")
    await until(lambda: sidecar.sample("sidecar_ws_closes_total", route="edge", initiator="upstream", code="4002") == 1)


async def test_close_without_status_is_passed_on_as_1000_never_1005(sidecar: Sidecar, backend: Backend) -> None:
    async with ws_connect(sidecar) as ws:
        ws.transport.write(masked_frame(0x8, b""))  # a close frame with no payload
        await closed_by_peer(ws)
    await until(lambda: backend.closes)
    assert backend.closes == [(1000, "")]


async def test_upstream_vanishing_gives_client_1011_and_gauge_returns_to_zero(sidecar: Sidecar) -> None:
    async with ws_connect(sidecar) as ws:
        assert sidecar.sample("sidecar_ws_connections_active", route="edge") == 1
        await ws.send("vanish")
        code, _ = await closed_by_peer(ws)
        assert code == 1011
    await until(lambda: sidecar.sample("sidecar_ws_connections_active", route="edge") == 0)
    await until(lambda: sidecar.sample("sidecar_ws_closes_total", route="edge", initiator="upstream", code="1006") == 1)


async def test_client_vanishing_gives_upstream_1001(sidecar: Sidecar, backend: Backend) -> None:
    ws = await ws_connect(sidecar)
    await ws.send("x")
    await ws.recv()
    ws.transport.abort()  # no close frame
    await until(lambda: backend.closes)
    assert backend.closes == [(1001, "client went away")]
    await until(lambda: sidecar.sample("sidecar_ws_closes_total", route="edge", initiator="client", code="1006") == 1)


async def test_a_session_task_cancelled_while_relaying_still_closes_both_sides(
    sidecar: Sidecar, backend: Backend
) -> None:
    # Cancelling the session's task (a shutdown's last resort) must not cancel the relay's end:
    # the relay closes both legs (1011 to the client, 1001 upstream) and the session is counted.
    ws = await ws_connect(sidecar)
    await echoes(ws, "x")
    (task,) = sidecar.running.dispatcher.tasks
    task.cancel()
    assert await closed_by_peer(ws) == (1011, "sidecar error")
    await until(lambda: backend.closes)
    assert backend.closes == [(1001, "sidecar closing the session")]
    await until(lambda: sidecar.sample("sidecar_ws_closes_total", route="edge", initiator="sidecar", code="1011") == 1)
    assert sidecar.sample("sidecar_ws_connections_active", route="edge") == 0
    assert task.cancelled()


SMALL = edge_yaml(route=", max_message_size: 1KiB")


async def test_oversized_message_closes_that_session_with_1009_only(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start_sidecar(config_for(backend.url, SMALL))
    async with ws_connect(sidecar) as bystander, ws_connect(sidecar) as ws:
        await ws.send("y" * 1024)  # at the limit: fine
        assert await ws.recv() == "y" * 1024
        await ws.send(b"z" * 1025)
        code, _ = await closed_by_peer(ws)
        assert code == 1009
        await echoes(bystander, "still here")
    await until(lambda: len(backend.closes) == 2)
    assert backend.closes[0][0] == 1009


async def test_oversized_message_from_upstream_closes_with_1009(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(config_for(backend.url, SMALL))
    async with ws_connect(sidecar) as ws:
        await ws.send("send 2048")
        code, _ = await closed_by_peer(ws)
        assert code == 1009


def relays_started(monkeypatch: pytest.MonkeyPatch) -> list[Relay]:
    """Every relay the sidecar starts from now on, to watch its legs."""
    started: list[Relay] = []
    start = Relay.start

    def recorded(self: Relay, *args: Any, **kwargs: Any) -> None:
        started.append(self)
        start(self, *args, **kwargs)

    monkeypatch.setattr(Relay, "start", recorded)
    return started


async def held_back(relays: list[Relay]) -> None:
    """Until the first relay's client buffer is past its mark and the backend is not read."""
    await until(lambda: relays and relays[0]._client.writing_paused)
    assert relays[0]._upstream.paused and not relays[0]._upstream.transport.is_reading()


async def test_client_that_stops_reading_pushes_back_on_the_upstream(
    sidecar: Sidecar, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """128 MiB offered while the client reads nothing: the backend must be made to wait
    (what is in flight is bounded by socket buffers, not by the sidecar), and once the
    client reads, every byte arrives."""
    count, size = 128, 1024 * 1024
    relays = relays_started(monkeypatch)
    async with ws_connect(sidecar, max_queue=1, max_size=2 * size) as ws:
        await ws.send(f"flood {count} {size}")
        await held_back(relays)
        assert backend.flood_sent < count / 2
        for _ in range(count):
            assert len(await asyncio.wait_for(ws.recv(), 10)) == size
    assert backend.flood_sent == count


# --- every rejection, before anything reaches the backend -------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "status", "reason"),
    [
        ("/nope", GOOD, 404, "no_route"),
        ("/edge/message", GOOD, 404, "no_route"),
        ("/edge/ws", {"X-Edge-Agent-Id": AGENT}, 401, "missing_token"),
        ("/edge/ws", {**GOOD, "Authorization": f"Basic {SECRET}"}, 401, "malformed_token"),
        ("/edge/ws", {**GOOD, "Authorization": "Bearer wrong-secret"}, 401, "invalid_token"),
        ("/edge/ws", {"Authorization": f"Bearer {SECRET}"}, 400, "missing_agent_id"),
        ("/edge/ws", {**GOOD, "X-Edge-Agent-Id": "edge 1"}, 400, "invalid_agent_id"),
        ("/edge/ws?edge_agent_id=edge_1%0d%0aX-Admin:%201", GOOD, 400, "invalid_agent_id"),
        ("/edge/ws?edge_agent_id=edge_2", GOOD, 400, "agent_id_mismatch"),
        ("//edge/ws", GOOD, 400, "bad_path"),
        ("/edge/ws/..", GOOD, 400, "bad_path"),
        ("/edge%2Fws", GOOD, 400, "bad_path"),
    ],
)
async def test_rejections_say_why(
    sidecar: Sidecar, backend: Backend, path: str, headers: dict[str, str], status: int, reason: str
) -> None:
    got_status, got_headers, body = await rejected(sidecar, path, headers)
    assert (got_status, got_headers["X-Sidecar-Reason"], body["error"]) == (status, reason, reason)
    assert body["message"]
    assert SECRET not in json.dumps(body) and SECRET not in str(got_headers)
    assert backend.seen == []  # nothing went upstream
    route = "edge" if body["route"] == "edge" else "none"
    assert sidecar.sample("sidecar_ws_rejections_total", route=route, reason=reason) == 1


async def test_no_route_lists_websocket_paths_and_suggests_the_near_miss(sidecar: Sidecar) -> None:
    status, _, body = await rejected(sidecar, "/edge/ws/", GOOD)
    assert status == 404
    assert body["websocket_paths"] == ["/edge/ws", "/ws/edge"]
    assert body["did_you_mean"] == "/edge/ws"
    _, _, body = await rejected(sidecar, "/EDGE/WS", GOOD)
    assert body["did_you_mean"] == "/edge/ws"


async def test_401s_carry_www_authenticate_with_rfc6750_error(sidecar: Sidecar) -> None:
    _, headers, _ = await rejected(sidecar, "/edge/ws", {"X-Edge-Agent-Id": AGENT})
    assert headers["WWW-Authenticate"] == 'Bearer realm="sidecar"'
    _, headers, _ = await rejected(sidecar, "/edge/ws", {**GOOD, "Authorization": "Bearer"})
    assert headers["WWW-Authenticate"] == 'Bearer realm="sidecar", error="invalid_request"'
    _, headers, _ = await rejected(sidecar, "/edge/ws", {**GOOD, "Authorization": "Basic eDp5"})
    assert headers["WWW-Authenticate"] == 'Bearer realm="sidecar"'  # another scheme: no error code
    _, headers, _ = await rejected(sidecar, "/edge/ws", {**GOOD, "Authorization": "Bearer nope"})
    assert headers["WWW-Authenticate"] == 'Bearer realm="sidecar", error="invalid_token"'


async def test_plain_request_to_websocket_route_is_426(sidecar: Sidecar, backend: Backend) -> None:
    async with aiohttp.ClientSession() as session, session.get(sidecar.url("/edge/ws", "http"), headers=GOOD) as r:
        assert r.status == 426
        assert r.headers["X-Sidecar-Reason"] == "not_websocket"
        assert r.headers["Upgrade"] == "websocket"
        assert (await r.json())["route"] == "edge"
    assert backend.seen == []
    assert sidecar.sample("sidecar_http_rejections_total", route="edge", reason="not_websocket") == 1


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"Sec-WebSocket-Version": "8"}, "Sec-WebSocket-Version"),
        ({"Sec-WebSocket-Key": "not base64!"}, "Sec-WebSocket-Key"),
        ({"Sec-WebSocket-Key": "c2hvcnQ="}, "16 bytes"),
        ({"Connection": "keep-alive"}, "Connection"),
    ],
)
async def test_malformed_handshake_is_400(
    sidecar: Sidecar, backend: Backend, change: dict[str, str], detail: str
) -> None:
    headers = {
        **GOOD,
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        **change,
    }
    async with aiohttp.ClientSession() as session, session.get(sidecar.url("/edge/ws", "http"), headers=headers) as r:
        assert r.status == 400
        assert r.headers["X-Sidecar-Reason"] == "bad_handshake"
        assert r.headers["Sec-WebSocket-Version"] == "13"
        assert detail in (await r.json())["detail"]
    assert backend.seen == []


async def test_upstream_unavailable_is_502(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(config_for("http://127.0.0.1:9"))  # discard port: nothing listens
    status, headers, body = await rejected(sidecar, "/edge/ws", GOOD)
    assert (status, headers["X-Sidecar-Reason"]) == (502, "upstream_unavailable")
    assert body["route"] == "edge"


UPSTREAM_PATH = edge_yaml(upstream=", connect_timeout: 300ms", route=', upstream_path: "${WS_PATH}"')


async def test_upstream_timeout_is_504(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(config_for(backend.url, UPSTREAM_PATH, WS_PATH="/slow/ws"))
    status, headers, _ = await rejected(sidecar, "/edge/ws", GOOD)
    assert (status, headers["X-Sidecar-Reason"]) == (504, "upstream_timeout")


async def test_upstream_refusing_the_handshake_is_502_with_its_status(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start_sidecar(config_for(backend.url, UPSTREAM_PATH, WS_PATH="/forbidden/ws"))
    status, headers, body = await rejected(sidecar, "/edge/ws", GOOD)
    assert (status, headers["X-Sidecar-Reason"]) == (502, "upstream_rejected")
    assert headers["X-Sidecar-Upstream-Status"] == "403"
    assert body["upstream_status"] == 403


async def test_upstream_101_without_valid_accept_is_not_a_tunnel(start_sidecar: StartSidecar) -> None:
    async def bad_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBhY2NlcHQ=\r\n\r\n"
        )
        await writer.drain()

    async with raw_upstream(bad_upstream) as url:
        sidecar = await start_sidecar(config_for(url))
        status, headers, _ = await rejected(sidecar, "/edge/ws", GOOD)
    assert (status, headers["X-Sidecar-Reason"], headers["X-Sidecar-Upstream-Status"]) == (
        502,
        "upstream_rejected",
        "101",
    )


@pytest.mark.parametrize(
    ("answered", "route", "offer"),
    [
        (b"Sec-WebSocket-Protocol: chat.v9", "", {"subprotocols": ["chat.v1"]}),
        (b"Sec-WebSocket-Protocol: chat.v1", "", {}),  # the client offered none at all
        (b"Sec-WebSocket-Protocol: chat.v1, chat.v2", "", {"subprotocols": ["chat.v1", "chat.v2"]}),
        (b"Sec-WebSocket-Extensions: permessage-deflate", "", {"compression": "deflate"}),  # never offered upstream
        (b"Sec-WebSocket-Extensions: x-webkit-deflate-frame", ", compression: true", {"compression": "deflate"}),
        (b"Sec-WebSocket-Extensions: permessage-deflate", ", compression: true", {"compression": None}),
        (
            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=10",
            ", compression: true",
            {"compression": None, "additional_headers": GOOD | {"Sec-WebSocket-Extensions": "permessage-deflate"}},
        ),
        (b"Sec-WebSocket-Extensions: permessage-deflate; x-unknown", ", compression: true", {"compression": "deflate"}),
    ],
)
async def test_an_upstream_101_choosing_what_was_not_offered_is_refused_and_never_relayed(
    start_sidecar: StartSidecar, answered: bytes, route: str, offer: dict[str, Any]
) -> None:
    """RFC 6455 section 4.1: a client whose server names a subprotocol or an extension it did
    not offer must fail the connection. The sidecar is that client upstream: 502
    upstream_rejected to its own client, the upstream's connection closed, nothing relayed."""
    upstream_closed: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + _accept_for(head) + b"\r\n" + answered + b"\r\n\r\n"
        )
        writer.write(b"\x81\x05hello")  # a first message that must never reach the client
        upstream_closed.set_result(await reader.read())  # what the sidecar sent after the head: nothing

    async with raw_upstream(upstream) as url:
        sidecar = await start_sidecar(config_for(url, edge_yaml(auth=", agent_id: {}", route=route)))
        options = dict(offer)  # (shared by the runs on each loop)
        sent = options.pop("additional_headers", GOOD)
        status, headers, body = await rejected(sidecar, "/edge/ws", sent, **options)
        assert await asyncio.wait_for(upstream_closed, 10) == b""
    assert (status, headers["X-Sidecar-Reason"], headers["X-Sidecar-Upstream-Status"]) == (
        502,
        "upstream_rejected",
        "101",
    )
    assert "did not offer" in body["detail"]
    assert sidecar.sample("sidecar_ws_connections_total", route="edge") == 0


# --- slow or oversized handshakes, shutdown --------------------------------------------

DEADLINE = """
listen: {header_timeout: 300ms}
upstreams: {backend: {url: "${UPSTREAM_URL}"}}
routes:
  - {name: default, type: http, prefix: /, upstream: backend}
"""


async def test_handshake_headers_not_arriving_in_time_are_cut_off(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start_sidecar(config_for(backend.url, DEADLINE))
    # the head is never finished (no blank line): the sidecar closes the connection
    assert await exchange(sidecar.port, b"GET /edge/ws HTTP/1.1\r\nHost: x\r\n") == b""


@pytest.mark.parametrize(
    "head",
    [
        b"X-Big: " + b"a" * 20000 + b"\r\n",  # one line over 8 KiB
        b"".join(b"X-H%d: v\r\n" % i for i in range(150)),  # too many fields
        b"".join(b"X-H%d: " % i + b"a" * 8000 + b"\r\n" for i in range(60)),  # too much in all
    ],
    ids=["long-line", "many-fields", "large-total"],
)
async def test_oversized_headers_are_refused_with_431(sidecar: Sidecar, backend: Backend, head: bytes) -> None:
    response = await exchange(sidecar.port, b"GET /edge/ws HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
    assert parse_response(response).status == 431
    assert b"X-Sidecar-Reason: headers_too_large" in response
    assert backend.seen == []


async def test_unparseable_request_gets_a_reason_and_never_echoes_the_token(
    sidecar: Sidecar, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # a bare LF ends the Authorization line: aiohttp's own answer would quote it
    request = f"GET /edge/ws HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\nX: y\r\n\r\n"
    response = await exchange(sidecar.port, request.encode())
    assert parse_response(response).status == 400
    assert b"X-Sidecar-Reason: bad_request" in response
    assert SECRET.encode() not in response
    assert all(SECRET not in r.getMessage() and not r.exc_info for r in caplog.records)
    assert sidecar.sample("sidecar_http_rejections_total", route="none", reason="bad_request") == 1


async def test_stopping_the_sidecar_closes_sessions_with_1012_to_the_client_and_1001_upstream(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start_sidecar(config_for(backend.url))
    async with ws_connect(sidecar) as ws:
        await ws.send("x")
        await ws.recv()
        closing = asyncio.ensure_future(sidecar.running.close())
        code, reason = await closed_by_peer(ws)
        await asyncio.wait_for(closing, 20)
    assert (code, reason) == (1012, "service restart: reconnect")
    assert backend.closes == [(1001, "sidecar closing the session")]


async def test_metrics_count_messages_bytes_and_connections(sidecar: Sidecar) -> None:
    async with ws_connect(sidecar) as ws:
        await ws.send(b"12345")
        await ws.recv()
        # counted while the session is still open, not only when it ends
        assert sidecar.sample("sidecar_ws_messages_total", route="edge", direction="downstream") == 1
        await ws.send("abc")
        await ws.recv()
    await until(lambda: sidecar.sample("sidecar_ws_connections_active", route="edge") == 0)
    assert sidecar.sample("sidecar_ws_connections_total", route="edge") == 1
    assert sidecar.sample("sidecar_ws_messages_total", route="edge", direction="upstream") == 2
    assert sidecar.sample("sidecar_ws_messages_total", route="edge", direction="downstream") == 2
    assert sidecar.sample("sidecar_ws_bytes_total", route="edge", direction="upstream") == 8
    assert sidecar.sample("sidecar_ws_handshake_duration_seconds_count", route="edge") == 1
    assert sidecar.sample("sidecar_ws_session_duration_seconds_count", route="edge") == 1


async def test_invalid_close_code_from_client_is_a_protocol_error_on_both_legs(
    sidecar: Sidecar, backend: Backend
) -> None:
    async with ws_connect(sidecar) as ws:
        ws.transport.write(masked_frame(0x8, (1004).to_bytes(2, "big")))  # 1004 is reserved
        code, _ = await closed_by_peer(ws)
    assert code == 1002
    await until(lambda: backend.closes)
    assert backend.closes[0][0] == 1002
    await until(lambda: sidecar.sample("sidecar_ws_closes_total", route="edge", initiator="sidecar", code="1002") == 1)


async def test_invalid_utf8_text_is_relayed_and_the_endpoint_verdict_comes_back(
    sidecar: Sidecar, backend: Backend
) -> None:
    async with ws_connect(sidecar) as ws:
        ws.transport.write(masked_frame(0x1, b"\xff\xfe"))
        code, _ = await closed_by_peer(ws)
    assert code == 1007  # decided by the backend, passed through unchanged
    await until(lambda: sidecar.sample("sidecar_ws_closes_total", route="edge", initiator="upstream", code="1007") == 1)


async def test_messages_in_flight_when_the_client_closes_still_arrive(sidecar: Sidecar, backend: Backend) -> None:
    async with ws_connect(sidecar) as ws:
        frames = [masked_frame(0x1, f"m{i}".encode()) for i in range(5)]
        ws.transport.write(b"".join(frames) + masked_frame(0x8, (4000).to_bytes(2, "big") + b"bye"))
        got = []
        with pytest.raises(ConnectionClosed):
            while True:
                got.append(await asyncio.wait_for(ws.recv(), 10))
    assert got == [f"m{i}" for i in range(5)]  # the echoes the backend sent before its close reply
    assert ws.close_code == 4000
    await until(lambda: backend.closes)
    assert backend.closes == [(4000, "bye")]


async def test_backend_pings_reach_the_agent_and_its_pong_comes_back(sidecar: Sidecar) -> None:
    async with ws_connect(sidecar) as ws:  # websockets answers pings itself
        await ws.send("ping liveness")
        assert await asyncio.wait_for(ws.recv(), 10) == "pong liveness"


async def test_an_agent_that_does_not_answer_pings_is_not_answered_for(sidecar: Sidecar) -> None:
    """The backend's liveness check must see a dead agent: the sidecar does not pong in its place."""
    url = sidecar.url("/edge/ws")
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=GOOD, autoping=False) as ws:
        await ws.send_str("ping liveness")
        got = [await asyncio.wait_for(ws.receive(), 10) for _ in range(2)]
    assert [m.type for m in got] == [aiohttp.WSMsgType.PING, aiohttp.WSMsgType.TEXT]
    assert got[0].data == b"liveness"
    assert got[1].data == "no pong"


async def test_the_initiator_gets_the_other_sides_close_reply(sidecar: Sidecar) -> None:
    async with ws_connect(sidecar, "/edge/ws?reply=4009") as ws:
        await ws.close(code=4000, reason="client bye")
    assert (ws.close_code, ws.close_reason) == (4009, "backend says bye")  # as if connected directly


STALL = edge_yaml(listen="close_timeout: 500ms")


async def test_a_client_that_stopped_reading_cannot_hold_up_shutdown(
    backend: Backend, start_sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    sidecar = await start_sidecar(config_for(backend.url, STALL))
    relays = relays_started(monkeypatch)
    ws = await flooded_non_reader(sidecar, backend)
    await held_back(relays)  # the buffers are full
    await asyncio.wait_for(sidecar.running.close(), 20)  # bounded by close_timeout, not by the client
    assert sidecar.sample("sidecar_ws_connections_active", route="edge") == 0
    await until(lambda: sidecar.sample("sidecar_ws_closes_total", route="edge", initiator="sidecar", code="1012") == 1)
    ws.transport.abort()


async def test_close_codes_outside_rfc6455_do_not_mint_labels(sidecar: Sidecar, backend: Backend) -> None:
    async with ws_connect(sidecar) as ws:
        ws.transport.write(masked_frame(0x8, (5000).to_bytes(2, "big")))  # beyond 4999: not a valid code
        await closed_by_peer(ws)
    await until(
        lambda: sidecar.sample("sidecar_ws_closes_total", route="edge", initiator="client", code="invalid") == 1
    )
    await until(lambda: backend.closes)
    assert backend.closes[0][0] == 1002  # never passed on as is


async def test_subprotocol_offered_on_two_header_lines(sidecar: Sidecar) -> None:
    two_lines = b"Sec-WebSocket-Protocol: foo\r\nSec-WebSocket-Protocol: chat.v1\r\n"
    _, writer, head = await open_raw_websocket(sidecar.port, handshake("/edge/ws", GOOD, extra=two_lines))
    writer.transport.abort()
    assert b"Sec-WebSocket-Protocol: chat.v1\r\n" in head  # what the backend chose


LATE = edge_yaml(listen="close_timeout: 1s", route=", upstream_path: /late/ws")


async def test_a_handshake_in_flight_at_shutdown_is_answered_503_draining(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start_sidecar(config_for(backend.url, LATE))
    connecting = asyncio.ensure_future(ws_connect(sidecar))
    await until(lambda: backend.seen)  # the backend is still deciding
    await asyncio.wait_for(sidecar.running.close(), 20)
    with pytest.raises(InvalidStatus) as refused:  # an answer, not a dropped connection (1006)
        await asyncio.wait_for(connecting, 20)
    response = refused.value.response
    assert (response.status_code, response.headers["X-Sidecar-Reason"]) == (503, "draining")
    assert response.headers["Retry-After"] == "1"


HANGING = edge_yaml(upstream=", connect_timeout: 60s", route=", upstream_path: /slow/ws")


async def test_the_drain_answers_a_handshake_the_backend_sits_on(backend: Backend, start_sidecar: StartSidecar) -> None:
    # A backend that never answers, and a connect_timeout far longer than the stop
    # waits for handlers: the client must still get an answer, at once.
    sidecar = await start_sidecar(config_for(backend.url, HANGING))
    connecting = asyncio.ensure_future(ws_connect(sidecar))
    await until(lambda: backend.seen)
    await sidecar.running.drain()
    with pytest.raises(InvalidStatus) as refused:
        await asyncio.wait_for(connecting, 10)
    assert refused.value.response.status_code == 503
    assert refused.value.response.headers["X-Sidecar-Reason"] == "draining"
    await until(lambda: backend.hangs_abandoned == 1)  # the upstream handshake was given up, too
    assert sidecar.sample("sidecar_ws_rejections_total", route="edge", reason="draining") == 1


async def test_a_client_gone_while_the_backend_sits_on_its_handshake_ends_the_session_at_once(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    # connect_timeout is 60 s: the upstream handshake is given up because the client left,
    # not because time ran out, and the session's place is free again.
    sidecar = await start_sidecar(config_for(backend.url, HANGING))
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(handshake("/edge/ws", GOOD))
    await until(lambda: backend.seen)
    assert len(sidecar.running.runtime.sessions) == 1
    writer.close()
    await until(lambda: backend.hangs_abandoned == 1)
    await until(lambda: len(sidecar.running.runtime.sessions) == 0)
    assert await reader.read() == b""  # nothing answered: nobody to answer
    assert sidecar.sample("sidecar_ws_connections_total", route="edge") in (None, 0)


STALLED = edge_yaml(listen="stall_timeout: 500ms")


async def test_a_client_that_stops_reading_is_cut_off_and_the_backend_told(
    backend: Backend, start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    sidecar = await start_sidecar(config_for(backend.url, STALLED))
    ws = await flooded_non_reader(sidecar, backend)  # the sidecar's writes to it stall
    await until(lambda: backend.closes)
    assert backend.closes == [(1001, "client went away")]
    (stalled,) = log_fields(caplog, "ws.stalled")
    # (this config's auth has no agent id rule, so the line has no agent_id)
    assert stalled == {"route": "edge", "peer": "client", "stall_timeout_s": 0.5, "request_id": ANY}
    await until(lambda: sidecar.sample("sidecar_ws_connections_active", route="edge") == 0)
    ws.transport.abort()


# --- pipelining: a request waiting behind another -------------------------------------------


async def test_a_pipelined_upgrade_waits_unread_until_the_request_before_it_is_answered(
    sidecar: Sidecar, backend: Backend
) -> None:
    """While a request is answered and the next is already parsed, the listener reads no
    more from the client (what it holds is bounded); it reads again once its turn comes,
    and the upgrade behind the slow answer still becomes a session."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    try:
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"first;"), 10)  # the backend now waits for release
        (conn,) = sidecar.running.front.connections
        assert conn.transport is not None and conn.transport.is_reading()
        writer.write(handshake("/edge/ws", GOOD))
        await until(lambda: conn.transport is None or not conn.transport.is_reading())
        assert conn.transport is not None, "the connection was closed, not paused"
        backend.release.set()
        await asyncio.wait_for(reader.readuntil(b"second\r\n0\r\n\r\n"), 10)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101 ")
        writer.write(masked_frame(0x1, b"after the wait"))
        frame = await asyncio.wait_for(reader.readexactly(2 + len(b"after the wait")), 10)
        assert frame[2:] == b"after the wait"
    finally:
        writer.close()


async def test_a_relay_that_takes_over_a_client_buffer_already_full_starts_held_back(
    sidecar: Sidecar, backend: Backend
) -> None:
    """A client pipelines many requests and an upgrade, then reads nothing: when the relay
    takes its connection over, the write buffer is already past its high-water mark (the
    listener was told, the relay never will be). The relay must know from the start and
    not read the backend's flood; once the client reads, everything arrives, in order."""
    count = 1000  # about 200 KiB of answers: past the mark and what the small socket buffers hold
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", sidecar.port))
    reader, writer = await asyncio.open_connection(sock=client)
    try:
        await until(lambda: sidecar.running.front.connections)
        (conn,) = sidecar.running.front.connections
        assert conn.transport is not None
        transport = conn.transport
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        flood = masked_frame(0x1, b"flood 64 1048576")
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * count + handshake("/edge/ws", GOOD) + flood)
        await until(lambda: isinstance(transport.get_protocol(), Leg))
        leg = transport.get_protocol()
        assert isinstance(leg, Leg)
        assert leg.writing_paused and leg.other.paused  # the backend is not read from the start
        await until(lambda: backend.flood_sent > 0)
        assert transport.get_write_buffer_size() < 2 * 1024 * 1024  # the answers and a read at most
        writer.transport.resume_reading()  # type: ignore[attr-defined]
        for _ in range(count):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
            await reader.readexactly(int(length.partition(b":")[2]))
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 101 ")
        for _ in range(64):
            frame = await asyncio.wait_for(read_frame(reader), 10)
            assert (frame.first, len(frame.payload)) == (0x82, 1048576)
    finally:
        writer.close()
    assert backend.flood_sent == 64


@pytest.mark.parametrize("upgrade", ["websockets", "x-websocket", "websocket/13"])
async def test_an_upgrade_to_something_else_is_a_plain_request_and_its_successor_is_answered(
    sidecar: Sidecar, backend: Backend, upgrade: str
) -> None:
    """The listener and the dispatcher make one decision: a head whose Upgrade only looks like
    websocket is a plain request to both, so the pipelined request after it is parsed and
    answered too, not kept as frames for a relay that never comes."""
    first = f"GET /first HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n\r\n"
    second = "GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert statuses(await exchange(sidecar.port, (first + second).encode())) == [200, 200]
    assert [seen.path for seen in backend.seen] == ["/first", "/second"]


# --- a bug in the session: logged once, 1011 to both legs, nothing left open -----------------


async def test_a_bug_reading_the_client_ends_the_session_with_1011_to_both_legs_logged_once(
    sidecar: Sidecar, backend: Backend, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    scan = Scanner.scan

    def broken(self: Scanner, data: bytes) -> Any:
        if self._mask:  # the client's direction only
            raise RuntimeError("a bug in the scanner")
        return scan(self, data)

    async with ws_connect(sidecar) as ws:
        monkeypatch.setattr(Scanner, "scan", broken)
        for i in range(3):  # each read fails the same way: logged once all the same
            await ws.send(f"message {i}")
        assert await closed_by_peer(ws) == (1011, "sidecar error")
    await until(lambda: backend.closes)
    assert backend.closes == [(1011, "sidecar error")]
    assert len(log_fields(caplog, "ws.relay_failed")) == 1
    await until(lambda: sidecar.sample("sidecar_ws_connections_active", route="edge") == 0)


async def test_a_bug_as_the_relay_starts_still_closes_both_legs_with_1011(
    sidecar: Sidecar, backend: Backend, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    start = Relay.start

    def broken(self: Relay, *args: Any, **kwargs: Any) -> None:
        start(self, *args, **kwargs)
        raise RuntimeError("a bug after the relay took over")

    monkeypatch.setattr(Relay, "start", broken)
    async with ws_connect(sidecar) as ws:
        assert await closed_by_peer(ws) == (1011, "sidecar error")
    await until(lambda: backend.closes)
    assert backend.closes == [(1011, "sidecar error")]
    assert len(log_fields(caplog, "ws.relay_failed")) == 1
    await until(lambda: not sidecar.running.dispatcher.tasks)  # the session's task is over
    assert sidecar.sample("sidecar_ws_connections_active", route="edge") == 0


async def test_a_bug_before_the_101_closes_the_clients_connection_and_the_upstreams(
    sidecar: Sidecar, backend: Backend, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> bytes:
        raise RuntimeError("a bug writing the 101")

    monkeypatch.setattr(websocket, "_switching", broken)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    try:
        writer.write(handshake("/edge/ws", GOOD))
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, never left waiting
    finally:
        writer.close()
    assert len(backend.seen) == 1  # the upstream leg was open ...
    await until(lambda: backend.ws_open == 0)  # ... and is closed too
    assert len([r for r in caplog.records if r.getMessage() == "ws.session_failed"]) == 1
    await until(lambda: not sidecar.running.dispatcher.tasks)
