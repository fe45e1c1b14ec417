"""Several sidecars on one Redis, for the fleet's tests: a real ``redis-server`` of their own
on a free port (``tests/servers.py`` finds the program, or skips naming its Debian package,
and fails in CI), and replicas either in this process (``start()`` with a replica id each)
or as ``sidecar serve`` processes (for a SIGTERM or a SIGKILL that is real).

Nothing here imitates Redis: what the tests assert about leases, budgets and control goes
through a real server and real sockets. Waits are bounds for a slow shared machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from sidecar.config import Config
from sidecar.metrics import Metrics
from sidecar.server import start

from .conftest import SECRET, SIDECAR, Sidecar, config_for, edge_yaml, free_port, process_env
from .servers import binary
from .upstream import Backend
from .wire import until

ADMIN_TOKEN = "admin-token-5f0c1d2e3a4b"


class RedisServer:
    """A ``redis-server`` on 127.0.0.1 and a port of its own: nothing saved, so a restart
    comes back empty (as a Railway Redis without a volume would)."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.directory = directory
        self.password = password
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        userinfo = f"default:{self.password}@" if self.password else ""
        return f"redis://{userinfo}127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            binary("redis-server"),
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(self.directory), "--enable-debug-command", "yes", "--protected-mode", "no"),
            *(("--requirepass", self.password) if self.password else ()),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with Redis.from_url(self.url) as client:
            await until(lambda: _answers(client))

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)
            await self.process.wait()
        self.process = None

    def client(self) -> Redis:
        """A client of the tests' own, to look at what the sidecars wrote."""
        return Redis.from_url(self.url, decode_responses=True)


async def _answers(client: Redis) -> bool:
    try:
        return bool(await client.ping())
    except (OSError, ConnectionError, Exception):  # redis-py's ConnectionError while it starts
        return False


@contextlib.asynccontextmanager
async def redis_server(directory: Path, password: str | None = None) -> AsyncIterator[RedisServer]:
    server = RedisServer(directory, password)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(signal.SIGKILL)


def fleet_yaml(
    redis_url: str,
    *,
    duplicate: str = "reject",
    state: str = "lease_ttl: 3s",
    listen: str = "close_timeout: 1s",
    limits: str = "",
    upstream: str = "",
) -> str:
    """One WebSocket route behind the edge secret, its agents leased in ``redis_url``."""
    return (
        edge_yaml(listen=listen, upstream=upstream, auth=", agent_id: {}", route=f", duplicate_agent: {duplicate}")
        + f'state: {{redis: "{redis_url}", {state}}}\n'
        + (f"limits: {{{limits}}}\n" if limits else "")
    )


@dataclass
class Replicas:
    """In-process replicas, each with its own id, metrics and metrics listener."""

    started: list[Sidecar] = field(default_factory=list)

    async def start(self, config: Config, name: str, *, admin_token: str | None = ADMIN_TOKEN) -> Sidecar:
        metrics = Metrics()
        running = await start(config, metrics=metrics, port=0, metrics_port=0, replica=name, admin_token=admin_token)
        sidecar = Sidecar(running, metrics)
        self.started.append(sidecar)
        return sidecar

    async def close(self) -> None:
        for sidecar in self.started:
            await sidecar.running.close()


@contextlib.asynccontextmanager
async def replicas() -> AsyncIterator[Replicas]:
    group = Replicas()
    try:
        yield group
    finally:
        await group.close()


@dataclass
class ProcessReplica:
    """``sidecar serve`` in a process of its own (so that it can be sent SIGTERM or SIGKILL)."""

    process: asyncio.subprocess.Process
    port: int
    metrics_port: int

    def url(self, path: str, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def stderr(self) -> str:
        """Everything it logged (once it has exited)."""
        assert self.process.stderr is not None
        return (await self.process.stderr.read()).decode()


@contextlib.asynccontextmanager
async def process_replica(
    tmp_path: Path, backend: Backend, text: str, name: str, **env: str
) -> AsyncIterator[ProcessReplica]:
    """``text`` served by a ``sidecar serve`` process with replica id ``name``, ready (its
    /readyz answers 200) when the block starts; killed on the way out if still running."""
    config_for(backend.url, text, **env)  # valid, or the assertion says why
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    port, metrics_port = free_port(), free_port()
    settings = process_env(
        EDGE_SECRET=SECRET,
        UPSTREAM_URL=backend.url,
        RAILWAY_REPLICA_ID=name,
        ADMIN_TOKEN=ADMIN_TOKEN,
        **env,
    )
    yaml_text = text.replace("listen: {", f"listen: {{port: {port}, host: 127.0.0.1, ", 1)
    yaml_text += f"metrics: {{port: {metrics_port}, host: 127.0.0.1}}\n"
    path.write_text(yaml_text)
    process = await asyncio.create_subprocess_exec(
        *SIDECAR, "serve", "--config", str(path), env=settings, stderr=asyncio.subprocess.PIPE
    )
    replica = ProcessReplica(process, port, metrics_port)
    try:
        await until(lambda: _ready(replica), timeout=20)
        yield replica
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def _ready(replica: ProcessReplica) -> bool:
    if replica.process.returncode is not None:
        raise AssertionError(f"sidecar exited {replica.process.returncode}: {await replica.stderr()}")
    try:
        async with aiohttp.ClientSession() as http, http.get(replica.url("/readyz", "http")) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def state_of(url: str) -> str | None:
    """What a replica's /readyz says of its shared state (``ok``, ``degraded``; ``None``: no fleet)."""
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        body = await response.json()
    state = body.get("state")
    return str(state) if state is not None else None


async def admin(
    method: str, port: int, path: str, token: str | None = ADMIN_TOKEN
) -> tuple[int, dict[str, str], dict[str, object]]:
    """An admin request to the metrics listener on ``port``: status, headers, JSON body."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"http://127.0.0.1:{port}{path}", headers=headers) as response,
    ):
        body = await response.json() if response.content_type == "application/json" else {}
        return response.status, dict(response.headers), body if isinstance(body, dict) else {}


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:  # noqa: ASYNC109
    """``until`` for a check that may raise while the system settles: False until it holds."""

    async def holds() -> bool:
        try:
            return await check()
        except (OSError, AssertionError, aiohttp.ClientError):
            return False

    await until(holds, timeout)


@pytest.fixture
async def redis_srv(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path) as server:
        yield server
