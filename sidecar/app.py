"""The dispatcher: a parsed request -> the health check, a WebSocket session, the plain
HTTP proxy, or a refusal. Wiring only: every decision is a pure module's.

Every request the listener parses goes through :meth:`Dispatcher.__call__`: the checks
before routing, canonical path -> route -> the WebSocket or HTTP handler. There is no
other router, so the rules in :mod:`sidecar.routing` are the only ones. A check anywhere
below that refuses raises :exc:`~sidecar.reasons.Refused`; it is answered through
:func:`sidecar.refusal.refuse` (rendered, logged, counted) and written by
:meth:`~sidecar.listener.Listener.answer`, whether it is raised here or later, in a
session's or a proxied request's own time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from . import h1
from .accounting import record
from .config import Route
from .context import Context
from .handshake import wants_websocket
from .health import Readiness, check, is_health_path
from .httpproxy import CLIENT_CLOSED, proxy
from .listener import Listener, Request
from .paths import BadPath, canonicalize
from .reasons import Reason, Refused, Rejection
from .refusal import refuse
from .runtime import Runtime
from .sessions import DRAIN_RETRY_AFTER
from .websocket import start_session

__all__ = ["CLIENT_CLOSED", "Dispatcher", "context_of", "route"]

_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def context_of(conn: Listener, request: Request | None, rt: Runtime) -> Context:
    """The request's :class:`Context`. A head that did not parse (``request`` None) has no
    headers to read: not even an Upgrade."""
    loop = conn.front.loop
    if request is None:
        return Context("", "", (1, 1), _NO_HEADERS, conn.peer, conn.peer, False, False, loop.time())
    headers = request.headers()
    client, trusted = rt.clients.identify(conn.peer, headers)
    target = request.target.decode("utf-8", "surrogateescape")
    return Context(
        method=request.method,
        target=target,
        version=request.version,
        headers=headers,
        peer=conn.peer,
        client=client,
        trusted=trusted,
        websocket=wants_websocket(headers),
        started=loop.time(),
        query_string=target.partition("?")[2].partition("#")[0],
    )


class Dispatcher:
    """The listener's dispatcher and head refuser, and the tasks they start."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.readiness = Readiness()
        self.tasks: set[asyncio.Future[None]] = set()

    def __call__(self, conn: Listener, request: Request) -> None:
        rt = self.rt
        ctx = context_of(conn, request, rt)
        try:
            if ctx.version < (1, 0):
                # HTTP/0.9 has no headers to check (no Host, no token) and no status line to
                # carry a reason; RFC 9112 does not define it. Refused, not proxied.
                ctx.websocket = False
                raise Refused(Rejection(Reason.BAD_REQUEST, detail="HTTP/0.9 is not supported"))
            if is_health_path(rt, ctx.raw_path):
                self._start(self._health(conn, request, ctx))
                return
            if rt.stopping:
                # Draining: nothing new starts here. The client is told to come back (the
                # new replica will answer) and its connection is not kept alive.
                raise Refused(Rejection(Reason.DRAINING, retry_after=DRAIN_RETRY_AFTER))
            if ctx.websocket:
                route(ctx, rt)
                self._start(start_session(conn, request, ctx, rt))
                return
            _plain(conn, request, ctx, rt)
        except Refused as refused:
            conn.answer(refuse(ctx, rt, refused.rejection), request)

    def refuse_head(self, conn: Listener, request: Request | None, error: h1.HeadError) -> None:
        """A head the parser or the head checks refused: answered without reading it further."""
        ctx = context_of(conn, None, self.rt)
        if request is not None:
            ctx.method, ctx.version = request.method, request.version
        conn.answer(refuse(ctx, self.rt, Rejection(error.reason)), request)

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)  # ensure_future's own path for a coroutine
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _health(self, conn: Listener, request: Request, ctx: Context) -> None:
        answer = await check(ctx, self.rt, self.readiness)
        if conn.current is request:
            conn.answer(answer, request)


def _plain(conn: Listener, request: Request, ctx: Context, rt: Runtime) -> None:
    """A plain HTTP request: routed and admitted here, then proxied (which records it once
    answered); a refusal here is recorded by route and status class like an answer."""
    try:
        chosen = route(ctx, rt)
        if chosen.websocket:
            raise Refused(Rejection(Reason.NOT_WEBSOCKET))
        proxy(conn, request, ctx, rt, chosen)
    except Refused as refused:
        record(ctx, rt, refused.rejection.reason.status, conn.front.loop.time())
        raise


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
