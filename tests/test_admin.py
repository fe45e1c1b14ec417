"""Session control on the metrics listener (GET /sessions, DELETE /sessions/{agent_id}):
off without ADMIN_TOKEN, 401 without the right Bearer token, never on the public port;
this process's sessions without Redis, the fleet's with it. Real sockets, a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect

from .conftest import GOOD, SECRET, Sidecar, StartSidecar, config_for, edge_yaml
from .fleet import ADMIN_TOKEN, RedisServer, admin, fleet_yaml, process_replica, redis_server, redis_srv, replicas
from .upstream import Backend
from .wire import closed_by_peer, echoes, formatted, until, ws_connect

__all__ = ["redis_srv"]  # the fixture

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def agent(name: str) -> dict[str, str]:
    return {**GOOD, "X-Edge-Agent-Id": name}


def listed(body: dict[str, object]) -> list[dict[str, Any]]:
    """The sessions of a GET /sessions answer."""
    sessions = body["sessions"]
    assert isinstance(sessions, list)
    return sessions


def metrics_port(sidecar: Sidecar) -> int:
    assert sidecar.running.metrics_port is not None
    return sidecar.running.metrics_port


@pytest.fixture
async def solo(backend: Backend) -> Sidecar:
    """One replica, no Redis, the admin endpoints on."""
    async with replicas() as group:
        yield await group.start(config_for(backend.url, edge_yaml(auth=", agent_id: {}")), "solo")


async def test_without_admin_token_there_are_no_admin_endpoints(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(config_for(backend.url), metrics_port=0)  # no admin_token
    port = metrics_port(sidecar)
    for method, path in (("GET", "/sessions"), ("DELETE", "/sessions/edge_1")):
        status, _, _ = await admin(method, port, path)
        assert status == 404
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        (None, 'Bearer realm="sidecar admin"'),
        ("Bearer not-the-token", 'Bearer realm="sidecar admin", error="invalid_token"'),
        (f"Bearer {ADMIN_TOKEN}x", 'Bearer realm="sidecar admin", error="invalid_token"'),
        (f"Basic {ADMIN_TOKEN}", 'Bearer realm="sidecar admin"'),
        ("Bearer ", 'Bearer realm="sidecar admin"'),
        (SECRET, 'Bearer realm="sidecar admin"'),
    ],
)
async def test_a_request_without_the_admin_token_is_401(
    solo: Sidecar, authorization: str | None, challenge: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with aiohttp.ClientSession() as http:
        for method, path in (("GET", "/sessions"), ("DELETE", f"/sessions/{GOOD['X-Edge-Agent-Id']}")):
            url = f"http://127.0.0.1:{metrics_port(solo)}{path}"
            async with http.request(method, url, headers=headers) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"] == challenge
                assert (await response.json())["error"] == "unauthorized"


async def test_two_authorization_headers_are_401(solo: Sidecar) -> None:
    headers = [("Authorization", f"Bearer {ADMIN_TOKEN}"), ("Authorization", f"Bearer {ADMIN_TOKEN}")]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{metrics_port(solo)}/sessions", headers=headers) as response,
    ):
        assert response.status == 401


async def test_this_process_sessions_are_listed_and_filtered(solo: Sidecar) -> None:
    async with ws_connect(solo, headers=agent("a1")) as one, ws_connect(solo, headers=agent("a2")) as two:
        await echoes(one)
        await echoes(two)
        status, headers, body = await admin("GET", metrics_port(solo), "/sessions")
        assert (status, headers["Cache-Control"], body["scope"]) == (200, "no-store", "replica")
        sessions = body["sessions"]
        assert isinstance(sessions, list)
        assert [(s["agent_id"], s["route"], s["replica"], s["client"], s["state"]) for s in sessions] == [
            ("a1", "edge", "solo", "127.0.0.1", "open"),
            ("a2", "edge", "solo", "127.0.0.1", "open"),
        ]
        assert all(RFC3339.fullmatch(s["opened_at"]) for s in sessions)
        _, _, only = await admin("GET", metrics_port(solo), "/sessions?agent_id=a2")
        assert [s["agent_id"] for s in listed(only)] == ["a2"]
        _, _, none = await admin("GET", metrics_port(solo), "/sessions?agent_id=nobody")
        assert none["sessions"] == []


async def test_delete_closes_the_agents_session_with_4403(solo: Sidecar) -> None:
    async with ws_connect(solo, headers=agent("a1")) as one, ws_connect(solo, headers=agent("a2")) as two:
        await echoes(one)
        status, _, body = await admin("DELETE", metrics_port(solo), "/sessions/a1")
        assert (status, body) == (200, {"closed": 1, "scope": "replica"})
        assert await closed_by_peer(one) == (4403, "closed by operator")
        await echoes(two)  # another agent's session is untouched
        await until(lambda: len(solo.running.runtime.sessions) == 1)
        status, _, body = await admin("DELETE", metrics_port(solo), "/sessions/a1")
        assert (status, body["error"], body["scope"]) == (404, "not_found", "replica")
        status, _, _ = await admin("DELETE", metrics_port(solo), "/sessions/nobody")
        assert status == 404


async def test_the_public_port_never_answers_for_the_admin(backend: Backend) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with replicas() as group, aiohttp.ClientSession() as http:
        solo = await group.start(config_for(backend.url), "solo")  # the shipped routes: / goes to the backend
        for method in ("GET", "DELETE"):
            async with http.request(method, solo.url("/sessions/a1", "http"), headers=headers) as response:
                assert response.status == 200  # the backend's echo, not the sidecar's listing
        async with http.get(solo.url("/sessions", "http"), headers=headers) as response:
            assert await response.json() == {"method": "GET", "path": "/sessions", "received": 0}  # the echo
    assert [(seen.method, seen.path) for seen in backend.seen] == [
        ("GET", "/sessions/a1"),
        ("DELETE", "/sessions/a1"),
        ("GET", "/sessions"),
    ]


async def test_with_redis_the_whole_fleet_is_listed_and_ended(backend: Backend, redis_srv: RedisServer) -> None:
    config = config_for(backend.url, fleet_yaml(redis_srv.url, duplicate="reject"))
    async with replicas() as group:
        a = await group.start(config, "a")
        b = await group.start(config, "b")
        async with ws_connect(a, headers=agent("x")) as x, ws_connect(b, headers=agent("y")) as y:
            await echoes(x)
            await echoes(y)
            status, _, body = await admin("GET", metrics_port(a), "/sessions")
            assert (status, body["scope"], body["replicas"]) == (200, "fleet", 2)
            sessions = body["sessions"]
            assert isinstance(sessions, list)
            assert sorted((s["agent_id"], s["replica"]) for s in sessions) == [("x", "a"), ("y", "b")]
            _, _, only = await admin("GET", metrics_port(b), "/sessions?agent_id=y")
            assert [(s["agent_id"], s["replica"]) for s in listed(only)] == [("y", "b")]

            status, _, body = await admin("DELETE", metrics_port(a), "/sessions/y")  # asked of A, held by B
            assert (status, body) == (200, {"closed": 1, "scope": "fleet"})
            assert await closed_by_peer(y) == (4403, "closed by operator")
            await echoes(x)
            status, _, body = await admin("DELETE", metrics_port(a), "/sessions/y")
            assert (status, body["scope"]) == (404, "fleet")


async def test_while_redis_is_down_the_admin_answers_for_its_own_replica(
    backend: Backend, redis_srv: RedisServer
) -> None:
    config = config_for(backend.url, fleet_yaml(redis_srv.url, duplicate="reject"))
    async with replicas() as group:
        a = await group.start(config, "a")
        async with ws_connect(a, headers=agent("x")) as x:
            await echoes(x)
            await redis_srv.stop()
            await until(lambda: a.sample("sidecar_state_up") == 0)
            status, _, body = await admin("GET", metrics_port(a), "/sessions")
            assert (status, body["scope"], body["state"]) == (200, "replica", "degraded")
            assert [s["agent_id"] for s in listed(body)] == ["x"]
            status, _, body = await admin("DELETE", metrics_port(a), "/sessions/x")
            assert (status, body) == (200, {"closed": 1, "scope": "replica", "state": "degraded"})
            assert await closed_by_peer(x) == (4403, "closed by operator")


async def test_no_secret_in_a_replica_process_log(backend: Backend, tmp_path: Path) -> None:
    # The admin token, the Redis password (in REDIS_URL) and the edge secret appear in no
    # log line of a real process: start, sessions, admin calls, Redis lost, drain, stop.
    password = "redis-password-7d1e9c"
    async with redis_server(tmp_path, password) as server:
        text = fleet_yaml("${REDIS_URL}", duplicate="reject")
        async with process_replica(tmp_path, backend, text, "p", REDIS_URL=server.url) as p:
            async with contextlib.AsyncExitStack() as stack:
                ws = await stack.enter_async_context(connect(p.url("/edge/ws"), additional_headers=GOOD))
                await echoes(ws)
                status, _, body = await admin("GET", p.metrics_port, "/sessions")
                assert (status, body["scope"], body["replicas"]) == (200, "fleet", 1)
                assert (await admin("GET", p.metrics_port, "/sessions", token="wrong"))[0] == 401
                await server.stop()
                status, _, body = await admin("GET", p.metrics_port, "/sessions")
                assert (status, body.get("state")) == (200, "degraded")
            p.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(p.process.wait(), 30) == 0
            log = await p.stderr()
    assert '"event": "state.down"' in log and '"replica": "p"' in log
    assert "redis://default:<secret>@127.0.0.1" in log  # sidecar.started names the state, password replaced
    for secret in (password, ADMIN_TOKEN, SECRET, "wrong"):
        assert secret not in log


async def test_no_admin_token_in_a_log_line(solo: Sidecar, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with ws_connect(solo, headers=agent("a1")) as one:
        await echoes(one)
        await admin("GET", metrics_port(solo), "/sessions")
        await admin("DELETE", metrics_port(solo), "/sessions/a1")
        await admin("GET", metrics_port(solo), "/sessions", token="guess")
    lines = formatted(caplog.records)
    assert any("admin.sessions_ended" in line for line in lines)
    assert not [line for line in lines if ADMIN_TOKEN in line or "guess" in line]


async def test_delete_says_how_many_replicas_did_not_confirm(backend: Backend, redis_srv: RedisServer) -> None:
    # A replica that hears the question but does not answer within 2 s (here: a subscriber
    # that never answers, as a replica stuck in a long pause would be): its sessions may or
    # may not have been closed, and the answer says so instead of claiming a full count.
    config = config_for(backend.url, fleet_yaml(redis_srv.url, duplicate="reject"))
    async with replicas() as group, redis_srv.client() as deaf, deaf.pubsub() as ears:
        await ears.subscribe("sidecar:fleet")
        a = await group.start(config, "a")
        b = await group.start(config, "b")
        async with ws_connect(b, headers=agent("y")) as y:
            await echoes(y)
            status, _, body = await admin("DELETE", metrics_port(a), "/sessions/y")
            assert (status, body) == (200, {"closed": 1, "scope": "fleet", "missing_replicas": 1})
            assert await closed_by_peer(y) == (4403, "closed by operator")
        status, _, body = await admin("DELETE", metrics_port(a), "/sessions/nobody")
        assert (status, body["error"], body["scope"], body["missing_replicas"]) == (404, "not_found", "fleet", 1)
        assert "1 replica" in str(body["message"])
