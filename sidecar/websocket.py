"""A WebSocket route: handshake, auth, upstream handshake, then the relay.

Nothing goes upstream until the client's handshake is valid and admitted, and the
client gets its 101 only after the upstream has answered 101 with a valid
``Sec-WebSocket-Accept``; it then gets the subprotocol the upstream chose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .admission import authenticate
from .config import Route
from .handshake import handshake_problem, offered_protocols
from .limits import OVER_CAPACITY_RETRY_AFTER
from .logs import event
from .metrics import close_code_label
from .origins import origin_allowed
from .reasons import Reason, Rejection
from .rejection import reject
from .relay import End, relay
from .routing import CanonicalPath
from .runtime import DRAIN_RETRY_AFTER, SHUTDOWN_CLOSE, Runtime, Session
from .upstream import connect_websocket, rejection_for, request_headers, upstream_query, upstream_url

# How a session ousted by a newer one with the same agent id is closed (4000-4999 is
# the application range, RFC 6455 section 7.4.2; 4409 echoes HTTP 409 Conflict).
REPLACED_CLOSE = (4409, "replaced by a newer session for this agent id")


def _refusal(request: web.Request, rt: Runtime, route: Route) -> Rejection | str | None:
    """The checks before anything is held, cheapest first, none telling more than it
    must: handshake, origin, rate limit (before the token is compared), token and
    agent id. Returns the refusal, or the agent id (``None`` when the route has none)."""
    problem = handshake_problem(request.method, (request.version.major, request.version.minor), request.headers)
    if problem is not None:
        return Rejection(Reason.BAD_HANDSHAKE, detail=problem)
    if not origin_allowed(request.headers.getall("Origin", []), route.origins):
        return Rejection(Reason.ORIGIN_DENIED)
    admission = authenticate(request, rt, route)
    return admission if isinstance(admission, Rejection) else admission.agent_id


async def handle_websocket(request: web.Request, rt: Runtime, route: Route, path: CanonicalPath) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    started = loop.time()
    refusal = _refusal(request, rt, route)
    if isinstance(refusal, Rejection):
        return reject(request, rt, refusal, route, websocket=True)
    agent_id = refusal
    # Counted from here (the upstream handshake included) so a burst cannot overshoot.
    if not rt.counts.acquire(route.name, route.max_sessions, rt.config.max_sessions):
        full = Rejection(Reason.OVER_CAPACITY, agent_id=agent_id, retry_after=OVER_CAPACITY_RETRY_AFTER)
        return reject(request, rt, full, route, websocket=True)
    session = Session(route, agent_id, loop.create_future())
    rt.handshaking.add(session)  # a drain ends it too: 503 draining, never a dropped connection
    try:
        duplicate = await _claim(rt, session)
        if duplicate is not None:
            return reject(request, rt, duplicate, route, websocket=True)
        return await _open(request, rt, session, path, started)
    finally:
        rt.handshaking.discard(session)
        session.settled.set()
        if session.task is None:  # once running, the session releases its place when it ends
            _release(rt, session)


async def _claim(rt: Runtime, session: Session) -> Rejection | None:
    """Register ``session`` under (route, agent id), applying the route's policy for
    one already there (admitted or open): refuse this one, or end that one."""
    route, agent_id = session.route, session.agent_id
    if agent_id is None or route.duplicate_agent == "allow":
        return None
    key = (route.name, agent_id)
    old = rt.agents.get(key)
    if old is not None and route.duplicate_agent == "reject":
        return Rejection(Reason.DUPLICATE_AGENT, agent_id=agent_id)
    rt.agents[key] = session
    if old is not None:
        event(logging.INFO, "ws.replacing", route=route.name, agent_id=agent_id)
        old.end(*REPLACED_CLOSE)
        # The backend sees the old session end before the new one begins: wait for
        # its handshake (if it is still in one) to settle, then for it to close.
        bound = route.upstream.connect_timeout + 2 * rt.config.close_timeout + 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(old.settled.wait(), bound)
        if old.task is not None:
            await asyncio.wait({old.task}, timeout=2 * rt.config.close_timeout + 1)
    return _ended(session)


def _ended(session: Session) -> Rejection | None:
    """A session ended before its relay began is refused, not opened: the drain
    (503 draining) or a newer session for its agent id (409 duplicate_agent)."""
    if not session.stop.done():
        return None
    code, reason = session.stop.result()
    if (code, reason) == SHUTDOWN_CLOSE:
        return Rejection(Reason.DRAINING, agent_id=session.agent_id, retry_after=DRAIN_RETRY_AFTER)
    return Rejection(Reason.DUPLICATE_AGENT, detail=reason, agent_id=session.agent_id)


def _release(rt: Runtime, session: Session) -> None:
    rt.counts.release(session.route.name)
    if session.agent_id is not None:
        key = (session.route.name, session.agent_id)
        if rt.agents.get(key) is session:
            del rt.agents[key]


async def _open(
    request: web.Request, rt: Runtime, session: Session, path: CanonicalPath, started: float
) -> web.StreamResponse:
    """The upstream handshake, then the client's 101 and the relay."""
    loop = asyncio.get_running_loop()
    route, agent_id = session.route, session.agent_id
    url = upstream_url(route.upstream, route.upstream_path or path.wire, upstream_query(request, route))
    headers = request_headers(request, rt, route, agent_id)
    upstream = await _connect(rt, session, url, headers, offered_protocols(request.headers))
    if isinstance(upstream, Rejection):
        return reject(request, rt, upstream, route, websocket=True)
    ended = _ended(session)
    if ended is not None:  # as the upstream handshake finished
        await _abandon(upstream, rt.config.close_timeout)
        return reject(request, rt, ended, route, websocket=True)

    client = web.WebSocketResponse(
        protocols=(),  # the upstream chose; aiohttp would look at the first header line only
        compress=route.compression,  # permessage-deflate only where the route enables it
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
    # The session runs in a task of its own: if aiohttp cancels this handler
    # because the client's connection dropped, the relay still finds out by
    # itself, tells the upstream (1001) and accounts for the session.
    session.task = asyncio.ensure_future(_run(session, rt, client, upstream))
    rt.handshaking.discard(session)  # _run has put it in rt.sessions
    session.settled.set()
    await asyncio.shield(session.task)
    return client


async def _connect(
    rt: Runtime, session: Session, url: URL, headers: CIMultiDict[str], protocols: list[str]
) -> aiohttp.ClientWebSocketResponse[bool] | Rejection:
    """The upstream handshake, or why the client is refused. A session ended meanwhile
    (a drain, a newer session for its agent id) is answered at once, not after the
    backend, or a retry waiting for it, has made up its mind."""
    route = session.route
    connecting = asyncio.ensure_future(
        connect_websocket(
            rt.http(), route, url, headers, protocols, close_timeout=rt.config.close_timeout, agent_id=session.agent_id
        )
    )
    try:
        either: set[asyncio.Future[Any]] = {connecting, session.stop}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not connecting.done():
            connecting.cancel()
            await asyncio.wait({connecting})
    try:
        return connecting.result()
    except asyncio.CancelledError:
        ended = _ended(session)
        assert ended is not None, "the handshake was cancelled only because the session ended"
        return ended
    except Exception as exc:
        failure = rejection_for(exc, session.agent_id)
        if failure is None:
            raise
        return failure


async def _abandon(upstream: aiohttp.ClientWebSocketResponse[bool], within: float) -> None:
    """The client left during its own handshake: close the upstream leg, bounded."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(upstream.close(code=1001, message=b"client went away"), within)


async def end_sessions(rt: Runtime, window: float, hurry: asyncio.Event) -> None:
    """Stopping: close every open session, the oldest first, evenly spread over
    ``window`` (0: all at once); ``hurry`` closes the rest at once. Handshakes
    still under way are answered 503 draining at once."""
    for waiting in list(rt.handshaking):
        waiting.end(*SHUTDOWN_CLOSE)
    sessions = sorted(rt.sessions, key=lambda s: s.opened)
    if sessions:
        event(logging.INFO, "ws.closing_all", sessions=len(sessions), over_s=window)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for index, session in enumerate(sessions):
        delay = started + window * index / len(sessions) - loop.time()
        if delay > 0 and not hurry.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hurry.wait(), delay)
        session.end(*SHUTDOWN_CLOSE)
    tasks = {s.task for s in sessions if s.task is not None}
    if tasks:
        # Each close is bounded by close_timeout (the close frame, then the reply).
        await asyncio.wait(tasks, timeout=2 * rt.config.close_timeout + 1)


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
        _release(rt, session)
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
