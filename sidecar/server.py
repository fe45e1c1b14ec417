"""Listening: the public listener, the metrics listener, and an orderly stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .app import make_app
from .config import Config
from .connection import HEAD_LIMITS, Connection, HeaderDeadline
from .logs import event
from .metrics import Metrics
from .reasons import Reason, Rejection
from .rejection import reject
from .runtime import RUNTIME


@dataclass
class Running:
    runner: web.AppRunner
    server: asyncio.Server
    metrics_runner: web.AppRunner | None
    port: int
    metrics_port: int | None

    async def close(self) -> None:
        """Stop accepting, close every WebSocket session properly, then release."""
        self.server.close()
        await self.runner.cleanup()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()


async def start(
    config: Config,
    *,
    metrics: Metrics | None = None,
    port: int | None = None,
    metrics_port: int | None = None,
) -> Running:
    """Start serving ``config``. ``port``/``metrics_port`` override the config's (tests
    pass 0 for a free port; there, unlike in the config, 0 does not mean "off")."""
    metrics = metrics or Metrics()
    deadline = HeaderDeadline(config.header_timeout)
    app = make_app(config, metrics, deadline)
    # handler_cancellation: a client that hangs up cancels its request, so an
    # abandoned plain-HTTP request frees its upstream connection at once.
    # shutdown_timeout: what a request still running after the sessions were
    # closed gets (a session's close takes at most two close_timeouts).
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=2 * config.close_timeout + 1
    )
    await runner.setup()
    manager = runner.server
    assert manager is not None
    rt = app[RUNTIME]
    loop = asyncio.get_running_loop()

    def refuse(request: BaseRequest, reason: Reason) -> web.StreamResponse:
        return reject(request, rt, Rejection(reason), None, websocket=False)

    def connection() -> Connection:
        return Connection(
            manager,
            refuse=refuse,
            loop=loop,
            access_log=None,
            keepalive_timeout=75.0,
            **HEAD_LIMITS,
        )

    server: asyncio.Server | None = None
    try:
        server = await loop.create_server(
            deadline.wrap(connection),
            config.listen_host,
            config.port if port is None else port,
            reuse_address=True,
            backlog=1024,
        )
        metrics_runner, mport = None, None
        wanted = config.metrics_port if metrics_port is None else metrics_port
        if metrics_port is not None or config.metrics_port:
            metrics_runner, mport = await _start_metrics(metrics, config.metrics_host, wanted)
    except BaseException:  # a port is taken: release what was started
        if server is not None:
            server.close()
        await runner.cleanup()
        raise
    return Running(runner, server, metrics_runner, _bound_port(server), mport)


def _bound_port(server: asyncio.Server) -> int:
    sock: socket.socket = server.sockets[0]
    return int(sock.getsockname()[1])


async def _start_metrics(metrics: Metrics, host: str, port: int) -> tuple[web.AppRunner, int]:
    async def scrape(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner, site.port


def raise_open_files_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to the hard limit, as nginx's
    ``worker_rlimit_nofile`` does, and return the soft limit now in force.

    Each WebSocket session holds two descriptors (client and upstream leg), and a
    process usually starts with a soft limit of 1024: without this, the sidecar
    would refuse connections (EMFILE) at about 500 sessions.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit cannot be the soft one: Linux caps it at fs.nr_open.
    target = hard if hard != resource.RLIM_INFINITY else _NR_OPEN
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):  # not permitted here: keep what we have
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


_NR_OPEN = 1 << 20  # Linux's default fs.nr_open


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then stop in order."""
    open_files = raise_open_files_limit()
    running = await start(config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    event(
        logging.INFO,
        "sidecar.started",
        listen=f"{config.listen_host}:{running.port}",
        metrics=f"{config.metrics_host}:{running.metrics_port}" if running.metrics_port else "off",
        routes=[r.name for r in config.routes],
        config=config.source,
        config_sha256=config.digest[:12],
        open_files_limit=open_files,
    )
    await stopping.wait()
    event(logging.INFO, "sidecar.stopping")
    await running.close()
    event(logging.INFO, "sidecar.stopped")
