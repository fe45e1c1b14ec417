"""sidecar.relay on real sockets, without the listener (tests/relaying.py's front door):
the bytes relayed, closing.py's table row by row, faults, the sidecar's stop, and the
bounds on every ending. python `websockets` and aiohttp as clients, the test backend
(tests/upstream.py) or an upstream played by hand; asyncio's loop and uvloop's."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from sidecar.closing import End
from sidecar.legs import Leg
from sidecar.metrics import Tally
from sidecar.relay import Relay, Transport
from sidecar.wheel import Wheel

from .relaying import Options, close_of, front, played_upstream, read_masked_frame
from .upstream import Backend
from .wire import (
    close_code,
    closed_by_peer,
    echoes,
    masked_frame,
    open_raw_websocket,
    read_frame,
    until,
)

pytestmark = pytest.mark.both_loops


# --- bytes, as they are ------------------------------------------------------------------


async def test_messages_pass_in_order_as_they_are_and_are_counted_while_open(backend: Backend) -> None:
    async with front(backend.port) as door, connect(door.url) as ws:
        session = await door.session()
        for i in range(50):
            await ws.send(f"text {i}")
            await ws.send(bytes([i, 0, 255]))
        for i in range(50):
            assert await ws.recv() == f"text {i}"
            assert await ws.recv() == bytes([i, 0, 255])
        await ws.send(["frag", "men", "ted ✓"])  # one message in three frames
        assert await ws.recv() == "fragmented ✓"
        await ws.send(b"\x01" * 300_000)  # over many reads
        assert await ws.recv() == b"\x01" * 300_000
        # counted as it goes, not when the session ends
        expected = (102, sum(len(f"text {i}") + 3 for i in range(50)) + len("fragmented ✓".encode()) + 300_000)
        assert (session.up.messages, session.up.bytes) == expected
        assert (session.down.messages, session.down.bytes) == expected


async def test_the_clients_ping_reaches_the_backend_and_its_pong_comes_back(backend: Backend) -> None:
    async with front(backend.port) as door, connect(door.url) as ws:
        await asyncio.wait_for(await ws.ping(b"are you there"), 10)  # only a pong with the same payload
    assert backend.pings == [b"are you there"]


async def test_an_agent_that_does_not_answer_pings_is_not_answered_for(backend: Backend) -> None:
    async with (
        front(backend.port) as door,
        aiohttp.ClientSession() as http,
        http.ws_connect(door.url, autoping=False) as ws,
    ):
        await ws.send_str("ping liveness")
        got = [await asyncio.wait_for(ws.receive(), 10) for _ in range(2)]
    assert [(m.type, m.data) for m in got] == [
        (aiohttp.WSMsgType.PING, b"liveness"),
        (aiohttp.WSMsgType.TEXT, "no pong"),
    ]


# --- closing.py's table --------------------------------------------------------------------


async def test_a_client_close_is_relayed_and_the_backends_reply_comes_back(backend: Backend) -> None:
    async with front(backend.port) as door:
        async with connect(door.url) as ws:
            await echoes(ws)
            session = await door.session()
            await ws.close(code=4001, reason="agent shutting down")
        assert ws.close_code == 4001  # the backend's echo, RFC 6455 section 5.5.1
        assert await session.ended() == End("client", 4001, "agent shutting down")
    assert backend.closes == [(4001, "agent shutting down")]
    assert session.client.is_closing() and session.upstream.is_closing()  # nothing left half open


async def test_the_initiator_gets_the_other_sides_own_reply(backend: Backend) -> None:
    async with front(backend.port) as door:
        async with connect(door.url + "?reply=4009") as ws:
            await ws.close(code=4000, reason="client bye")
        assert (ws.close_code, ws.close_reason) == (4009, "backend says bye")  # as if connected directly
        assert await (await door.session()).ended() == End("client", 4000, "client bye")


async def test_an_upstream_close_reaches_the_client(backend: Backend) -> None:
    async with front(backend.port) as door, connect(door.url) as ws:
        await ws.send("close 4002 backend restarting")
        assert await closed_by_peer(ws) == (4002, "backend restarting")
        assert await (await door.session()).ended() == End("upstream", 4002, "backend restarting")


@pytest.mark.parametrize(
    ("payload", "backend_got", "end"),
    [
        (b"", (1000, ""), End("client", 1005, "")),  # no status: passed on as 1000, never 1005
        ((5000).to_bytes(2, "big") + b"big", (1002, "big"), End("client", 5000, "big")),  # beyond 4999
    ],
    ids=["empty", "5000"],
)
async def test_a_close_code_that_must_change_is_rewritten(
    backend: Backend, payload: bytes, backend_got: tuple[int, str], end: End
) -> None:
    async with front(backend.port) as door:
        reader, writer, _ = await open_raw_websocket(door.port)
        writer.write(masked_frame(0x8, payload))
        reply = await asyncio.wait_for(read_frame(reader), 10)
        assert reply.first == 0x88 and close_of(reply.payload) == backend_got  # the backend's echo
        assert await (await door.session()).ended() == end
        writer.close()
    assert backend.closes == [backend_got]


async def test_messages_in_flight_when_the_client_closes_still_arrive(backend: Backend) -> None:
    async with front(backend.port) as door, connect(door.url) as ws:
        frames = [masked_frame(0x1, f"m{i}".encode()) for i in range(5)]
        ws.transport.write(b"".join(frames) + masked_frame(0x8, (4000).to_bytes(2, "big") + b"bye"))
        got = []
        with pytest.raises(ConnectionClosed):
            while True:
                got.append(await asyncio.wait_for(ws.recv(), 10))
    assert got == [f"m{i}" for i in range(5)]  # echoed before the backend's close reply
    assert ws.close_code == 4000 and backend.closes == [(4000, "bye")]


async def test_an_upstream_gone_without_a_close_gives_the_client_1011(backend: Backend) -> None:
    async with front(backend.port) as door, connect(door.url) as ws:
        await ws.send("vanish")
        assert await closed_by_peer(ws) == (1011, "upstream went away")
        assert await (await door.session()).ended() == End("upstream", 1006)


async def test_a_client_gone_without_a_close_gives_the_upstream_1001(backend: Backend) -> None:
    async with front(backend.port) as door:
        ws = await connect(door.url)
        await echoes(ws)
        ws.transport.abort()
        assert await (await door.session()).ended() == End("client", 1006)
    await until(lambda: backend.closes)
    assert backend.closes == [(1001, "client went away")]
    await until(lambda: backend.ws_open == 0)


# --- faults ----------------------------------------------------------------------------------

CLIENT_FAULTS = {
    "reserved-opcode": (masked_frame(0x3, b"x"), 1002, "reserved opcode 0x3"),
    "reserved-bits": (masked_frame(0x1, b"x", rsv1=True), 1002, "reserved bits 0x40 set on opcode 0x1"),
    "fragmented-ping": (masked_frame(0x9, b"p", fin=False), 1002, "fragmented control frame"),
    "ping-over-125": (masked_frame(0x9, b"p" * 126), 1002, "control frame payload over 125 bytes"),
    "continuation-first": (masked_frame(0x0, b"orphan"), 1002, "a continuation frame with no message begun"),
    "new-message-mid-fragments": (
        masked_frame(0x1, b"a", fin=False) + masked_frame(0x1, b"b"),
        1002,
        "a data frame while a fragmented message is unfinished",
    ),
    "unmasked": (b"\x81\x02hi", 1002, "unmasked client frame"),
    "close-1-byte": (masked_frame(0x8, b"\x03"), 1002, "close frame with a 1-byte payload"),
    "close-1004": (masked_frame(0x8, (1004).to_bytes(2, "big")), 1002, "close code 1004 is not allowed on the wire"),
    "close-1006": (masked_frame(0x8, (1006).to_bytes(2, "big")), 1002, "close code 1006 is not allowed on the wire"),
    "close-reason-not-utf8": (masked_frame(0x8, b"\x03\xe8\xff"), 1007, "close reason is not UTF-8"),
    "64-bit-top-bit": (
        masked_frame(0x2, b"x", declared=1 << 63),
        1002,
        "64-bit payload length with its top bit set",
    ),
    "too-big": (masked_frame(0x2, b"z" * 1025), 1009, "message larger than 1024 bytes"),
    "too-big-declared": (masked_frame(0x2, b"few", declared=1 << 62), 1009, "message larger than 1024 bytes"),
    "too-big-fragmented": (
        masked_frame(0x1, b"c" * 100, fin=False)
        + b"".join(masked_frame(0x0, b"c" * 100, fin=False) for _ in range(20)),
        1009,
        "message larger than 1024 bytes",
    ),
}


@pytest.mark.parametrize(("bad", "code", "why"), CLIENT_FAULTS.values(), ids=CLIENT_FAULTS.keys())
async def test_a_client_fault_gets_its_code_and_the_backend_is_told_why(
    backend: Backend, bad: bytes, code: int, why: str
) -> None:
    async with front(backend.port, Options(max_message_size=1024)) as door:
        reader, writer, _ = await open_raw_websocket(door.port)
        writer.write(masked_frame(0x1, b"fine"))
        assert (await asyncio.wait_for(read_frame(reader), 10)).payload == b"fine"
        writer.write(bad)
        close = await asyncio.wait_for(read_frame(reader), 10)
        assert close_of(close.payload) == (code, why)
        session = await door.session()
        assert await session.ended() == End("sidecar", code, why)
        assert (session.up.messages, await reader.read()) == (1, b"")  # then the connection is closed
        writer.close()
    await until(lambda: backend.closes)
    assert backend.closes == [(code, f"client: {why}")]


UPSTREAM_FAULTS = {
    "masked-server-frame": (masked_frame(0x1, b"hi"), 1002, "masked server frame"),
    "reserved-opcode": (b"\x8b\x00", 1002, "reserved opcode 0xb"),
    "too-big": (b"\x82\x7e\x04\x01" + b"z" * 1025, 1009, "message larger than 1024 bytes"),
    "close-1006": (b"\x88\x02\x03\xee", 1002, "close code 1006 is not allowed on the wire"),
}


@pytest.mark.parametrize(("bad", "code", "why"), UPSTREAM_FAULTS.values(), ids=UPSTREAM_FAULTS.keys())
async def test_an_upstream_fault_gets_its_code_and_the_client_is_told_why(bad: bytes, code: int, why: str) -> None:
    told: list[tuple[int, str]] = []

    async def speak(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x81\x04fine" + bad)
        first, payload = await read_masked_frame(reader)
        assert first == 0x88
        told.append(close_of(payload))

    async with played_upstream(speak) as port, front(port, Options(max_message_size=1024)) as door:
        async with connect(door.url) as ws:
            assert await ws.recv() == "fine"
            assert await closed_by_peer(ws) == (code, f"upstream: {why}")
        session = await door.session()
        assert await session.ended() == End("sidecar", code, why)
        await until(lambda: told)
    assert told == [(code, why)]  # the faulty side gets the code and why (RFC 6455 section 7.1.7)
    assert session.down.messages == 1


# --- the sidecar's stop ----------------------------------------------------------------------


async def test_a_stop_closes_the_client_with_its_code_and_the_upstream_with_1001(backend: Backend) -> None:
    async with front(backend.port) as door, connect(door.url) as ws:
        await echoes(ws)
        session = await door.session()
        session.relay.stop(1012, "service restart: reconnect")
        assert await closed_by_peer(ws) == (1012, "service restart: reconnect")
        assert await session.ended() == End("sidecar", 1012, "service restart: reconnect")
    await until(lambda: backend.closes)
    assert backend.closes == [(1001, "sidecar closing the session")]


async def test_a_stop_in_the_middle_of_a_large_message_waits_for_its_end(backend: Backend) -> None:
    """The client reads nothing while the backend sends 8 MB in one frame: the relay is held
    up inside that frame. The stop's close frame goes out only after the frame's last byte."""
    size = 8_000_000
    async with front(backend.port, Options(max_message_size=16 * 1024 * 1024)) as door:
        reader, writer, _ = await open_raw_websocket(door.port)
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        writer.write(masked_frame(0x1, b"send %d" % size))
        session = await door.session()
        client = session.client.get_protocol()
        assert isinstance(client, Leg)
        await until(lambda: client.writing_paused)  # backpressure: the backend is no longer read
        assert client.other.paused and not session.upstream.is_reading()
        assert 0 < session.down.bytes < size  # in the middle of the frame
        session.relay.stop(4409, "replaced by a newer session for this agent id")
        writer.transport.resume_reading()  # type: ignore[attr-defined]
        message = await asyncio.wait_for(read_frame(reader), 20)
        assert (message.first, message.payload) == (0x82, b"x" * size)  # whole, then the close
        close = await asyncio.wait_for(read_frame(reader), 10)
        assert close_of(close.payload) == (4409, "replaced by a newer session for this agent id")
        writer.write(masked_frame(0x8, close.payload))  # the client's reply
        assert await session.ended() == End("sidecar", 4409, "replaced by a newer session for this agent id")
        writer.close()
    assert session.down.bytes == size
    await until(lambda: backend.closes)
    assert backend.closes == [(1001, "sidecar closing the session")]


# --- every ending is bounded ----------------------------------------------------------------


async def test_an_upstream_that_never_replies_to_a_close_gets_no_more_than_close_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)  # reads nothing, answers nothing

    timeout = 0.5
    loop = asyncio.get_running_loop()
    async with played_upstream(silent) as port, front(port, Options(close_timeout=timeout)) as door:
        async with connect(door.url, close_timeout=30) as ws:
            session = await door.session()
            started = loop.time()
            await ws.close(code=4000, reason="bye")
        # no reply came: the initiator gets its own close frame back (closing.reply_to_initiator)
        assert (ws.close_code, ws.close_reason) == (4000, "bye")
        assert await session.ended(within=10) == End("client", 4000, "bye")
        assert loop.time() - started >= timeout  # it did wait for the reply, that long
        assert session.upstream.is_closing()


async def test_a_client_that_stopped_reading_cannot_hold_a_stop_up(backend: Backend) -> None:
    timeout = 0.3
    async with front(backend.port, Options(close_timeout=timeout)) as door:
        _, writer, _ = await open_raw_websocket(door.port)
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        writer.write(masked_frame(0x1, b"flood 64 1048576"))
        session = await door.session()
        await until(lambda: backend.flood_sent > 2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        session.relay.stop(1012, "service restart: reconnect")
        assert await session.ended(within=10) == End("sidecar", 1012, "service restart: reconnect")
        assert loop.time() - started >= timeout
        writer.transport.abort()
    await until(lambda: backend.ws_open == 0)


async def test_a_connection_already_closing_at_start_counts_as_gone(backend: Backend) -> None:
    async with front(backend.port) as door:
        _, writer, _ = await open_raw_websocket(door.port)
        session = await door.session()
        session.client.close()
        assert (await session.ended()).initiator == "client"
        writer.close()
    await until(lambda: backend.closes)
    assert backend.closes == [(1001, "client went away")]


async def test_random_bytes_from_a_client_end_its_session_with_a_close_frame(backend: Backend) -> None:
    async with front(backend.port) as door:
        reader, writer, _ = await open_raw_websocket(door.port)
        writer.write(os.urandom(4096))
        assert await close_code(reader) in (1002, 1009)
        assert (await (await door.session()).ended()).initiator == "sidecar"
        writer.close()


async def test_an_upstream_gone_in_the_middle_of_a_frame_leaves_the_client_aborted() -> None:
    """Half a frame has reached the client when the upstream vanishes: a close frame now
    would be read as the rest of that frame's payload, so the client's connection is
    aborted instead (it sees 1006), and no invented bytes are sent."""

    forwarded = asyncio.Event()  # the client has the half frame: the upstream may vanish

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x82\x7e\x10\x00" + b"h" * 1000)  # 4096 bytes announced, 1000 sent
        await writer.drain()
        await forwarded.wait()
        writer.transport.abort()

    async with played_upstream(half) as port, front(port) as door:
        reader, writer, _ = await open_raw_websocket(door.port)
        received = await asyncio.wait_for(reader.readexactly(1004), 10)
        forwarded.set()
        received += await asyncio.wait_for(reader.read(), 10)  # until the connection ends
        assert received == b"\x82\x7e\x10\x00" + b"h" * 1000  # exactly what the upstream sent
        assert await (await door.session()).ended() == End("upstream", 1006)
        writer.close()


async def test_once_the_session_has_ended_the_bounds_on_its_ending_are_no_ops(backend: Backend) -> None:
    """A bound that comes round after the session ended (its timer already due when it was
    cancelled, or run by hand here) does nothing: no exception, no new timer on the wheel,
    the outcome unchanged."""
    async with front(backend.port) as door:
        async with connect(door.url) as ws:
            await echoes(ws, "hello")
            session = await door.session()
        end = await session.ended()
        relay = session.relay
        relay._give_up()
        relay._abort_all()
        relay.stop(1012, "too late")
        assert len(door.wheel) == 0
        assert relay.ended.result() == end


class _Held(asyncio.Protocol):
    """A connection's protocol before a relay takes it over: it only hears of the end."""

    def __init__(self) -> None:
        self.transport: Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is no asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(None)


async def test_a_relay_given_a_connection_already_lost_ends_as_that_side_gone() -> None:
    """The upstream's connection was lost (its previous protocol told) before the relay took
    it over: uvloop refuses writes and new buffer limits on it. The relay starts anyway,
    counts that side as gone, and the client is sent 1011, nothing raised."""
    loop = asyncio.get_running_loop()
    accepted: list[_Held] = []
    server = await loop.create_server(lambda: accepted.append(_Held()) or accepted[-1], "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # the client
        _, upstream = await loop.create_connection(_Held, "127.0.0.1", port)  # the upstream leg
        await until(lambda: len(accepted) == 2)
        client, backend_side = accepted[0].transport, accepted[1].transport
        assert client is not None and backend_side is not None and upstream.transport is not None
        backend_side.abort()  # the backend goes away before the relay starts
        await asyncio.wait_for(upstream.lost, 10)
        relay = Relay(
            max_message_size=1 << 20,
            deflate=False,
            close_timeout=2.0,
            stall_timeout=60.0,
            keepalive_interval=0.0,
            wheel=Wheel(0.02),
            up=Tally("edge", "upstream"),
            down=Tally("edge", "downstream"),
            context={"route": "edge"},
        )
        relay.start(client, b"", upstream.transport, b"")
        close = await asyncio.wait_for(read_frame(reader), 10)
        assert (close.first, close_of(close.payload)) == (0x88, (1011, "upstream went away"))
        writer.close()
        assert (await asyncio.wait_for(relay.ended, 10)).initiator == "upstream"
    finally:
        server.close()


async def test_each_leg_pings_with_a_payload_of_its_own() -> None:
    """One random draw per session makes both legs' ping payloads: each 16 hex digits after
    the marker, and never the same for the two legs (a pong names the leg it answers)."""
    payloads = []
    for _ in range(20):
        relay = Relay(
            max_message_size=1024,
            deflate=False,
            close_timeout=1.0,
            stall_timeout=1.0,
            keepalive_interval=0.0,
            wheel=Wheel(0.1),
            up=Tally("edge", "upstream"),
            down=Tally("edge", "downstream"),
            context={"route": "edge"},
        )
        client, upstream = relay._client.token, relay._upstream.token
        for token in (client, upstream):
            marker, digits = token.split(b" ")
            assert marker == b"sidecar-keepalive" and len(digits) == 16 and int(digits, 16) >= 0
        assert client != upstream
        payloads += [client, upstream]
    assert len(set(payloads)) == len(payloads)
