"""Keep-alive connections to the upstreams, for plain HTTP.

One :class:`Pool` per process keeps idle connections per upstream, newest first, at most
:data:`MAX_IDLE` each, and closes one that has been idle for :data:`IDLE_TIMEOUT` (or for
less, when the upstream's ``Keep-Alive: timeout=N`` says it will close it sooner, RFC 9112
section 9.3's keep-alive being the server's to end). A connection goes back only when its
exchange says so: its response read to the end, its request fully sent, no 101, no
``Connection: close``; anything else is closed (RFC 9112 section 9.3: a connection whose
last message was not delimited cannot carry another). An idle connection that receives a
byte, or is closed by the upstream, leaves the pool at once.

WebSocket sessions never use the pool: each holds a connection of its own (see
:mod:`sidecar.upstream`).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from yarl import URL

from .config import Upstream
from .transport import Transport, socket_transport

MAX_IDLE = 256  # idle connections kept per upstream
IDLE_TIMEOUT = 4.0  # seconds; below the 5 s that Node.js and many servers use by default
_SWEEP = 1.0  # how often idle connections are checked


@dataclass(frozen=True, slots=True)
class Target:
    """Where an upstream is, parsed once from its URL."""

    key: str
    host: str
    port: int
    tls: bool
    host_field: bytes  # the Host field its requests carry (RFC 9110 section 7.2)
    base: str  # the URL's path, put before every request's (no trailing '/')

    @classmethod
    def of(cls, upstream: Upstream) -> Target:
        url = URL(upstream.url)
        host = url.raw_host or ""
        tls = url.scheme in ("https", "wss")
        port = url.port or (443 if tls else 80)
        shown = f"[{host}]" if ":" in host else host
        default = url.port is None or url.is_default_port()
        host_field = (shown if default else f"{shown}:{port}").encode("idna")
        return cls(upstream.url, host, port, tls, host_field, url.raw_path.rstrip("/"))


class Exchange:
    """What a pooled connection reports to the request using it (see :mod:`sidecar.httpproxy`)."""

    __slots__ = ()

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_lost(self, exc: Exception | None) -> None: ...
    def upstream_paused(self, paused: bool) -> None: ...


class Connection(asyncio.Protocol):
    """One connection to an upstream: idle in the pool, or lent to one exchange."""

    __slots__ = ("_pool", "exchange", "idle_until", "reused", "target", "transport", "writing_paused")

    def __init__(self, pool: Pool, target: Target) -> None:
        self._pool = pool
        self.target = target
        self.transport: Transport | None = None
        self.exchange: Exchange | None = None
        self.idle_until = 0.0
        self.reused = False  # it has carried an exchange before
        self.writing_paused = False  # its write buffer is past its mark: an exchange taking it over is told

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = socket_transport(transport)

    def data_received(self, data: bytes) -> None:
        if self.exchange is not None:
            self.exchange.upstream_data(data)
        else:  # unasked for: whatever it is, this connection is out of step
            self.close()

    def eof_received(self) -> bool:
        return False  # the upstream is done sending: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._pool.forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.exchange is not None:
            self.exchange.upstream_paused(True)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.exchange is not None:
            self.exchange.upstream_paused(False)

    def close(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.close()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort()


class Pool:
    """Idle keep-alive connections per upstream (see the module docstring)."""

    def __init__(self, *, max_idle: int = MAX_IDLE, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[str, list[Connection]] = {}
        self._targets: dict[str, Target] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._tls: ssl.SSLContext | None = None
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def target(self, upstream: Upstream) -> Target:
        found = self._targets.get(upstream.url)
        if found is None:
            found = self._targets[upstream.url] = Target.of(upstream)
        return found

    def take(self, target: Target) -> Connection | None:
        """An idle connection to ``target``, lent to the caller, or ``None``."""
        idle = self._idle.get(target.key)
        now = self.loop.time()
        while idle:
            connection = idle.pop()
            if connection.idle_until > now and connection.transport is not None:
                connection.reused = True
                return connection
            connection.close()
        return None

    def give(self, connection: Connection, keep_for: float | None = None) -> None:
        """``connection``'s exchange is over and it may carry another: keep it idle (for
        ``keep_for`` seconds at most, the upstream's own limit less a margin)."""
        connection.exchange = None
        transport = connection.transport
        idle = self._idle.setdefault(connection.target.key, [])
        if self.closed or transport is None or transport.is_closing() or len(idle) >= self.max_idle:
            connection.close()
            return
        timeout = self.idle_timeout if keep_for is None else min(self.idle_timeout, keep_for)
        if timeout <= 0:
            connection.close()
            return
        if not transport.is_reading():  # paused while its client's buffer was full: an idle
            transport.resume_reading()  # connection must see the upstream's FIN or stray bytes
        connection.idle_until = self.loop.time() + timeout
        idle.append(connection)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(_SWEEP, self._sweep)

    def forget(self, connection: Connection) -> None:
        idle = self._idle.get(connection.target.key)
        if idle and connection in idle:
            idle.remove(connection)

    def tls(self, target: Target) -> ssl.SSLContext | None:
        """The TLS context for ``target`` (the system's trust store; made once), or ``None``."""
        if not target.tls:
            return None
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def open(self, target: Target) -> Connection:
        """A new connection to ``target`` (TLS with the system's trust store for https)."""
        tls = self.tls(target)
        factory: Callable[[], Connection] = lambda: Connection(self, target)  # noqa: E731
        _, connection = await self.loop.create_connection(
            factory, target.host, target.port, ssl=tls, server_hostname=target.host if tls else None
        )
        return connection

    def idle(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.loop.time()
        for idle in self._idle.values():
            expired = [c for c in idle if c.idle_until <= now]
            for connection in expired:
                idle.remove(connection)
                connection.close()
        if any(self._idle.values()):
            self._sweeper = self.loop.call_later(_SWEEP, self._sweep)

    def close(self) -> None:
        """Close every idle connection; connections lent out close when their exchange ends."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
            idle.clear()


@functools.lru_cache(maxsize=64)  # an upstream sends the same value every time
def keep_alive_hint(value: bytes) -> float | None:
    """The seconds a ``Keep-Alive: timeout=N`` response field says the upstream keeps an idle
    connection (RFC 2068 section 19.7.1.1), less one for the time a request takes to reach
    it; ``None`` when it does not say."""
    for part in value.split(b","):
        name, _, number = part.strip().partition(b"=")
        if name.strip().lower() == b"timeout":
            try:
                return max(0.0, float(number.strip()) - 1.0)
            except ValueError:
                return None
    return None
