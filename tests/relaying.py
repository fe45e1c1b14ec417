"""The relay on real sockets, without the listener: a front door that does the least a
proxy must before relaying, then hands both connections to :class:`sidecar.relay.Relay`.

``Front`` listens on 127.0.0.1, port 0. For each connection it reads the client's
upgrade request, sends it on to the upstream (the client's key, so the upstream's
``Sec-WebSocket-Accept`` is valid for the client as it is; ``Sec-WebSocket-Extensions``
only where the front allows compression), reads the upstream's answer and passes it
back, then starts a relay with both transports and whatever each side sent after
its head. Peers are python `websockets` (a strict RFC 6455 client), aiohttp, the
test backend (tests/upstream.py), or raw sockets for frames no library would send.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from sidecar.closing import End
from sidecar.frames import unmask
from sidecar.metrics import Tally
from sidecar.relay import Relay, Transport
from sidecar.wheel import Wheel

from .wire import until

TICK = 0.02  # the test wheel's tick: small against the timeouts the tests use


@dataclass
class Options:
    """A relay's settings, as a route and the listen section would give them."""

    max_message_size: int = 4 * 1024 * 1024
    deflate: bool = False
    close_timeout: float = 2.0
    stall_timeout: float = 60.0
    keepalive_interval: float = 0.0


@dataclass
class Session:
    """One relayed session: its relay and its two tallies (what each side sent)."""

    relay: Relay
    up: Tally
    down: Tally
    client: Transport
    upstream: Transport

    async def ended(self, within: float = 10) -> End:
        return await asyncio.wait_for(asyncio.shield(self.relay.ended), within)


@dataclass
class Front:
    upstream_port: int
    options: Options
    wheel: Wheel
    port: int = 0
    sessions: list[Session] = field(default_factory=list)
    tasks: set[asyncio.Future[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/edge/ws"

    async def session(self, index: int = 0) -> Session:
        """The ``index``-th session relayed, once it has started."""
        await until(lambda: len(self.sessions) > index)
        return self.sessions[index]

    async def _open(self, client: asyncio.Transport, head: bytes, rest: bytes) -> None:
        loop = asyncio.get_running_loop()
        upstream, dial = await loop.create_connection(_Head, "127.0.0.1", self.upstream_port)
        upstream.write(_forwarded(head, self.options.deflate))
        answer, after = await dial.head
        client.write(answer + b"\r\n\r\n")
        if not answer.startswith(b"HTTP/1.1 101 "):
            client.close()
            upstream.close()
            return
        up, down = Tally("edge", "upstream"), Tally("edge", "downstream")
        o = self.options
        relay = Relay(
            max_message_size=o.max_message_size,
            deflate=o.deflate,
            close_timeout=o.close_timeout,
            stall_timeout=o.stall_timeout,
            keepalive_interval=o.keepalive_interval,
            wheel=self.wheel,
            up=up,
            down=down,
            context={"route": "edge"},
        )
        relay.start(client, rest, upstream, after)
        self.sessions.append(Session(relay, up, down, client, upstream))


class _Head(asyncio.Protocol):
    """Reads an HTTP head; ``head`` resolves with it (without its blank line) and what
    followed it. Reading is paused then: the relay resumes it."""

    def __init__(self) -> None:
        self.head: asyncio.Future[tuple[bytes, bytes]] = asyncio.get_running_loop().create_future()
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and not self.head.done():
            assert self.transport is not None
            self.transport.pause_reading()
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            self.head.set_result((head, rest))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(ConnectionResetError("closed before its head"))


def _forwarded(head: bytes, deflate: bool) -> bytes:
    lines = head.split(b"\r\n")
    kept = [line for line in lines[1:] if deflate or not line.lower().startswith(b"sec-websocket-extensions:")]
    return b"\r\n".join([lines[0], *kept]) + b"\r\n\r\n"


@contextlib.asynccontextmanager
async def front(upstream_port: int, options: Options | None = None, *, port: int = 0) -> AsyncIterator[Front]:
    """A front door on 127.0.0.1:``port`` (0: a free one) relaying every connection to the
    upstream on ``upstream_port``; when the block ends, sessions still open are aborted."""
    door = Front(upstream_port, options or Options(), Wheel(TICK))

    def accepted() -> asyncio.Protocol:
        return _Accept(door)

    server = await asyncio.get_running_loop().create_server(accepted, "127.0.0.1", port)
    door.port = server.sockets[0].getsockname()[1]
    try:
        yield door
    finally:
        server.close()
        for session in door.sessions:
            if not session.relay.ended.done():
                session.client.abort()
                session.upstream.abort()
        for task in door.tasks:
            task.cancel()
        await asyncio.gather(*door.tasks, return_exceptions=True)
        await server.wait_closed()


class _Accept(_Head):
    def __init__(self, door: Front) -> None:
        super().__init__()
        self.head.add_done_callback(self._opened)
        self.door = door

    def _opened(self, head: asyncio.Future[tuple[bytes, bytes]]) -> None:
        if head.cancelled() or head.exception() is not None:
            return
        assert self.transport is not None
        task = asyncio.ensure_future(self.door._open(self.transport, *head.result()))
        self.door.tasks.add(task)
        task.add_done_callback(self.door.tasks.discard)


async def answer_101(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """For an upstream played by hand (``wire.raw_upstream``): read the upgrade request and
    accept it; frames follow."""
    head = await reader.readuntil(b"\r\n\r\n")
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + _accept_for(head) + b"\r\n\r\n"
    )
    await writer.drain()


def _accept_for(head: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` for the key in a request head (RFC 6455 section 4.2.2)."""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            digest = hashlib.sha1(value.strip() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
            return base64.b64encode(digest)
    raise ValueError("no Sec-WebSocket-Key")


async def read_masked_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One frame as an upstream played by hand reads it from the sidecar: (first byte,
    unmasked payload). The sidecar is the client toward the upstream: its frames are masked."""
    first, second = await reader.readexactly(2)
    assert second & 0x80, "a frame toward the upstream must be masked (RFC 6455 section 5.1)"
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    key = await reader.readexactly(4)
    return first, unmask(await reader.readexactly(length), key)


def close_of(payload: bytes) -> tuple[int, str]:
    """A close frame's code and reason."""
    return int.from_bytes(payload[:2], "big"), payload[2:].decode()


@contextlib.asynccontextmanager
async def played_upstream(
    speak: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """An upstream played by hand after its 101: ``speak`` gets each connection past the
    handshake. Yields its port."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await answer_101(reader, writer)
        await speak(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in writers:
            writer.transport.abort()
        server.close()
