"""The relay after both 101s: a WebSocket session at the transport level.

A :class:`Relay` takes over the client's and the upstream's connections (each gets
a :class:`~sidecar.legs.Leg` as its protocol) and forwards bytes as they arrive,
frames left as they are: the legs scan them, count messages and bytes into the
session's :class:`~sidecar.metrics.Tally` pair, enforce the size limit, and find
the frames that matter here (close frames, faults, the pongs to the sidecar's own
pings). There is no task per session in here: everything runs in the transports'
callbacks and on the process's timer :class:`~sidecar.wheel.Wheel` (keep-alive and
stall checks, :mod:`sidecar.watchdog`; the bound on every close). The session's
one task awaits :attr:`Relay.ended`.

How a session ends is decided by the pure functions of :mod:`sidecar.closing`,
whose docstring has the table; this module carries those decisions out:

* a close frame is relayed as a closing handshake (RFC 6455 section 7.1.2): the
  other side gets it, byte for byte unless its code must change; the other
  direction keeps flowing until that side's close reply arrives, and the reply
  goes back to the initiator;
* a fault (a frame RFC 6455 forbids, a message over the limit): the faulty side
  is sent the fault's code and why, the other side the code and which side broke
  it; the sidecar is the initiator;
* a connection gone without a close frame: the other side is told (1001 to the
  upstream, 1011 to the client);
* :meth:`Relay.stop`: the client gets the sidecar's code, the upstream 1001.

The sidecar's own close frames go out between two frames of their stream. When a
peer vanished in the middle of a frame, the stream it was sending can never reach
a boundary: the other peer cannot be sent a close frame without inventing the rest
of that frame, so its connection is aborted instead (it sees 1006).

Every ending is bounded: ``close_timeout`` after it begins, the relay gives up on
replies (an initiator still waiting gets its own close frame back) and closes both
connections; ``close_timeout`` later, whatever has not finished closing (a peer
that stopped reading) is aborted. :attr:`Relay.ended` resolves once both
connections are gone, so a session never leaves a socket half open.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Mapping

from .closing import (
    Cause,
    End,
    Frame,
    Side,
    Stopped,
    close_payload,
    closing_after,
    passes_as_is,
    reply_to_initiator,
    sidecar_failed,
    sidecar_stop,
    to_faulty,
)
from .frames import CLOSE, Close, Fault, Scanner, client_frame, server_frame
from .inflate import Meter
from .legs import Leg, Transport
from .logs import event, logger
from .metrics import Tally
from .watchdog import Watchdog
from .wheel import Handle, Wheel

__all__ = ["Relay", "Transport"]


class Relay:
    """One session's relay; see the module docstring. ``up`` counts what the client
    sends, ``down`` what the upstream sends; ``context`` (route, agent id) is added
    to its log lines."""

    __slots__ = (
        "_client",
        "_close_timeout",
        "_context",
        "_cut",
        "_deadline",
        "_end",
        "_failed",
        "_first",
        "_keepalive",
        "_stall_timeout",
        "_started",
        "_stop_at_start",
        "_upstream",
        "_watchdog",
        "_wheel",
        "ended",
    )

    def __init__(
        self,
        *,
        max_message_size: int,
        deflate: bool,
        close_timeout: float,
        stall_timeout: float,
        keepalive_interval: float,
        wheel: Wheel,
        up: Tally,
        down: Tally,
        context: Mapping[str, object],
        resets: tuple[bool, bool] = (False, False),
    ) -> None:
        # resets: whether the client and the upstream reset their compressors per message
        # (permessage-deflate's *_no_context_takeover, sidecar.inflate.resets).
        self.ended: asyncio.Future[End] = asyncio.get_running_loop().create_future()
        meters = [Meter(max_message_size, reset=reset) if deflate else None for reset in resets]
        tokens = os.urandom(16).hex().encode()  # one draw for both legs' ping payloads (secrets.token_hex's)
        self._client = _leg("client", self, up, max_message_size, meters[0], tokens[:16])
        self._upstream = _leg("upstream", self, down, max_message_size, meters[1], tokens[16:])
        self._client.other, self._upstream.other = self._upstream, self._client
        self._close_timeout = close_timeout
        self._keepalive = keepalive_interval
        self._stall_timeout = stall_timeout
        self._wheel = wheel
        self._context = context
        self._watchdog = Watchdog(
            (self._client, self._upstream),
            wheel,
            keepalive=keepalive_interval,
            stall_timeout=stall_timeout,
            cut=self._cut_off,
        )
        self._end: End | None = None  # decided, once the session is ending
        self._first: Stopped | None = None  # what decided it (None: the sidecar's stop)
        self._cut: tuple[Side, Cause] | None = None
        self._failed = False  # a bug was met (and logged: once)
        self._deadline: Handle | None = None
        self._started = False
        self._stop_at_start: tuple[int, str] | None = None

    def start(
        self,
        client: Transport,
        client_pending: bytes,
        upstream: Transport,
        upstream_pending: bytes,
        *,
        paused: tuple[bool, bool] = (False, False),
    ) -> None:
        """Take both connections over and relay what each side sent after its handshake
        (``*_pending``) first. A connection already closing counts as gone. ``paused``:
        whether the client's and the upstream's write buffers are already past their
        high-water marks (their transports told the protocol before the leg): then the
        other side is not read until they drain."""
        if self._started:
            raise RuntimeError("a relay is started once")
        self._started = True
        legs = ((self._client, client, client_pending), (self._upstream, upstream, upstream_pending))
        for leg, transport, _ in legs:
            leg.attach(transport)
        for (leg, _, _), full in zip(legs, paused, strict=True):
            leg.limit(paused=full)
        self._watchdog.start()
        for leg, transport, pending in legs:
            if transport.is_closing():
                self.lost(leg)
            elif pending:
                leg.data_received(pending)
        for leg, transport, _ in legs:
            if not leg.lost and not leg.paused:
                transport.resume_reading()
        if self._stop_at_start is not None:
            self.stop(*self._stop_at_start)

    def stop(self, code: int, reason: str) -> None:
        """End the session: at the next frame boundary the client gets close(code, reason)
        and the upstream close(1001, 'sidecar closing the session'). Once the session is
        ending anyway, this changes nothing."""
        if not self._started:
            self._stop_at_start = (code, reason)
            return
        if self._end is not None:
            return
        to_client, to_upstream, end = sidecar_stop(code, reason)
        self._begin(None, end)
        self._send_close(self._client, _encode(self._client, to_client))
        self._send_close(self._upstream, _encode(self._upstream, to_upstream))

    # --- what the legs report -------------------------------------------------------------

    def closed_by(self, leg: Leg, close: Close, frame: bytes) -> None:
        """``leg``'s peer sent a close frame (``frame``, as received)."""
        other = leg.other
        if self._end is None:  # it begins the closing handshake, relayed
            first = Stopped(leg.side, close.code, close.reason)
            decision = closing_after(first)
            self._begin(first, decision.end)
            self._send_close(other, frame if passes_as_is(close.code) else _encode(other, decision.to_other))
        elif self._awaits_reply_from(leg):  # its reply, which goes back to the initiator
            assert self._first is not None
            reply = reply_to_initiator(self._first, Stopped(leg.side, close.code, close.reason))
            self._send_close(other, frame if passes_as_is(close.code) else _encode(other, reply))
        self._settle(leg)

    def close_sent(self, leg: Leg) -> None:
        self._settle(leg)

    def faulted(self, leg: Leg, fault: Fault) -> None:
        """``leg``'s peer broke the protocol: nothing more is read from it."""
        other = leg.other
        stopped = Stopped(leg.side, fault.code, fault.reason, fault=True)
        if self._end is None:
            decision = closing_after(stopped)
            self._begin(stopped, decision.end)
            self._send_close(other, _encode(other, decision.to_other))
        elif self._awaits_reply_from(leg):
            assert self._first is not None
            self._send_close(other, _encode(other, reply_to_initiator(self._first, stopped)))
        self._send_close(leg, _encode(leg, to_faulty(stopped)))
        self._settle(leg)

    def lost(self, leg: Leg) -> None:
        """``leg``'s connection is gone (closed, aborted, or dropped by its peer)."""
        if leg.lost:
            return
        leg.lost = leg.got_close = True
        leg.forwarding, leg.holding = False, None
        other = leg.other
        other.forwarding, other.holding = False, None  # nothing more can go to it
        other.unpause()  # it may have been held back for this leg's full buffer
        if self._end is None:  # gone without a close frame
            first = Stopped(leg.side, None)
            decision = closing_after(first)
            self._begin(first, decision.end)
            self._send_close(other, _encode(other, decision.to_other))
        elif self._awaits_reply_from(leg):
            assert self._first is not None
            self._send_close(other, _encode(other, reply_to_initiator(self._first, Stopped(leg.side, None))))
        if self._client.lost and self._upstream.lost and not self.ended.done():
            self._watchdog.stop()
            if self._deadline is not None:
                self._deadline.cancel()
            assert self._end is not None
            end = self._end  # made anew only for a cut-off peer: replace() is a dozen calls
            self.ended.set_result(end if end.cut == self._cut else dataclasses.replace(end, cut=self._cut))

    def failed(self, leg: Leg | None, error: Exception) -> None:
        """A bug in the relay (``leg``: met reading that leg's peer, which is read no more),
        or in what runs it (``None``). Logged once; the session still ends with close
        frames, 1011 to both legs, if it can; else (or if it was ending already) both
        connections are aborted. Either way :attr:`ended` resolves."""
        if leg is not None:
            leg.got_close, leg.forwarding, leg.holding = True, False, None
        if self._failed:
            return
        self._failed = True
        peer = leg.side if leg is not None else None
        logger.error("ws.relay_failed", exc_info=error, extra={"fields": {**self._context, "peer": peer}})
        if self._end is None and self._started:
            with contextlib.suppress(Exception):  # if even that fails, aborting is what is left
                frame, end = sidecar_failed()
                self._begin(None, end)
                for each in (self._client, self._upstream):
                    self._send_close(each, _encode(each, frame))
                    self._settle(each)
                return
        self._abort_all()

    # --- carrying the decisions out -----------------------------------------------------------

    def _begin(self, first: Stopped | None, end: End) -> None:
        self._first, self._end = first, end
        self._watchdog.stop()  # no more pings, and the deadline bounds what follows
        self._deadline = self._wheel.call_later(self._close_timeout, self._give_up)

    def _awaits_reply_from(self, leg: Leg) -> bool:
        """Is ``leg`` the other side of a closing handshake that is still waiting for it?"""
        first = self._first
        return (
            first is not None
            and first.code is not None
            and not first.fault
            and first.side == leg.other.side
            and not leg.other.sent_close
        )

    def _send_close(self, leg: Leg, frame: bytes) -> None:
        if leg.lost or leg.sent_close or leg.pending_close is not None:
            return  # one close frame per leg: the first decided
        if not leg.send(frame, close=True):
            self._abort(leg)  # its stream cannot reach a boundary: see the module docstring

    def _settle(self, leg: Leg) -> None:
        """A leg whose closing handshake is done (both close frames) is closed."""
        if leg.sent_close and leg.got_close and not leg.released and not leg.lost:
            leg.released = True
            leg.transport.close()

    def _give_up(self) -> None:
        """``close_timeout`` into the ending: no more waiting for replies. Once the session
        has ended (both connections gone), nothing is left to bound: a no-op."""
        if self.ended.done():
            return
        assert self._first is not None or self._end is not None
        for leg in (self._client, self._upstream):
            if self._first is not None and self._awaits_reply_from(leg):
                self._send_close(leg.other, _encode(leg.other, reply_to_initiator(self._first, None)))
        for leg in (self._client, self._upstream):
            if leg.lost:
                continue
            if leg.pending_close is not None:  # it could not even be sent its close frame
                self._abort(leg)
            elif not leg.released:
                leg.released = True
                leg.other.forwarding = False
                leg.transport.close()
        self._deadline = self._wheel.call_later(self._close_timeout, self._abort_all)

    def _abort_all(self) -> None:
        if self.ended.done():
            return  # (both legs are lost: nothing to abort)
        for leg in (self._client, self._upstream):
            self._abort(leg)

    def _abort(self, leg: Leg) -> None:
        if not leg.lost:
            if getattr(leg, "transport", None) is not None:  # (none: the relay failed as it started)
                leg.transport.abort()
            self.lost(leg)  # now: uvloop refuses writes to an aborted transport

    def _cut_off(self, leg: Leg, cause: Cause) -> None:
        """The watchdog's verdict: the peer is dead or stalled; the session ends as if it
        had vanished."""
        if self._end is not None:
            return
        self._cut = (leg.side, cause)
        if cause == "stalled":
            event(logging.WARNING, "ws.stalled", **self._context, peer=leg.side, stall_timeout_s=self._stall_timeout)
        else:
            event(logging.WARNING, "ws.peer_dead", **self._context, peer=leg.side, keepalive_s=self._keepalive)
        self._abort(leg)


def _leg(side: Side, relay: Relay, tally: Tally, max_message_size: int, meter: Meter | None, token: bytes) -> Leg:
    """``meter``: what the peer's compressed messages inflate to, on a permessage-deflate session."""
    scanner = Scanner(from_client=side == "client", max_message_size=max_message_size, deflate=meter is not None)
    # The payload of the sidecar's pings to this peer: unique to the session and the leg
    # (``token``: 16 random hex digits), recognisable in a capture, and no more than a
    # control frame carries.
    leg = Leg(side, relay, scanner, tally, b"sidecar-keepalive " + token)
    if meter is not None:
        leg.meter = meter
        scanner.boundaries = True  # a compressed frame is held from its start: see sidecar.legs
    return leg


def _encode(leg: Leg, frame: Frame) -> bytes:
    """A close frame of the sidecar's for ``leg``'s peer: unmasked to the client, masked
    to the upstream (RFC 6455 section 5.1)."""
    payload = close_payload(*frame)
    return server_frame(CLOSE, payload) if leg.side == "client" else client_frame(CLOSE, payload)
