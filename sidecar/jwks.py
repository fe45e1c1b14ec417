"""The JWKS of each auth policy that names one (``jwt.jwks_url``): fetched at start, kept,
and fetched again every 10 minutes and when a token names a key the set lacks.

**Handshakes never wait on a JWKS** (the bound is zero): a token is verified against the
keys as last fetched, synchronously. A token naming an unknown ``kid`` is refused (401
``invalid_token``) and wakes a fetch, at most once every 30 s per set, so a new key is
in use within one fetch of the first token that names it, and a client sending made-up
``kid``s cannot make the sidecar fetch more often than that. Issuers publish a new key
before they sign with it; the 10-minute refresh picks it up before any token needs it.

A failed fetch keeps the last good keys (logged, counted in
``sidecar_jwks_refreshes_total{result="failure"}``, said in ``/readyz``'s body without
failing it) and is retried after 30 s. A fetch has 5 s in all; it is refused unless it is
https, or http to a loopback or private address (every address a name resolves to is
checked by the resolver the connection uses, so DNS cannot swap in another); redirects
are not followed; the document is bounded and parsed as hostile (:mod:`sidecar.keys`).
At start, the server listens once each set's first fetch has been tried (5 s at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from .config import Config
from .config.jwt_policy import private_address
from .keys import EMPTY, MAX_DOCUMENT_BYTES, KeySet, parse_jwks
from .logs import event
from .metrics import Metrics

REFRESH_EVERY = 600.0  # seconds between fetches of a set that is fine
REFETCH_AT_MOST_EVERY = 30.0  # an unknown kid wakes a fetch at most this often, per set
RETRY_AFTER_FAILURE = 30.0
FETCH_TIMEOUT = 5.0  # the whole fetch: connect, TLS, request, body


class Unsafe(OSError):
    """A plain-http JWKS host that resolves to an address that is neither loopback nor private."""


class PrivateOnly(AbstractResolver):
    """For an http:// JWKS: resolves as ``inner`` does, and refuses the name if any of
    its addresses is public (the connection is made to these very addresses)."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if any(not private_address(entry["host"]) for entry in found):
            raise Unsafe(f"{host} resolves to a public address, and the JWKS URL is plain http: use https")
        return found

    async def close(self) -> None:
        await self._inner.close()


async def fetch(url: str) -> bytes:
    """The JWKS document at ``url`` (status 200, at most ``MAX_DOCUMENT_BYTES``); raises
    ``aiohttp.ClientError``, ``OSError`` or ``ValueError``. The caller bounds the time."""
    plain = URL(url).scheme == "http"
    connector = aiohttp.TCPConnector(resolver=PrivateOnly() if plain else None, force_close=True, limit=1)
    async with (
        aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False) as http,
        http.get(
            url, allow_redirects=False, headers={"Accept": "application/json", "Accept-Encoding": "identity"}
        ) as response,
    ):
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        body = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"the document is over {MAX_DOCUMENT_BYTES // 1024} KiB")
        return bytes(body)


@dataclass(eq=False)
class Source:
    """One JWKS URL: its keys as last fetched, and how the last fetch went."""

    url: str
    policies: tuple[str, ...] = ()  # the auth policies that name it (the gauge's labels)
    keys: KeySet = EMPTY
    fetched_at: float | None = None  # wall clock of the last good fetch
    failure: str | None = None  # why the last fetch failed (None: it did not)
    wanted_at: float = -math.inf  # monotonic clock of the last fetch an unknown kid woke
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    tried: asyncio.Event = field(default_factory=asyncio.Event)  # the first fetch is done, well or not
    task: asyncio.Task[None] | None = None

    def state(self) -> str:
        """For ``/readyz``: ok, or what is wrong (no URL, no error text: the body is public)."""
        if self.failure is None and self.fetched_at is not None:
            return "ok"
        if self.fetched_at is None:
            return "no keys: no fetch has succeeded yet" if self.tried.is_set() else "not fetched yet"
        age = round(time.time() - self.fetched_at)
        return f"last refresh failed; using the {len(self.keys)} keys fetched {age} s ago"


class KeyCache:
    """Every JWKS the config names, by URL; :attr:`sets` is what verification reads."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._sources: dict[str, Source] = {}
        self._running = False
        self.sets: dict[str, KeySet] = {}

    def configure(self, urls: Iterable[str] | Mapping[str, Iterable[str]]) -> None:
        """Keep exactly these URLs (a reload): new ones are fetched, dropped ones forgotten.
        A mapping names each URL's auth policies: the labels of its last-success gauge."""
        wanted = {u: tuple(urls[u]) if isinstance(urls, Mapping) else () for u in urls}
        gauge = self._metrics.jwks_last_success
        for source in self._sources.values():
            for policy in set(source.policies) - set(wanted.get(source.url, ())):
                gauge.remove(policy)
        for url in [u for u in self._sources if u not in wanted]:
            source = self._sources.pop(url)
            self.sets.pop(url, None)
            if source.task is not None:
                source.task.cancel()
        for url in sorted(wanted):
            if url not in self._sources:
                self._sources[url] = Source(url)
                if self._running:
                    self._launch(self._sources[url])
            source = self._sources[url]
            for policy in set(wanted[url]) - set(source.policies):
                gauge.labels(policy).set(source.fetched_at or 0)
            source.policies = wanted[url]

    def wanted(self, url: str) -> None:
        """A token names a key the set lacks: fetch it again, unless that was done less
        than ``REFETCH_AT_MOST_EVERY`` ago."""
        source = self._sources.get(url)
        now = time.monotonic()
        if source is None or now - source.wanted_at < REFETCH_AT_MOST_EVERY:
            return
        source.wanted_at = now
        source.wake.set()

    def state_of(self, url: str) -> str | None:
        source = self._sources.get(url)
        return None if source is None else source.state()

    def state(self, config: Config) -> dict[str, str]:
        """Each policy with a JWKS -> its state (``/readyz``)."""
        out: dict[str, str] = {}
        for name, policy in sorted(config.auth.items()):
            state = self.state_of(policy.jwt.jwks_url) if policy.jwt and policy.jwt.jwks_url else None
            if state is not None:
                out[name] = state
        return out

    async def running(self, _: object = None) -> AsyncIterator[None]:
        """While serving (an aiohttp cleanup context): first fetches tried before the
        server listens (``FETCH_TIMEOUT`` at most), every set kept fresh until cleanup."""
        self._running = True
        for source in self._sources.values():
            self._launch(source)
        tried = [asyncio.ensure_future(source.tried.wait()) for source in self._sources.values()]
        if tried:
            _, late = await asyncio.wait(tried, timeout=FETCH_TIMEOUT + 1)
            for waiting in late:
                waiting.cancel()
        try:
            yield
        finally:
            self._running = False
            tasks = [s.task for s in self._sources.values() if s.task is not None]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)

    def _launch(self, source: Source) -> None:
        if source.task is None or source.task.done():
            source.task = asyncio.ensure_future(self._keep(source))

    async def _keep(self, source: Source) -> None:
        while True:
            source.wake.clear()  # a kid wanted during this fetch wakes the next one
            ok = await self._refresh(source)
            source.tried.set()
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns the wait's result
            # when a cancellation and a wake-up coincide, and the cleanup would wait a whole
            # interval for this task (found by tests/test_jwks.py).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH_EVERY if ok else RETRY_AFTER_FAILURE):
                    await source.wake.wait()

    async def _refresh(self, source: Source) -> bool:
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                document = await fetch(source.url)
            keys, skipped = parse_jwks(document)
        except TimeoutError:
            return self._failed(source, f"no answer within {FETCH_TIMEOUT:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return self._failed(source, str(exc) or type(exc).__name__)
        source.keys, source.failure, source.fetched_at = keys, None, time.time()
        self.sets[source.url] = keys
        self._metrics.jwks_refreshes.labels("success").inc()
        for policy in source.policies:
            self._metrics.jwks_last_success.labels(policy).set(source.fetched_at)
        event(
            logging.WARNING if skipped else logging.INFO,
            "jwks.refreshed",
            url=source.url,
            keys=len(keys),
            kids=keys.kids,
            skipped=skipped or None,
        )
        return True

    def _failed(self, source: Source, why: str) -> bool:
        source.failure = why
        self._metrics.jwks_refreshes.labels("failure").inc()
        event(
            logging.WARNING,
            "jwks.refresh_failed",
            url=source.url,
            why=why,
            keeping=len(source.keys),
            retry_in_s=RETRY_AFTER_FAILURE,
        )
        return False


def jwks_urls(config: Config) -> dict[str, list[str]]:
    """Every JWKS URL the config's auth policies name -> the names of those policies."""
    urls: dict[str, list[str]] = {}
    for name, policy in sorted(config.auth.items()):
        if policy.jwt is not None and policy.jwt.jwks_url:
            urls.setdefault(policy.jwt.jwks_url, []).append(name)
    return urls
