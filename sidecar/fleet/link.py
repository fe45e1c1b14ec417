"""The connection to Redis, and the rule every use of it follows.

No operation waits on Redis longer than ``state.timeout``. One that fails or times out
marks the state down: logged once (``state.down``), ``sidecar_state_up`` 0, and from
then on operations are not even tried (each is counted in ``sidecar_state_errors_total``
and the caller decides alone: fail-open, like Envoy's ``failure_mode_allow``) until a
probe, retried with backoff capped at 2 s, finds Redis answering again (``state.up``).
Then the callbacks given to :meth:`Link.when_up` run: the leases are re-asserted.

Errors are translated here, once (redis-py's, the socket's, the timeout) into
:exc:`Unavailable`; their text is logged without the URL's password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..config import StateConfig
from ..config.state import url_secrets
from ..logs import event
from ..metrics import STATE_OPS, Metrics

T = TypeVar("T")

FIRST_BACKOFF = 0.05  # seconds before the first probe after a failure; doubled after each
MAX_BACKOFF = 2.0  # the longest wait between two probes
MAX_CONNECTIONS = 64  # a burst of handshakes waits for one (within state.timeout) rather than opening more
FAILURES = (RedisError, OSError, TimeoutError)  # what "Redis did not answer" looks like


class Unavailable(Exception):
    """The shared state did not answer (down, slow, or not tried while down): the
    caller decides with this replica's own tables."""


class Link:
    """One replica's connection pool to Redis, its health, and the bound on every operation."""

    def __init__(self, settings: StateConfig, metrics: Metrics) -> None:
        self.timeout = settings.timeout
        pool = BlockingConnectionPool.from_url(
            settings.redis,
            max_connections=MAX_CONNECTIONS,
            timeout=None,  # bounded by state.timeout around every operation instead
            socket_connect_timeout=settings.timeout,
            socket_keepalive=True,
            decode_responses=True,
            # One immediate retry on a fresh connection: a pooled connection that a Redis
            # restart broke is not an outage. Everything stays within state.timeout.
            retry=Retry(NoBackoff(), 1),
        )
        self.redis: Redis = Redis(connection_pool=pool)
        self.up = False
        self._metrics = metrics
        self._errors = {op: metrics.state_errors.labels(op) for op in STATE_OPS}
        self._durations = {op: metrics.state_duration.labels(op) for op in STATE_OPS}
        self._secrets = url_secrets(settings.redis)
        self._started = False  # the first probe has answered, one way or the other
        self._upward: list[Callable[[], None]] = []
        self._is_up = asyncio.Event()
        self._probe: asyncio.Task[None] | None = None

    def when_up(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time Redis answers again after being down."""
        self._upward.append(callback)

    async def wait_up(self) -> None:
        await self._is_up.wait()

    async def start(self) -> None:
        """Probe Redis once (within ``state.timeout``); if it does not answer, keep
        probing in the background: the replica starts either way."""
        failure = await self._ping()
        if failure is None:
            self._went_up()
        else:
            self._went_down("connect", failure)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        with contextlib.suppress(*FAILURES):
            await self.redis.aclose()
        await self.redis.connection_pool.disconnect()

    async def call(self, op: str, action: Callable[[Redis], Awaitable[T]]) -> T:
        """``action`` on Redis, bounded by ``state.timeout``, timed and counted under ``op``;
        :exc:`Unavailable` if Redis is down or does not answer in time."""
        if not self.up:
            self.skip(op)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self.timeout):
                return await action(self.redis)
        except FAILURES as exc:
            self._errors[op].inc()
            self.fail(op, exc)
            raise Unavailable(op) from None
        finally:
            self._durations[op].observe(loop.time() - started)

    def count(self, op: str) -> None:
        """A decision made alone, or a loss, under ``op``: counted in ``sidecar_state_errors_total``."""
        self._errors[op].inc()

    def timed_out(self, op: str) -> None:
        """``op``, made of several calls or a wait for a batch, took longer than
        ``state.timeout`` as a whole: counted, and Redis is as good as down."""
        self._errors[op].inc()
        self.fail(op, TimeoutError())

    def skip(self, op: str) -> None:
        """Redis is down: ``op`` is not tried (counted), :exc:`Unavailable`."""
        self._errors[op].inc()
        raise Unavailable(op)

    def fail(self, op: str, exc: BaseException) -> None:
        """``op`` found Redis failing: the state is down until a probe says otherwise."""
        if self.up:
            self._went_down(op, exc)

    def _went_down(self, op: str, exc: BaseException) -> None:
        self.up = False
        self._is_up.clear()
        self._metrics.state_up.set(0)
        self._started = True
        event(
            logging.WARNING,
            "state.down",
            op=op,
            error=self.describe(exc),
            fallback="each replica decides with its own agent table and failed-auth budget",
        )
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._reconnect())

    def _went_up(self) -> None:
        self.up = True
        self._is_up.set()
        self._metrics.state_up.set(1)
        event(logging.INFO, "state.up", restored=self._started or None)
        self._started = True
        for callback in self._upward:
            callback()

    async def _reconnect(self) -> None:
        delay = FIRST_BACKOFF
        while True:
            # Jittered, so that a fleet does not probe a restarting Redis in step.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            if await self._ping() is None:
                self._went_up()
                return
            delay = min(delay * 2, MAX_BACKOFF)

    async def _ping(self) -> BaseException | None:
        """Does Redis answer? ``None`` if it does, else what went wrong."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self.timeout):
                await self.redis.ping()
        except FAILURES as exc:
            self._errors["connect"].inc()
            return exc
        finally:
            self._durations["connect"].observe(loop.time() - started)
        return None

    def describe(self, exc: BaseException) -> str:
        """``exc`` as a log field: the timeout in words, or the error without the URL's password."""
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.timeout * 1000:g} ms"
        text = f"{type(exc).__name__}: {exc}"
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "<secret>")
        return text
