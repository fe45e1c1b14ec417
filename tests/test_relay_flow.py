"""sidecar.relay on real sockets: keep-alive (its own pings, their pongs kept, dead peers cut
off), stalls, backpressure, and permessage-deflate measured at the inflated size. The front
door of tests/relaying.py, the test backend, python `websockets`, aiohttp, raw sockets;
asyncio's loop and uvloop's."""

from __future__ import annotations

import asyncio
import logging
import os
import tracemalloc
import zlib

import aiohttp
import pytest
from websockets.asyncio.client import connect

from sidecar.closing import End
from sidecar.legs import HIGH_WATER, Leg

from .relaying import Options, front
from .upstream import Backend
from .wire import (
    closed_by_peer,
    echoes,
    handshake,
    log_fields,
    masked_frame,
    open_raw_websocket,
    read_frame,
    until,
)

pytestmark = pytest.mark.both_loops

PING, PONG, TEXT = aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG, aiohttp.WSMsgType.TEXT
KEEPALIVE = Options(keepalive_interval=0.2)


# --- keep-alive --------------------------------------------------------------------------


async def test_an_idle_session_outlives_many_intervals_pinged_with_one_payload(backend: Backend) -> None:
    async with front(backend.port, KEEPALIVE) as door, connect(door.url, ping_interval=None) as ws:
        await echoes(ws, "hello")
        await until(lambda: len(backend.pings) >= 5)  # a second of silence from both ends
        await echoes(ws, "still here")
        assert not (await door.session()).relay.ended.done()
    assert len(set(backend.pings)) == 1 and backend.pings[0].startswith(b"sidecar-keepalive ")


async def test_the_client_is_pinged_with_its_own_payload_and_its_pong_is_never_relayed(backend: Backend) -> None:
    async with (
        front(backend.port, KEEPALIVE) as door,
        aiohttp.ClientSession() as http,
        http.ws_connect(door.url, autoping=False) as ws,
        http.ws_connect(door.url, autoping=False) as other,
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
    assert backend.pongs == []  # the client's answers were cut out


async def test_the_clients_own_ping_still_comes_back_with_its_payload(backend: Backend) -> None:
    async with (
        front(backend.port, KEEPALIVE) as door,
        aiohttp.ClientSession() as http,
        http.ws_connect(door.url, autoping=False) as ws,
    ):
        for i in range(3):
            mine = f"mine {i}".encode()
            await ws.ping(mine)
            while (msg := await asyncio.wait_for(ws.receive(), 10)).type is PING:
                await ws.pong(msg.data)  # the sidecar's keep-alive, answered
            assert (msg.type, msg.data) == (PONG, mine)
    assert [p for p in backend.pings if p.startswith(b"mine")] == [b"mine 0", b"mine 1", b"mine 2"]


async def test_a_message_counts_as_an_answer(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    async with (
        front(backend.port, KEEPALIVE) as door,
        aiohttp.ClientSession() as http,
        http.ws_connect(door.url, autoping=False) as ws,
    ):
        pings = 0
        while pings < 4:  # several intervals, never a pong
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type in (PING, TEXT)
            if msg.type is PING:
                pings += 1
                await ws.send_str(f"busy {pings}")
        assert not (await door.session()).relay.ended.done()
    assert log_fields(caplog, "ws.peer_dead") == []


async def test_a_client_that_stops_answering_is_cut_off_and_the_backend_gets_1001(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    async with front(backend.port, KEEPALIVE) as door:
        _, writer, _ = await open_raw_websocket(door.port)  # and never reads another byte
        session = await door.session()
        assert await session.ended() == End("client", 1006, cut=("client", "dead"))
        writer.transport.abort()
    await until(lambda: backend.closes)
    assert backend.closes == [(1001, "client went away")]
    assert log_fields(caplog, "ws.peer_dead") == [{"route": "edge", "peer": "client", "keepalive_s": 0.2}]


async def test_an_upstream_that_stops_answering_is_cut_off_and_the_client_gets_1011(backend: Backend) -> None:
    async with front(backend.port, KEEPALIVE) as door, connect(door.url) as ws:
        await ws.send("mute")
        assert await closed_by_peer(ws) == (1011, "upstream went away")
        assert await (await door.session()).ended() == End("upstream", 1006, cut=("upstream", "dead"))


# --- stalls and backpressure ---------------------------------------------------------------


async def flooded(door_port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw client that asked the backend for 64 MiB and reads none of it."""
    reader, writer, _ = await open_raw_websocket(door_port)
    writer.transport.pause_reading()  # type: ignore[attr-defined]
    writer.write(masked_frame(0x1, b"flood 64 1048576"))
    return reader, writer


async def test_a_client_that_stops_reading_is_cut_off_as_stalled(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    async with front(backend.port, Options(stall_timeout=0.5)) as door:
        _, writer = await flooded(door.port)
        session = await door.session()
        assert await session.ended() == End("client", 1006, cut=("client", "stalled"))
        writer.transport.abort()
    assert log_fields(caplog, "ws.stalled") == [{"route": "edge", "peer": "client", "stall_timeout_s": 0.5}]
    await until(lambda: backend.closes)
    assert backend.closes == [(1001, "client went away")]


async def test_a_peer_held_up_by_backpressure_is_left_to_the_stall_check(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the non-reading client nor the backend it holds up answers pings for many
    keep-alive intervals; neither is called dead. The stall check cuts off the one that
    stopped reading."""
    caplog.set_level(logging.INFO, logger="sidecar")
    async with front(backend.port, Options(keepalive_interval=0.1, stall_timeout=1.0)) as door:
        _, writer = await flooded(door.port)
        session = await door.session()
        assert (await session.ended()).cut == ("client", "stalled")
        writer.transport.abort()
    assert log_fields(caplog, "ws.peer_dead") == []


async def test_a_client_that_stops_reading_pushes_back_on_the_upstream(backend: Backend) -> None:
    """128 MiB offered while the client reads nothing: the relay stops reading the backend,
    so what it holds is its write buffer's high-water mark and a read; once the client reads,
    every byte arrives, and the messages and bytes are counted."""
    count, size = 128, 1024 * 1024
    async with front(backend.port) as door:
        reader, writer, _ = await open_raw_websocket(door.port)
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        writer.write(masked_frame(0x1, b"flood %d %d" % (count, size)))
        session = await door.session()
        client = session.client.get_protocol()
        assert isinstance(client, Leg)
        await until(lambda: client.writing_paused)  # the client's buffer is past its mark ...
        assert client.other.paused and not session.upstream.is_reading()  # ... so the backend is not read
        assert backend.flood_sent < count / 2
        held = session.client.get_write_buffer_size()
        assert 0 < held <= HIGH_WATER + 1024 * 1024  # the mark, plus at most one read
        writer.transport.resume_reading()  # type: ignore[attr-defined]
        for _ in range(count):
            frame = await asyncio.wait_for(read_frame(reader), 10)
            assert (frame.first, len(frame.payload)) == (0x82, size)
        assert (session.down.messages, session.down.bytes) == (count, count * size)
        writer.close()
    assert backend.flood_sent == count


# --- permessage-deflate ------------------------------------------------------------------------

LIMIT = 64 * 1024
DEFLATE = Options(deflate=True, max_message_size=LIMIT)


def deflated(data: bytes) -> bytes:
    squeeze = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, -15)
    return (squeeze.compress(data) + squeeze.flush(zlib.Z_SYNC_FLUSH))[:-4]  # RFC 7692 section 7.2.1


async def test_compressed_messages_pass_as_they_are_and_are_counted_inflated(backend: Backend) -> None:
    async with front(backend.port, DEFLATE) as door, connect(door.url, compression="deflate", max_size=None) as ws:
        assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]  # end to end
        session = await door.session()
        await ws.send("y" * 10_000)
        assert await ws.recv() == "y" * 10_000
        noise = os.urandom(40_000)  # does not compress: spans many reads
        await ws.send(noise)
        assert await ws.recv() == noise
        await ws.send(bytes(LIMIT))  # at the limit, inflated
        assert await ws.recv() == bytes(LIMIT)
        assert (session.up.messages, session.up.bytes) == (3, 10_000 + 40_000 + LIMIT)
        assert (session.down.messages, session.down.bytes) == (3, 10_000 + 40_000 + LIMIT)
        await ws.send(bytes(LIMIT + 100))  # over it, inflated; small on the wire
        assert await closed_by_peer(ws, skip_messages=False) == (1009, f"message larger than {LIMIT} bytes")
        assert await session.ended() == End("sidecar", 1009, f"message larger than {LIMIT} bytes")
    await until(lambda: backend.closes)
    assert backend.closes == [(1009, f"client: message larger than {LIMIT} bytes")]


async def test_a_compression_bomb_is_refused_with_1009_and_never_inflated_whole(backend: Backend) -> None:
    bomb = deflated(bytes(32 * 1024 * 1024))  # 32 MiB of zeros in about 32 KiB
    assert len(bomb) < LIMIT  # small on the wire: only the inflated size is over
    offer = handshake("/edge/ws", {"Sec-WebSocket-Extensions": "permessage-deflate"})
    async with front(backend.port, DEFLATE) as door:
        reader, writer, head = await open_raw_websocket(door.port, offer)
        assert b"permessage-deflate" in head.lower()
        session = await door.session()
        tracemalloc.start()
        try:
            writer.write(masked_frame(0x2, bomb, rsv1=True))
            close = await asyncio.wait_for(read_frame(reader), 10)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert close.first == 0x88 and int.from_bytes(close.payload[:2], "big") == 1009
        assert peak < 4 * 1024 * 1024  # far below the 32 MiB it would inflate to
        assert (await session.ended()).code == 1009
        assert (session.up.messages, session.up.bytes) == (0, 0)  # never relayed
        writer.close()
    await until(lambda: backend.closes)
    assert backend.closes[0][0] == 1009  # told with a close frame: the bomb never reached it


async def test_without_deflate_a_compressed_frame_is_a_protocol_error(backend: Backend) -> None:
    async with front(backend.port) as door:
        reader, writer, _ = await open_raw_websocket(door.port)
        writer.write(masked_frame(0x1, deflated(b"hello"), rsv1=True))
        close = await asyncio.wait_for(read_frame(reader), 10)
        assert int.from_bytes(close.payload[:2], "big") == 1002  # RSV1 with no extension (RFC 6455 section 5.2)
        writer.close()
