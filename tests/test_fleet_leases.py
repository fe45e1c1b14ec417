"""Agent leases across replicas on one real Redis: duplicate_agent reject and replace hold
fleet-wide, a lease is released compare-and-delete, a drain releases before its 1012, and
a replica killed outright holds its agents no longer than lease_ttl."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .conftest import GOOD, config_for
from .fleet import RedisServer, fleet_yaml, process_replica, redis_srv, replicas
from .upstream import Backend
from .wire import (
    close_code,
    closed_by_peer,
    echoes,
    log_fields,
    masked_frame,
    open_raw_websocket,
    rejected,
    until,
    ws_connect,
)

__all__ = ["redis_srv"]  # the fixture

LEASE = "sidecar:lease:edge:edge_13238407486"


async def test_reject_holds_across_replicas(backend: Backend, redis_srv: RedisServer) -> None:
    config = config_for(backend.url, fleet_yaml(redis_srv.url, duplicate="reject"))
    async with replicas() as group:
        a = await group.start(config, "a")
        b = await group.start(config, "b")
        async with ws_connect(a) as first:
            await echoes(first)
            status, headers, body = await rejected(b, "/edge/ws", GOOD)
            assert (status, headers["X-Sidecar-Reason"], body["error"]) == (409, "duplicate_agent", "duplicate_agent")
            await echoes(first)  # the first session is untouched
        # Released at its end (compare-and-delete): the agent may connect through B now.
        async with redis_srv.client() as r:
            await until(lambda: _no_leases(r))
        async with ws_connect(b) as second:
            await echoes(second)


async def _no_leases(r: Redis) -> bool:
    return not await r.keys("sidecar:lease:*")


async def test_replace_across_replicas_closes_the_old_session_with_4409(
    backend: Backend, redis_srv: RedisServer
) -> None:
    config = config_for(backend.url, fleet_yaml(redis_srv.url, duplicate="replace"))
    async with replicas() as group:
        a = await group.start(config, "a")
        b = await group.start(config, "b")
        async with ws_connect(a) as old:
            await echoes(old)
            newer = asyncio.ensure_future(ws_connect(b))
            code, reason = await closed_by_peer(old)
            assert (code, reason) == (4409, "replaced by a newer session for this agent id")
            async with await asyncio.wait_for(newer, 20) as new:
                await echoes(new)
                assert a.sample("sidecar_sessions_replaced_remote_total") == 1
                assert b.sample("sidecar_sessions_replaced_remote_total") == 0
                async with redis_srv.client() as r:
                    (key,) = await r.keys("sidecar:lease:*")
                    assert key == "sidecar:lease:edge:edge_13238407486"
                    assert '"replica":"b"' in await r.get(key)  # the new session's lease


async def test_a_lease_another_session_took_ends_its_session_at_the_renewal(
    backend: Backend, redis_srv: RedisServer
) -> None:
    # Pub/sub may lose the message that tells a replica its session was replaced: the
    # lease check on renewal (every lease_ttl / 3) catches it.
    config = config_for(backend.url, fleet_yaml(redis_srv.url, duplicate="replace", state="lease_ttl: 1500ms"))
    async with replicas() as group:
        a = await group.start(config, "a")
        async with ws_connect(a) as ws, redis_srv.client() as r:
            await echoes(ws)
            await r.set("sidecar:lease:edge:edge_13238407486", '{"replica":"elsewhere","session":"x"}', px=60_000)
            assert await closed_by_peer(ws) == (4409, "replaced by a newer session for this agent id")
            assert a.sample("sidecar_sessions_replaced_remote_total") == 1
            # ... and its end does not delete the other session's lease (compare-and-delete).
            await until(lambda: a.running.runtime.sessions.sessions() == [])
            assert await r.get("sidecar:lease:edge:edge_13238407486") == '{"replica":"elsewhere","session":"x"}'


async def test_a_drained_replica_releases_its_leases_before_its_1012(
    backend: Backend, redis_srv: RedisServer, tmp_path: Path
) -> None:
    # The backend stops reading ("mute"), so the old session lingers after its 1012 while
    # its upstream leg waits for a close reply (close_timeout 5 s); the agent reconnects at
    # once through another replica, which must admit it: the lease went before the 1012.
    text = fleet_yaml(redis_srv.url, duplicate="reject", listen="close_timeout: 5s, drain_timeout: 1s")
    async with replicas() as group, process_replica(tmp_path, backend, text, "old") as old:
        b = await group.start(config_for(backend.url, text), "b")
        reader, writer, _ = await open_raw_websocket(old.port)
        try:
            writer.write(masked_frame(0x1, b"mute"))
            await until(lambda: backend.muted)
            old.process.send_signal(signal.SIGTERM)
            assert await close_code(reader) == 1012
            async with ws_connect(b) as again:  # a 409 here would be the agent refused as its own duplicate
                await echoes(again)
        finally:
            writer.close()
        assert await asyncio.wait_for(old.process.wait(), 30) == 0


async def test_a_killed_replica_holds_its_agents_no_longer_than_the_lease(
    backend: Backend, redis_srv: RedisServer, tmp_path: Path
) -> None:
    text = fleet_yaml(redis_srv.url, duplicate="reject", state="lease_ttl: 2s")
    async with replicas() as group, process_replica(tmp_path, backend, text, "doomed") as doomed:
        b = await group.start(config_for(backend.url, text), "b")
        async with connect(doomed.url("/edge/ws"), additional_headers=GOOD) as ws:
            await echoes(ws)
            doomed.process.send_signal(signal.SIGKILL)  # no drain, no release: only the TTL ends the lease
            await asyncio.wait_for(doomed.process.wait(), 10)

            async def admitted() -> bool:
                try:
                    async with ws_connect(b) as again:
                        await echoes(again)
                except InvalidStatus as refused:
                    assert refused.response.status_code == 409  # a duplicate until the lease expires
                    return False
                return True

            await until(admitted, timeout=2 + 5)  # lease_ttl + 5 s


async def test_two_processes_with_one_replica_id_hold_leases_of_their_own(
    backend: Backend, redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A restarted process keeps its RAILWAY_REPLICA_ID, and during a deploy two processes may
    # carry one: a lease names its holder process (a nonce per process, a serial per session),
    # so neither mistakes the other's lease for a stale one of its own.
    caplog.set_level(logging.INFO, "sidecar")
    config = config_for(backend.url, fleet_yaml(redis_srv.url, duplicate="reject"))
    async with replicas() as group:
        first = await group.start(config, "same")
        second = await group.start(config, "same")
        async with ws_connect(first) as ws, redis_srv.client() as r:
            await echoes(ws)
            held = json.loads(await r.get(LEASE))
            assert (held["replica"], held["session"]) == ("same", 1)
            status, headers, _ = await rejected(second, "/edge/ws", GOOD)
            assert (status, headers["X-Sidecar-Reason"]) == (409, "duplicate_agent")
            await echoes(ws)  # untouched, and still the holder
            assert json.loads(await r.get(LEASE)) == held

    replace = config_for(backend.url, fleet_yaml(redis_srv.url, duplicate="replace", state="lease_ttl: 30s"))
    async with replicas() as group:
        first = await group.start(replace, "same")
        second = await group.start(replace, "same")
        async with ws_connect(first) as old:
            await echoes(old)
            newer = asyncio.ensure_future(ws_connect(second))
            assert await closed_by_peer(old) == (4409, "replaced by a newer session for this agent id")
            async with await asyncio.wait_for(newer, 20) as new:
                await echoes(new)
        # Told on the holder process's own channel, not found later by a renewal (every 10 s here).
        assert [f["found_by"] for f in log_fields(caplog, "ws.replaced_remote")] == ["told"]
