"""Signed tokens (JWTs) end to end: a real backend, a real sidecar, a real JWKS server on
its own port, python `websockets` as the client, and tokens minted here with PyJWT and
`cryptography` keys made for this run.

What a client sees (status, reason, headers, close codes), what the backend receives
(the agent id), what the log line says (``why``, never in the response), and the counters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import cast

import aiohttp
import jwt
import pytest
from prometheus_client import generate_latest

from sidecar.runtime import Runtime
from sidecar.sessions import Cancellable, Session, WallClock

from .conftest import AGENT, SECRET, Sidecar, StartSidecar, config_for
from .issuer import (
    AUDIENCE,
    ISSUER,
    JWT_SECRET,
    JWT_SECRET_PREVIOUS,
    Jwks,
    bearer,
    claims,
    confused,
    ec_signer,
    ed_signer,
    hs256,
    hs256_raw,
    rsa_signer,
    signed,
    tampered,
    unsigned,
)
from .upstream import Backend
from .wire import closed_by_peer, echoes, formatted, log_fields, rejected, until, ws_connect

EXPIRED_CHALLENGE = 'Bearer realm="sidecar", error="invalid_token", error_description="token expired"'


def jwt_yaml(*, jwt: str = "", route: str = "", bearer_list: bool = True, keys: str = "") -> str:
    """/edge/ws and /edge/message behind one policy: the shared secret and signed tokens
    (HS256 secrets, current and previous, and the JWKS), issuer and audience checked."""
    sources = keys or ('      secrets: ["${JWT_SECRET}", "${JWT_SECRET_PREVIOUS:-}"]\n      jwks_url: "${JWKS_URL}"\n')
    return (
        'upstreams: {backend: {url: "${UPSTREAM_URL}"}}\n'
        "auth:\n"
        "  edge:\n"
        + ('    bearer: ["${EDGE_SECRET}"]\n' if bearer_list else "")
        + "    jwt:\n"
        + sources
        + f"      issuer: {ISSUER}\n"
        f"      audience: {AUDIENCE}\n" + jwt + "    agent_id: {}\n"
        "routes:\n"
        f"  - {{name: edge, type: websocket, paths: [/edge/ws], upstream: backend, auth: edge{route}}}\n"
        "  - {name: message, type: http, paths: [/edge/message], upstream: backend, auth: edge}\n"
    )


@pytest.fixture
async def jwks() -> AsyncIterator[Jwks]:
    server = await Jwks(rsa_signer(), ec_signer(), ed_signer()).start()
    yield server
    await server.stop()


async def start(start_sidecar: StartSidecar, backend: Backend, jwks: Jwks, text: str | None = None) -> Sidecar:
    config = config_for(backend.url, text or jwt_yaml(), JWT_SECRET=JWT_SECRET, JWKS_URL=jwks.url)
    return await start_sidecar(config)


@pytest.fixture
async def sidecar(backend: Backend, start_sidecar: StartSidecar, jwks: Jwks) -> Sidecar:
    return await start(start_sidecar, backend, jwks)


def runtime(sidecar: Sidecar) -> Runtime:
    return sidecar.running.runtime


def agent_ids_seen(backend: Backend) -> list[str]:
    return [seen.headers["x-edge-agent-id"][0] for seen in backend.seen]


async def refused(sidecar: Sidecar, headers: dict[str, str]) -> tuple[int, str, dict[str, object], str | None]:
    """A refused upgrade: status, reason, body, and the WWW-Authenticate header."""
    status, got, body = await rejected(sidecar, "/edge/ws", headers)
    return status, got["X-Sidecar-Reason"], body, got.get("WWW-Authenticate")


def why_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [fields.get("why", "") for fields in log_fields(caplog, "ws.rejected")]


# --- valid tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["HS256", "HS256 previous secret", "RS256", "ES256", "EdDSA"])
async def test_a_valid_token_admits_and_its_agent_claim_is_the_agent_id(
    sidecar: Sidecar, backend: Backend, kind: str
) -> None:
    payload = claims("edge_42")
    token = {
        "HS256": lambda: hs256(payload),
        "HS256 previous secret": lambda: hs256(payload, key=JWT_SECRET_PREVIOUS),
        "RS256": lambda: signed(rsa_signer(), payload),
        "ES256": lambda: signed(ec_signer(), payload),
        "EdDSA": lambda: signed(ed_signer(), payload),
    }[kind]()
    if kind == "HS256 previous secret":  # the previous secret is configured in this case only
        sidecar = await restart_with_previous(sidecar, backend)
    async with ws_connect(sidecar, headers=bearer(token)) as ws:  # no agent id stated: the token's
        await echoes(ws)
    assert agent_ids_seen(backend) == ["edge_42"]


async def restart_with_previous(sidecar: Sidecar, backend: Backend) -> Sidecar:
    rt = runtime(sidecar)
    config = config_for(
        backend.url, jwt_yaml(), JWT_SECRET=JWT_SECRET, JWT_SECRET_PREVIOUS=JWT_SECRET_PREVIOUS, JWKS_URL=url_of(rt)
    )
    assert sidecar.running.reload(lambda: (config, []))
    return sidecar


def url_of(rt: Runtime) -> str:
    policy = rt.config.auth["edge"].jwt
    assert policy is not None and policy.jwks_url
    return policy.jwks_url


async def test_a_token_without_a_kid_is_tried_against_the_keys_that_fit(sidecar: Sidecar, backend: Backend) -> None:
    async with ws_connect(sidecar, headers=bearer(signed(ec_signer(), claims("edge_5"), kid=None))) as ws:
        await echoes(ws)
    assert agent_ids_seen(backend) == ["edge_5"]


async def test_a_plain_http_route_takes_a_token_too(sidecar: Sidecar, backend: Backend) -> None:
    async with aiohttp.ClientSession() as http:
        url = sidecar.url("/edge/message", "http")
        async with http.post(url, headers=bearer(hs256(claims("edge_9"))), data=b"x") as response:
            assert response.status == 200
    assert agent_ids_seen(backend) == ["edge_9"]


async def test_bearer_and_jwt_side_by_side_in_one_policy(sidecar: Sidecar, backend: Backend) -> None:
    shared = {"Authorization": f"Bearer {SECRET}", "X-Edge-Agent-Id": AGENT}
    async with ws_connect(sidecar, headers=shared) as old, ws_connect(sidecar, headers=bearer(hs256())) as new:
        await echoes(old, "shared secret")
        await echoes(new, "signed token")
        shared_session, token_session = sorted(runtime(sidecar).sessions.sessions(), key=lambda s: s.agent_id != AGENT)
        assert (shared_session.expires_at, token_session.expires_at is not None) == (None, True)
    assert sorted(agent_ids_seen(backend)) == sorted([AGENT, "edge_1"])
    wrong = {"Authorization": "Bearer not-the-secret", "X-Edge-Agent-Id": AGENT}
    assert (await refused(sidecar, wrong))[:2] == (401, "invalid_token")


# --- the agent id is the token's --------------------------------------------------------


@pytest.mark.parametrize(
    ("stated", "path"),
    [({"X-Edge-Agent-Id": "edge_2"}, "/edge/ws"), ({}, "/edge/ws?edge_agent_id=edge_2")],
    ids=["header", "query"],
)
async def test_a_client_stating_another_agent_than_its_token_is_403(
    sidecar: Sidecar, backend: Backend, caplog: pytest.LogCaptureFixture, stated: dict[str, str], path: str
) -> None:
    caplog.set_level(logging.INFO)
    status, headers, body = await rejected(sidecar, path, {**bearer(hs256(claims("edge_1"))), **stated})
    assert (status, headers["X-Sidecar-Reason"], body["error"]) == (403, "agent_not_allowed", "agent_not_allowed")
    assert "edge_2" not in json.dumps(body)
    assert backend.seen == []
    (fields,) = log_fields(caplog, "ws.rejected")
    assert fields["agent_id"] == "edge_1"  # the token's agent, not what it claimed to be
    assert sidecar.sample("sidecar_ws_rejections_total", route="edge", reason="agent_not_allowed") == 1


async def test_a_client_stating_its_tokens_own_id_gets_in(sidecar: Sidecar, backend: Backend) -> None:
    headers = {**bearer(hs256(claims("edge_1"))), "X-Edge-Agent-Id": "edge_1"}
    async with ws_connect(sidecar, "/edge/ws?edge_agent_id=edge_1", headers=headers) as ws:
        await echoes(ws)
    assert agent_ids_seen(backend) == ["edge_1"]


async def test_an_agent_claim_that_fails_the_pattern_is_refused(sidecar: Sidecar, backend: Backend) -> None:
    for agent in ("edge 1", "x" * 129, "edge\u2028"):
        status, reason, _, _ = await refused(sidecar, bearer(hs256(claims(agent))))
        assert (status, reason) == (400, "invalid_agent_id")
    assert backend.seen == []


# --- refused tokens: 401, the log says which check, the response does not ----------------


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (lambda: hs256(claims(nbf=int(time.time()) + 3600)), "not yet valid"),
        (lambda: hs256(claims(iss="https://someone-else.test")), "wrong issuer"),
        (lambda: hs256(claims(aud="another-service")), "wrong audience"),
        (lambda: hs256({k: v for k, v in claims().items() if k != "exp"}), "no 'exp' claim"),
        (lambda: hs256(claims(agent=None)), "no 'sub' claim"),
        (lambda: hs256(key="a-secret-nobody-configured-0123456789abcdef"), "bad signature"),
        (lambda: tampered(signed(rsa_signer())), "bad signature"),
        (lambda: unsigned(), "alg none"),
        (lambda: unsigned(alg="NONE"), "alg none"),
        (lambda: signed(rsa_signer(), kid="no-such-key"), "unknown kid 'no-such-key'"),
        (lambda: confused(rsa_signer()), "bad signature"),  # checked against the secrets only
        (lambda: jwt_with_alg("HS384"), "algorithm HS384 is not one the policy accepts"),
        (lambda: "not.a.jwt", "not a well-formed JWT"),
    ],
    ids=[
        "nbf",
        "issuer",
        "audience",
        "no-exp",
        "no-agent-claim",
        "other-secret",
        "tampered",
        "alg-none",
        "alg-NONE",
        "unknown-kid",
        "confusion-with-secrets",
        "disallowed-alg",
        "garbage",
    ],
)
async def test_a_token_failing_verification_is_401_invalid_token_and_only_the_log_says_why(
    sidecar: Sidecar, backend: Backend, caplog: pytest.LogCaptureFixture, token: object, why: str
) -> None:
    caplog.set_level(logging.INFO)
    status, reason, body, challenge = await refused(sidecar, bearer(token()))  # type: ignore[operator]
    assert (status, reason, challenge) == (401, "invalid_token", 'Bearer realm="sidecar", error="invalid_token"')
    assert set(body) == {"error", "message", "route"}  # nothing about which check failed
    assert [w for w in why_logged(caplog) if why in w], why_logged(caplog)
    assert backend.seen == []
    assert len(runtime(sidecar).failures) == 1  # a failed attempt, as a wrong secret is


def jwt_with_alg(alg: str) -> str:
    return jwt.encode(claims(), JWT_SECRET, algorithm=alg)


async def test_an_hmac_token_where_only_asymmetric_keys_are_configured_is_refused(
    backend: Backend, start_sidecar: StartSidecar, jwks: Jwks, caplog: pytest.LogCaptureFixture
) -> None:
    """Algorithm confusion: the attacker signs HS256 with the issuer's public key (anyone
    may fetch it). The policy lists HS256 but has no secrets: never verified with a key."""
    caplog.set_level(logging.INFO)
    text = jwt_yaml(keys='      jwks_url: "${JWKS_URL}"\n', jwt="      algorithms: [RS256, HS256]\n")
    sidecar = await start(start_sidecar, backend, jwks, text)
    for token in (confused(rsa_signer()), hs256()):
        status, reason, _, _ = await refused(sidecar, bearer(token))
        assert (status, reason) == (401, "invalid_token")
    assert all("algorithm confusion" in why for why in why_logged(caplog))
    async with ws_connect(sidecar, headers=bearer(signed(rsa_signer()))) as ws:  # the real thing works
        await echoes(ws)


async def test_an_expired_token_is_401_token_expired_with_its_challenge(sidecar: Sidecar, backend: Backend) -> None:
    status, reason, body, challenge = await refused(sidecar, bearer(hs256(claims(ttl=-120))))
    assert (status, reason, body["error"], challenge) == (401, "token_expired", "token_expired", EXPIRED_CHALLENGE)
    assert "sidecar token" in str(body["message"])
    assert backend.seen == []
    assert len(runtime(sidecar).failures) == 0  # a genuine token, expired: not a guess at a secret


@pytest.mark.parametrize("exp", ["1" + "0" * 400, "1e400", '"99999999999"'], ids=["huge", "overflow", "string"])
async def test_an_exp_that_is_not_a_numeric_date_is_401_invalid_token(
    sidecar: Sidecar, backend: Backend, exp: str
) -> None:
    payload = claims("edge_1")
    payload.pop("exp")
    text = json.dumps(payload)[:-1] + f', "exp": {exp}}}'
    status, reason, body, _ = await refused(sidecar, bearer(hs256_raw(text)))
    assert (status, reason, body["error"]) == (401, "invalid_token", "invalid_token")
    assert backend.seen == []


# --- expiry ends the session -------------------------------------------------------------


@dataclass
class Timer:
    when: float
    callback: Callable[[Session], None]
    session: Session
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock(WallClock):
    """A wall clock the test moves: expiry callbacks run when :meth:`advance` passes them."""

    def __init__(self) -> None:
        self.time = time.time()
        self.due: list[Timer] = []

    def now(self) -> float:
        return self.time

    def call_at(self, when: float, callback: Callable[[Session], None], session: Session) -> Cancellable:
        self.due.append(Timer(when, callback, session))
        return self.due[-1]

    def advance(self, seconds: float) -> None:
        self.time += seconds
        for timer in [t for t in self.due if t.when <= self.time]:
            self.due.remove(timer)
            if not timer.cancelled:
                timer.callback(timer.session)


async def test_an_open_session_is_closed_with_4401_at_expiry_and_its_backend_leg_with_1001(
    backend: Backend, start_sidecar: StartSidecar, jwks: Jwks
) -> None:
    sidecar = await start(start_sidecar, backend, jwks, jwt_yaml(jwt="      leeway: 0s\n"))
    clock = runtime(sidecar).sessions.clock = ManualClock()
    async with ws_connect(sidecar, headers=bearer(hs256(claims("edge_3", ttl=600)))) as ws:
        await echoes(ws)  # open: the token is valid for ten minutes more
        (session,) = runtime(sidecar).sessions.sessions()
        assert [timer.when for timer in clock.due] == [session.expires_at]
        clock.advance(599)
        await echoes(ws)  # not yet
        clock.advance(2)  # exp is now in the past
        assert await closed_by_peer(ws) == (4401, "token expired")
    await until(lambda: backend.closes == [(1001, "sidecar closing the session")])
    await until(lambda: sidecar.sample("sidecar_ws_closes_total", route="edge", initiator="sidecar", code="4401") == 1)
    assert sidecar.sample("sidecar_ws_token_expiries_total", route="edge") == 1
    assert len(runtime(sidecar).sessions) == 0


async def test_the_registrys_wall_clock_calls_back_at_a_wall_clock_time() -> None:
    called = asyncio.Event()
    WallClock().call_at(time.time() - 1, lambda _: called.set(), cast(Session, None))  # already due: at once
    await asyncio.wait_for(called.wait(), 10)


async def test_with_on_expiry_ignore_an_open_session_has_no_expiry(
    backend: Backend, start_sidecar: StartSidecar, jwks: Jwks
) -> None:
    sidecar = await start(start_sidecar, backend, jwks, jwt_yaml(jwt="      on_expiry: ignore\n"))
    async with ws_connect(sidecar, headers=bearer(hs256(claims(ttl=2)))) as ws:
        await echoes(ws)
        (session,) = runtime(sidecar).sessions.sessions()
        assert session.expires_at is None
    # ... while with close (the default) the session carries exp + leeway.
    sidecar = await start(start_sidecar, backend, jwks)
    payload = claims(ttl=600)
    async with ws_connect(sidecar, headers=bearer(hs256(payload))) as ws:
        await echoes(ws)
        (session,) = runtime(sidecar).sessions.sessions()
        assert session.expires_at == payload["exp"] + 30


# --- the JWKS: rotation, outages ---------------------------------------------------------


async def test_a_key_the_jwks_gains_is_used_without_a_restart(
    sidecar: Sidecar, backend: Backend, jwks: Jwks, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert sidecar.sample("sidecar_jwks_refreshes_total", result="success") == 1  # fetched at start
    rotated = ec_signer("ec-2")
    token = signed(rotated, claims("edge_8"))
    status, reason, _, _ = await refused(sidecar, bearer(token))  # not in the set fetched at start
    assert (status, reason) == (401, "invalid_token")
    jwks.add(rotated)
    # The unknown kid woke a fetch (the handshake did not wait for it) ...
    await until(lambda: sidecar.sample("sidecar_jwks_refreshes_total", result="success") == 2)
    async with ws_connect(sidecar, headers=bearer(token)) as ws:  # ... and now the key is known
        await echoes(ws)
    assert agent_ids_seen(backend) == ["edge_8"]
    refreshed = log_fields(caplog, "jwks.refreshed")
    assert refreshed[-1]["kids"] == ["rsa-1", "ec-1", "ed-1", "ec-2"]


async def test_a_handshake_never_waits_for_the_jwks(sidecar: Sidecar, jwks: Jwks) -> None:
    jwks.hold = asyncio.Event()  # the issuer stops answering
    fetches = jwks.fetches
    status, reason, _, _ = await refused(sidecar, bearer(signed(ec_signer("ec-unknown"))))
    assert (status, reason) == (401, "invalid_token")
    await until(lambda: jwks.fetches == fetches + 1)  # the fetch it woke is still waiting ...
    async with ws_connect(sidecar, headers=bearer(signed(ec_signer()))) as ws:  # ... and known keys work
        await echoes(ws)


async def test_the_jwks_going_down_keeps_the_known_keys_and_readyz_says_so(
    sidecar: Sidecar, backend: Backend, jwks: Jwks, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await jwks.stop()
    status, _, _, _ = await refused(sidecar, bearer(signed(rsa_signer("rsa-new"))))  # wakes a fetch
    assert status == 401
    await until(lambda: sidecar.sample("sidecar_jwks_refreshes_total", result="failure") == 1)
    for signer in (rsa_signer(), ec_signer(), ed_signer()):
        async with ws_connect(sidecar, headers=bearer(signed(signer))) as ws:
            await echoes(ws)
    async with aiohttp.ClientSession() as http, http.get(sidecar.url("/readyz", "http")) as response:
        assert response.status == 200  # said, not failed on
        body = await response.json()
    assert list(body["jwks"]) == ["edge"]
    assert body["jwks"]["edge"].startswith("last refresh failed; using the 3 keys fetched ")
    assert jwks.url not in json.dumps(body)  # the public body names the policy, not the issuer
    (failed,) = log_fields(caplog, "jwks.refresh_failed")
    assert (failed["url"], failed["keeping"]) == (jwks.url, 3)


async def test_a_jwks_answer_that_is_not_a_key_set_keeps_the_last_good_keys(sidecar: Sidecar, jwks: Jwks) -> None:
    jwks.document = json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "rsa-1"}]}).encode()
    await refused(sidecar, bearer(signed(rsa_signer("rsa-9"))))  # unknown kid: wakes a fetch
    await until(lambda: sidecar.sample("sidecar_jwks_refreshes_total", result="failure") == 1)
    async with ws_connect(sidecar, headers=bearer(signed(rsa_signer()))) as ws:
        await echoes(ws)


# --- secrets stay secret -----------------------------------------------------------------


async def test_no_jwt_secret_or_token_reaches_a_log_line_a_body_or_a_metric(
    sidecar: Sidecar, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = [hs256(), hs256(claims(ttl=-60)), confused(rsa_signer()), hs256(claims("edge_1"))]
    bodies = []
    for token in tokens[:3]:
        bodies.append(json.dumps(await refused(sidecar, {**bearer(token), "X-Edge-Agent-Id": "edge_2"})))
    async with ws_connect(sidecar, headers=bearer(tokens[3])) as ws:
        await echoes(ws)
    metrics = generate_latest(sidecar.metrics.registry).decode()  # what /metrics serves
    records = [r for r in caplog.records if not r.name.startswith("websockets")]
    logged = [r.getMessage() for r in records] + formatted(records)
    for secret in (JWT_SECRET, *tokens, *(t.split(".")[2] for t in tokens)):
        assert not [line for line in logged if secret in line]
        assert not [body for body in bodies if secret in body]
        assert secret not in metrics
    config = runtime(sidecar).config
    assert JWT_SECRET not in repr(config) and JWT_SECRET not in repr(config.auth["edge"])
