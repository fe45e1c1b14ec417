"""A session's keep-alive and stall checks: one entry on the process's timer wheel.

Nothing per message: every half ``stall_timeout`` and every ``keepalive`` seconds
the session's entry on the :class:`~sidecar.wheel.Wheel` comes round and looks at
both legs. It cuts a peer off (the relay aborts its connection, and the session
ends as if that peer had vanished) when it is:

* stalled: data waits for it (its write buffer is not empty) and it has taken
  none of it for ``stall_timeout``. Progress is measured from the buffer and what
  was written to it since the last look, so a slow reader that takes some is not
  stalled, and one that takes nothing is, however little waits for it.
* dead: every ``keepalive`` seconds each peer is pinged (the ping's payload is the
  leg's own, so its pong is recognised and never relayed), and a peer pinged at
  the previous look that has sent nothing since is dead. Anything it sends counts
  as an answer: its pong, a message, a part of one; it is plainly alive, and its
  pong may be queued behind what it is sending.

Keep-alive leaves alone a peer the relay is held up on: one with data waiting for
it (a ping would wait behind that data; whether the peer still reads is the stall
check's question), one the relay is not reading because the other peer's write
buffer is full (its pong would sit unread), and one whose last ping is still
waiting for a frame boundary. Such a peer is neither judged nor pinged that time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .closing import Cause
from .legs import Leg
from .wheel import Handle, Wheel


class Watchdog:
    __slots__ = ("_cut", "_handle", "_keepalive", "_legs", "_next_ping", "_next_stall", "_stall_timeout", "_wheel")

    def __init__(
        self,
        legs: tuple[Leg, Leg],
        wheel: Wheel,
        *,
        keepalive: float,
        stall_timeout: float,
        cut: Callable[[Leg, Cause], None],
    ) -> None:
        self._legs = legs
        self._wheel = wheel
        self._keepalive = keepalive  # 0: no keep-alive pings
        self._stall_timeout = stall_timeout
        self._cut = cut  # the relay's: cuts a leg off and records why
        self._handle: Handle | None = None
        self._next_stall = self._next_ping = math.inf

    def start(self) -> None:
        now = self._wheel.time()
        self._next_stall = now + self._stall_timeout / 2
        self._next_ping = now + self._keepalive if self._keepalive else math.inf
        self._schedule(now)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, now: float) -> None:
        self._handle = self._wheel.call_later(min(self._next_stall, self._next_ping) - now, self._tick)

    def _tick(self) -> None:
        self._handle = None
        now = self._wheel.time()
        if self._next_stall <= now:
            self._next_stall = now + self._stall_timeout / 2
            stalled = self._stalled(now)
            if stalled is not None:
                self._cut(stalled, "stalled")
                return
        if self._next_ping <= now:
            self._next_ping = now + self._keepalive
            dead = self._keep_alive()
            if dead is not None:
                self._cut(dead, "dead")
                return
        self._schedule(now)

    def _stalled(self, now: float) -> Leg | None:
        for leg in self._legs:
            size = leg.transport.get_write_buffer_size()
            taken = leg.stall_size + (leg.written - leg.stall_written) - size  # bytes the socket took since
            leg.stall_size, leg.stall_written = size, leg.written
            if not size:
                leg.stall_since = 0.0
            elif taken > 0 or not leg.stall_since:
                leg.stall_since = now  # waiting, and since when nothing was taken
            elif now - leg.stall_since >= self._stall_timeout:
                return leg
        return None

    def _keep_alive(self) -> Leg | None:
        due = [leg for leg in self._legs if not _held_up(leg)]
        for leg in self._legs:
            if leg not in due:
                leg.pinged = False  # neither judged nor pinged: see the module docstring
        for leg in due:
            if leg.pinged and not leg.heard:
                return leg
        for leg in due:
            leg.send(leg.ping_frame(), close=False)  # pinged once it is written
        return None


def _held_up(leg: Leg) -> bool:
    """Is the relay held up on this leg's peer (see the module docstring)?"""
    return leg.paused or leg.pending_ping is not None or leg.transport.get_write_buffer_size() > 0
