"""The state one running app carries: passed in, never module-level."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from aiohttp.web_request import BaseRequest

from .config import Config, Route, identity_headers
from .limits import FailureTable, SessionCounts
from .metrics import Metrics
from .routing import Router

# What every open session's client is sent when the sidecar stops (a redeploy):
# 1012 "Service Restart" (IANA WebSocket close code registry, RFC 6455 section 11.7)
# tells the agent to reconnect; the upstream leg is sent 1001 "going away".
SHUTDOWN_CLOSE = (1012, "service restart: reconnect")
# Retry-After while draining: by then the new replica is taking connections.
DRAIN_RETRY_AFTER = 1


@dataclass(eq=False)
class Session:
    """An open WebSocket session; ``stop`` ends it from outside (code, reason to the client)."""

    route: Route
    agent_id: str | None
    stop: asyncio.Future[tuple[int, str]]
    task: asyncio.Future[None] | None = None
    opened: float = field(default_factory=time.monotonic)
    # Set when the handshake is over either way: the relay has started, or it failed.
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self, code: int, reason: str) -> None:
        """Close the session from outside: ``code`` and ``reason`` to the client."""
        if not self.stop.done():
            self.stop.set_result((code, reason))


@dataclass(eq=False)
class Runtime:
    config: Config
    router: Router
    metrics: Metrics
    client: aiohttp.ClientSession | None = None
    sessions: set[Session] = field(default_factory=set)  # relaying
    handshaking: set[Session] = field(default_factory=set)  # admitted, not yet relaying
    requests: set[asyncio.Task[object]] = field(default_factory=set)  # plain HTTP requests being proxied
    # Admission state: survives a config reload, keyed by route name and client key.
    failures: FailureTable = field(default_factory=FailureTable)
    counts: SessionCounts = field(default_factory=SessionCounts)
    agents: dict[tuple[str, str], Session] = field(default_factory=dict)  # (route, agent id), admitted or open
    stopping: bool = False  # set when the drain begins: new requests get 503 draining
    warned_proxy: bool = False  # auth failures were seen keyed on a proxy's address (logged once)
    identity_headers: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.identity_headers = identity_headers(self.config)

    def apply(self, config: Config) -> None:
        """Serve ``config`` from now on (a reload). Requests read ``config`` and
        ``router`` when they arrive; open sessions keep the route they were admitted by."""
        self.config = config
        self.router = Router(config.routes)
        self.identity_headers = identity_headers(config)

    def via_trusted_proxy(self, remote: str | None) -> bool:
        """Did the request come through a proxy in ``listen.trusted_proxies``?"""
        if not self.config.trusted_proxies or not remote:
            return False
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(address in network for network in self.config.trusted_proxies)

    def client_of(self, request: BaseRequest) -> str | None:
        """The client's address, for log lines and the failed-auth limit.

        From a trusted proxy it is the address the proxy names in
        ``listen.client_ip_header`` (Railway's edge: ``X-Real-IP``), if set and an
        IP address; else the last X-Forwarded-For entry that is not itself a trusted
        proxy (entries further left were written by the client and prove nothing).
        From anyone else it is the connection's peer."""
        remote = request.remote
        if not self.via_trusted_proxy(remote):
            return remote
        header = self.config.client_ip_header
        named = request.headers.getall(header, ()) if header else ()
        if len(named) == 1 and _is_ip(named[0].strip()):
            return named[0].strip()
        for entry in reversed(",".join(request.headers.getall("X-Forwarded-For", ())).split(",")):
            address = entry.strip()
            if address and not self.via_trusted_proxy(address):
                return address
        return remote

    def http(self) -> aiohttp.ClientSession:
        assert self.client is not None, "the app has not started"
        return self.client


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


RUNTIME = web.AppKey("runtime", Runtime)
