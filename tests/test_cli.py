"""The command line as scripts and deploys use it: real processes, real signals."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import subprocess
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from sidecar.extensions import pure_python_parts

from .conftest import GOOD, ROOT, SECRET, SIDECAR, free_port, process_env, spawned, taken_port
from .upstream import Backend
from .wire import closed_by_peer, echoes, scrape


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SIDECAR, *args], capture_output=True, text=True, env=process_env(**(env or {})), cwd=ROOT, timeout=60
    )


def serve(env: dict[str, str], *flags: str, **options: Any) -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """``sidecar serve`` on the shipped routes.yaml with ``env``, its log on a pipe."""
    command = [*SIDECAR, "serve", "--config", "routes.yaml", *flags]
    return spawned(*command, cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE, **options)


def test_check_summarises_the_shipped_config_and_warns_of_unset_secret() -> None:
    result = run("check", "routes.yaml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "routes.yaml: valid, 3 route(s)"
    assert lines[1].split()[:4] == ["edge", "websocket", "/edge/ws,", "/ws/edge"]
    assert "auth=edge" in lines[1] and "backend" in lines[1]
    assert lines[-2:] == [
        "  /healthz is answered by the sidecar itself, before routing (route 'default' never sees it)",
        "  /readyz is answered by the sidecar itself, before routing (route 'default' never sees it)",
    ]
    assert "environment variable EDGE_SECRET is referenced but not set" in result.stderr
    line = next(
        i for i, text in enumerate((ROOT / "routes.yaml").read_text().splitlines(), 1) if "${EDGE_SECRET}" in text
    )
    assert f"routes.yaml:{line}: warning:" in result.stderr


def test_check_lists_every_problem_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "upstreams:\n"
        "  backend: {url: ftp://x}\n"
        "routes:\n"
        "  - {name: a, type: websocket, paths: [/x], upstream: nowhere, colour: red}\n"
        "  - {name: b, type: http, paths: [/x], upstream: backend, auth: missing}\n"
    )
    result = run("check", str(bad))
    assert result.returncode == 2
    for expected in (
        f"{bad}:2: error: upstreams.backend.url: must start with http:// or https://",
        f"{bad}:4: error: routes[0] (a): unknown key 'colour'",
        f"{bad}:4: error: routes[0] (a).upstream: no upstream named 'nowhere' (defined: backend)",
        f"{bad}:5: error: routes[1] (b).auth: no auth policy named 'missing'",
    ):
        assert expected in result.stderr, result.stderr


def test_check_reports_yaml_syntax_errors_with_a_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("routes:\n  - name: a\n   type: http\n")
    result = run("check", str(bad))
    assert result.returncode == 2
    assert f"{bad}:3:4: error: YAML syntax: indented unlike the block it is in, from line 2, column 3" in result.stderr


def test_serve_refuses_to_start_without_the_secret() -> None:
    for env in ({}, {"EDGE_SECRET": ""}):
        result = run("serve", "--config", "routes.yaml", env=env)
        assert result.returncode == 2
        assert "EDGE_SECRET" in result.stderr
        assert "not starting" in result.stderr


async def test_serve_relays_then_sigterm_closes_sessions_with_1012_and_exits_0(backend: Backend) -> None:
    port, metrics_port = free_port(), free_port()
    env = process_env(
        EDGE_SECRET=SECRET, UPSTREAM_URL=backend.url, PORT=str(port), METRICS_PORT=str(metrics_port), LOG_FORMAT="json"
    )
    async with serve(env) as process:
        assert process.stderr is not None
        started = await asyncio.wait_for(process.stderr.readline(), 30)
        assert b'"event": "sidecar.started"' in started
        async with connect(f"ws://127.0.0.1:{port}/edge/ws", additional_headers=GOOD) as ws:
            await echoes(ws, "over real sockets")
            process.send_signal(signal.SIGTERM)
            assert await closed_by_peer(ws, skip_messages=False) == (1012, "service restart: reconnect")
        assert await asyncio.wait_for(process.wait(), 30) == 0
        assert backend.closes == [(1001, "sidecar closing the session")]
        logged = (await process.stderr.read()).decode()
        assert '"event": "ws.closed"' in logged and SECRET not in logged


def test_serve_says_clearly_when_the_port_is_taken() -> None:
    with taken_port() as port:
        result = run("serve", "--config", "routes.yaml", env={"EDGE_SECRET": SECRET, "PORT": str(port)})
    assert result.returncode == 1
    assert f"cannot listen on *:{port}" in result.stderr
    assert "Traceback" not in result.stderr


# --- aiohttp without its C extensions ---------------------------------------------------


def test_this_install_runs_aiohttp_on_its_c_extensions() -> None:
    assert pure_python_parts() == []


def test_serve_refuses_pure_python_aiohttp_with_one_line_naming_the_fix() -> None:
    result = run("serve", "--config", "routes.yaml", env={"EDGE_SECRET": SECRET, "AIOHTTP_NO_EXTENSIONS": "1"})
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("not starting: aiohttp is running without its C extensions (HTTP request parser, ")
    for fix in (
        "unset AIOHTTP_NO_EXTENSIONS",
        "--only-binary=aiohttp",
        "--allow-pure-python",
        "SIDECAR_ALLOW_PURE_PYTHON=1",
    ):
        assert fix in line


@pytest.mark.parametrize(
    ("flag", "env"),
    [(["--allow-pure-python"], {}), ([], {"SIDECAR_ALLOW_PURE_PYTHON": "1"})],
    ids=["flag", "env"],
)
async def test_serve_on_pure_python_aiohttp_when_allowed_warns_and_serves(
    backend: Backend, flag: list[str], env: dict[str, str]
) -> None:
    environment = process_env(
        **env,
        AIOHTTP_NO_EXTENSIONS="1",
        EDGE_SECRET=SECRET,
        UPSTREAM_URL=backend.url,
        PORT="0",  # a free port, read back from the log: no race with other test runs
        METRICS_PORT="0",
    )
    async with serve(environment, *flag) as process:
        assert process.stderr is not None
        warning = json.loads(await asyncio.wait_for(process.stderr.readline(), 30))
        assert (warning["level"], warning["event"]) == ("warning", "sidecar.pure_python")
        assert "HTTP request parser" in warning["parts"]
        started = json.loads(await asyncio.wait_for(process.stderr.readline(), 30))
        assert started["event"] == "sidecar.started"
        port = int(started["listen"].rpartition(":")[2])
        async with connect(f"ws://127.0.0.1:{port}/edge/ws", additional_headers=GOOD) as ws:
            await echoes(ws, "pure")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_serve_raises_its_open_files_limit_and_says_so() -> None:
    # Started with a low soft limit, as a shell or service manager often starts it
    # (1024): 5,000 sessions need 10,000 descriptors.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256

    def lower_the_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    port, metrics_port = free_port(), free_port()
    env = process_env(EDGE_SECRET=SECRET, PORT=str(port), METRICS_PORT=str(metrics_port))
    async with serve(env, preexec_fn=lower_the_soft_limit) as process:
        assert process.stderr is not None
        started = json.loads(await asyncio.wait_for(process.stderr.readline(), 30))
        assert started["event"] == "sidecar.started"
        expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
        assert started["open_files_limit"] == expected > low
        assert (await scrape(metrics_port))["process_max_fds"] == expected


async def test_serve_warns_when_the_session_cap_needs_more_files_than_it_may_open() -> None:
    def cap_the_hard_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))  # as a container's nofile might be

    port, metrics_port = free_port(), free_port()
    env = process_env(EDGE_SECRET=SECRET, PORT=str(port), METRICS_PORT=str(metrics_port))
    async with serve(env, preexec_fn=cap_the_hard_limit) as process:
        assert process.stderr is not None
        started = json.loads(await asyncio.wait_for(process.stderr.readline(), 30))
        assert (started["event"], started["open_files_limit"]) == ("sidecar.started", 4096)
        warning = json.loads(await asyncio.wait_for(process.stderr.readline(), 30))
        assert warning["event"] == "sidecar.open_files_low"
        assert (warning["level"], warning["max_sessions"], warning["needed"]) == ("warning", 10000, 20256)
        assert "limits.max_sessions" in warning["fix"]


def test_check_says_a_file_that_is_not_utf8_is_not_utf8(tmp_path: Path) -> None:
    latin1 = tmp_path / "routes.yaml"
    latin1.write_bytes((ROOT / "routes.yaml").read_bytes() + b"# caf\xe9\n")
    result = run("check", str(latin1))
    assert result.returncode == 2
    lines = (ROOT / "routes.yaml").read_text().count("\n") + 1
    assert f"{latin1}:{lines}: error: not UTF-8: save the file as UTF-8" in result.stderr
    assert "Traceback" not in result.stderr
