"""``make_app(config)`` -> the public ``web.Application``: wiring only.

Every request goes through :func:`dispatch`: the checks before routing, canonical path
-> route -> the WebSocket or HTTP handler. aiohttp's own router is not used for
matching, so the rules in :mod:`sidecar.routing` are the only ones. A check anywhere
below that refuses raises :exc:`~sidecar.reasons.Refused`; :func:`dispatch` is the one
place that answers it (:func:`sidecar.refusal.refuse`).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.typedefs import Handler
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict, CIMultiDictProxy

from .config import Config, Route
from .connection import MAX_HEAD_BYTES, HeaderDeadline
from .context import Context
from .handshake import wants_websocket
from .health import Readiness, answer, is_health_path
from .httpproxy import proxy_http
from .logs import correlate, event
from .metrics import NO_ROUTE, Metrics
from .paths import BadPath, canonicalize
from .reasons import Reason, Refused, Rejection
from .refusal import refuse
from .routing import Router
from .runtime import RUNTIME, Runtime
from .sessions import DRAIN_RETRY_AFTER
from .websocket import handle_websocket

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
    app.cleanup_ctx.append(rt.keys.running)  # JWKS fetched before serving, kept fresh until cleanup
    return app


def context_of(request: BaseRequest, rt: Runtime, *, parsed: bool = True) -> Context:
    """The request's :class:`Context`, from aiohttp's parsed head. A head that did not
    parse (``parsed`` False) has no headers to read: not even an Upgrade."""
    peer = request.remote
    headers = request.headers if parsed else CIMultiDictProxy(CIMultiDict[str]())
    client, trusted = rt.clients.identify(peer, headers)
    return Context(
        method=request.method,
        target=request.raw_path,
        version=(request.version.major, request.version.minor),
        headers=headers,
        peer=peer,
        client=client,
        trusted=trusted,
        websocket=wants_websocket(headers),
        started=asyncio.get_running_loop().time(),
        query_string=request.rel_url.raw_query_string,
    )


@web.middleware
async def _dispatch(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await dispatch(request)


async def dispatch(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    ctx = context_of(request, rt)
    correlate(ctx.request_id)  # on every line of this request and its session
    try:
        _check_head(request, ctx)
        if is_health_path(rt, ctx.raw_path):
            return await answer(ctx, rt, request.app[READINESS])
        if rt.stopping:
            # Draining: nothing new starts here. The client is told to come back (the
            # new replica will answer) and its connection is not kept alive.
            raise Refused(Rejection(Reason.DRAINING, retry_after=DRAIN_RETRY_AFTER))
        if ctx.websocket:
            route(ctx, rt)
            return await handle_websocket(request, ctx, rt)
        return await _plain(request, ctx, rt)
    except Refused as refused:
        return refuse(ctx, rt, refused.rejection)


def _check_head(request: BaseRequest, ctx: Context) -> None:
    """The head as a whole; one refused here is not read for its Upgrade either."""
    if sum(len(name) + len(value) + 4 for name, value in request.raw_headers) > MAX_HEAD_BYTES:
        ctx.websocket = False
        raise Refused(Rejection(Reason.HEADERS_TOO_LARGE))
    if ctx.version < (1, 0):
        # HTTP/0.9 has no headers to check (no Host, no token) and no status line to
        # carry a reason; RFC 9112 does not define it. Refused, not proxied.
        ctx.websocket = False
        raise Refused(Rejection(Reason.BAD_REQUEST, detail="HTTP/0.9 is not supported"))


async def _plain(request: web.Request, ctx: Context, rt: Runtime) -> web.StreamResponse:
    """A plain HTTP request, timed and counted by route and status class."""
    status = 500
    try:
        chosen = route(ctx, rt)
        if chosen.websocket:
            raise Refused(Rejection(Reason.NOT_WEBSOCKET))
        response = await _proxied(request, ctx, rt, chosen)
        status = response.status
        return response
    except Refused as refused:
        status = refused.rejection.reason.status  # answered by dispatch
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED  # the client hung up first: not the sidecar's or backend's failure
        raise
    finally:
        elapsed = asyncio.get_running_loop().time() - ctx.started
        label = ctx.route_name or NO_ROUTE
        rt.metrics.http_requests.labels(label, f"{status // 100}xx").inc()
        rt.metrics.http_duration.labels(label).observe(elapsed)
        event(
            logging.DEBUG,
            "http.request",
            route=label,
            method=ctx.method,
            status=status,
            duration_s=round(elapsed, 4),
            client=ctx.client,
        )


async def _proxied(request: web.Request, ctx: Context, rt: Runtime, chosen: Route) -> web.StreamResponse:
    """:func:`proxy_http`, registered as in flight, so a hurried stop can cancel it."""
    task = asyncio.current_task()
    assert task is not None
    rt.requests.add(task)
    try:
        return await proxy_http(request, ctx, rt, chosen)
    finally:
        rt.requests.discard(task)


def route(ctx: Context, rt: Runtime) -> Route:
    """Validate the path and find its route, recording both in ``ctx``; refused with
    bad_path or no_route. An upgrade to a path with no WebSocket route is refused here
    rather than passed to a plain route: the client learns which WebSocket paths exist."""
    try:
        ctx.path = canonicalize(ctx.raw_path)
    except BadPath as exc:
        raise Refused(Rejection(Reason.BAD_PATH, detail=exc.why)) from None
    resolution = rt.router.resolve(ctx.path.decoded)
    found = resolution.route
    if found is None or (ctx.websocket and not found.websocket):
        raise Refused(Rejection(Reason.NO_ROUTE, suggestion=resolution.suggestion))
    ctx.route = found
    return found


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
    rt.stop_admitting()  # a handshake still waiting on the backend is answered 503 draining
    await rt.sessions.drain(0, asyncio.Event(), close_timeout=rt.config.close_timeout)


async def _close_client(app: web.Application) -> None:
    client = app[RUNTIME].client
    if client is not None:
        await client.close()
