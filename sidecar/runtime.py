"""The state one running sidecar carries: passed in, never module-level."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from .clients import ClientRules
from .config import Config, identity_headers
from .fleet import Fleet
from .jwks import KeyCache, jwks_urls
from .limits import FailureTable
from .metrics import Metrics
from .pool import Pool
from .routing import Router
from .sessions import Registry, Session
from .wheel import Wheel

# The wheel's tick: timers run at most this late. Fine enough for the shortest timeouts the
# config allows (100 ms), coarse enough that one loop timer serves every connection.
TICK = 0.05


class InFlight(Protocol):
    """A plain HTTP request being proxied: a hurried stop cuts it short."""

    def cancel(self) -> None: ...


class InFlightSet:
    """The plain HTTP requests being proxied; a stop waits for it to empty."""

    def __init__(self) -> None:
        self._items: set[InFlight] = set()
        self._empty: asyncio.Event | None = None

    def add(self, item: InFlight) -> None:
        self._items.add(item)

    def discard(self, item: InFlight) -> None:
        self._items.discard(item)
        if not self._items and self._empty is not None:
            self._empty.set()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[InFlight]:
        return iter(list(self._items))

    async def answered(self) -> None:
        """Return once no request is in flight."""
        if self._items:
            self._empty = asyncio.Event()
            await self._empty.wait()


@dataclass(eq=False)
class Runtime:
    config: Config
    router: Router
    metrics: Metrics
    wheel: Wheel = field(default_factory=lambda: Wheel(TICK))  # the process's timers: deadlines, keep-alive, stalls
    pool: Pool = field(default_factory=Pool)  # keep-alive connections to the upstreams, plain HTTP
    sessions: Registry = field(default_factory=Registry)
    requests: InFlightSet = field(default_factory=InFlightSet)  # plain HTTP requests being proxied
    # Admission state: survives a config reload, keyed by client key.
    failures: FailureTable = field(default_factory=FailureTable)
    warned_proxy: bool = False  # auth failures were seen keyed on a proxy's address (logged once)
    fleet: Fleet | None = None  # the state shared with the other replicas (state.redis), if any
    identity_headers: frozenset[str] = field(init=False)
    clients: ClientRules = field(init=False)
    keys: KeyCache = field(init=False)  # every JWKS the config names; survives a reload

    def __post_init__(self) -> None:
        self.keys = KeyCache(self.metrics)
        self.sessions.expired = self._count_expiry
        self.failures.on_evict = self.metrics.auth_clients_evicted.inc
        self.apply(self.config)

    def apply(self, config: Config) -> None:
        """Serve ``config`` from now on (a reload). Requests read ``config`` and
        ``router`` when they arrive; open sessions keep the route they were admitted by."""
        self.config = config
        self.router = Router(config.routes)
        self.identity_headers = identity_headers(config)
        self.clients = ClientRules.of(config)
        self.keys.configure(jwks_urls(config))

    def _count_expiry(self, session: Session) -> None:
        self.metrics.ws_token_expiries.labels(session.route.name).inc()

    @property
    def stopping(self) -> bool:
        """The drain has begun: new requests get 503 draining, no session opens."""
        return self.sessions.draining

    def stop_admitting(self) -> None:
        self.sessions.draining = True
