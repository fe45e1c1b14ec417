"""The failed-auth budget counted by the whole fleet, on one real Redis: failures spread over
replicas add up, the one that reaches limits.auth_failures blocks the client on every
replica (429 before its token is even compared), and the count lives in Redis."""

from __future__ import annotations

from functools import partial

from redis.asyncio import Redis
from websockets.exceptions import InvalidStatus

from .conftest import GOOD, Sidecar, config_for
from .fleet import RedisServer, fleet_yaml, redis_srv, replicas
from .upstream import Backend
from .wire import echoes, rejected, until, ws_connect

__all__ = ["redis_srv"]  # the fixture

WRONG = {**GOOD, "Authorization": "Bearer not-the-secret"}


async def blocked(sidecar: Sidecar) -> bool:
    """A good token is refused 429 (else the session opens, and is closed again)."""
    try:
        async with ws_connect(sidecar) as ws:
            await echoes(ws)
    except InvalidStatus as refused:
        response = refused.response
        assert (response.status_code, response.headers["X-Sidecar-Reason"]) == (429, "rate_limited")
        assert int(response.headers["Retry-After"]) >= 1
        return True
    return False


async def test_failures_on_several_replicas_add_up_to_one_budget(backend: Backend, redis_srv: RedisServer) -> None:
    # Two failures on each of two replicas: four in the fleet, the limit. Each replica's
    # own count (two) is under it, so only the fleet's count can block.
    text = fleet_yaml(redis_srv.url, duplicate="allow", limits="auth_failures: 4, auth_window: 1m")
    async with replicas() as group:
        a = await group.start(config_for(backend.url, text), "a")
        b = await group.start(config_for(backend.url, text), "b")
        c = await group.start(config_for(backend.url, text), "c")  # saw no failure at all
        for replica in (a, a, b, b):
            status, headers, _ = await rejected(replica, "/edge/ws", WRONG)
            assert (status, headers["X-Sidecar-Reason"]) == (401, "invalid_token")
        for replica in (a, b, c):
            await until(partial(blocked, replica))
        async with redis_srv.client() as r:
            assert 1_000 < await r.pttl("sidecar:blocked:127.0.0.1") <= 60_000
            assert await r.get("sidecar:fails:127.0.0.1") is None  # the block is the penalty: the count starts over


async def test_failures_under_the_limit_block_nobody(backend: Backend, redis_srv: RedisServer) -> None:
    text = fleet_yaml(redis_srv.url, duplicate="allow", limits="auth_failures: 4, auth_window: 1m")
    async with replicas() as group:
        a = await group.start(config_for(backend.url, text), "a")
        b = await group.start(config_for(backend.url, text), "b")
        for replica in (a, b, a):
            await rejected(replica, "/edge/ws", WRONG)
        async with redis_srv.client() as r:
            await until(lambda: _count_is(r, "3"))
        for replica in (a, b):
            assert not await blocked(replica)


async def _count_is(r: Redis, value: str) -> bool:
    return bool(await r.get("sidecar:fails:127.0.0.1") == value)


async def test_a_full_failure_table_counts_what_it_drops(backend: Backend, redis_srv: RedisServer) -> None:
    # limits.tracked_clients bounds the table in front of the fleet's count: a failure from
    # one more client key drops the oldest key's count (and its block, here: the fleet's
    # count is what decides, and the next failure learns the block again). Counted, not silent.
    text = fleet_yaml(redis_srv.url, duplicate="allow", limits="auth_failures: 4, auth_window: 1m, tracked_clients: 2")
    async with replicas() as group:
        a = await group.start(config_for(backend.url, text), "a")
        assert a.sample("sidecar_auth_clients_evicted_total") == 0
        for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
            status, _, _ = await rejected(a, "/edge/ws", WRONG, local_addr=(host, 0))
            assert status == 401
        assert a.sample("sidecar_auth_clients_evicted_total") == 2
        assert len(a.running.runtime.failures) == 2
        async with redis_srv.client() as r:  # the fleet's count kept every one of them
            await until(lambda: _counted(r, 4))


async def _counted(r: Redis, keys: int) -> bool:
    return len(await r.keys("sidecar:fails:*")) == keys
