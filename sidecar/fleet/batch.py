"""Requests of one kind made in the same turn of the event loop, sent to Redis together.

A handshake claims its agent's lease and a session's end releases it: one script call
each. Under load many arrive at once, and one call for all of them costs the sidecar (and
Redis) a fraction of one call each. Nothing waits for company: a batch leaves on the
next turn of the loop, whatever its size, so a lone request pays no more than one turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from redis.asyncio import Redis

from .link import Link, Unavailable

Item = TypeVar("Item")
Result = TypeVar("Result")

Send = Callable[[Redis, Sequence[Item]], Awaitable[Sequence[Result]]]


class Batch(Generic[Item, Result]):
    """``await batch(item)``: ``item`` sent with the others of this turn, under ``op``;
    its own result, or :exc:`Unavailable` for all of them."""

    def __init__(self, link: Link, op: str, send: Send[Item, Result]) -> None:
        self._link = link
        self._op = op
        self._send = send
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._flights: set[asyncio.Task[None]] = set()

    async def __call__(self, item: Item) -> Result:
        if not self._link.up:
            self._link.skip(self._op)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) == 1:
            loop.call_soon(self._leave)
        return await future

    async def close(self) -> None:
        for flight in [*self._flights]:
            flight.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flight

    def _leave(self) -> None:
        batch, self._pending = self._pending, []
        flight = asyncio.ensure_future(self._fly(batch))
        self._flights.add(flight)
        flight.add_done_callback(self._flights.discard)

    async def _fly(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        items = [item for item, _ in batch]
        try:
            results = await self._link.call(self._op, lambda redis: self._send(redis, items))
        except Unavailable:
            for _, future in batch:
                if not future.done():
                    future.set_exception(Unavailable(self._op))
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # its handshake may have been cancelled meanwhile
                future.set_result(result)
