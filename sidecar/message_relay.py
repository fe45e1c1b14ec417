"""The frame pump: client <-> upstream, both directions, until one side ends.

Each direction is one task that reads a whole message (aiohttp reassembles
fragments, up to the route's size limit) and writes it to the other leg with the
same opcode. Awaiting the write is the backpressure: when a peer stops reading,
the writer waits for the socket to drain, the pump stops reading, and aiohttp
pauses the other socket, so memory stays bounded by the buffers plus one message.
Pings and pongs are relayed end to end like messages, so each peer's liveness
checks reach the other peer rather than being answered by the sidecar.

Keep-alive: every ``keepalive_interval`` the sidecar also pings each peer itself,
with a payload of its own, unique to the session and the leg, so that an idle
session survives proxies that cut idle connections (Railway's edge, after about
60 s). The pong carrying that payload is the sidecar's: it is consumed, never
relayed; every other pong is relayed as before. A peer that has not answered by
the next tick is dead, and is cut off (see :class:`_Watchdog` for what counts as
an answer); the session then ends as if that peer had vanished.

How a session ends (who is sent which close frame, and how it is counted) is
decided by the pure functions of :mod:`sidecar.closing`, whose docstring has the
table; this module carries those decisions out, each close bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp import WSMsgType
from aiohttp.http_websocket import WebSocketError

from .closing import (
    SIDECAR_CLOSING_UPSTREAM,
    SIDECAR_ERROR,
    Cause,
    End,
    Side,
    Stopped,
    close_payload,
    closing_after,
    cut_reason,
    reply_to_initiator,
)
from .logs import event
from .metrics import Tally
from .sessions import EndCause


class Leg(Protocol):
    """What the pump needs of a WebSocket: aiohttp's server and client responses."""

    async def receive(self, timeout: float | None = None) -> object: ...  # noqa: ASYNC109
    async def send_frame(self, message: bytes, opcode: WSMsgType, compress: int | None = None) -> None: ...
    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...


async def _pump(src: _Peer, dst: _Peer) -> Stopped | None:
    """Relay ``src``'s messages, pings and pongs to ``dst``, except the pong answering
    the sidecar's own ping. ``None`` means stopped because ``dst`` is closing, or by
    the other side."""
    text, binary, ping, pong = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING, WSMsgType.PONG
    clock = asyncio.get_running_loop().time
    receive, send, tally, own = src.leg.receive, dst.leg.send_frame, src.sent, src.token
    while True:
        msg = await receive()
        kind = msg.type  # type: ignore[attr-defined]
        # Pings and pongs too, end to end: each peer's liveness checks reach the other.
        if kind is binary or kind is text or kind is ping or (kind is pong and msg.data != own):  # type: ignore[attr-defined]
            data: bytes = msg.data  # type: ignore[attr-defined]
            dst.writing_since = clock()  # the watchdog's view of a write that hangs
            try:
                await send(data, kind)
            except ConnectionError:
                return None  # dst is closing; its own pump reports why
            dst.writing_since = 0.0
            if kind is binary or kind is text:
                tally.messages += 1
                tally.bytes += len(data)
        elif kind is pong:
            src.answered = True  # the sidecar's own keep-alive ping, answered
        elif kind is WSMsgType.CLOSE:
            return Stopped(src.side, msg.data, msg.extra or "")  # type: ignore[attr-defined]
        elif kind is WSMsgType.CLOSING:
            return None  # we closed this leg from the other task
        elif kind is WSMsgType.ERROR and isinstance(msg.data, WebSocketError):  # type: ignore[attr-defined]
            return Stopped(src.side, msg.data.code, str(msg.data), fault=True)  # type: ignore[attr-defined]
        else:  # CLOSED, or ERROR from the transport: gone without a close frame
            return Stopped(src.side, None)


async def relay(
    client: Leg,
    upstream: Leg,
    upstream_tally: Tally,
    downstream_tally: Tally,
    stop: asyncio.Future[EndCause],
    *,
    close_timeout: float,
    stall_timeout: float,
    keepalive_interval: float = 0.0,
    context: Mapping[str, object],
) -> End:
    """Run both pumps until one side ends, then close the other side properly.

    ``stop`` lets the sidecar end the session itself: its result is the cause, whose
    code and reason the client is sent; the upstream is sent 1001. Every close is
    bounded by ``close_timeout``; a peer that does not take its close frame in
    time has its connection aborted. So does a peer that takes no data for
    ``stall_timeout`` while the sidecar has some for it (it stopped reading), and,
    when ``keepalive_interval`` is not 0, a peer that does not answer the
    sidecar's ping within one interval: the relay then ends as if that peer had
    vanished. When this returns, both sockets are closed or closing, and neither
    pump task is left running.
    """
    peers = _Peer("client", client, upstream_tally), _Peer("upstream", upstream, downstream_tally)
    up = asyncio.ensure_future(_pump(peers[0], peers[1]))
    down = asyncio.ensure_future(_pump(peers[1], peers[0]))
    watchdog = _Watchdog(peers, stall_timeout, keepalive_interval, context)
    closing = _Closer(close_timeout)
    pending: set[asyncio.Future[object]] = {up, down, stop}  # type: ignore[arg-type]
    first: Stopped | None = None
    try:
        while first is None and (up in pending or down in pending):
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if stop in done:
                watchdog.stop()
                cause = stop.result()
                await closing.both(client, upstream, cause.code, cause.reason)
                return End("sidecar", cause.code, cause.reason, watchdog.cut)
            for task in (up, down):
                if task in done and first is None:
                    first = task.result()
        watchdog.stop()  # no more pings once the session is ending
        if first is None:  # both pumps found their destination closing
            first = Stopped("client", None)
        other_pump = down if first.side == "client" else up
        end = await _finish(first, client, upstream, other_pump, closing)
        return dataclasses.replace(end, cut=watchdog.cut)
    except BaseException:
        # Cancelled or failed: still leave neither peer without a close frame.
        with contextlib.suppress(Exception):
            await closing.both(client, upstream, *SIDECAR_ERROR)
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
    first: Stopped, client: Leg, upstream: Leg, other_pump: asyncio.Future[Stopped | None], closing: _Closer
) -> End:
    """Carry out :func:`~sidecar.closing.closing_after` for the first leg to stop."""
    origin, other = (client, upstream) if first.side == "client" else (upstream, client)
    decision = closing_after(first)
    if not decision.handshake:
        await closing.close(other, *decision.to_other)
        return decision.end
    # The closing handshake, relayed (RFC 6455 section 7.1.2): pass the close frame
    # on, keep relaying what the other side still sends until its close arrives,
    # then answer the initiator with that reply.
    reply: Stopped | None = None
    with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
        await asyncio.wait_for(other.send_frame(close_payload(*decision.to_other), WSMsgType.CLOSE), closing.timeout)
        reply = await asyncio.wait_for(asyncio.shield(other_pump), closing.timeout)
    await closing.close(origin, *reply_to_initiator(first, reply))
    await closing.drop(other)
    return decision.end


@dataclass(eq=False)
class _Peer:
    """One side of a session as the pumps and the watchdog see it."""

    side: Side
    leg: Leg
    sent: Tally  # what this peer sent, counted by the pump reading it
    # The payload of the sidecar's own pings to this peer: unique to the session and
    # the leg, recognisable in a capture, and no more than a control frame carries.
    token: bytes = dataclasses.field(default_factory=lambda: b"sidecar-keepalive " + secrets.token_hex(8).encode())
    writing_since: float = 0.0  # since when a write *to* this peer waits (0.0: none)
    pinged: bool = False  # a keep-alive ping awaits its answer ...
    answered: bool = False  # ... which came back
    heard: int = 0  # ``sent.messages`` when the ping went out


class _Watchdog:
    """The session's one timer; nothing per message. It cuts a peer off (aborts its
    connection, so its pump reports it gone) when:

    * stalled: a write to it has waited for ``stall_timeout`` (checked every half
      ``stall_timeout``);
    * dead: every ``keepalive`` seconds each peer is pinged, and a peer pinged at
      the previous tick that has neither answered nor sent a message since is dead.
      A message counts as an answer: the peer is plainly alive, and its pong may be
      queued behind what it is sending.

    Keep-alive leaves alone a peer the relay is held up on (:func:`_held_up`): one
    with data queued for it (a ping would wait behind that data, and whether the
    peer still reads is the stall check's question), and one the sidecar is not
    reading because the write of its last message to the other side waits (its
    pong would sit unread). Such a peer is neither judged nor pinged at that tick.
    """

    def __init__(
        self, peers: tuple[_Peer, _Peer], stall_timeout: float, keepalive: float, context: Mapping[str, object]
    ) -> None:
        self._peers = peers
        self._stall_timeout = stall_timeout
        self._keepalive = keepalive
        self._context = context  # route and agent id, for the log lines
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self._next_stall_check = now + stall_timeout / 2
        self._next_ping = now + keepalive if keepalive else math.inf
        self._pings: set[asyncio.Future[None]] = set()
        self.cut: tuple[Side, Cause] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._schedule()

    def _schedule(self) -> None:
        self._timer = self._loop.call_at(min(self._next_stall_check, self._next_ping), self._tick)

    def _tick(self) -> None:
        assert self._timer is not None
        when = self._timer.when()  # what was due then is due now (call_at may run early by the clock's resolution)
        if self._next_stall_check <= when:
            self._next_stall_check = when + self._stall_timeout / 2
            self._check_stalls()
        if self._next_ping <= when and self.cut is None:
            self._next_ping = when + self._keepalive
            self._keep_alive()
        if self.cut is None:  # once a peer is cut off, the session is ending
            self._schedule()

    def _check_stalls(self) -> None:
        now = self._loop.time()
        for peer in self._peers:
            if peer.writing_since and now - peer.writing_since > self._stall_timeout:
                event(
                    logging.WARNING, "ws.stalled", **self._context, peer=peer.side, stall_timeout_s=self._stall_timeout
                )
                self._cut_off(peer, "stalled")
                return

    def _keep_alive(self) -> None:
        client, upstream = self._peers
        due = [peer for peer, other in ((client, upstream), (upstream, client)) if not _held_up(peer, other)]
        for peer in self._peers:
            if peer not in due:
                peer.pinged = False  # neither judged nor pinged: see the class docstring
        for peer in due:
            if peer.pinged and not (peer.answered or peer.sent.messages != peer.heard):
                event(logging.WARNING, "ws.peer_dead", **self._context, peer=peer.side, keepalive_s=self._keepalive)
                self._cut_off(peer, "dead")
                return
        for peer in due:
            self._ping(peer)

    def _ping(self, peer: _Peer) -> None:
        transport = _transport(peer.leg)
        if transport is None or transport.is_closing():
            peer.pinged = False
            return
        peer.pinged, peer.answered, peer.heard = True, False, peer.sent.messages
        # Nothing is queued for the peer, so the frame goes straight to the socket and
        # this completes at its first step; a task only because a timer cannot await.
        ping = asyncio.ensure_future(peer.leg.send_frame(peer.token, WSMsgType.PING))
        self._pings.add(ping)
        ping.add_done_callback(self._sent)

    def _sent(self, ping: asyncio.Future[None]) -> None:
        self._pings.discard(ping)
        if not ping.cancelled():
            ping.exception()  # a leg closing meanwhile: its pump reports that

    def _cut_off(self, peer: _Peer, cause: Cause) -> None:
        self.cut = (peer.side, cause)
        peer.writing_since = 0.0
        transport = _transport(peer.leg)
        if transport is not None:
            transport.abort()  # its pump then reports the peer as gone

    def stop(self) -> None:
        """No more ticks. A ping still being written is left to finish: it ends with
        its socket, which the relay always closes."""
        if self._timer is not None:
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
            await asyncio.wait_for(leg.close(code=code, message=cut_reason(reason)), self.timeout)
        except (TimeoutError, ConnectionError):
            transport = _transport(leg)
            if transport is not None:
                transport.abort()

    async def both(self, client: Leg, upstream: Leg, code: int, reason: str) -> None:
        await asyncio.gather(
            self.close(client, code, reason.encode()),
            self.close(upstream, *SIDECAR_CLOSING_UPSTREAM),
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


def _held_up(peer: _Peer, other: _Peer) -> bool:
    """Is the relay held up on ``peer``: data waiting to go to it, or its own data
    not being read because the write of the previous message to ``other`` waits?"""
    transport = _transport(peer.leg)
    queued = transport is not None and transport.get_write_buffer_size() > 0
    return bool(peer.writing_since or other.writing_since) or queued


def _transport(leg: Leg) -> asyncio.Transport | None:
    """The leg's socket transport. aiohttp exposes it only through its frame writer
    (the same attribute on server and client WebSockets); tests cover this."""
    writer = getattr(leg, "_writer", None)
    transport = getattr(writer, "transport", None)
    return transport if isinstance(transport, asyncio.Transport) else None
