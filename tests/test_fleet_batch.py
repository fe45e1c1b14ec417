"""What a replica owes Redis when it stops: the lease releases and failed-auth counts sent in
the background (batched, never waited for by a session's end) land before the Redis client
closes, in the order stop, flush, close, and nothing of the fleet's is left running. A real
redis-server behind a slow link (tests/netfault.py), so that the shutdown meets them in flight."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from .conftest import GOOD, Sidecar, config_for
from .fleet import RedisServer, fleet_yaml, redis_srv, replicas
from .netfault import Proxy, proxy
from .upstream import Backend
from .wire import echoes, rejected, until, ws_connect

__all__ = ["redis_srv"]  # the fixture

WRONG = {**GOOD, "Authorization": "Bearer not-the-secret"}


def agent(name: str) -> dict[str, str]:
    return {**GOOD, "X-Edge-Agent-Id": name}


def slow_fleet(link: Proxy, **options: str) -> str:
    """A replica's config with Redis behind ``link`` (slowed down by the test when it wants)."""
    return fleet_yaml(link.url(), **{"state": "lease_ttl: 30s, timeout: 1s", **options})


def fleet_tasks() -> list[str]:
    """Tasks still running code of sidecar/fleet/ (their coroutines' names)."""
    return [
        coro.__qualname__
        for task in asyncio.all_tasks()
        if not task.done() and "/sidecar/fleet/" in getattr(coro := task.get_coro(), "cr_code", FakeCode).co_filename
    ]


class FakeCode:
    co_filename = ""


async def stop(group_started: list[Sidecar], sidecar: Sidecar) -> None:
    group_started.remove(sidecar)  # closed here, not again by the group
    await sidecar.running.close()


async def test_releases_in_flight_or_queued_at_shutdown_reach_redis(backend: Backend, redis_srv: RedisServer) -> None:
    async with replicas() as group, proxy(redis_srv.port) as link, redis_srv.client() as r:
        a = await group.start(config_for(backend.url, slow_fleet(link)), "a")
        async with ws_connect(a, headers=agent("x")) as x, ws_connect(a, headers=agent("y")) as y:
            await echoes(x)
            await echoes(y)
            assert set(await r.keys("sidecar:lease:*")) == {"sidecar:lease:edge:x", "sidecar:lease:edge:y"}
            link.delay = 0.3  # each call now takes 0.6 s (state.timeout is 1 s)
            sent = link.watch(b"EVALSHA")
            await x.close()
            await asyncio.wait_for(sent.wait(), 10)  # x's release is in flight
            await y.close()  # y's waits behind it
            await until(lambda: len(a.running.runtime.sessions) == 0)
        await stop(group.started, a)
        assert await r.keys("sidecar:lease:*") == []  # both landed before the client closed
        assert fleet_tasks() == []
        assert a.sample("sidecar_state_errors_total", op="release") == 0


async def test_failed_auth_counts_on_their_way_at_shutdown_reach_redis(
    backend: Backend, redis_srv: RedisServer
) -> None:
    async with replicas() as group, proxy(redis_srv.port) as link, redis_srv.client() as r:
        text = slow_fleet(link, duplicate="allow", limits="auth_failures: 5, auth_window: 1m")
        a = await group.start(config_for(backend.url, text), "a")
        assert (await rejected(a, "/edge/ws", WRONG))[0] == 401  # a connection and the script, ready
        await until(lambda: _count_is(r, "1"))
        link.delay = 0.3  # each call now takes 0.6 s (state.timeout is 1 s)
        sent = link.watch(b"EVALSHA")
        assert (await rejected(a, "/edge/ws", WRONG))[0] == 401
        await asyncio.wait_for(sent.wait(), 10)  # the count is on its way
        await stop(group.started, a)
        assert await r.get("sidecar:fails:127.0.0.1") == "2"
        assert fleet_tasks() == []


async def _count_is(r: Redis, value: str) -> bool:
    return bool(await r.get("sidecar:fails:127.0.0.1") == value)
