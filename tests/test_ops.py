"""Operating it: health checks, the drain, live reload and dual-stack listeners,
on the real app (and, for signals, a real ``sidecar serve`` process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State

from sidecar import health
from sidecar.config import Upstream
from sidecar.server import bind

from .conftest import GOOD, ROOT, SECRET, SIDECAR, StartSidecar, config_for, free_port, process_env, spawned
from .upstream import Backend
from .wire import closed_by_peer, echoes, exchange, rejected, until, ws_connect


def agent(n: int) -> dict[str, str]:
    """Headers for agent ``n``: each session its own agent id (a second would replace the first)."""
    return {**GOOD, "X-Edge-Agent-Id": f"edge_{n}"}


RESTART = (1012, "service restart: reconnect")


async def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http, http.request(method, url) as response:
        return response.status, dict(response.headers), await response.read()


async def closed(ws: ClientConnection) -> tuple[int, str]:
    """The close a draining sidecar sends, with nothing before it (a drain takes its time)."""
    return await closed_by_peer(ws, timeout=20, skip_messages=False)


# --- health ------------------------------------------------------------------------


async def test_healthz_and_readyz_are_answered_by_the_sidecar(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(config_for(backend.url))
    status, headers, body = await get(sidecar.url("/healthz", "http"))
    assert (status, json.loads(body)) == (200, {"status": "ok", "draining": False})
    assert headers["Cache-Control"] == "no-store"
    status, _, body = await get(sidecar.url("/readyz", "http"))
    assert status == 200
    assert json.loads(body) == {
        "status": "ready",
        "config_sha256": sidecar.running.runtime.config.digest[:12],
        "upstreams": {"backend": "ok"},
    }
    assert backend.seen == []  # not passed to the catch-all route
    status, _, body = await get(sidecar.url("/readyz", "http"), "HEAD")
    assert (status, body) == (200, b"")
    status, headers, _ = await get(sidecar.url("/healthz", "http"), "POST")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")


async def test_readyz_is_503_when_the_upstream_is_unreachable(start_sidecar: StartSidecar) -> None:
    port = free_port()
    sidecar = await start_sidecar(config_for(f"http://127.0.0.1:{port}"))
    status, headers, body = await get(sidecar.url("/readyz", "http"))
    assert status == 503
    assert headers["X-Sidecar-Reason"] == "upstream_unavailable"
    answer = json.loads(body)
    assert (answer["status"], answer["error"]) == ("not_ready", "upstream_unavailable")
    assert answer["upstreams"] == {"backend": f"127.0.0.1:{port}: Connection refused"}
    status, _, _ = await get(sidecar.url("/healthz", "http"))
    assert status == 200  # alive, just not ready


async def test_a_health_checker_hanging_up_does_not_fail_the_others(
    backend: Backend, start_sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow network to the upstream cannot be had on loopback: the probe is slowed.
    connect = health._connect

    async def slow(upstream: Upstream) -> str | None:
        await asyncio.sleep(0.5)
        return await connect(upstream)

    monkeypatch.setattr(health, "_connect", slow)
    sidecar = await start_sidecar(config_for(backend.url))

    # Raw sockets: aiohttp's client would quietly retry a GET whose connection dropped.
    readyz = b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    patient = asyncio.ensure_future(exchange(sidecar.port, readyz))
    _, impatient = await asyncio.open_connection("127.0.0.1", sidecar.port)
    impatient.write(readyz)
    await asyncio.sleep(0.1)
    impatient.close()  # hangs up while the probe they share runs
    assert (await asyncio.wait_for(patient, 20)).startswith(b"HTTP/1.1 200 ")
    assert (await exchange(sidecar.port, readyz)).startswith(b"HTTP/1.1 200 ")


async def test_health_paths_are_configurable(backend: Backend, start_sidecar: StartSidecar) -> None:
    text = (ROOT / "routes.yaml").read_text().replace("live: /healthz", "live: /-/live")
    text = text.replace("ready: /readyz", "ready: /-/ready")
    sidecar = await start_sidecar(config_for(backend.url, text))
    assert (await get(sidecar.url("/-/live", "http")))[0] == 200
    assert (await get(sidecar.url("/-/ready", "http")))[0] == 200
    await get(sidecar.url("/healthz", "http"))
    assert [s.path for s in backend.seen] == ["/healthz"]  # now an ordinary path, for the backend


# --- the drain ---------------------------------------------------------------------


async def test_drain_refuses_new_work_with_503_draining(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(config_for(backend.url), metrics_port=0)
    await sidecar.running.drain()  # no sessions: returns at once, still listening
    status, headers, body = await get(sidecar.url("/readyz", "http"))
    assert (status, headers["X-Sidecar-Reason"], json.loads(body)["error"]) == (503, "draining", "draining")
    status, _, body = await get(sidecar.url("/healthz", "http"))
    assert (status, json.loads(body)["draining"]) == (200, True)
    status, headers, body = await get(sidecar.url("/edge/message", "http"), "POST")
    assert (status, headers["X-Sidecar-Reason"], headers["Retry-After"]) == (503, "draining", "1")
    assert headers["Connection"] == "close"  # a kept-alive connection would pin the client to this replica
    status, refusal, _ = await rejected(sidecar, "/edge/ws", GOOD, open_timeout=10)
    assert (status, refusal["X-Sidecar-Reason"]) == (503, "draining")
    assert refusal["Retry-After"] == "1"
    assert backend.seen == []
    assert sidecar.sample("sidecar_ws_rejections_total", route="none", reason="draining") == 1
    assert sidecar.sample("sidecar_http_rejections_total", route="none", reason="draining") == 1


async def test_drain_closes_sessions_with_1012_one_at_a_time(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(config_for(backend.url, DRAIN_TIMEOUT="30s"))
    sessions = [await ws_connect(sidecar, headers=agent(n)) for n in range(3)]
    hurry = asyncio.Event()
    draining = asyncio.ensure_future(sidecar.running.drain(hurry))
    assert await closed(sessions[0]) == RESTART
    # spread over the window: 10 s apart here, so the others are still open
    assert [ws.state for ws in sessions[1:]] == [State.OPEN, State.OPEN]
    await sessions[1].send("still relayed while draining")
    assert await sessions[1].recv() == "still relayed while draining"
    hurry.set()  # a second SIGTERM: the rest at once
    assert [await closed(ws) for ws in sessions[1:]] == [RESTART, RESTART]
    await asyncio.wait_for(draining, 20)
    assert sorted(backend.closes) == [(1001, "sidecar closing the session")] * 3
    assert sidecar.sample("sidecar_ws_connections_active", route="edge") == 0


async def test_a_request_in_flight_is_answered_during_the_drain(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(config_for(backend.url))
    async with aiohttp.ClientSession() as http, http.get(sidecar.url("/stream", "http")) as response:
        assert await response.content.readexactly(6) == b"first;"
        stopping = asyncio.ensure_future(sidecar.running.drain())
        await asyncio.wait_for(stopping, 20)
        closing = asyncio.ensure_future(sidecar.running.close())
        backend.release.set()
        assert await response.read() == b"second"
        assert response.status == 200
    await asyncio.wait_for(closing, 20)


@contextlib.asynccontextmanager
async def serving(
    config: Path, backend: Backend, **env: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, int]]:
    """A real ``sidecar serve`` process on free ports, logging JSON: (process, port,
    metrics port), once it has logged ``sidecar.started``. Killed on the way out."""
    port, metrics_port = free_port(), free_port()
    settings = process_env(EDGE_SECRET=SECRET, UPSTREAM_URL=backend.url, PORT=str(port), METRICS_PORT=str(metrics_port))
    environment = settings | {"LOG_FORMAT": "json", **env}
    async with spawned(
        *SIDECAR, "serve", "--config", str(config), env=environment, stderr=asyncio.subprocess.PIPE
    ) as process:
        await until_logged(process, "sidecar.started")
        yield process, port, metrics_port


async def until_logged(process: asyncio.subprocess.Process, name: str) -> dict[str, object]:
    """The next log line of event ``name`` (lines before it are skipped)."""
    assert process.stderr is not None
    async with asyncio.timeout(30):
        while True:
            line = await process.stderr.readline()
            assert line, f"the process ended before logging {name}"
            assert line.startswith(b"{"), line
            record: dict[str, object] = json.loads(line)
            if record["event"] == name:
                return record


async def test_a_second_sigterm_finishes_the_drain_at_once(backend: Backend, tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text((ROOT / "routes.yaml").read_text())
    async with serving(config, backend, DRAIN_TIMEOUT="60s") as (process, port, _):
        url = f"ws://127.0.0.1:{port}/edge/ws"
        sessions = [await connect(url, additional_headers=agent(n)) for n in range(3)]
        process.send_signal(signal.SIGTERM)
        assert await closed(sessions[0]) == RESTART
        assert sessions[2].state is State.OPEN  # due 40 s into the 60 s window
        process.send_signal(signal.SIGTERM)
        assert [await closed(ws) for ws in sessions[1:]] == [RESTART, RESTART]
        assert await asyncio.wait_for(process.wait(), 20) == 0


async def test_a_second_sigterm_cuts_short_a_request_in_flight(backend: Backend, tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text((ROOT / "routes.yaml").read_text())
    async with serving(config, backend) as (process, port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")  # the backend never answers
        await until(lambda: backend.seen)
        process.send_signal(signal.SIGTERM)
        await until_logged(process, "sidecar.stopping")
        process.send_signal(signal.SIGTERM)
        await until_logged(process, "sidecar.cancelling_requests")
        # At once, not after the requests' shutdown_timeout (close_timeout, 5 s) twice over.
        assert await asyncio.wait_for(process.wait(), 4) == 0
        assert await asyncio.wait_for(reader.read(), 4) == b""  # cut short: no response, the connection closed
        writer.close()
    await until(lambda: backend.hangs_abandoned == 1)  # and the backend's request cancelled


# --- live reload -------------------------------------------------------------------


async def test_sighup_applies_a_valid_config_and_keeps_open_sessions(backend: Backend, tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    shipped = (ROOT / "routes.yaml").read_text()
    config.write_text(shipped)
    async with serving(config, backend) as (process, port, metrics_port):
        async with connect(f"ws://127.0.0.1:{port}/edge/ws", additional_headers=GOOD) as old:
            # The edit: the alias /ws/edge is dropped and a new one added.
            config.write_text(shipped.replace("paths: [/edge/ws, /ws/edge]", "paths: [/edge/ws, /agent/ws]"))
            process.send_signal(signal.SIGHUP)
            reloaded = await until_logged(process, "config.reloaded")
            assert reloaded["routes"] == ["edge", "edge-message", "default"]
            async with connect(f"ws://127.0.0.1:{port}/agent/ws", additional_headers=agent(2)) as new:
                await echoes(new, "new alias")
            with pytest.raises(Exception) as refused:
                await connect(f"ws://127.0.0.1:{port}/ws/edge", additional_headers=GOOD)
            assert refused.value.response.status_code == 404  # type: ignore[attr-defined]
            await echoes(old, "the session admitted before the reload")
        status, _, body = await get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        text = body.decode()
        assert 'sidecar_config_reloads_total{result="success"} 1.0' in text
        assert f'sha256="{reloaded["config_sha256"]}"' in text
        assert f'sha256="{reloaded["previous_sha256"]}"' not in text  # one series: the config in use


async def test_sighup_with_an_invalid_config_keeps_the_running_one(backend: Backend, tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    shipped = (ROOT / "routes.yaml").read_text()
    config.write_text(shipped)
    async with serving(config, backend) as (process, port, metrics_port):
        config.write_text(
            shipped.replace("upstream: backend\n    upstream_path", "upstream: nowhere\n    upstream_path")
        )
        process.send_signal(signal.SIGHUP)
        problem = await until_logged(process, "config.problem")
        assert str(problem["problem"]).startswith(f"{config}:")
        assert "no upstream named 'nowhere'" in str(problem["problem"])
        failed = await until_logged(process, "config.reload_failed")
        assert failed["errors"] == 1
        async with connect(f"ws://127.0.0.1:{port}/ws/edge", additional_headers=GOOD) as ws:
            await echoes(ws, "still the old config")
        _, _, body = await get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert 'sidecar_config_reloads_total{result="failure"} 1.0' in body.decode()


# --- IPv4 and IPv6 -----------------------------------------------------------------


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback on this machine")
async def test_listeners_answer_on_ipv4_and_ipv6(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(config_for(backend.url), metrics_port=0)
    for host in ("127.0.0.1", "[::1]"):
        status, _, _ = await get(f"http://{host}:{sidecar.port}/healthz")
        assert status == 200
        status, _, body = await get(f"http://{host}:{sidecar.running.metrics_port}/metrics")
        assert status == 200 and b"sidecar_config_info" in body
    async with connect(f"ws://[::1]:{sidecar.port}/edge/ws", additional_headers=GOOD) as ws:
        await echoes(ws, "over IPv6")
    assert backend.seen[-1].headers["x-forwarded-for"] == ["::1"]


async def test_readyz_ignores_an_upstream_no_route_uses(backend: Backend, start_sidecar: StartSidecar) -> None:
    text = (
        (ROOT / "routes.yaml")
        .read_text()
        .replace("upstreams:\n", f"upstreams:\n  staged:\n    url: http://127.0.0.1:{free_port()}\n", 1)
    )
    sidecar = await start_sidecar(config_for(backend.url, text))
    status, _, body = await get(sidecar.url("/readyz", "http"))
    assert (status, json.loads(body)["upstreams"]) == (200, {"backend": "ok"})


def test_an_explicit_ipv6_wildcard_takes_ipv4_too() -> None:
    if not _has_ipv6():
        pytest.skip("no IPv6 on this machine")
    [sock] = bind("::", 0)
    try:
        sock.listen()
        with socket.create_connection(("127.0.0.1", sock.getsockname()[1]), timeout=5):
            pass  # accepted: '::' alone is every address, as Railway's docs have services bind
    finally:
        sock.close()
