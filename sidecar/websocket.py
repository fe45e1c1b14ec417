"""A WebSocket route: handshake, auth, upstream handshake, then the relay.

Nothing goes upstream until the client's handshake is valid and admitted, and the
client gets its 101 only after the upstream has answered 101 with a valid
``Sec-WebSocket-Accept``; it then gets the subprotocol the upstream chose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import web

from .auth import admit
from .config import Route
from .handshake import handshake_problem, offered_protocols
from .logs import event
from .metrics import close_code_label
from .reasons import Reason, Rejection
from .rejection import reject
from .relay import End, relay
from .routing import CanonicalPath
from .runtime import SHUTDOWN_CLOSE, Runtime, Session
from .upstream import connect_websocket, rejection_for, request_headers, upstream_url


async def handle_websocket(request: web.Request, rt: Runtime, route: Route, path: CanonicalPath) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    started = loop.time()
    problem = handshake_problem(request.method, (request.version.major, request.version.minor), request.headers)
    if problem is not None:
        return reject(request, rt, Rejection(Reason.BAD_HANDSHAKE, detail=problem), route, websocket=True)
    admission = admit(route.auth, request.headers, request.query)
    if admission.reason is not None:
        rejection = Rejection(admission.reason, agent_id=admission.agent_id)
        return reject(request, rt, rejection, route, websocket=True)
    agent_id = admission.agent_id

    url = upstream_url(route.upstream, route.upstream_path or path.wire, request.rel_url.raw_query_string)
    headers = request_headers(request, rt, route, agent_id)
    try:
        upstream = await connect_websocket(
            rt.http(),
            route,
            url,
            headers,
            offered_protocols(request.headers),
            close_timeout=rt.config.close_timeout,
            agent_id=agent_id,
        )
    except Exception as exc:
        failure = rejection_for(exc, agent_id)
        if failure is None:
            raise
        return reject(request, rt, failure, route, websocket=True)

    client = web.WebSocketResponse(
        protocols=(),  # the upstream chose; aiohttp would look at the first header line only
        compress=False,
        autoclose=False,
        autoping=False,  # pings and pongs are relayed end to end
        max_msg_size=route.max_message_size + 1,  # aiohttp refuses sizes >= its limit
        timeout=rt.config.close_timeout,
        decode_text=False,
    )
    if upstream.protocol:
        client.headers["Sec-WebSocket-Protocol"] = upstream.protocol
    try:
        await client.prepare(request)
    except BaseException:
        await _abandon(upstream, rt.config.close_timeout)
        raise

    rt.metrics.ws_handshake_duration.labels(route.name).observe(loop.time() - started)
    event(
        logging.INFO,
        "ws.established",
        route=route.name,
        alias=path.decoded,
        agent_id=agent_id,
        upstream=str(url.with_query(None)),
        subprotocol=upstream.protocol,
        client=rt.client_of(request),
    )
    session = Session(route, agent_id, loop.create_future())
    # The session runs in a task of its own: if aiohttp cancels this handler
    # because the client's connection dropped, the relay still finds out by
    # itself, tells the upstream (1001) and accounts for the session.
    session.task = asyncio.ensure_future(_run(session, rt, client, upstream))
    await asyncio.shield(session.task)
    return client


async def _abandon(upstream: aiohttp.ClientWebSocketResponse[bool], within: float) -> None:
    """The client left during its own handshake: close the upstream leg, bounded."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(upstream.close(code=1001, message=b"client went away"), within)


async def _run(
    session: Session, rt: Runtime, client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse[bool]
) -> None:
    """Relay one session and account for it: gauge, counters, histogram, log line."""
    loop = asyncio.get_running_loop()
    metrics, route = rt.metrics, session.route.name
    metrics.ws_connections.labels(route).inc()
    active = metrics.ws_active.labels(route)
    active.inc()
    rt.sessions.add(session)
    if rt.stopping:  # opened while the sidecar shuts down: closed properly at once
        session.end(*SHUTDOWN_CLOSE)
    up = metrics.relayed.open(route, "upstream")
    down = metrics.relayed.open(route, "downstream")
    opened = loop.time()
    end = End("sidecar", 1011, "sidecar error")
    try:
        end = await relay(
            client,
            upstream,
            up,
            down,
            session.stop,
            close_timeout=rt.config.close_timeout,
            stall_timeout=rt.config.stall_timeout,
            keepalive_interval=rt.config.keepalive_interval,
            context={"route": route, "agent_id": session.agent_id},
        )
    finally:
        rt.sessions.discard(session)
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
