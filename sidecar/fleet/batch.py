"""Lease requests sent to Redis together: one script call for many handshakes and ends.

A handshake claims its agent's lease and a session's end releases it: one round trip
each, done alone. Under load many arrive at once, and one call for all of them costs the
sidecar (and Redis) a fraction of one call each. So requests queue here, and one batch
is in flight at a time: what arrives while it flies leaves, all together, when it lands.
Nothing waits for company: an idle channel sends a lone request on the next turn of the
event loop. A request waits for the batch in flight and then its own, each bounded by
``state.timeout``; a caller that must not wait that long (a handshake's claim) bounds
its whole wait with ``asyncio.timeout`` and leaves: its future is cancelled, the batch
goes on without it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from redis.asyncio import Redis

from .link import Link, Unavailable

Item = TypeVar("Item")
Result = TypeVar("Result")

Send = Callable[[Redis, Sequence[Item]], Awaitable[Sequence[Result]]]
Name = Callable[[Sequence[Item]], str]  # the op label a batch is counted under


class Batch(Generic[Item, Result]):
    """``await batch(item)``, or ``batch.submit(item)`` for a future: ``item`` sent with
    the others of its batch; its own result, or :exc:`Unavailable` for all of them."""

    def __init__(self, link: Link, name: Name[Item], send: Send[Item, Result]) -> None:
        self._link = link
        self._name = name
        self._send = send
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._flight: asyncio.Task[None] | None = None
        self._scheduled = False
        self._closed = False  # flushed: nothing leaves any more

    async def __call__(self, item: Item) -> Result:
        return await self.submit(item)

    def submit(self, item: Item) -> asyncio.Future[Result]:
        if self._closed:
            raise Unavailable(self._name([item]))
        if not self._link.up:
            self._link.skip(self._name([item]))
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._schedule()
        return future

    async def close(self) -> None:
        """Flush, then close: the batch in flight lands, what is queued leaves now and lands
        too (each batch bounded by ``state.timeout``), and nothing leaves after. A session's
        release made just before the shutdown reaches Redis; no task is left behind."""
        while True:
            if self._flight is not None and not self._flight.done():
                await asyncio.wait([self._flight])  # a flight settles its own futures, never raises
            elif self._pending:
                self._leave()
            else:
                break
        self._closed = True

    def _schedule(self) -> None:
        if self._closed or self._scheduled or not self._pending:
            return
        if self._flight is None or self._flight.done():
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._leave)

    def _leave(self) -> None:
        self._scheduled = False
        if not self._pending or (self._flight is not None and not self._flight.done()):
            return  # flushed meanwhile (close), or a flight already left: its end schedules the rest
        batch, self._pending = self._pending, []
        self._flight = asyncio.ensure_future(self._fly(batch))
        self._flight.add_done_callback(lambda _: self._schedule())

    async def _fly(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        items = [item for item, _ in batch]
        try:
            if not self._link.up:  # went down while these waited: not sent
                self._link.skip(self._name(items))
            results = await self._link.call(self._name(items), lambda redis: self._send(redis, items))
        except Unavailable:
            for _, future in batch:
                if not future.done():
                    future.set_exception(Unavailable())
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # its handshake may have been cancelled meanwhile
                future.set_result(result)
