"""``sidecar token`` and what ``sidecar check`` says of signed tokens, as an operator runs
them: real processes, the token minted by one accepted by a real ``sidecar serve``."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import jwt
import pytest
from websockets.asyncio.client import connect

from sidecar.fingerprint import fingerprint

from .conftest import ROOT, SIDECAR, free_port, process_env, spawned
from .issuer import JWT_SECRET, JWT_SECRET_PREVIOUS
from .upstream import Backend
from .wire import echoes

CONFIG = """\
listen: {port: "${PORT:-8080}"}
metrics: {port: "${METRICS_PORT:-0}"}
upstreams: {backend: {url: "${UPSTREAM_URL:-http://127.0.0.1:1}"}}
auth:
  edge:
    jwt:
      secrets: ["${EDGE_JWT_SECRET:-}", "${EDGE_JWT_SECRET_PREVIOUS:-}"]
      jwks_url: ${EDGE_JWKS_URL:-}
      algorithms: [HS256]
      issuer: https://issuer.test
    agent_id: {pattern: 'edge_[0-9]{1,12}'}
routes:
  - {name: edge, type: websocket, paths: [/edge/ws], upstream: backend, auth: edge}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(CONFIG)
    return path


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SIDECAR, *args], capture_output=True, text=True, env=process_env(**env), cwd=ROOT, timeout=60, check=False
    )


def test_token_prints_an_hs256_token_for_the_agent_signed_with_the_first_secret(config: Path) -> None:
    before = int(time.time())
    result = run("token", "edge_77", "--config", str(config), "--ttl", "2h", EDGE_JWT_SECRET=JWT_SECRET)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    payload = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], issuer="https://issuer.test")
    assert payload["sub"] == "edge_77"
    assert before + 7200 <= payload["exp"] <= int(time.time()) + 7200
    assert f"signed with {fingerprint(JWT_SECRET)}" in result.stderr
    assert JWT_SECRET not in result.stdout + result.stderr


def test_token_ttl_defaults_to_24_hours(config: Path) -> None:
    result = run("token", "edge_1", "--config", str(config), EDGE_JWT_SECRET=JWT_SECRET)
    payload = jwt.decode(result.stdout.strip(), JWT_SECRET, algorithms=["HS256"], issuer="https://issuer.test")
    assert payload["exp"] - payload["iat"] == 24 * 3600


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["edge_1"], {"EDGE_JWKS_URL": "https://issuer.test/jwks"}, "auth.edge has no jwt.secrets set"),
        (["not an id"], {"EDGE_JWT_SECRET": JWT_SECRET}, "'not an id' is not a valid agent id for auth.edge"),
        (["edge_1234567890123"], {"EDGE_JWT_SECRET": JWT_SECRET}, "at most 17 characters"),
        (["edge_1", "--ttl", "soon"], {"EDGE_JWT_SECRET": JWT_SECRET}, "--ttl: expected a duration"),
        (["edge_1", "--auth", "other"], {"EDGE_JWT_SECRET": JWT_SECRET}, "no auth policy named 'other'"),
    ],
    ids=["no-secret", "bad-id", "too-long", "bad-ttl", "no-such-policy"],
)
def test_token_exits_2_with_a_clear_message(config: Path, args: list[str], env: dict[str, str], says: str) -> None:
    result = run("token", *args, "--config", str(config), **env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert says in result.stderr, result.stderr


def test_token_refuses_a_secret_shorter_than_the_algorithms_hash(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(CONFIG.replace("algorithms: [HS256]", "algorithms: [HS256, HS512]"))
    secret = "s" * 40  # enough for HS256, not for HS512 (RFC 7518 section 3.2: 64 bytes)
    for command in ("token", "check"):
        args = ["edge_1", "--config", str(path)] if command == "token" else [str(path)]
        result = run(command, *args, EDGE_JWT_SECRET=secret)
        assert result.returncode == 2
        assert result.stdout == ""
        assert f"{path}:7: error: auth.edge.jwt.secrets: a secret is shorter than 64 bytes, too short for HS512" in (
            result.stderr
        ), result.stderr
        assert secret not in result.stderr
        if command == "token":
            assert result.stderr.splitlines()[-1] == f"sidecar token: {path} has errors (see above)"


def test_check_prints_the_key_fingerprints_never_the_keys(config: Path) -> None:
    result = run("check", str(config), EDGE_JWT_SECRET=JWT_SECRET, EDGE_JWT_SECRET_PREVIOUS=JWT_SECRET_PREVIOUS)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"  auth edge      EDGE_JWT_SECRET          set, {fingerprint(JWT_SECRET)} (64 bytes)" in lines
    assert f"  auth edge      EDGE_JWT_SECRET_PREVIOUS set, {fingerprint(JWT_SECRET_PREVIOUS)} (64 bytes)" in lines
    assert "  auth edge      jwt: 2 HMAC secret(s), the first signs ('sidecar token')" in lines
    for secret in (JWT_SECRET, JWT_SECRET_PREVIOUS):
        assert secret not in result.stdout + result.stderr


def test_check_says_an_empty_key_set_is_an_error(config: Path) -> None:
    result = run("check", str(config))
    assert result.returncode == 2
    assert f"{config}:7: error: auth.edge.jwt: no key is set" in result.stderr


async def test_a_token_from_sidecar_token_is_accepted_by_sidecar_serve(config: Path, backend: Backend) -> None:
    minted = run("token", "edge_77", "--config", str(config), EDGE_JWT_SECRET=JWT_SECRET)
    assert minted.returncode == 0, minted.stderr
    port = free_port()
    env = process_env(EDGE_JWT_SECRET=JWT_SECRET, UPSTREAM_URL=backend.url, PORT=str(port), LOG_FORMAT="json")
    command = [*SIDECAR, "serve", "--config", str(config)]
    async with spawned(*command, cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE) as process:
        assert process.stderr is not None
        assert b'"event": "sidecar.started"' in await asyncio.wait_for(process.stderr.readline(), 30)
        url = f"ws://127.0.0.1:{port}/edge/ws"
        async with connect(url, additional_headers={"Authorization": f"Bearer {minted.stdout.strip()}"}) as ws:
            await echoes(ws, "minted by sidecar token")
    assert [seen.headers["x-edge-agent-id"] for seen in backend.seen] == [["edge_77"]]
