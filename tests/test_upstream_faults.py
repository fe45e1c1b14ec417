"""The backend failing: refusing, hanging, killed mid-session, waking up. Real sockets, and a
real backend process where one is killed."""

from __future__ import annotations

import asyncio
import base64
import logging
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection

from sidecar.config import Route, Upstream
from sidecar.pool import Target
from sidecar.upstream import accept_for, open_websocket, upgrade_request

from .conftest import GOOD, ROOT, StartSidecar, config_for, edge_yaml, free_port, spawned
from .upstream import Backend
from .wire import closed_by_peer, echoes, log_fields, raw_upstream, rejected, scrape, until, until_scraped, ws_connect

# --- refused, hanging ------------------------------------------------------------------


async def test_a_refused_connection_is_502_upstream_unavailable(start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(config_for(f"http://127.0.0.1:{free_port()}", edge_yaml()))  # nothing listens
    status, headers, body = await rejected(sidecar, "/edge/ws", GOOD)
    assert (status, headers["X-Sidecar-Reason"], body["error"]) == (502, "upstream_unavailable", "upstream_unavailable")
    assert body["detail"] == "ClientConnectorError"
    assert sidecar.sample("sidecar_ws_rejections_total", route="edge", reason="upstream_unavailable") == 1


@pytest.fixture
async def silent_upstream() -> AsyncIterator[str]:
    """Accepts TCP connections and never says a word (nor reads one)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    async with raw_upstream(accept) as url:
        yield url
        for writer in held:
            writer.transport.abort()


async def test_the_deadline_is_a_timeout_and_leaves_the_task_as_it_found_it(silent_upstream: str) -> None:
    """open_websocket's deadline cancels its own task, and takes that cancellation back: the
    caller gets TimeoutError, and a task cancelled from outside meanwhile stays cancelled."""
    route = Route("edge", True, Upstream("backend", silent_upstream, connect_timeout=0.2), paths=("/edge/ws",))
    target = Target.of(route.upstream)
    with pytest.raises(TimeoutError):
        await open_websocket(route, target, None, "/edge/ws", b"", (), None)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0

    hanging = asyncio.ensure_future(open_websocket(route, target, None, "/edge/ws", b"", (), None))
    await asyncio.sleep(0)  # it is connecting
    hanging.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(hanging, 10)


@pytest.mark.parametrize("retry", ["", ", retry: {attempts: 5, backoff: 50ms}"], ids=["no-retry", "retry"])
async def test_a_hanging_upstream_is_504_after_connect_timeout(
    silent_upstream: str, start_sidecar: StartSidecar, retry: str
) -> None:
    sidecar = await start_sidecar(
        config_for(silent_upstream, edge_yaml(upstream=", connect_timeout: 300ms", route=retry))
    )
    status, headers, _ = await rejected(sidecar, "/edge/ws", GOOD)
    assert (status, headers["X-Sidecar-Reason"]) == (504, "upstream_timeout")
    assert sidecar.sample("sidecar_ws_rejections_total", route="edge", reason="upstream_timeout") == 1


# --- killed mid-session ------------------------------------------------------------------


async def test_killing_the_backend_gives_every_client_1011_and_the_gauge_returns_to_zero(
    start_sidecar: StartSidecar,
) -> None:
    port = free_port()
    async with spawned(
        sys.executable, "-u", "-m", "tests.upstream", str(port), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    ) as backend:
        assert backend.stdout is not None
        assert b"test backend:" in await asyncio.wait_for(backend.stdout.readline(), 30)
        sidecar = await start_sidecar(config_for(f"http://127.0.0.1:{port}", edge_yaml()), metrics_port=0)
        assert sidecar.running.metrics_port is not None
        gauge = 'sidecar_ws_connections_active{route="edge"}'
        agents: list[ClientConnection] = [await ws_connect(sidecar) for _ in range(3)]
        async with aiohttp.ClientSession() as session:
            others = [await session.ws_connect(sidecar.url("/edge/ws"), headers=GOOD) for _ in range(2)]
            for ws in agents:
                await echoes(ws, "hi")
            for other in others:
                await other.send_str("hi")
                assert (await other.receive()).data == "hi"
            assert (await scrape(sidecar.running.metrics_port))[gauge] == 5

            backend.send_signal(signal.SIGKILL)
            codes = [await closed_by_peer(ws) for ws in agents]
            for other in others:
                msg = await asyncio.wait_for(other.receive(), 10)
                codes.append((msg.data, msg.extra))
        assert codes == [(1011, "upstream went away")] * 5
        await until_scraped(sidecar.running.metrics_port, gauge, 0)  # scraped as Prometheus would


# --- retrying the handshake ----------------------------------------------------------------

RETRY = edge_yaml(upstream=", connect_timeout: 10s", route=", retry: {attempts: 20, backoff: 50ms}")


async def test_with_retry_a_backend_that_starts_late_is_reached(
    start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    port = free_port()  # nothing listens on it yet
    sidecar = await start_sidecar(config_for(f"http://127.0.0.1:{port}", RETRY))
    connecting = asyncio.ensure_future(ws_connect(sidecar))
    await until(lambda: log_fields(caplog, "ws.upstream_retry") or connecting.done())  # refused at least once
    if connecting.done():  # refused for good, with no retry
        pytest.fail(f"no retry: {connecting.exception()!r}")
    backend = await Backend(port=port).start()
    try:
        async with await asyncio.wait_for(connecting, 20) as ws:
            await echoes(ws, "awake?")
    finally:
        await backend.stop()
    first = log_fields(caplog, "ws.upstream_retry")[0]
    assert (first["route"], first["attempt"], first["attempts"], first["error"]) == (
        "edge",
        1,
        20,
        "ClientConnectorError",
    )


async def test_without_retry_a_backend_not_yet_listening_is_502(
    start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    sidecar = await start_sidecar(config_for(f"http://127.0.0.1:{free_port()}", edge_yaml()))
    status, headers, _ = await rejected(sidecar, "/edge/ws", GOOD)
    assert (status, headers["X-Sidecar-Reason"]) == (502, "upstream_unavailable")
    assert log_fields(caplog, "ws.upstream_retry") == []


def waking(attempts: int) -> str:
    return edge_yaml(route=f", upstream_path: /waking/ws, retry: {{attempts: {attempts}, backoff: 50ms}}")


async def test_a_backend_answering_503_twice_then_101_is_reached_on_the_third_try(
    backend: Backend, start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    sidecar = await start_sidecar(config_for(backend.url, waking(3)))
    async with ws_connect(sidecar) as ws:
        await echoes(ws, "third time")
    assert [s.path for s in backend.seen] == ["/waking/ws"] * 3
    assert [r["error"] for r in log_fields(caplog, "ws.upstream_retry")] == ["status 503", "status 503"]


async def test_when_the_tries_run_out_the_last_failure_is_reported(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start_sidecar(config_for(backend.url, waking(2)))
    status, headers, _ = await rejected(sidecar, "/edge/ws", GOOD)
    assert (status, headers["X-Sidecar-Reason"], headers["X-Sidecar-Upstream-Status"]) == (
        502,
        "upstream_rejected",
        "503",
    )
    assert len(backend.seen) == 2


async def test_a_refusal_that_will_not_change_is_not_retried(backend: Backend, start_sidecar: StartSidecar) -> None:
    config = edge_yaml(route=", upstream_path: /forbidden/ws, retry: {attempts: 5, backoff: 50ms}")
    sidecar = await start_sidecar(config_for(backend.url, config))
    status, headers, _ = await rejected(sidecar, "/edge/ws", GOOD)
    assert (status, headers["X-Sidecar-Upstream-Status"]) == (502, "403")
    assert len(backend.seen) == 1


async def test_retries_stay_within_connect_timeout(
    start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    """100 tries allowed, but the doubling backoff outgrows a 500 ms handshake timeout after a
    few: the sidecar gives up when the next try could not start in time, with the last failure."""
    caplog.set_level(logging.INFO, logger="sidecar")
    config = edge_yaml(upstream=", connect_timeout: 500ms", route=", retry: {attempts: 100, backoff: 50ms}")
    sidecar = await start_sidecar(config_for(f"http://127.0.0.1:{free_port()}", config))
    status, headers, _ = await rejected(sidecar, "/edge/ws", GOOD)
    assert (status, headers["X-Sidecar-Reason"]) == (502, "upstream_unavailable")  # not a 504: no try was cut short
    assert 1 <= len(log_fields(caplog, "ws.upstream_retry")) < 10


async def test_a_retry_the_deadline_cuts_short_reports_the_backends_last_answer(start_sidecar: StartSidecar) -> None:
    """The first try is answered 503 (worth a retry); the second hangs until connect_timeout
    runs out. The client learns what the backend said (502, its 503), not 504: the sidecar's
    own budget ran out during a retry, the backend had already answered."""
    tries: list[int] = []

    async def speak(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        tries.append(1)
        if len(tries) == 1:
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        await reader.read()  # the second try: never answered

    config = edge_yaml(upstream=", connect_timeout: 1s", route=", retry: {attempts: 5, backoff: 10ms}")
    async with raw_upstream(speak) as url:
        sidecar = await start_sidecar(config_for(url, config))
        status, headers, body = await rejected(sidecar, "/edge/ws", GOOD)
    assert body["upstream_status"] == 503
    assert (status, headers["X-Sidecar-Reason"], headers["X-Sidecar-Upstream-Status"]) == (
        502,
        "upstream_rejected",
        "503",
    )
    assert len(tries) == 2


def test_the_accept_and_the_key_are_rfc_6455s() -> None:
    # Section 1.3's sample, and a fresh 16-byte key, base64 without a newline (section 4.1).
    assert accept_for(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    target = Target.of(Upstream("backend", "http://127.0.0.1:1"))
    request, key = upgrade_request(target, "/edge/ws", b"", (), None)
    assert len(key) == 24 and len(base64.b64decode(key, validate=True)) == 16
    assert b"\r\nSec-WebSocket-Key: " + key + b"\r\n" in request
