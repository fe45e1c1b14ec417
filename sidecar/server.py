"""Listening and the process's life: the public listener, the metrics listener,
live reload (SIGHUP) and the graceful drain (SIGTERM).

The drain, in order: ``/readyz`` turns 503 and new requests get 503 ``draining``;
open WebSocket sessions are closed one by one, spread evenly over
``listen.drain_timeout``, each with 1012 "service restart" to the client and 1001
to the upstream, so agents do not all reconnect in the same millisecond; then the
listeners close, requests still in flight are answered, and the process exits 0.
A second SIGTERM (or SIGINT) closes whatever is left at once.

With ``state.redis`` the replica joins the fleet (:mod:`sidecar.fleet`) before it
listens, and leaves it after the drain; with ``ADMIN_TOKEN`` set, the metrics listener
also serves session control (:mod:`sidecar.admin`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .admin import Admin
from .app import Dispatcher
from .clients import log_fields as client_settings
from .config import ALL_INTERFACES, Config, Problem
from .fleet import Fleet
from .listener import Listener
from .logs import configure, event
from .metrics import Metrics
from .ports import listening
from .replica import this_replica
from .requests import Front
from .routing import Router
from .runtime import Runtime

Loader = Callable[[], tuple[Config | None, list[Problem]]]


@dataclass
class Running:
    runtime: Runtime
    front: Front
    dispatcher: Dispatcher
    servers: list[asyncio.Server]
    metrics_runner: web.AppRunner | None
    port: int
    metrics_port: int | None
    keys: contextlib.AbstractAsyncContextManager[None]  # the JWKS kept fresh while serving

    async def drain(self, hurry: asyncio.Event | None = None) -> None:
        """Refuse new work and close every session properly, spread over the drain
        window; ``hurry`` (a second signal) closes the rest at once."""
        rt = self.runtime
        rt.stop_admitting()
        await rt.sessions.drain(
            rt.config.drain_timeout, hurry or asyncio.Event(), close_timeout=rt.config.close_timeout
        )

    async def close(self) -> None:
        """Stop accepting, close what is left (sessions at once: 1012 to the client, 1001
        upstream), answer requests in flight (within twice ``close_timeout``, then cut
        short), release."""
        rt = self.runtime
        rt.stop_admitting()  # a handshake still waiting on the backend is answered 503 draining
        for server in self.servers:
            server.close()
        self.front.close_idle()
        await rt.sessions.drain(0, asyncio.Event(), close_timeout=rt.config.close_timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.requests.answered(), 2 * rt.config.close_timeout)
        for request in rt.requests:
            request.cancel()
        # Sessions ended by the drain and health checks finish on their own (a handshake in
        # flight is answered 503 draining); what is still running after close_timeout is cut.
        if self.dispatcher.tasks:
            await asyncio.wait(list(self.dispatcher.tasks), timeout=rt.config.close_timeout)
        for task in list(self.dispatcher.tasks):
            task.cancel()
        self.front.close_idle()
        rt.pool.close()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        await self.keys.__aexit__(None, None, None)
        if self.runtime.fleet is not None:  # after the sessions: their leases are released by now
            await self.runtime.fleet.close()

    def reload(self, load: Loader) -> bool:
        """Apply a new config if it is valid; otherwise log every problem and keep
        the running one. Listeners are not re-bound: a changed address or port
        takes effect at the next start (and the log says so)."""
        rt = self.runtime
        old = rt.config
        config, problems = load()
        for problem in problems:
            event(
                logging.WARNING if problem.severity == "warning" else logging.ERROR,
                "config.problem",
                problem=str(problem),
            )
        if config is None:
            rt.metrics.config_reloads.labels("failure").inc()
            event(
                logging.ERROR,
                "config.reload_failed",
                errors=sum(p.severity == "error" for p in problems),
                config_sha256=old.digest[:12],
            )
            return False
        rt.apply(config)  # the header deadline reads the config at each arming
        configure(config.log_level, config.log_format)
        rt.metrics.loaded(config)
        rt.metrics.config_reloads.labels("success").inc()
        fixed = [
            k
            for k in ("listen_host", "port", "metrics_host", "metrics_port", "state")
            if getattr(old, k) != getattr(config, k)
        ]
        event(
            logging.INFO,
            "config.reloaded",
            config_sha256=config.digest[:12],
            previous_sha256=old.digest[:12],
            routes=[r.name for r in config.routes],
            restart_needed_for=fixed or None,
        )
        return True


async def _cancel_requests(rt: Runtime, hurry: asyncio.Event) -> None:
    await hurry.wait()
    if rt.requests:
        event(logging.INFO, "sidecar.cancelling_requests", requests=len(rt.requests))
    for request in rt.requests:
        request.cancel()


async def start(
    config: Config,
    *,
    metrics: Metrics | None = None,
    port: int | None = None,
    metrics_port: int | None = None,
    replica: str | None = None,
    admin_token: str | None = None,
) -> Running:
    """Start serving ``config``. ``port``/``metrics_port`` override the config's (tests
    pass 0 for a free port; there, unlike in the config, 0 does not mean "off").
    ``replica`` is this process's id in the fleet (default: :func:`this_replica`);
    ``admin_token`` (ADMIN_TOKEN) turns the session control endpoints on."""
    metrics = metrics or Metrics()
    metrics.loaded(config)
    replica = replica or this_replica()
    metrics.replica(replica, "redis" if config.state.redis else "in-process")
    rt = Runtime(config=config, router=Router(config.routes), metrics=metrics)
    loop = asyncio.get_running_loop()
    if config.state.redis:
        rt.fleet = Fleet(config.state, metrics, replica)
        await rt.fleet.start(rt.sessions, rt.failures, lambda: rt.config.tracked_clients)
    dispatcher = Dispatcher(rt)
    front = Front(rt, dispatcher, dispatcher.refuse_head, rt.wheel.call_later, Listener)
    servers: list[asyncio.Server] = []
    # The JWKS the config names are fetched before the listeners open, and kept fresh until close.
    keys = contextlib.asynccontextmanager(rt.keys.running)()
    await keys.__aenter__()
    try:
        public = config.port if port is None else port
        with listening("listen.port", config.listen_host, public):
            sockets = bind(config.listen_host, public)
        for sock in sockets:
            servers.append(await loop.create_server(front, sock=sock, backlog=1024))
        metrics_runner, mport = None, None
        wanted = config.metrics_port if metrics_port is None else metrics_port
        if metrics_port is not None or config.metrics_port:
            admin = Admin.of(admin_token, rt, replica)
            with listening("metrics.port", config.metrics_host, wanted):
                metrics_runner, mport = await _start_metrics(metrics, config.metrics_host, wanted, admin)
    except BaseException:  # a port is taken: release what was started
        for server in servers:
            server.close()
        await keys.__aexit__(None, None, None)
        if rt.fleet is not None:
            await rt.fleet.close()
        raise
    return Running(rt, front, dispatcher, servers, metrics_runner, _bound_port(servers[0].sockets[0]), mport, keys)


LOOP_ENV = "SIDECAR_LOOP"  # "asyncio": the standard loop even where uvloop is installed


def run(main: Coroutine[Any, Any, int], environ: Mapping[str, str] = os.environ) -> int:
    """Run ``main`` on uvloop where it is installed (Linux, the Docker image), else on
    asyncio's own loop, as ``asyncio.run`` would."""
    if environ.get(LOOP_ENV, "").strip().lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host``:``port``, all on one port.

    ``*`` (the default) is every IPv4 and every IPv6 address: two sockets, the IPv6
    one IPv6-only, so IPv4 clients keep plain IPv4 addresses in logs and
    X-Forwarded-For. A host without IPv6 support gets the IPv4 socket alone. Port 0
    picks a free port for the first socket and reuses it for the rest.
    """
    if host == ALL_INTERFACES:
        families = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        families = list(dict.fromkeys((info[0], str(info[4][0])) for info in infos))
    for _ in range(10):  # port 0: the first socket's port may be taken on the other family
        sockets: list[socket.socket] = []
        try:
            for family, address in families:
                chosen = _bound_port(sockets[0]) if sockets else port
                sock = _listen_socket(
                    family, address, chosen, optional=host == ALL_INTERFACES and bool(sockets), v6only=len(families) > 1
                )
                if sock is not None:
                    sockets.append(sock)
            return sockets
        except OSError as exc:
            for sock in sockets:
                sock.close()
            if not (port == 0 and exc.errno == errno.EADDRINUSE):
                raise
    raise OSError(errno.EADDRINUSE, "no port free on every address family")


def _listen_socket(family: int, address: str, port: int, *, optional: bool, v6only: bool) -> socket.socket | None:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Beside an IPv4 socket ('*'): IPv6 only. Alone ('::'), both, as on Linux
            # by default and as Railway's docs have services bind.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        if optional and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            event(logging.WARNING, "sidecar.no_ipv6", detail=exc.strerror)
            return None
        raise
    sock.setblocking(False)
    return sock


def _bound_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


async def _start_metrics(
    metrics: Metrics, host: str, port: int, admin: Admin | None = None
) -> tuple[web.AppRunner, int]:
    async def scrape(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    if admin is not None:
        admin.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        sockets = bind(host, port)
        for sock in sockets:
            await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, _bound_port(sockets[0])


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
SPARE_FILES = 256  # listeners, plain HTTP requests, health probes, the log


async def serve(
    config: Config,
    load: Loader,
    *,
    started: Callable[[Running], None] | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> int:
    """Run until SIGTERM or SIGINT, then drain and stop; SIGHUP reloads via ``load``.
    ``secrets``: each auth policy's variables and their fingerprints, for the start-up
    log (``startup.secret_states``).

    Returns the exit status: 0, or 1 when a listener cannot be bound (a port is
    taken, or privileged), said in one line on stderr: which port, and what holds it."""
    open_files = raise_open_files_limit()
    try:
        running = await start(config, admin_token=os.environ.get("ADMIN_TOKEN") or None)
    except OSError as exc:  # ports.ListenFailed names the port (the public or the metrics one)
        print(f"not starting: {exc}", file=sys.stderr)
        return 1
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_stop() -> None:
        if stop.is_set():
            hurry.set()  # a second signal: finish at once
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, running.reload, load)
    event(
        logging.INFO,
        "sidecar.started",
        listen=f"{config.listen_host}:{running.port}",
        metrics=f"{config.metrics_host}:{running.metrics_port}" if running.metrics_port else "off",
        routes=[r.name for r in config.routes],
        config=config.source,
        config_sha256=config.digest[:12],
        open_files_limit=open_files,
        secret_fingerprints=secrets,
        **client_settings(config),  # where client addresses come from, and why (Railway's defaults)
        state=config.state.display or "in-process",
        admin="on" if running.metrics_port and os.environ.get("ADMIN_TOKEN") else "off",
    )
    needed = 2 * config.max_sessions + SPARE_FILES
    if open_files != resource.RLIM_INFINITY and open_files < needed:
        # Past the limit, accept() and connect() fail: upgrades would get 502s
        # (and asyncio logs a traceback each) long before over_capacity answers.
        event(
            logging.WARNING,
            "sidecar.open_files_low",
            open_files_limit=open_files,
            max_sessions=config.max_sessions,
            needed=needed,
            fix="lower limits.max_sessions, or raise the container's nofile limit",
        )
    if started is not None:
        started(running)
    await stop.wait()
    event(logging.INFO, "sidecar.stopping", drain_timeout_s=running.runtime.config.drain_timeout)
    await running.drain(hurry)
    # Requests in flight are answered (within shutdown_timeout), unless a second
    # signal says to finish at once: then they are cut short.
    hurrying = asyncio.ensure_future(_cancel_requests(running.runtime, hurry))
    try:
        await running.close()
    finally:
        hurrying.cancel()
    event(logging.INFO, "sidecar.stopped")
    return 0
