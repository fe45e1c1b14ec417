"""Keep-alive and dead peers: the sidecar's own pings on both legs, end to end over
real sockets (the real backend, python `websockets`, aiohttp's client, raw sockets)."""

from __future__ import annotations

import asyncio
import logging
from unittest.mock import ANY

import aiohttp
import pytest

from .conftest import GOOD, Sidecar, StartSidecar, config_for, edge_yaml
from .upstream import Backend
from .wire import closed_by_peer, echoes, flooded_non_reader, log_fields, open_raw_websocket, until, ws_connect

KEEPALIVE = edge_yaml(listen="keepalive_interval: 200ms")
PING, PONG, TEXT = aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG, aiohttp.WSMsgType.TEXT


@pytest.fixture
async def sidecar(backend: Backend, start_sidecar: StartSidecar) -> Sidecar:
    return await start_sidecar(config_for(backend.url, KEEPALIVE))


def leftover_relay_tasks() -> list[asyncio.Task[object]]:
    names = {"_pump", "WebSocketWriter.send_frame", "_run"}
    return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ in names]  # type: ignore[union-attr]


async def test_an_idle_session_outlives_many_intervals(sidecar: Sidecar, backend: Backend) -> None:
    async with ws_connect(sidecar, ping_interval=None) as ws:  # websockets answers pings itself
        await echoes(ws, "hello")
        await until(lambda: len(backend.pings) >= 5)  # a second of silence from both ends
        await echoes(ws, "still here")
        assert sidecar.sample("sidecar_ws_connections_active", route="edge") == 1
    assert len(set(backend.pings)) == 1 and backend.pings[0].startswith(b"sidecar-keepalive ")


async def test_the_client_is_pinged_with_a_payload_of_the_sessions_own_and_its_pong_stays_in_the_sidecar(
    sidecar: Sidecar, backend: Backend
) -> None:
    url = sidecar.url("/edge/ws")
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, headers=GOOD, autoping=False) as ws,
        session.ws_connect(url, headers=GOOD, autoping=False) as other,
    ):
        got = []
        for _ in range(3):  # answered each time, so the session lives on across intervals
            msg = await asyncio.wait_for(ws.receive(), 10)
            got.append(msg)
            await ws.pong(msg.data)
        await ws.send_str("after three pings")
        assert (await asyncio.wait_for(ws.receive(), 10)).data == "after three pings"
        other_ping = await asyncio.wait_for(other.receive(), 10)
    assert [m.type for m in got] == [PING, PING, PING]  # never a pong: the backend's answers are the sidecar's
    payload = got[0].data
    assert {m.data for m in got} == {payload} and payload.startswith(b"sidecar-keepalive ")
    assert other_ping.type is PING and other_ping.data != payload  # unique to the session
    assert payload not in backend.pings  # the upstream leg has its own
    assert backend.pongs == []  # the client's answers were not relayed


async def test_a_message_counts_as_an_answer(
    sidecar: Sidecar, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that never answers pings but keeps talking is alive."""
    caplog.set_level(logging.INFO, logger="sidecar")
    url = sidecar.url("/edge/ws")
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=GOOD, autoping=False) as ws:
        pings = 0
        while pings < 4:  # several intervals
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type in (PING, TEXT)  # the echoes of "busy", and pings; not a close
            if msg.type is PING:
                pings += 1
                await ws.send_str(f"busy {pings}")  # instead of a pong
        await ws.send_str("still open")
        while (msg := await asyncio.wait_for(ws.receive(), 10)).data != "still open":
            assert msg.type in (PING, TEXT)
    assert log_fields(caplog, "ws.peer_dead") == []


async def test_the_clients_own_ping_still_comes_back_with_its_payload(sidecar: Sidecar, backend: Backend) -> None:
    def keepalives() -> int:
        return sum(p.startswith(b"sidecar-keepalive") for p in backend.pings)

    url = sidecar.url("/edge/ws")
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=GOOD, autoping=False) as ws:
        for i in range(3):
            mine = f"mine {i}".encode()
            await ws.ping(mine)
            while (msg := await asyncio.wait_for(ws.receive(), 10)).type is PING:
                await ws.pong(msg.data)  # the sidecar's keep-alive, answered
            assert (msg.type, msg.data) == (PONG, mine)
            before = keepalives()
            await until(lambda: keepalives() > before)  # noqa: B023 - a keep-alive tick in between
    assert [p for p in backend.pings if p.startswith(b"mine")] == [b"mine 0", b"mine 1", b"mine 2"]


async def test_the_backends_ping_still_reaches_the_agent_and_its_pong_comes_back(sidecar: Sidecar) -> None:
    async with ws_connect(sidecar) as ws:
        await until(lambda: sidecar.sample("sidecar_ws_connections_active", route="edge") == 1)
        await ws.send("ping liveness")
        assert await asyncio.wait_for(ws.recv(), 10) == "pong liveness"


async def test_a_client_that_stops_answering_is_cut_off_and_the_backend_gets_1001(
    sidecar: Sidecar, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    _, writer, _ = await open_raw_websocket(sidecar.port)  # and never reads another byte
    await until(lambda: backend.closes)
    assert backend.closes == [(1001, "client went away")]
    assert log_fields(caplog, "ws.peer_dead") == [
        {"route": "edge", "peer": "client", "keepalive_s": 0.2, "request_id": ANY}
    ]
    await until(lambda: sidecar.sample("sidecar_ws_connections_active", route="edge") == 0)
    assert sidecar.sample("sidecar_ws_cut_off_total", route="edge", peer="client", cause="dead") == 1
    assert sidecar.sample("sidecar_ws_closes_total", route="edge", initiator="client", code="1006") == 1
    assert len(sidecar.running.runtime.sessions) == 0
    await until(lambda: not leftover_relay_tasks())
    await until(lambda: backend.ws_open == 0)  # the upstream connection is gone too
    writer.transport.abort()


async def test_an_upstream_that_stops_answering_is_cut_off_and_the_client_gets_1011(
    sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    async with ws_connect(sidecar) as ws:
        await ws.send("mute")
        assert await closed_by_peer(ws) == (1011, "upstream went away")
    assert log_fields(caplog, "ws.peer_dead") == [
        {"route": "edge", "peer": "upstream", "keepalive_s": 0.2, "request_id": ANY}
    ]
    await until(lambda: sidecar.sample("sidecar_ws_connections_active", route="edge") == 0)
    assert sidecar.sample("sidecar_ws_cut_off_total", route="edge", peer="upstream", cause="dead") == 1
    assert sidecar.sample("sidecar_ws_closes_total", route="edge", initiator="upstream", code="1006") == 1
    await until(lambda: not leftover_relay_tasks())


async def test_a_peer_held_up_by_backpressure_is_left_to_the_stall_check(
    backend: Backend, start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    """The client stops reading while the backend floods it: the sidecar stops reading the
    backend, and neither answers pings. Several keep-alive intervals pass; neither is called
    dead. The stall check then cuts off the one that stopped reading."""
    caplog.set_level(logging.INFO, logger="sidecar")
    config = edge_yaml(listen="keepalive_interval: 100ms, stall_timeout: 1s")
    sidecar = await start_sidecar(config_for(backend.url, config))
    ws = await flooded_non_reader(sidecar, backend)
    await until(lambda: backend.closes)
    assert backend.closes == [(1001, "client went away")]
    assert log_fields(caplog, "ws.peer_dead") == []
    assert [r["peer"] for r in log_fields(caplog, "ws.stalled")] == ["client"]
    await until(lambda: sidecar.sample("sidecar_ws_connections_active", route="edge") == 0)
    assert sidecar.sample("sidecar_ws_cut_off_total", route="edge", peer="client", cause="stalled") == 1
    ws.transport.abort()
