"""The failed-auth budget, counted by the whole fleet.

Each failed authentication is counted in Redis per client key (:data:`~.layout.FAIL`:
INCR with the window as expiry, atomically); the failure that reaches
``limits.auth_failures`` blocks the key for ``limits.auth_window`` and tells every
replica (``block``), which records it in its own :class:`~sidecar.limits.FailureTable`.
So the check before a token is compared stays a local look-up (no round trip on a
handshake), while the fleet's count is what decides; a replica that missed the message
learns the block with that client's next failure. The local table keeps counting too:
it is what decides while Redis does not answer (fail-open), and its count is never
more than the fleet's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from ..limits import FailureTable
from .layout import FAIL, Names, encode
from .link import Link, Unavailable

MAX_PENDING = 1000  # failures on their way to Redis; past this a flood is counted locally only (budget_overflow)
MAX_BLOCK_MS = 24 * 3600 * 1000  # a block message asking for longer is not one of ours


class FleetBudget:
    def __init__(self, link: Link, names: Names, table: FailureTable, capacity: Callable[[], int]) -> None:
        self._link = link
        self._names = names
        self._table = table
        self._capacity = capacity
        self._script = link.redis.register_script(FAIL)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def failed(self, key: str, limit: int, window: float) -> None:
        """A failed authentication from ``key``: counted in Redis, in the background."""
        if not self._link.up or self._closed:
            with contextlib.suppress(Unavailable):
                self._link.skip("budget")
            return
        if len(self._tasks) >= MAX_PENDING:  # a flood faster than Redis answers: this one counted here only
            self._link.count("budget_overflow")
            return
        task = asyncio.ensure_future(self._count(key, limit, window))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def blocked(self, message: dict[str, Any]) -> None:
        """A ``block`` message: another replica's failure blocked ``key``."""
        key, ms = message.get("key"), message.get("ms")
        if isinstance(key, str) and isinstance(ms, int) and 0 < ms <= MAX_BLOCK_MS:
            self._block(key, ms)

    async def close(self) -> None:
        """Flush: the failures on their way to Redis land (each bounded by ``state.timeout``)."""
        self._closed = True
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def _count(self, key: str, limit: int, window: float) -> None:
        window_ms = max(1, int(window * 1000))
        keys = [self._names.fails(key), self._names.blocked(key)]
        args: list[str | int] = [limit, window_ms, self._names.fleet, encode("block", key=key, ms=window_ms)]
        try:
            blocked_ms = await self._link.call("budget", lambda redis: self._script(keys, args, client=redis))
        except Unavailable:
            return
        if int(blocked_ms) > 0:
            self._block(key, int(blocked_ms))

    def _block(self, key: str, ms: int) -> None:
        self._table.block(key, asyncio.get_running_loop().time(), ms / 1000, capacity=self._capacity())
