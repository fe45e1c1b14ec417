"""A WebSocket route: handshake, auth, upstream handshake, then the relay.

Nothing goes upstream until the client's handshake is valid and admitted, and the
client gets its 101 only after the upstream has answered 101 with a valid
``Sec-WebSocket-Accept``; it then gets the subprotocol the upstream chose.

Each session runs in one task of its own, inside :meth:`Registry.admit
<sidecar.sessions.Registry.admit>`: if aiohttp cancels the request's handler because
the client's connection dropped, a session still in its upstream handshake is ended
(:attr:`~sidecar.sessions.EndCause.CLIENT_GONE`), and an open one finds out by
itself, tells the upstream (1001) and accounts for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from .admission import authenticate
from .auth import QUERY_TOKEN
from .closing import SIDECAR_ERROR, End
from .context import Context
from .forwarding import forward_headers, upstream_query
from .handshake import handshake_problem, offered_protocols
from .logs import event
from .message_relay import relay
from .metrics import close_code_label
from .origins import origin_allowed
from .reasons import Reason, Refused, Rejection
from .runtime import Runtime
from .sessions import EndCause, Session, State
from .upstream import connect_websocket, rejection_for, upstream_url

Upstream = aiohttp.ClientWebSocketResponse[bool]


def check_handshake(ctx: Context) -> None:
    """The client's handshake and its Origin, cheapest first (before any token is
    compared); :exc:`Refused` otherwise."""
    assert ctx.route is not None
    problem = handshake_problem(ctx.method, ctx.version, ctx.headers)
    if problem is not None:
        raise Refused(Rejection(Reason.BAD_HANDSHAKE, detail=problem))
    if not origin_allowed(ctx.headers.getall("Origin", []), ctx.route.origins):
        raise Refused(Rejection(Reason.ORIGIN_DENIED))


async def handle_websocket(request: web.Request, ctx: Context, rt: Runtime) -> web.StreamResponse:
    """The checks, then the session in a task of its own; :exc:`Refused` otherwise."""
    assert ctx.route is not None
    check_handshake(ctx)
    agent_id = authenticate(ctx, rt, ctx.route)
    session = Session(ctx.route, agent_id, ctx.client, expires_at=ctx.expires_at)
    task = asyncio.ensure_future(_session(request, ctx, rt, session))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if session.state is State.CONNECTING:
            session.end(EndCause.CLIENT_GONE)
        task.add_done_callback(_retrieve)  # nobody is left to be told how it went
        raise


def _retrieve(task: asyncio.Future[web.WebSocketResponse]) -> None:
    if not task.cancelled():
        task.exception()


async def _session(request: web.Request, ctx: Context, rt: Runtime, session: Session) -> web.WebSocketResponse:
    """Admission, the upstream handshake, the client's 101, then the relay."""
    config = rt.config
    route, close_timeout = session.route, config.close_timeout
    assert ctx.path is not None
    url = upstream_url(route.upstream, route.upstream_path or ctx.path.wire, upstream_query(ctx.query_string, route))
    async with rt.sessions.admit(session, max_sessions=config.max_sessions, close_timeout=close_timeout):
        upstream = await _connect(request, ctx, rt, session, url)
        client = web.WebSocketResponse(
            protocols=(),  # the upstream chose; aiohttp would look at the first header line only
            compress=route.compression,  # permessage-deflate only where the route enables it
            autoclose=False,
            autoping=False,  # pings and pongs are relayed end to end
            max_msg_size=route.max_message_size + 1,  # aiohttp refuses sizes >= its limit
            timeout=close_timeout,
            decode_text=False,
        )
        if upstream.protocol:
            client.headers["Sec-WebSocket-Protocol"] = upstream.protocol
        try:
            session.refuse_if_ended()  # as the upstream handshake finished
            await client.prepare(request)
        except BaseException:
            await _abandon(upstream, close_timeout)
            raise
        rt.sessions.opened(session)
        rt.metrics.ws_handshake_duration.labels(route.name).observe(asyncio.get_running_loop().time() - ctx.started)
        event(
            logging.INFO,
            "ws.established",
            route=route.name,
            alias=ctx.path.decoded,
            agent_id=session.agent_id,
            upstream=str(url.with_query(None)),
            subprotocol=upstream.protocol,
            client=ctx.client,
        )
        await _run(session, rt, client, upstream)
    return client


async def _connect(request: web.Request, ctx: Context, rt: Runtime, session: Session, url: URL) -> Upstream:
    """The upstream handshake, or :exc:`Refused` with why. A session ended meanwhile
    (a drain, a newer session for its agent id, the client gone) stops waiting at once,
    not after the backend, or a retry waiting for it, has made up its mind."""
    route = session.route
    headers = forward_headers(
        ctx.headers,
        route,
        session.agent_id,
        identity=rt.identity_headers,
        remote=ctx.peer,
        scheme=request.scheme,
        host=request.host,
        trusted=ctx.trusted,
        query_token=ctx.query.getall(QUERY_TOKEN, ()) if route.query_token else (),
        request_id=ctx.request_id,
    )
    connecting = asyncio.ensure_future(
        connect_websocket(
            rt.http(),
            route,
            url,
            headers,
            offered_protocols(ctx.headers),
            close_timeout=rt.config.close_timeout,
            agent_id=session.agent_id,
        )
    )
    try:
        either: set[asyncio.Future[Any]] = {connecting, session.stopped}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not connecting.done():
            connecting.cancel()
            await asyncio.wait({connecting})
    try:
        return connecting.result()
    except asyncio.CancelledError:
        session.refuse_if_ended()  # cancelled only because the session ended: raises
        raise
    except Exception as exc:
        failure = rejection_for(exc, session.agent_id)
        if failure is None:
            raise
        raise Refused(failure) from None


async def _abandon(upstream: Upstream, within: float) -> None:
    """The session ended during its own handshake: close the upstream leg, bounded."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(upstream.close(code=1001, message=b"client went away"), within)


async def _run(session: Session, rt: Runtime, client: web.WebSocketResponse, upstream: Upstream) -> None:
    """Relay one session and account for it: gauge, counters, histogram, log line."""
    loop = asyncio.get_running_loop()
    metrics, route = rt.metrics, session.route.name
    metrics.ws_connections.labels(route).inc()
    active = metrics.ws_active.labels(route)
    active.inc()
    up = metrics.relayed.open(route, "upstream")
    down = metrics.relayed.open(route, "downstream")
    opened = loop.time()
    end = End("sidecar", *SIDECAR_ERROR)
    try:
        end = await relay(
            client,
            upstream,
            up,
            down,
            session.stopped,
            close_timeout=rt.config.close_timeout,
            stall_timeout=rt.config.stall_timeout,
            keepalive_interval=rt.config.keepalive_interval,
            context={"route": route, "agent_id": session.agent_id},
        )
    finally:
        if session.state is State.OPEN:
            session.move(State.CLOSING)
        metrics.relayed.close(up)
        metrics.relayed.close(down)
        active.dec()
        duration = loop.time() - opened
        metrics.ws_session_duration.labels(route).observe(duration)
        metrics.ws_closes.labels(route, end.initiator, close_code_label(end.code)).inc()
        if end.cut is not None:
            metrics.ws_cut_off.labels(route, *end.cut).inc()
        event(
            logging.INFO,
            "ws.closed",
            route=route,
            agent_id=session.agent_id,
            code=end.code,
            reason=end.reason,
            initiator=end.initiator,
            duration_s=round(duration, 3),
            messages_up=up.messages,
            bytes_up=up.bytes,
            messages_down=down.messages,
            bytes_down=down.bytes,
        )
