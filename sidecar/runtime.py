"""The state one running app carries: passed in, never module-level."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from .clients import ClientRules
from .config import Config, identity_headers
from .fleet import Fleet
from .jwks import KeyCache, jwks_urls
from .limits import FailureTable
from .metrics import Metrics
from .routing import Router
from .sessions import Registry, Session


@dataclass(eq=False)
class Runtime:
    config: Config
    router: Router
    metrics: Metrics
    client: aiohttp.ClientSession | None = None
    sessions: Registry = field(default_factory=Registry)
    requests: set[asyncio.Task[object]] = field(default_factory=set)  # plain HTTP requests being proxied
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

    def http(self) -> aiohttp.ClientSession:
        assert self.client is not None, "the app has not started"
        return self.client


RUNTIME = web.AppKey("runtime", Runtime)
