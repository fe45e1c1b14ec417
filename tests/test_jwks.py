"""sidecar.jwks: fetching a JWKS over real sockets (127.0.0.1, ports of their own), and the
cache that keeps each set: what is refused (redirects, other statuses, large or compressed
bodies, plain http to a public address), the last good keys kept, a reload's new set."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import math
import socket
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from sidecar import jwks
from sidecar.jwks import KeyCache, PrivateOnly, Unsafe, fetch
from sidecar.metrics import Metrics

from .issuer import Jwks, ec_signer, rsa_signer
from .wire import until


@contextlib.asynccontextmanager
async def serving(handler: web.Handler) -> AsyncIterator[str]:
    """``handler`` at /jwks on 127.0.0.1: its URL while the block runs."""
    app = web.Application()
    app.router.add_get("/jwks", handler)
    app.router.add_get("/elsewhere", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site.port}/jwks"
    finally:
        await runner.cleanup()


def refreshes(metrics: Metrics, result: str) -> float | None:
    return metrics.registry.get_sample_value("sidecar_jwks_refreshes_total", {"result": result})


def keys_document() -> bytes:
    return json.dumps({"keys": [ec_signer().jwk]}).encode()


@pytest.mark.parametrize(
    ("respond", "error"),
    [
        (lambda: web.Response(status=404), "HTTP 404"),
        (lambda: web.Response(status=302, headers={"Location": "/elsewhere"}), "HTTP 302"),  # never followed
        (lambda: web.Response(body=b" " * (300 * 1024)), "over 256 KiB"),
    ],
    ids=["404", "redirect", "large"],
)
async def test_a_fetch_refuses_what_is_not_a_plain_200(respond: object, error: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/elsewhere":
            return web.Response(body=keys_document())
        return respond()  # type: ignore[operator, no-any-return]

    async with serving(handler) as url:
        with pytest.raises(ValueError, match=error):
            await fetch(url)


async def test_a_compressed_answer_is_not_inflated() -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(keys_document()), headers={"Content-Encoding": "gzip"})

    async with serving(handler) as url:
        body = await fetch(url)
    assert body.startswith(b"\x1f\x8b")  # as sent: parse_jwks then refuses it (not JSON)


async def test_a_name_resolving_to_loopback_may_be_plain_http() -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=keys_document())

    async with serving(handler) as url:
        assert await fetch(url.replace("127.0.0.1", "localhost")) == keys_document()


class Answers(AbstractResolver):
    """A resolver that answers every name with ``addresses``: DNS cannot be made to lie here."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0) for a in self.addresses
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("addresses", "allowed"),
    [
        (("127.0.0.1",), True),
        (("10.1.2.3", "fd12:3456::1"), True),
        (("93.184.216.34",), False),
        (("10.1.2.3", "93.184.216.34"), False),  # one public address is enough to refuse
    ],
)
async def test_plain_http_resolves_only_to_loopback_or_private_addresses(
    addresses: tuple[str, ...], allowed: bool
) -> None:
    resolver = PrivateOnly(Answers(*addresses))
    if allowed:
        assert [r["host"] for r in await resolver.resolve("issuer.internal", 80)] == list(addresses)
    else:
        with pytest.raises(Unsafe, match="resolves to a public address"):
            await resolver.resolve("issuer.internal", 80)


@contextlib.asynccontextmanager
async def kept(*urls: str, policies: dict[str, list[str]] | None = None) -> AsyncIterator[tuple[KeyCache, Metrics]]:
    """A cache of ``urls`` (or of ``policies``: URL -> policy names) running as it does
    while the sidecar serves (first fetches done)."""
    metrics = Metrics()
    cache = KeyCache(metrics)
    cache.configure(policies if policies is not None else urls)
    running = cache.running()
    await running.__anext__()
    try:
        yield cache, metrics
    finally:
        await running.aclose()  # its fetches cancelled, as at the server's cleanup


async def test_a_fetch_that_does_not_answer_in_time_keeps_the_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    server = await Jwks(ec_signer()).start()
    try:
        async with kept(server.url) as (cache, metrics):
            assert cache.sets[server.url].kids == ["ec-1"]
            monkeypatch.setattr(jwks, "FETCH_TIMEOUT", 0.2)
            server.hold = asyncio.Event()  # the issuer stops answering
            cache.wanted(server.url)
            await until(lambda: refreshes(metrics, "failure") == 1)
            assert cache.sets[server.url].kids == ["ec-1"]  # the last good keys
            assert cache.state_of(server.url) == "last refresh failed; using the 1 keys fetched 0 s ago"
    finally:
        await server.stop()


async def test_a_reload_fetches_a_new_set_and_forgets_an_old_one() -> None:
    first, second = await Jwks(ec_signer()).start(), await Jwks(rsa_signer()).start()
    try:
        async with kept(first.url) as (cache, _):
            cache.configure([second.url])  # as Runtime.apply does on SIGHUP
            await until(lambda: second.url in cache.sets)
            assert list(cache.sets) == [second.url] and cache.sets[second.url].kids == ["rsa-1"]
    finally:
        await first.stop()
        await second.stop()


async def test_an_unknown_kid_wakes_at_most_one_fetch_per_interval() -> None:
    server = await Jwks(ec_signer()).start()
    try:
        async with kept(server.url) as (cache, metrics):
            assert server.fetches == 1
            for _ in range(20):  # a client sending made-up kids
                cache.wanted(server.url)
            await until(lambda: refreshes(metrics, "success") == 2)
            for _ in range(20):
                cache.wanted(server.url)
            assert not cache._sources[server.url].wake.is_set()  # no third fetch is coming
            assert server.fetches == 2
    finally:
        await server.stop()


async def test_the_cache_stops_at_once_even_as_a_fetch_is_woken() -> None:
    """The server's cleanup cancels the fetch loop; a wake-up arriving just before must not
    keep it waiting for the next 10-minute tick."""
    server = await Jwks(ec_signer()).start()
    try:
        async with asyncio.timeout(10):  # a bound for a shared machine; the stop is immediate
            async with kept(server.url) as (cache, _):
                cache.wanted(server.url)  # an unknown kid, as the cleanup begins
    finally:
        await server.stop()


def last_success(metrics: Metrics, policy: str) -> float | None:
    return metrics.registry.get_sample_value("sidecar_jwks_last_success_timestamp_seconds", {"policy": policy})


async def test_each_successful_fetch_sets_its_policies_last_success_gauge(monkeypatch: pytest.MonkeyPatch) -> None:
    server = await Jwks(ec_signer()).start()
    down = "http://127.0.0.1:1/jwks"  # nothing listens there: never fetched
    try:
        before = time.time()
        async with kept(policies={server.url: ["edge", "fleet"], down: ["other"]}) as (cache, metrics):
            first = last_success(metrics, "edge")
            assert first is not None and before <= first <= time.time()
            assert (last_success(metrics, "fleet"), last_success(metrics, "other")) == (first, 0.0)
            cache.wanted(server.url)
            await until(lambda: refreshes(metrics, "success") == 2)
            second = last_success(metrics, "edge")
            assert second is not None and first <= second <= time.time()
            server.hold = asyncio.Event()  # the issuer stops answering: the gauge stays
            monkeypatch.setattr(jwks, "FETCH_TIMEOUT", 0.2)
            cache._sources[server.url].wanted_at = -math.inf
            cache.wanted(server.url)
            await until(lambda: refreshes(metrics, "failure") == 2)  # the other URL's, then this one's
            assert last_success(metrics, "edge") == second
            cache.configure({server.url: ["edge"]})  # a reload: fleet and other are gone, and so are their series
            assert (last_success(metrics, "fleet"), last_success(metrics, "other")) == (None, None)
            assert last_success(metrics, "edge") == second
    finally:
        await server.stop()
