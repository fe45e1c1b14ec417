"""The frame pump: client <-> upstream, both directions, until one side ends.

Each direction is one task that reads a whole message (aiohttp reassembles
fragments, up to the route's size limit) and writes it to the other leg with the
same opcode. Awaiting the write is the backpressure: when a peer stops reading,
the writer waits for the socket to drain, the pump stops reading, and aiohttp
pauses the other socket, so memory stays bounded by the buffers plus one message.
Pings and pongs are relayed end to end like messages, so each peer's liveness
checks reach the other peer rather than being answered by the sidecar.

How a session ends is decided once, by whichever side ends first, and the other
side is always told with a real close frame (RFC 6455 section 7.4):

==========================  ======================  ==============================
first event                 to the other side       initiator label
==========================  ======================  ==============================
close frame (code, reason)  the same code, reason   the side that sent it
TCP gone, no close frame    1011 to the client,     the side that vanished
                            1001 to the upstream    (code label 1006)
protocol fault (1002/1007/  the same code           sidecar
1009) detected by aiohttp
sidecar stops the session   its code (e.g. 1001)    sidecar
==========================  ======================  ==============================

A close frame is relayed as a closing handshake (RFC 6455 section 7.1.2): the
other side gets it, the other direction keeps flowing until that side's close
reply arrives, and the reply goes back to the initiator. Messages in flight when
a peer closes are delivered, not dropped. 1005, 1006 and 1015 are never put on the
wire (RFC 6455 section 7.4.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from aiohttp import WSMsgType
from aiohttp.http_websocket import WebSocketError

from .logs import event
from .metrics import Tally

Side = Literal["client", "upstream"]
Initiator = Literal["client", "upstream", "sidecar"]

ABNORMAL = 1006  # a label only: never sent (RFC 6455 section 7.4.1)
_NOT_ON_THE_WIRE = frozenset({0, 1005, 1006, 1015})
_VANISHED_CODE = {"client": 1001, "upstream": 1011}  # what the *other* side is sent
_VANISHED_REASON = {"client": b"client went away", "upstream": b"upstream went away"}


class Leg(Protocol):
    """What the pump needs of a WebSocket: aiohttp's server and client responses."""

    async def receive(self, timeout: float | None = None) -> object: ...  # noqa: ASYNC109
    async def send_frame(self, message: bytes, opcode: WSMsgType, compress: int | None = None) -> None: ...
    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...


@dataclass(frozen=True)
class End:
    """How a session ended."""

    initiator: Initiator
    code: int  # the close code the initiator sent (or ABNORMAL as a label)
    reason: str = ""


def on_the_wire(code: int) -> int:
    """A received close code as it may be passed on."""
    if code in _NOT_ON_THE_WIRE or not 1000 <= code <= 4999:
        return 1000 if code in (0, 1005) else 1002
    return code


@dataclass(frozen=True)
class _Stopped:
    """A pump's last word: ``code`` None means the TCP connection vanished."""

    side: Side
    code: int | None
    reason: str = ""
    fault: bool = False  # aiohttp failed the leg (protocol error, too big) and sent ``code``


async def _pump(src: Leg, dst: Leg, side: Side, tally: Tally, flow: _Flow) -> _Stopped | None:
    """Relay ``src``'s messages, pings and pongs to ``dst``. ``None`` means stopped
    because ``dst`` is closing, or by the other side."""
    text, binary, ping, pong = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING, WSMsgType.PONG
    clock = asyncio.get_running_loop().time
    while True:
        msg = await src.receive()
        kind = msg.type  # type: ignore[attr-defined]
        if kind is binary or kind is text or kind is ping or kind is pong:
            # Pings and pongs too, end to end: each peer's liveness checks reach the other.
            data: bytes = msg.data  # type: ignore[attr-defined]
            flow.writing_since = clock()  # the watchdog's view of a write that hangs
            try:
                await dst.send_frame(data, kind)
            except ConnectionError:
                return None  # dst is closing; its own pump reports why
            flow.writing_since = 0.0
            if kind is binary or kind is text:
                tally.messages += 1
                tally.bytes += len(data)
        elif kind is WSMsgType.CLOSE:
            return _Stopped(side, msg.data, msg.extra or "")  # type: ignore[attr-defined]
        elif kind is WSMsgType.CLOSING:
            return None  # we closed this leg from the other task
        elif kind is WSMsgType.ERROR and isinstance(msg.data, WebSocketError):  # type: ignore[attr-defined]
            return _Stopped(side, msg.data.code, str(msg.data), fault=True)  # type: ignore[attr-defined]
        else:  # CLOSED, or ERROR from the transport: gone without a close frame
            return _Stopped(side, None)


async def relay(
    client: Leg,
    upstream: Leg,
    upstream_tally: Tally,
    downstream_tally: Tally,
    stop: asyncio.Future[tuple[int, str]],
    *,
    close_timeout: float,
    stall_timeout: float,
    context: Mapping[str, object],
) -> End:
    """Run both pumps until one side ends, then close the other side properly.

    ``stop`` lets the sidecar end the session itself: its result is the
    (code, reason) for the client; the upstream is sent 1001. Every close is
    bounded by ``close_timeout``; a peer that does not take its close frame in
    time has its connection aborted. So does a peer that takes no data for
    ``stall_timeout`` while the sidecar has some for it (it stopped reading): the
    relay then ends as if that peer had vanished. When this returns, both
    sockets are closed or closing, and neither pump task is left running.
    """
    to_upstream, to_client = _Flow(upstream, "upstream"), _Flow(client, "client")
    up = asyncio.ensure_future(_pump(client, upstream, "client", upstream_tally, to_upstream))
    down = asyncio.ensure_future(_pump(upstream, client, "upstream", downstream_tally, to_client))
    watchdog = _Watchdog((to_upstream, to_client), stall_timeout, context)
    closing = _Closer(close_timeout)
    pending: set[asyncio.Future[object]] = {up, down, stop}  # type: ignore[arg-type]
    first: _Stopped | None = None
    try:
        while first is None and (up in pending or down in pending):
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if stop in done:
                code, reason = stop.result()
                await closing.both(client, upstream, code, reason)
                return End("sidecar", code, reason)
            for task in (up, down):
                if task in done and first is None:
                    first = task.result()
        if first is None:  # both pumps found their destination closing
            first = _Stopped("client", None)
        other_pump = down if first.side == "client" else up
        return await _finish(first, client, upstream, other_pump, closing)
    except BaseException:
        # Cancelled or failed: still leave neither peer without a close frame.
        with contextlib.suppress(Exception):
            await closing.both(client, upstream, 1011, "sidecar error")
        raise
    finally:
        watchdog.stop()
        for task in (up, down):
            task.cancel()
        await asyncio.wait({up, down})  # our own cancellation still propagates
        for task in (up, down):
            if not task.cancelled():
                task.exception()  # retrieved: a pump's failure is not "never retrieved"
        closing.release(client)
        closing.release(upstream)


async def _finish(
    first: _Stopped, client: Leg, upstream: Leg, other_pump: asyncio.Future[_Stopped | None], closing: _Closer
) -> End:
    origin, other = (client, upstream) if first.side == "client" else (upstream, client)
    if first.code is None:
        await closing.close(other, _VANISHED_CODE[first.side], _VANISHED_REASON[first.side])
        return End(first.side, ABNORMAL)
    code = on_the_wire(first.code)
    if first.fault:
        # aiohttp already sent ``code`` to the faulty side; tell the other why.
        await closing.close(other, code, f"{first.side}: {first.reason}".encode())
        return End("sidecar", code, first.reason)
    # The closing handshake, relayed (RFC 6455 section 7.1.2): pass the close frame
    # on, keep relaying what the other side still sends until its close arrives,
    # then answer the initiator with that reply (normally its own code echoed).
    reason = first.reason.encode("utf-8")
    reply: _Stopped | None = None
    with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
        await asyncio.wait_for(other.send_frame(_close_payload(code, reason), WSMsgType.CLOSE), closing.timeout)
        reply = await asyncio.wait_for(asyncio.shield(other_pump), closing.timeout)
    if reply is not None and reply.code is not None and not reply.fault:
        await closing.close(origin, on_the_wire(reply.code), reply.reason.encode("utf-8"))
    else:
        await closing.close(origin, code, reason)
    await closing.drop(other)
    return End(first.side, first.code or 1005, first.reason)  # an empty close frame reads as 1005


def _close_payload(code: int, reason: bytes) -> bytes:
    return code.to_bytes(2, "big") + reason[:123]  # a control frame carries 125 bytes at most


@dataclass(eq=False)
class _Flow:
    """One direction, as the watchdog sees it: the leg written to, and since when
    the current write has been waiting (0.0: not writing)."""

    dst: Leg
    peer: Side  # whose side ``dst`` is
    writing_since: float = 0.0


class _Watchdog:
    """Aborts a leg whose peer has taken nothing for ``timeout`` while a write to it
    waits. One timer per session, every ``timeout / 2``; nothing per message."""

    def __init__(self, flows: tuple[_Flow, ...], timeout: float, context: Mapping[str, object]) -> None:
        self._flows = flows
        self._timeout = timeout
        self._context = context  # route and agent id, for the log line
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(timeout / 2, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        for flow in self._flows:
            if flow.writing_since and now - flow.writing_since > self._timeout:
                flow.writing_since = 0.0
                event(logging.WARNING, "ws.stalled", **self._context, peer=flow.peer, stall_timeout_s=self._timeout)
                transport = _transport(flow.dst)
                if transport is not None:
                    transport.abort()  # its pump then reports the peer as gone
        self._timer = self._loop.call_later(self._timeout / 2, self._check)

    def stop(self) -> None:
        self._timer.cancel()


class _Closer:
    """Closes legs within a time limit, aborting a connection that does not keep it.

    aiohttp's ``close()`` waits for the write buffer to drain with no limit of its own,
    so a peer that has stopped reading would hold it, and the session, for ever.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def close(self, leg: Leg, code: int, reason: bytes) -> None:
        try:
            await asyncio.wait_for(leg.close(code=code, message=reason[:123]), self.timeout)
        except (TimeoutError, ConnectionError):
            transport = _transport(leg)
            if transport is not None:
                transport.abort()

    async def both(self, client: Leg, upstream: Leg, code: int, reason: str) -> None:
        await asyncio.gather(
            self.close(client, code, reason.encode()),
            self.close(upstream, 1001, b"sidecar closing the session"),
        )

    async def drop(self, leg: Leg) -> None:
        """End a leg whose closing handshake is done, without a second close frame:
        aiohttp's ``close()`` always writes one, unless the transport is already closing."""
        transport = _transport(leg)
        if transport is not None:
            transport.close()
        await self.close(leg, 1000, b"")  # releases aiohttp's state; writes nothing now

    def release(self, leg: Leg) -> None:
        """The session is over: its socket is closed now, and aborted if it has not
        finished flushing within the time limit (a peer that stopped reading)."""
        transport = _transport(leg)
        if transport is not None:
            transport.close()
            if transport.get_write_buffer_size():  # still flushing to the peer
                asyncio.get_running_loop().call_later(self.timeout, transport.abort)


def _transport(leg: Leg) -> asyncio.Transport | None:
    """The leg's socket transport. aiohttp exposes it only through its frame writer
    (the same attribute on server and client WebSockets); tests cover this."""
    writer = getattr(leg, "_writer", None)
    transport = getattr(writer, "transport", None)
    return transport if isinstance(transport, asyncio.Transport) else None
