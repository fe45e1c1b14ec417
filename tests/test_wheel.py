"""sidecar.wheel: the process's timer wheel. A fake clock with the loop's interface (time,
call_at, call_exception_handler) for exact times; a real loop, both kinds, at the end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.wheel import Wheel

TICK = 0.05


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """Time stands still until ``advance``; then the loop timers fall due in order."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.timers: list[FakeTimer] = []
        self.errors: list[dict[str, Any]] = []
        self.most_live = 0  # the most loop timers pending at once

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        self.timers.append(timer)
        self.most_live = max(self.most_live, len(self.live()))
        return timer

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    def live(self) -> list[FakeTimer]:
        return [t for t in self.timers if not t.cancelled]

    def advance(self, by: float) -> None:
        until = self.now + by
        while due := sorted((t for t in self.live() if t.when <= until), key=lambda t: t.when):
            timer = due[0]
            self.timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback()
        self.now = until


def wheel_on(loop: FakeLoop, tick: float = TICK) -> Wheel:
    return Wheel(tick, clock=loop)


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.049, 0.05, 0.051, 0.37, 1.0, 25.0, 3600.0])
@pytest.mark.parametrize("start", [1000.0, 1000.013, 1000.05])
def test_a_callback_runs_never_early_and_at_most_one_tick_late(delay: float, start: float) -> None:
    loop = FakeLoop(start)
    wheel = wheel_on(loop)
    ran: list[float] = []
    wheel.call_later(delay, lambda: ran.append(loop.now))
    loop.advance(delay + 2 * TICK)
    assert len(ran) == 1
    assert start + delay <= ran[0] <= start + delay + TICK + 1e-9


def test_callbacks_run_in_order_due_and_added() -> None:
    loop = FakeLoop()
    wheel = wheel_on(loop)
    ran: list[str] = []
    for name, delay in [("c", 0.3), ("a", 0.1), ("b", 0.1), ("d", 0.31), ("e", 0.0)]:
        wheel.call_later(delay, lambda n=name: ran.append(n))  # type: ignore[misc]
    loop.advance(1.0)
    assert ran == ["e", "a", "b", "c", "d"]


def test_one_loop_timer_while_anything_is_pending_and_none_after() -> None:
    loop = FakeLoop()
    wheel = wheel_on(loop)
    handles = [wheel.call_later(i * 0.01, lambda: None) for i in range(1000)]  # 1000 timers, 10 s
    assert loop.most_live == 1 and len(wheel) == 1000
    loop.advance(5.0)
    assert len(wheel) == 499 and len(loop.live()) == 1  # due at 0 s to 5 s (included) have run
    loop.advance(6.0)
    assert len(wheel) == 0 and loop.live() == []  # an idle process is never woken
    assert not any(h.pending for h in handles)


def test_a_cancelled_callback_never_runs_and_the_last_cancel_disarms_the_loop_timer() -> None:
    loop = FakeLoop()
    wheel = wheel_on(loop)
    ran: list[int] = []
    keep = wheel.call_later(0.2, lambda: ran.append(1))
    drop = wheel.call_later(0.2, lambda: ran.append(2))
    drop.cancel()
    drop.cancel()  # twice: a no-op
    loop.advance(1.0)
    assert ran == [1] and not keep.pending
    keep.cancel()  # after it ran: a no-op
    late = wheel.call_later(5.0, lambda: ran.append(3))
    assert len(loop.live()) == 1
    late.cancel()
    assert loop.live() == [] and len(wheel) == 0


def test_an_earlier_timer_rearms_the_loop_timer_earlier() -> None:
    loop = FakeLoop()
    wheel = wheel_on(loop)
    ran: list[float] = []
    wheel.call_later(10.0, lambda: ran.append(loop.now))
    wheel.call_later(0.1, lambda: ran.append(loop.now))
    assert loop.most_live == 1 or len(loop.live()) == 1
    loop.advance(0.2)
    assert len(ran) == 1 and ran[0] <= 1000.1 + TICK


def test_a_callback_added_while_the_wheel_turns_waits_for_a_later_tick() -> None:
    loop = FakeLoop()
    wheel = wheel_on(loop)
    ran: list[float] = []

    def again() -> None:
        ran.append(loop.now)
        if len(ran) < 5:
            wheel.call_later(0.0, again)  # never in the tick being turned: no endless turn

    wheel.call_later(0.0, again)  # the next tick
    loop.advance(TICK + 1e-9)  # (tick boundaries are floats: n * 0.05)
    assert len(ran) == 1
    loop.advance(1.0)
    assert len(ran) == 5 and ran == sorted(set(ran))


def test_a_loop_held_up_runs_every_tick_it_missed_in_order() -> None:
    loop = FakeLoop()
    wheel = wheel_on(loop)
    ran: list[int] = []
    for i in range(10):
        wheel.call_later(0.1 * (i + 1), lambda i=i: ran.append(i))  # type: ignore[misc]
    loop.now += 5.0  # the loop was busy for 5 s: no timer ran meanwhile
    loop.advance(0.0)
    assert ran == list(range(10))


class CountedSlots(dict[int, Any]):
    """The wheel's slots, counting how many are looked up as it turns."""

    looked = 0

    def pop(self, key: int, *default: Any) -> Any:
        self.looked += 1
        return super().pop(key, *default)


@pytest.mark.parametrize("gap", ["idle", "held up"])
def test_a_long_gap_costs_what_is_pending_not_a_step_per_tick_missed(gap: str) -> None:
    """After a day idle (nothing pending), or a loop held up a day with a timer pending, the
    next turn looks at the slots that hold timers, not at each of the 1.7 million ticks."""
    loop = FakeLoop()
    wheel = wheel_on(loop)
    ran: list[str] = []
    wheel.call_later(0.0, lambda: ran.append("first"))
    loop.advance(1.0)
    slots = CountedSlots()
    wheel._slots = slots
    if gap == "idle":
        loop.advance(86_400.0)
        wheel.call_later(0.1, lambda: ran.append("after"))
        loop.advance(1.0)
    else:
        wheel.call_later(0.1, lambda: ran.append("after"))
        wheel.call_later(3_600.0, lambda: ran.append("later"))
        loop.now += 86_400.0
        loop.advance(0.0)
    assert ran[:2] == ["first", "after"] and len(ran) == (2 if gap == "idle" else 3)
    assert slots.looked < 10


def test_a_timer_cancelled_by_one_that_runs_before_it_in_its_tick_never_runs() -> None:
    loop = FakeLoop()
    wheel = wheel_on(loop)
    ran: list[str] = []
    handles = {}
    wheel.call_later(0.1, lambda: (ran.append("first"), handles["second"].cancel()))
    handles["second"] = wheel.call_later(0.1, lambda: ran.append("second"))  # the same tick
    loop.advance(1.0)
    assert ran == ["first"]
    assert not handles["second"].pending and len(wheel) == 0


def test_a_callback_that_raises_is_reported_and_the_others_still_run() -> None:
    loop = FakeLoop()
    wheel = wheel_on(loop)
    ran: list[int] = []

    def boom() -> None:
        raise RuntimeError("boom")

    wheel.call_later(0.1, boom)
    wheel.call_later(0.1, lambda: ran.append(1))
    loop.advance(1.0)
    assert ran == [1]
    assert [str(e["exception"]) for e in loop.errors] == ["boom"]


@pytest.mark.parametrize("tick", [0, -1.0, float("nan")])
def test_a_tick_must_be_positive(tick: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Wheel(tick)


@pytest.mark.both_loops
async def test_on_a_real_loop_callbacks_run_in_order_none_early_cancelled_ones_never() -> None:
    loop = asyncio.get_running_loop()
    wheel = Wheel(0.01)
    ran: list[tuple[str, float, float]] = []
    done = loop.create_future()

    def record(name: str, due: float) -> Callable[[], None]:
        def run() -> None:
            ran.append((name, due, loop.time()))
            if name == "last":
                done.set_result(None)

        return run

    for name, delay in [("b", 0.05), ("a", 0.02), ("dropped", 0.03), ("c", 0.08), ("last", 0.1)]:
        handle = wheel.call_later(delay, record(name, loop.time() + delay))
        if name == "dropped":
            handle.cancel()
    await asyncio.wait_for(done, 10)
    assert [name for name, _, _ in ran] == ["a", "b", "c", "last"]
    assert all(at >= due - 0.001 for _, due, at in ran)  # never early (the clock's resolution aside)
    assert len(wheel) == 0
