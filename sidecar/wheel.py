"""A coarse timer wheel: every timer of the process on one loop timer per tick.

A WebSocket session needs a few timers (its keep-alive and stall checks, the
bound on its close), and a connection waiting for its request head needs one
(the header deadline). Thousands of them as event-loop timers cost a heap entry
and a handle each, and a heap operation on every add and cancel. None of them
needs to fire on time to the millisecond: a keep-alive ping or a deadline may
be a tick late. So each is put in the slot of the tick it falls due in, a dict
keyed by the tick's number (a hashed wheel with a slot per tick): adding and
cancelling are a dict insert and delete, O(1), and while any timer is pending
one loop timer per tick turns the wheel and runs what fell due.

A callback never runs early: it is put in the first tick that starts at or
after it is due, and runs when the loop reaches that tick, so at most one tick
late on a loop that is not held up. A callback that raises is reported to the
loop's exception handler and the others still run; one cancelled by a callback
of the same tick does not run. After a long gap (an idle wheel, a loop held up)
a turn visits only the slots that hold timers, never each tick it missed.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the wheel needs of an event loop (asyncio's and uvloop's have it all)."""

    def time(self) -> float: ...
    def call_at(self, when: float, callback: Callable[[], object], /) -> Timer: ...
    def call_exception_handler(self, context: dict[str, Any], /) -> None: ...


class Handle:
    """A timer on the wheel; :meth:`cancel` takes it off (a no-op once it has run)."""

    __slots__ = ("_callback", "_tick", "_wheel")

    def __init__(self, wheel: Wheel, tick: int, callback: Callable[[], object]) -> None:
        self._wheel: Wheel | None = wheel
        self._tick = tick
        self._callback = callback

    def cancel(self) -> None:
        wheel, self._wheel = self._wheel, None
        if wheel is not None:
            wheel._remove(self)

    @property
    def pending(self) -> bool:
        return self._wheel is not None


class Wheel:
    """Timers rounded up to ``tick`` seconds; see the module docstring.

    The loop is the running one at the first :meth:`call_later`, unless given
    (a test passes a fake clock with the same interface).
    """

    __slots__ = ("_armed", "_clock", "_slots", "_tick", "_timer", "_turned")

    def __init__(self, tick: float, *, clock: Clock | None = None) -> None:
        if not tick > 0:
            raise ValueError(f"a wheel's tick must be positive, not {tick!r}")
        self._tick = tick
        self._clock = clock
        self._slots: dict[int, dict[Handle, None]] = {}  # tick number -> its timers, in order added
        self._turned = -1  # the last tick whose timers have run (-1: none yet)
        self._timer: Timer | None = None  # the one loop timer, while any timer is pending ...
        self._armed = 0  # ... and the tick it is set for

    @property
    def tick(self) -> float:
        return self._tick

    def time(self) -> float:
        """The loop's clock (the running loop's, if none was given and none used yet)."""
        if self._clock is None:
            self._clock = asyncio.get_running_loop()
        return self._clock.time()

    def __len__(self) -> int:
        """How many timers are pending (O(slots): for tests and metrics, not hot paths)."""
        return sum(len(slot) for slot in self._slots.values())

    def call_later(self, delay: float, callback: Callable[[], object]) -> Handle:
        """Run ``callback()`` once, ``delay`` seconds from now or up to a tick later."""
        clock = self._clock
        if clock is None:
            clock = self._clock = asyncio.get_running_loop()
        now = clock.time()
        if self._turned < 0:
            self._turned = math.floor(now / self._tick)
        # The first tick that starts at or after the due time, and never one already turned.
        tick = max(math.ceil((now + delay) / self._tick), self._turned + 1)
        handle = Handle(self, tick, callback)
        slot = self._slots.get(tick)
        if slot is None:
            slot = self._slots[tick] = {}
        slot[handle] = None
        if self._timer is None or tick < self._armed:
            self._arm(clock, tick)
        return handle

    def _remove(self, handle: Handle) -> None:
        slot = self._slots.get(handle._tick)
        if slot is not None:
            slot.pop(handle, None)
            if not slot:
                del self._slots[handle._tick]
        if not self._slots and self._timer is not None:
            self._timer.cancel()  # nothing pending: no wake-ups at all
            self._timer = None

    def _arm(self, clock: Clock, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = tick
        self._timer = clock.call_at(tick * self._tick, self._turn)

    def _turn(self) -> None:
        clock = self._clock
        assert clock is not None
        self._timer = None
        # What was due when the timer was set is due now (call_at may run a timer early
        # by the clock's resolution); a loop held up runs every tick it missed, in order.
        last = max(self._armed, math.floor(clock.time() / self._tick))
        if last - self._turned > len(self._slots):
            # A long gap (idle, or the loop held up): straight to the slots due, so the work
            # is bounded by what is pending, not by the time that passed. What their callbacks
            # add goes after `last`, so none can land behind the wheel.
            due = sorted(tick for tick in self._slots if tick <= last)
            self._turned = last
            for tick in due:
                self._run_slot(clock, tick)
        while self._turned < last and self._slots:
            self._turned += 1
            self._run_slot(clock, self._turned)
        self._turned = max(self._turned, last)
        if self._slots and self._timer is None:  # a callback may have armed it already
            self._arm(clock, self._turned + 1)

    def _run_slot(self, clock: Clock, tick: int) -> None:
        for handle in self._slots.pop(tick, None) or ():
            if handle._wheel is not None:  # not cancelled by a callback run before it
                handle._wheel = None
                self._run(clock, handle)

    @staticmethod
    def _run(clock: Clock, handle: Handle) -> None:
        try:
            handle._callback()
        except Exception as exc:  # one timer's failure must not stop the others
            clock.call_exception_handler({"message": "timer wheel callback failed", "exception": exc})
