"""``make_app(config)`` -> the public ``web.Application``: wiring only.

Every request goes through :func:`dispatch`: canonical path -> route -> the
WebSocket or HTTP handler. aiohttp's own router is not used for matching, so the
rules in :mod:`sidecar.routing` are the only ones.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.typedefs import Handler

from .config import Config, Route
from .connection import MAX_HEAD_BYTES, HeaderDeadline
from .handshake import wants_websocket
from .health import Readiness, answer, is_health_path
from .httpproxy import proxy_http
from .logs import event
from .metrics import NO_ROUTE, Metrics
from .reasons import Reason, Rejection
from .rejection import reject
from .routing import BadPath, CanonicalPath, Router, canonicalize
from .runtime import DRAIN_RETRY_AFTER, RUNTIME, Runtime
from .websocket import end_sessions, handle_websocket

# nginx's convention for "the client closed the request before the response".
CLIENT_CLOSED = 499

READINESS = web.AppKey("readiness", Readiness)


def make_app(config: Config, metrics: Metrics | None = None, deadline: HeaderDeadline | None = None) -> web.Application:
    rt = Runtime(config=config, router=Router(config.routes), metrics=metrics or Metrics())
    # dispatch is the last middleware and never calls aiohttp's handler: every
    # request reaches it, whatever aiohttp's router would have made of the target
    # ('*', a newline in the path ...). The router has no routes at all.
    middlewares = [deadline.middleware] if deadline is not None else []
    app = web.Application(middlewares=[*middlewares, _dispatch])
    app[RUNTIME] = rt
    app[READINESS] = Readiness()
    app.on_response_prepare.append(_on_prepare)
    app.on_startup.append(_open_client)
    app.on_shutdown.append(_close_sessions)
    app.on_cleanup.append(_close_client)
    return app


@web.middleware
async def _dispatch(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await dispatch(request)


async def dispatch(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    if sum(len(name) + len(value) + 4 for name, value in request.raw_headers) > MAX_HEAD_BYTES:
        too_large = reject(request, rt, Rejection(Reason.HEADERS_TOO_LARGE), None, websocket=False)
        too_large.force_close()
        return too_large
    if request.version < (1, 0):
        # HTTP/0.9 has no headers to check (no Host, no token) and no status line to
        # carry a reason; RFC 9112 does not define it. Refused, not proxied.
        ancient = reject(
            request, rt, Rejection(Reason.BAD_REQUEST, detail="HTTP/0.9 is not supported"), None, websocket=False
        )
        ancient.force_close()
        return ancient
    raw_path = request.raw_path.partition("?")[0]
    if is_health_path(rt, raw_path):
        return await answer(request, rt, request.app[READINESS], raw_path)
    if rt.stopping:
        # Draining: nothing new starts here. The client is told to come back (the
        # new replica will answer) and its connection is not kept alive.
        draining = Rejection(Reason.DRAINING, retry_after=DRAIN_RETRY_AFTER)
        return reject(request, rt, draining, None, websocket=wants_websocket(request.headers))
    if wants_websocket(request.headers):
        target = _route(request, rt, websocket=True)
        if isinstance(target, web.StreamResponse):
            return target
        return await handle_websocket(request, rt, *target)
    loop = asyncio.get_running_loop()
    started = loop.time()
    route_label, status = NO_ROUTE, 500
    try:
        target = _route(request, rt, websocket=False)
        response: web.StreamResponse
        if isinstance(target, web.StreamResponse):
            response = target
        else:
            route, path = target
            route_label = route.name
            if route.websocket:
                response = reject(request, rt, Rejection(Reason.NOT_WEBSOCKET), route, websocket=False)
            else:
                response = await _proxied(request, rt, route, path)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = CLIENT_CLOSED  # the client hung up first: not the sidecar's or backend's failure
        raise
    finally:
        elapsed = loop.time() - started
        rt.metrics.http_requests.labels(route_label, f"{status // 100}xx").inc()
        rt.metrics.http_duration.labels(route_label).observe(elapsed)
        event(
            logging.DEBUG,
            "http.request",
            route=route_label,
            method=request.method,
            status=status,
            duration_s=round(elapsed, 4),
            client=rt.client_of(request),
        )


async def _proxied(request: web.Request, rt: Runtime, route: Route, path: CanonicalPath) -> web.StreamResponse:
    """:func:`proxy_http`, registered as in flight, so a hurried stop can cancel it."""
    task = asyncio.current_task()
    assert task is not None
    rt.requests.add(task)
    try:
        return await proxy_http(request, rt, route, path)
    finally:
        rt.requests.discard(task)


def _route(request: web.Request, rt: Runtime, *, websocket: bool) -> tuple[Route, CanonicalPath] | web.Response:
    """The route and canonical path, or the rejection (bad_path, no_route)."""
    try:
        path = canonicalize(request.raw_path.partition("?")[0])
    except BadPath as exc:
        return reject(request, rt, Rejection(Reason.BAD_PATH, detail=exc.why), None, websocket=websocket)
    resolution = rt.router.resolve(path.decoded)
    route = resolution.route
    # An upgrade to a path with no WebSocket route is refused here rather than
    # passed to a plain route: the client learns which WebSocket paths exist.
    if route is None or (websocket and not route.websocket):
        return reject(
            request, rt, Rejection(Reason.NO_ROUTE), None, websocket=websocket, suggestion=resolution.suggestion
        )
    return route, path


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp announces itself with its version; a backend's own Server passes.
    if response.headers.get("Server") == SERVER_SOFTWARE:
        response.headers["Server"] = "sidecar"
    if request.app[RUNTIME].stopping and response.status != 101:
        # Draining: a kept-alive connection would pin the client to this replica.
        # (aiohttp has already built the headers, so say it as well as do it.)
        response.force_close()
        response.headers["Connection"] = "close"


async def _open_client(app: web.Application) -> None:
    # No connection limit: every WebSocket session holds one upstream connection.
    connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
    app[RUNTIME].client = aiohttp.ClientSession(
        connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    )


async def _close_sessions(app: web.Application) -> None:
    """Shutdown: every session still open is closed at once (1012 to the client, 1001
    upstream); after a drain there are none left."""
    rt = app[RUNTIME]
    rt.stopping = True  # a handshake still waiting on the backend is answered 503 draining
    await end_sessions(rt, 0, asyncio.Event())


async def _close_client(app: web.Application) -> None:
    client = app[RUNTIME].client
    if client is not None:
        await client.close()
