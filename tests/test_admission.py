"""Admission controls end to end: origin allow-list, failed-auth rate limit, session caps,
the duplicate agent policy. Real backend, real sidecar, python `websockets` and aiohttp as clients."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from sidecar.runtime import Runtime

from .conftest import AGENT, GOOD, SECRET, Sidecar, StartSidecar, config_for
from .upstream import Backend
from .wire import closed_by_peer, echoes, formatted, log_fields, rejected, until, ws_connect

BAD = {"Authorization": "Bearer wrong-guess", "X-Edge-Agent-Id": AGENT}


def admission_yaml(
    *, route: str = "", limits: str = "", listen: str = "", upstream_path: str = "/edge/ws", upstream: str = ""
) -> str:
    """A WebSocket route (/edge/ws) and a plain route (/edge/message), both behind the edge secret."""
    return (
        f"listen: {{{listen}}}\n"
        f"limits: {{{limits}}}\n"
        f'upstreams: {{backend: {{url: "${{UPSTREAM_URL}}"{upstream}}}}}\n'
        'auth: {edge: {bearer: ["${EDGE_SECRET}"], agent_id: {}}}\n'
        "routes:\n"
        f"  - {{name: edge, type: websocket, paths: [/edge/ws], upstream: backend, auth: edge,"
        f" upstream_path: {upstream_path}{route}}}\n"
        "  - {name: message, type: http, paths: [/edge/message], upstream: backend, auth: edge}\n"
    )


async def start(start_sidecar: StartSidecar, backend: Backend, **kw: str) -> Sidecar:
    return await start_sidecar(config_for(backend.url, admission_yaml(**kw)))


def runtime(sidecar: Sidecar) -> Runtime:
    return sidecar.running.runtime


def rejections(sidecar: Sidecar, reason: str, kind: str = "ws", route: str = "edge") -> float:
    return sidecar.sample(f"sidecar_{kind}_rejections_total", route=route, reason=reason)


# --- 1. origin allow-list (cross-site WebSocket hijacking) -----------------------------------

ORIGINS = ", origins: [https://app.example.com, 'http://localhost:3000']"


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "null", "http://app.example.com", "https://app.example.com.evil.example"]
)
async def test_an_origin_not_on_the_list_is_denied_before_anything_else(
    backend: Backend, start_sidecar: StartSidecar, origin: str
) -> None:
    sidecar = await start(start_sidecar, backend, route=ORIGINS)
    status, headers, body = await rejected(sidecar, "/edge/ws", {}, origin=Origin(origin))  # no token either
    assert (status, headers["X-Sidecar-Reason"], body["error"], body["route"]) == (
        403,
        "origin_denied",
        "origin_denied",
        "edge",
    )
    assert rejections(sidecar, "origin_denied") == 1
    assert rejections(sidecar, "missing_token") == 0  # the origin is checked before the token
    assert len(runtime(sidecar).failures) == 0  # ... so it is not counted as a failed attempt
    assert backend.seen == []


@pytest.mark.parametrize(
    "origin", [None, "https://app.example.com", "HTTPS://App.Example.com:443", "http://localhost:3000"]
)
async def test_a_listed_origin_or_none_at_all_gets_in(
    backend: Backend, start_sidecar: StartSidecar, origin: str | None
) -> None:
    sidecar = await start(start_sidecar, backend, route=ORIGINS)
    async with ws_connect(sidecar, origin=Origin(origin) if origin else None) as ws:
        await echoes(ws)


async def test_without_a_list_any_origin_gets_in(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start(start_sidecar, backend)
    async with ws_connect(sidecar, origin=Origin("https://evil.example")) as ws:
        await echoes(ws)


# --- 2. brute force of the secret ------------------------------------------------------------


async def test_failed_tokens_from_one_address_then_429_before_the_token_is_compared(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start(start_sidecar, backend, limits="auth_failures: 3, auth_window: 1m")
    for attempt in (
        BAD,
        {"X-Edge-Agent-Id": AGENT},
        {**BAD, "Authorization": "Basic x"},
    ):  # invalid, missing, malformed
        status, _, _ = await rejected(sidecar, "/edge/ws", attempt)
        assert status == 401
    status, headers, body = await rejected(sidecar, "/edge/ws", GOOD)  # even the right token: not compared now
    assert (status, headers["X-Sidecar-Reason"], body["error"]) == (429, "rate_limited", "rate_limited")
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert rejections(sidecar, "rate_limited") == 1
    # Every authenticated route, plain HTTP included; the catch-all has no auth and is not limited.
    async with aiohttp.ClientSession() as http:
        async with http.post(sidecar.url("/edge/message", "http"), headers=GOOD, data=b"x") as response:
            assert (response.status, response.headers["X-Sidecar-Reason"]) == (429, "rate_limited")
            assert 1 <= int(response.headers["Retry-After"]) <= 60
            assert (await response.json())["error"] == "rate_limited"
        assert rejections(sidecar, "rate_limited", "http", "message") == 1
    assert [s.path for s in backend.seen] == []


async def test_a_valid_agent_is_not_limited_and_success_does_not_reset_the_count(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start(start_sidecar, backend, limits="auth_failures: 2")
    await rejected(sidecar, "/edge/ws", BAD)
    async with ws_connect(sidecar) as ws:  # one failure: still in
        await echoes(ws)
    await rejected(sidecar, "/edge/ws", BAD)  # the second failure: a success in between did not reset the count
    status, headers, _ = await rejected(sidecar, "/edge/ws", GOOD)
    assert (status, headers["X-Sidecar-Reason"]) == (429, "rate_limited")


TRUSTED = "trusted_proxies: [127.0.0.0/8]"  # so X-Forwarded-For names the client


async def test_the_limit_is_per_client_address_and_ipv6_counts_by_64(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start(start_sidecar, backend, limits="auth_failures: 2", listen=TRUSTED)
    for address in ("2001:db8:1:2::1", "2001:db8:1:2::ffff"):  # the same /64
        await rejected(sidecar, "/edge/ws", {**BAD, "X-Forwarded-For": address})
    status, _, body = await rejected(sidecar, "/edge/ws", {**GOOD, "X-Forwarded-For": "2001:db8:1:2:abcd::9"})
    assert (status, body["error"]) == (429, "rate_limited")
    for other in ("2001:db8:1:3::1", "203.0.113.9"):  # another /64, another address: unaffected
        async with ws_connect(sidecar, headers={**GOOD, "X-Forwarded-For": other}) as ws:
            await echoes(ws)


async def test_behind_a_trusted_proxy_the_client_ip_header_names_the_client(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    # Railway's edge: its own address in X-Forwarded-For, the client in X-Real-IP.
    listen = TRUSTED + ", client_ip_header: X-Real-IP"
    sidecar = await start(start_sidecar, backend, limits="auth_failures: 2", listen=listen)
    edge = {"X-Forwarded-For": "100.64.0.3"}
    for _ in range(2):
        await rejected(sidecar, "/edge/ws", {**BAD, **edge, "X-Real-IP": "203.0.113.66"})
    status, _, body = await rejected(sidecar, "/edge/ws", {**GOOD, **edge, "X-Real-IP": "203.0.113.66"})
    assert (status, body["error"]) == (429, "rate_limited")
    # Another client behind the same edge address is not locked out by the attacker.
    async with ws_connect(sidecar, headers={**GOOD, **edge, "X-Real-IP": "198.51.100.5"}) as ws:
        await echoes(ws)


async def test_the_client_ip_header_of_an_untrusted_peer_is_ignored(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start(start_sidecar, backend, limits="auth_failures: 2", listen="client_ip_header: X-Real-IP")
    for n in range(2):  # a client cannot dodge the limit by inventing addresses
        await rejected(sidecar, "/edge/ws", {**BAD, "X-Real-IP": f"203.0.113.{n}"})
    status, _, body = await rejected(sidecar, "/edge/ws", {**GOOD, "X-Real-IP": "203.0.113.99"})
    assert (status, body["error"]) == (429, "rate_limited")


async def test_the_failure_table_never_exceeds_its_cap(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start(start_sidecar, backend, limits="auth_failures: 1, tracked_clients: 50", listen=TRUSTED)
    rt = runtime(sidecar)
    async with aiohttp.ClientSession() as http:
        for i in range(120):  # more distinct addresses than the table holds
            headers = {**BAD, "X-Forwarded-For": f"198.51.100.{i}"}
            async with http.get(sidecar.url("/edge/message", "http"), headers=headers) as response:
                assert response.status == 401
            assert len(rt.failures) <= 50
        assert len(rt.failures) == 50
        # The newest are still blocked, the oldest were evicted (and get a fresh count).
        async with http.get(
            sidecar.url("/edge/message", "http"), headers={**GOOD, "X-Forwarded-For": "198.51.100.119"}
        ) as r:
            assert r.status == 429
        async with http.get(
            sidecar.url("/edge/message", "http"), headers={**GOOD, "X-Forwarded-For": "198.51.100.0"}
        ) as r:
            assert r.status == 200


# --- 3. connection exhaustion ----------------------------------------------------------------


async def test_route_cap_refuses_with_503_before_the_upgrade(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start(start_sidecar, backend, route=", max_sessions: 2, duplicate_agent: allow")
    async with ws_connect(sidecar) as one, ws_connect(sidecar) as two:
        status, headers, body = await rejected(sidecar, "/edge/ws", GOOD)
        assert (status, headers["X-Sidecar-Reason"], body["error"]) == (503, "over_capacity", "over_capacity")
        assert headers["Retry-After"] == "5"
        assert rejections(sidecar, "over_capacity") == 1
        assert len(backend.seen) == 2  # the refused one never reached the backend
        await echoes(one)
        await echoes(two)
    await until(lambda: len(runtime(sidecar).sessions) == 0)
    async with ws_connect(sidecar) as three:  # places are given back
        await echoes(three)


async def test_global_cap(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start(start_sidecar, backend, limits="max_sessions: 1")
    async with ws_connect(sidecar) as ws:
        status, headers, _ = await rejected(sidecar, "/edge/ws", {**GOOD, "X-Edge-Agent-Id": "edge_2"})
        assert (status, headers["X-Sidecar-Reason"], headers["Retry-After"]) == (503, "over_capacity", "5")
        await echoes(ws)


async def test_sessions_still_in_their_upstream_handshake_count(backend: Backend, start_sidecar: StartSidecar) -> None:
    # /slow/ws never answers the handshake: the first session holds its place while it waits.
    sidecar = await start(start_sidecar, backend, route=", max_sessions: 1", upstream_path="/slow/ws")
    waiting = asyncio.ensure_future(ws_connect(sidecar, open_timeout=30))
    try:
        await until(lambda: len(backend.seen) == 1)
        status, headers, _ = await rejected(sidecar, "/edge/ws", {**GOOD, "X-Edge-Agent-Id": "edge_2"})
        assert (status, headers["X-Sidecar-Reason"]) == (503, "over_capacity")
        assert len(backend.seen) == 1
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    await until(lambda: len(runtime(sidecar).sessions) == 0)  # the abandoned handshake gave its place back


async def test_a_client_gone_during_the_upstream_handshake_frees_its_place_at_once(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    """Not when the backend answers, nor when connect_timeout (60 s here) runs out: the
    hangup itself ends the session (the listener keeps reading while the session waits)."""
    sidecar = await start(
        start_sidecar, backend, route=", max_sessions: 1", upstream_path="/slow/ws", upstream=", connect_timeout: 60s"
    )
    waiting = asyncio.ensure_future(ws_connect(sidecar, open_timeout=30))
    await until(lambda: len(backend.seen) == 1)
    assert len(runtime(sidecar).sessions) == 1
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await until(lambda: len(runtime(sidecar).sessions) == 0)  # within the 10 s bound, long before 60 s


# --- 4. a second session with the same agent id ---------------------------------------------


async def test_replace_closes_the_old_session_with_4409_and_the_new_one_works(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start(start_sidecar, backend)  # replace is the default
    old = await ws_connect(sidecar)
    await echoes(old)
    async with ws_connect(sidecar) as new:
        assert await closed_by_peer(old, skip_messages=False) == (4409, "replaced by a newer session for this agent id")
        await echoes(new)
        assert backend.closes == [(1001, "sidecar closing the session")]  # the old upstream leg, before the new one
        assert sidecar.sample("sidecar_ws_closes_total", route="edge", initiator="sidecar", code="4409") == 1
    async with ws_connect(sidecar, headers={**GOOD, "X-Edge-Agent-Id": "edge_2"}) as other:
        await echoes(other)  # another agent id is another agent


async def test_a_session_replaced_while_it_waits_is_refused_never_opened(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    # Three connections with one agent id in quick succession: the middle one is
    # replaced while it waits for the first to close (slowly: its backend is mute).
    sidecar = await start(start_sidecar, backend, listen="close_timeout: 1s")
    first = await ws_connect(sidecar, "/edge/ws?n=1")
    await first.send("mute")
    await until(lambda: backend.seen)
    middle = asyncio.ensure_future(rejected(sidecar, "/edge/ws", GOOD, open_timeout=20))
    await until(lambda: len(runtime(sidecar).sessions) == 2)  # the middle one admitted, waiting
    async with ws_connect(sidecar, "/edge/ws?n=3", open_timeout=20) as last:
        status, headers, body = await asyncio.wait_for(middle, 30)
        assert (status, headers["X-Sidecar-Reason"]) == (409, "duplicate_agent")
        assert body["detail"] == "replaced by a newer session for this agent id"
        await echoes(last)
    # The backend never saw the middle one: the first ended before the last began.
    assert [seen.query_string for seen in backend.seen] == ["n=1", "n=3"]


async def test_reject_refuses_the_second_session_with_409(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start(start_sidecar, backend, route=", duplicate_agent: reject")
    async with ws_connect(sidecar) as first:
        status, headers, body = await rejected(sidecar, "/edge/ws", GOOD)
        assert (status, headers["X-Sidecar-Reason"], body["error"]) == (409, "duplicate_agent", "duplicate_agent")
        assert rejections(sidecar, "duplicate_agent") == 1
        await echoes(first)
        assert len(backend.seen) == 1
    await until(lambda: not runtime(sidecar).sessions.agents)
    async with ws_connect(sidecar) as again:  # the id is free again
        await echoes(again)


async def test_reject_counts_a_session_still_in_its_handshake(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start(start_sidecar, backend, route=", duplicate_agent: reject", upstream_path="/slow/ws")
    waiting = asyncio.ensure_future(ws_connect(sidecar, open_timeout=30))
    try:
        await until(lambda: len(backend.seen) == 1)
        status, _, body = await rejected(sidecar, "/edge/ws", GOOD)
        assert (status, body["error"]) == (409, "duplicate_agent")
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    await until(lambda: not runtime(sidecar).sessions.agents)


async def test_allow_lets_both_sessions_run(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start(start_sidecar, backend, route=", duplicate_agent: allow")
    async with ws_connect(sidecar) as one, ws_connect(sidecar) as two:
        await echoes(one)
        await echoes(two)


# --- 6. the token in the query string (RFC 6750 section 2.3) -----------------------------------

QUERY_ROUTE = ", query_token: true"


async def test_a_query_token_is_refused_where_the_route_does_not_opt_in(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start(start_sidecar, backend)
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(sidecar, f"/edge/ws?access_token={SECRET}&edge_agent_id={AGENT}", {}):
            pass
    response = info.value.response
    body = json.loads(response.body or b"{}")
    assert (response.status_code, response.headers["X-Sidecar-Reason"], body["error"]) == (
        401,
        "missing_token",
        "missing_token",
    )
    assert body["detail"] == (
        "a token in the access_token query parameter is not accepted on this route; send it in the Authorization header"
    )
    assert SECRET not in (response.body or b"").decode()
    assert rejections(sidecar, "missing_token") == 1
    async with (
        aiohttp.ClientSession() as http,
        http.get(sidecar.url(f"/edge/message?access_token={SECRET}", "http"), headers={"X-Edge-Agent-Id": AGENT}) as r,
    ):
        assert (r.status, r.headers["X-Sidecar-Reason"]) == (401, "missing_token")
        assert "not accepted on this route" in (await r.json())["detail"]
    assert backend.seen == []


@pytest.mark.parametrize("forward", [True, False])
async def test_an_opted_in_route_takes_the_query_token_and_never_passes_it_on_in_the_url(
    backend: Backend, start_sidecar: StartSidecar, forward: bool
) -> None:
    route = QUERY_ROUTE + (", forward_authorization: true" if forward else "")
    sidecar = await start(start_sidecar, backend, route=route)
    async with ws_connect(sidecar, f"/edge/ws?v=1&access_token={SECRET}&edge_agent_id={AGENT}", {}) as ws:
        await echoes(ws)
    seen = backend.seen[0]
    assert seen.query_string == f"v=1&edge_agent_id={AGENT}"  # the rest byte for byte
    assert seen.headers.get("authorization") == ([f"Bearer {SECRET}"] if forward else None)
    assert seen.headers["x-edge-agent-id"] == [AGENT]


async def test_header_and_query_token_together_are_refused(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start(start_sidecar, backend, route=QUERY_ROUTE)
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(sidecar, f"/edge/ws?access_token={SECRET}"):
            pass
    body = json.loads(info.value.response.body or b"{}")
    assert (info.value.response.status_code, body["error"]) == (401, "malformed_token")
    assert "RFC 6750 section 2" in body["detail"]


async def test_a_query_token_never_reaches_a_log_line(
    backend: Backend, start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, aiohttp's included (the test's own client aside)
    text = admission_yaml(route=QUERY_ROUTE) + (
        "  - {name: plain, type: http, paths: [/plain], upstream: backend, auth: edge, query_token: true}\n"
        "  - {name: down, type: websocket, paths: [/down/ws], upstream: nowhere, auth: edge, query_token: true}\n"
        "  - {name: catchall, type: http, prefix: /, upstream: backend}\n"
    ).replace("upstream: nowhere", "upstream: gone")
    text = text.replace("upstreams: {", 'upstreams: {gone: {url: "http://127.0.0.1:1"}, ')
    sidecar = await start_sidecar(config_for(backend.url, text))
    token = f"access_token={SECRET}"
    async with ws_connect(sidecar, f"/edge/ws?{token}&edge_agent_id={AGENT}", {}) as ws:  # a whole session
        await echoes(ws)
    for path in (
        f"/edge/ws?{token}&edge_agent_id=bad%20id",  # invalid agent id
        f"/edge/ws?access_token=wrong{SECRET}",  # invalid token
        f"/down/ws?{token}&edge_agent_id={AGENT}",  # upstream unavailable
        f"/edge//ws?{token}",  # bad path
        f"/nowhere/ws?{token}",  # no route
    ):
        with pytest.raises(InvalidStatus):
            async with ws_connect(sidecar, path, {}):
                pass
    async with aiohttp.ClientSession() as http:
        for path in (f"/plain?{token}&edge_agent_id={AGENT}", f"/edge/message?{token}", f"/other?{token}"):
            async with http.get(sidecar.url(path, "http")) as response:
                await response.read()
    await until(lambda: log_fields(caplog, "ws.closed"))
    events = [r.getMessage() for r in caplog.records]
    for expected in ("ws.established", "ws.closed", "ws.rejected", "http.rejected", "http.request"):
        assert expected in events
    records = [r for r in caplog.records if not r.name.startswith("websockets")]  # the client logs its own URL
    assert {r.name for r in records} >= {"sidecar"}
    everything = "\n".join(formatted(records))
    assert SECRET not in everything
    assert SECRET[:8] not in everything  # not even in part
    assert all(SECRET not in s.query_string for s in backend.seen if s.path != "/other")
