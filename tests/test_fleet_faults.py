"""When Redis fails (stopped, restarted empty, slow, absent at start), replicas carry on
with their own tables: no handshake waits on it longer than state.timeout, /readyz stays
200 and says "degraded", no session is dropped, and once Redis is back each replica writes
its leases again, so duplicates are caught again. A real redis-server, stopped and started."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from .conftest import AGENT, GOOD, Sidecar, config_for
from .fleet import RedisServer, fleet_yaml, redis_srv, replicas, state_of
from .netfault import proxy
from .upstream import Backend
from .wire import closed_by_peer, echoes, log_fields, rejected, until, ws_connect

__all__ = ["redis_srv"]  # the fixture

LEASE = f"sidecar:lease:edge:{AGENT}"


WRONG = {**GOOD, "Authorization": "Bearer not-the-secret"}


def agent(name: str) -> dict[str, str]:
    return {**GOOD, "X-Edge-Agent-Id": name}


async def leases(server: RedisServer) -> set[str]:
    async with server.client() as r:
        return set(await r.keys("sidecar:lease:*"))


async def readyz(sidecar: Sidecar) -> str | None:
    return await state_of(sidecar.url("/readyz", "http"))


async def test_redis_restarted_empty_under_live_sessions(
    backend: Backend, redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "sidecar")
    config = config_for(backend.url, fleet_yaml(redis_srv.url, duplicate="reject", state="lease_ttl: 3s"))
    async with replicas() as group:
        a = await group.start(config, "a")
        b = await group.start(config, "b")
        async with contextlib.AsyncExitStack() as stack:
            x = await stack.enter_async_context(ws_connect(a, headers=agent("x")))
            y = await stack.enter_async_context(ws_connect(b, headers=agent("y")))
            assert await leases(redis_srv) == {"sidecar:lease:edge:x", "sidecar:lease:edge:y"}

            await redis_srv.stop()
            await until(lambda: _both(a, b, "degraded"))
            for ws in (x, y):
                await echoes(ws)  # nothing dropped
            # Admitted by A alone meanwhile (fail-open), and still leased later.
            z = await stack.enter_async_context(ws_connect(a, headers=agent("z")))
            await echoes(z)
            assert a.sample("sidecar_state_up") == 0
            assert a.sample("sidecar_state_errors_total", op="claim") >= 1

            await redis_srv.start()  # empty: nothing was saved
            await until(lambda: _both(a, b, "ok"))
            # Each replica writes its sessions' leases again within lease_ttl.
            expected = {"sidecar:lease:edge:x", "sidecar:lease:edge:y", "sidecar:lease:edge:z"}
            await until(lambda: _leased(redis_srv, expected), timeout=3 + 5)
            for ws in (x, y, z):
                await echoes(ws)  # still nothing dropped
            for name, other in (("x", b), ("y", a), ("z", b)):  # duplicates are caught again
                status, headers, _ = await rejected(other, "/edge/ws", agent(name))
                assert (status, headers["X-Sidecar-Reason"]) == (409, "duplicate_agent")
            assert a.sample("sidecar_state_up") == b.sample("sidecar_state_up") == 1
    # Logged once per transition: as many 'state.down' as 'state.up' after one, at least one each.
    downs = log_fields(caplog, "state.down")
    restored = [f for f in log_fields(caplog, "state.up") if f.get("restored")]
    assert len(downs) == len(restored) >= 2


async def _both(a: Sidecar, b: Sidecar, state: str) -> bool:
    return await readyz(a) == state and await readyz(b) == state


async def _leased(server: RedisServer, expected: set[str]) -> bool:
    return await leases(server) == expected


@contextlib.asynccontextmanager
async def sleeping(server: RedisServer, seconds: int) -> AsyncIterator[asyncio.Task[object]]:
    """Redis busy for ``seconds`` (DEBUG SLEEP: it answers nobody meanwhile); the block starts
    once a PING from another client goes unanswered."""
    async with server.client() as sleeper, server.client() as prober:
        task = asyncio.ensure_future(sleeper.execute_command("DEBUG", "SLEEP", str(seconds)))

        async def asleep() -> bool:
            try:
                await asyncio.wait_for(prober.ping(), 0.2)
            except TimeoutError:
                return True
            return False

        await until(asleep)
        try:
            yield task
        finally:
            with contextlib.suppress(RedisError, OSError):
                await task


async def test_a_slow_redis_does_not_hold_up_a_handshake(backend: Backend, redis_srv: RedisServer) -> None:
    config = config_for(backend.url, fleet_yaml(redis_srv.url, duplicate="reject", state="lease_ttl: 3s"))
    async with replicas() as group, contextlib.AsyncExitStack() as stack:
        a = await group.start(config, "a")
        async with sleeping(redis_srv, 5) as asleep:
            # Answered within state.timeout (250 ms) and a handshake's own time: long before Redis wakes.
            ws = await stack.enter_async_context(ws_connect(a))
            await echoes(ws)
            assert not asleep.done()
            assert await readyz(a) == "degraded"
        await until(lambda: _state_is(a, "ok"))
        await until(lambda: _has(redis_srv, LEASE))  # the lease is written once Redis answers again
        await echoes(ws)


async def _state_is(sidecar: Sidecar, state: str) -> bool:
    return await readyz(sidecar) == state


async def _has(server: RedisServer, key: str) -> bool:
    return key in await leases(server)


async def test_a_replica_starts_without_redis_and_joins_when_it_answers(backend: Backend, tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # its port is chosen, nothing listens on it yet
    config = config_for(backend.url, fleet_yaml(server.url, duplicate="reject", state="lease_ttl: 3s"))
    async with replicas() as group:
        a = await group.start(config, "a")
        assert await readyz(a) == "degraded"  # and 200: serving with its own table
        async with ws_connect(a) as ws:
            await echoes(ws)
            await server.start()
            try:
                await until(lambda: _state_is(a, "ok"), timeout=2 + 5)  # probes back off up to 2 s
                await until(lambda: _has(server, LEASE))
            finally:
                await server.stop()


async def test_while_redis_is_down_each_replica_keeps_its_own_budget(backend: Backend, redis_srv: RedisServer) -> None:
    text = fleet_yaml(redis_srv.url, limits="auth_failures: 3, auth_window: 1m")
    async with replicas() as group:
        a = await group.start(config_for(backend.url, text), "a")
        b = await group.start(config_for(backend.url, text), "b")
        await redis_srv.stop()
        await until(lambda: _both(a, b, "degraded"))
        for _ in range(3):
            status, _, _ = await rejected(a, "/edge/ws", WRONG)
            assert status == 401
        status, headers, _ = await rejected(a, "/edge/ws", GOOD)  # this replica's own count decides
        assert (status, headers["X-Sidecar-Reason"]) == (429, "rate_limited")
        async with ws_connect(b) as ws:  # the other one's count is its own
            await echoes(ws)
        assert a.sample("sidecar_state_errors_total", op="budget") >= 3


async def test_a_replace_message_lost_with_a_silent_subscription_is_told_again(
    backend: Backend, redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A's subscription goes silent (a middlebox forgot the connection: no FIN, no RST, and
    # Redis still counts the subscriber), so B's 'replace' is lost on the way. A pings its
    # subscription, finds it gone, subscribes again (counted, logged); B tells again every
    # second: the old session ends with 4409 long before the replace bound (60 s connect
    # timeout + two closing bounds) or a renewal (every 10 s) would end it.
    caplog.set_level(logging.INFO, "sidecar")
    text = partial(
        fleet_yaml, duplicate="replace", state="lease_ttl: 30s, timeout: 250ms", upstream=", connect_timeout: 60s"
    )
    async with replicas() as group, proxy(redis_srv.port) as path:
        a = await group.start(config_for(backend.url, text(path.url())), "a")
        b = await group.start(config_for(backend.url, text(redis_srv.url)), "b")
        async with ws_connect(a) as old:
            await echoes(old)
            assert path.freeze_subscribers() == 1
            newer = asyncio.ensure_future(ws_connect(b))
            assert await closed_by_peer(old, timeout=20) == (4409, "replaced by a newer session for this agent id")
            async with await asyncio.wait_for(newer, 20) as new:
                await echoes(new)
        assert a.sample("sidecar_state_errors_total", op="control") >= 1
        assert a.sample("sidecar_state_up") == 1  # a lost subscription is not Redis down
        assert b.sample("sidecar_state_errors_total", op="control") == 0  # its PINGs were answered all along
        lost = log_fields(caplog, "state.subscription_lost")
        assert lost and "ping" in lost[0]["error"]
        assert [f["found_by"] for f in log_fields(caplog, "ws.replaced_remote")] == ["told"]


async def test_a_claim_queued_behind_a_slow_batch_waits_no_longer_than_the_timeout(
    backend: Backend, redis_srv: RedisServer
) -> None:
    # Redis answers every call within state.timeout (1 s), but slowly (0.8 s a round trip):
    # a claim that arrives while another's batch is in flight waits for it and then for its
    # own, up to 1.6 s in all. The handshake's bound is the claim's, whole: past state.timeout the
    # replica decides alone (fail-open), and counts it.
    text = fleet_yaml("", duplicate="reject", state="lease_ttl: 3s, timeout: 1s")
    async with replicas() as group, proxy(redis_srv.port) as slow:
        a = await group.start(config_for(backend.url, text.replace('redis: ""', f'redis: "{slow.url()}"')), "a")
        async with ws_connect(a, headers=agent("warm")) as ws:  # the scripts are loaded: one round trip each
            await echoes(ws)
        await until(lambda: _none_held(redis_srv))  # its release landed: no batch in flight
        assert a.sample("sidecar_state_errors_total", op="claim") == 0
        slow.delay = 0.4
        evalsha = slow.watch(b"EVALSHA")
        first = asyncio.ensure_future(ws_connect(a, headers=agent("x")))
        await asyncio.wait_for(evalsha.wait(), 10)  # x's claim is in flight
        async with ws_connect(a, headers=agent("y")) as y:  # y's claim queues behind it
            await echoes(y)
        assert a.sample("sidecar_state_errors_total", op="claim") >= 1  # y's, at least
        async with await asyncio.wait_for(first, 20) as x:
            await echoes(x)


async def _none_held(server: RedisServer) -> bool:
    return not await leases(server)
