"""A WebSocket route: handshake, auth, the upstream handshake, the client's 101, then the relay.

Nothing goes upstream until the client's handshake is valid and admitted, and the client
gets its 101 (written by the sidecar, ``Server: sidecar``) only after the upstream has
answered 101 with a valid ``Sec-WebSocket-Accept``; it then gets the subprotocol, and the
permessage-deflate parameters, the upstream chose. From there the two connections belong
to the relay (:class:`sidecar.relay.Relay`), which forwards frames as they are.

Each session is one task, inside :meth:`Registry.admit <sidecar.sessions.Registry.admit>`:
if the client's connection drops during the upstream handshake the session is ended
(:attr:`~sidecar.sessions.EndCause.CLIENT_GONE`); once open, the relay reports how it
ended, or is told to end it (``session.stopped``: a drain, a newer session).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from . import h1
from .admission import authenticate
from .closing import SIDECAR_ERROR, End
from .context import Context
from .forwarding import upstream_request
from .handshake import handshake_problem, offered_protocols
from .inflate import resets
from .listener import Handler, Listener, Request
from .logs import correlate, event, logger
from .metrics import close_code_label
from .origins import origin_allowed
from .reasons import Reason, Refused, Rejection
from .refusal import refuse
from .relay import Relay
from .runtime import Runtime
from .sessions import EndCause, Session, State
from .transport import Transport
from .upstream import Upgraded, accept_for, open_websocket, rejection_for

_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"


def check_handshake(ctx: Context, request: Request) -> None:
    """The client's handshake and its Origin, cheapest first (before any token is
    compared); :exc:`Refused` otherwise."""
    assert ctx.route is not None
    problem = handshake_problem(ctx.method, ctx.version, ctx.headers)
    if problem is None and h1.has_body(request.fields):
        # RFC 6455 section 4.1: the handshake is a GET, and a GET's content has no meaning
        # (RFC 9110 section 9.3.1); here it would be read as the first frames.
        problem = "a WebSocket handshake has no body"
    if problem is not None:
        raise Refused(Rejection(Reason.BAD_HANDSHAKE, detail=problem))
    if not origin_allowed(ctx.headers.getall("Origin", []), ctx.route.origins):
        raise Refused(Rejection(Reason.ORIGIN_DENIED))


class _Watch(Handler):
    """The client's connection, while its session waits for the upstream."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def client_lost(self) -> None:
        if self.session.state is State.CONNECTING:
            self.session.end(EndCause.CLIENT_GONE)


def start_session(conn: Listener, request: Request, ctx: Context, rt: Runtime) -> Coroutine[Any, Any, None]:
    """The checks (:exc:`Refused` now), then the session, to run in a task of its own."""
    assert ctx.route is not None
    check_handshake(ctx, request)
    agent_id = authenticate(ctx, rt, ctx.route)
    loop = conn.front.loop  # not asked for again (asyncio's get_running_loop() is a getpid() each)
    session = Session(ctx.route, agent_id, ctx.client, expires_at=ctx.expires_at, stopped=loop.create_future())
    conn.handler = _Watch(session)
    return _session(conn, request, ctx, rt, session)


async def _session(conn: Listener, request: Request, ctx: Context, rt: Runtime, session: Session) -> None:
    config = rt.config
    correlate(ctx.request_id)  # on every line of this session (this task's context only)
    # What the session keeps for its life is only what the relay needs: the request, its
    # headers and the listener are let go once the client has its 101.
    handshake: list[tuple[Listener, Request, Context]] = [(conn, request, ctx)]
    del conn, request, ctx
    try:
        async with rt.sessions.admit(session, max_sessions=config.max_sessions, close_timeout=config.close_timeout):
            opened = await _open(*handshake[0], rt, session)
            handshake.clear()
            if opened is not None:
                await _run(session, rt, *opened)
    except Refused as refused:
        if handshake:
            conn, request, ctx = handshake.pop()
            if conn.current is request:
                conn.answer(refuse(ctx, rt, refused.rejection), request)
    except ConnectionResetError:
        pass  # the client went away during the upstream handshake: nobody to answer
    except Exception:  # a bug before the relay: logged once, the client's connection closed
        logger.exception("ws.session_failed", extra={"fields": {"route": session.route.name}})
        if handshake:
            handshake[0][0].close()


async def _open(
    conn: Listener, request: Request, ctx: Context, rt: Runtime, session: Session
) -> tuple[Transport, bytes, Upgraded, bool, float] | None:
    """The upstream handshake, then the client's 101 (and how long it took from the request);
    ``None`` if the client went away."""
    upgraded = await _connect(conn, request, ctx, rt, session)
    if conn.current is not request or conn.transport is None:
        upgraded.transport.abort()  # the client went away as the upstream said yes
        return None
    try:
        conn.transport.write(_switching(ctx, upgraded, conn))
        paused = conn.writing_paused  # the relay starts held back if the client's buffer is full
        client, tail = conn.take_over()
        handshake = conn.front.loop.time() - ctx.started
        rt.sessions.opened(session)
        route = session.route
        assert ctx.path is not None
        event(
            logging.INFO,
            "ws.established",
            route=route.name,
            alias=ctx.path.decoded,
            agent_id=session.agent_id,
            upstream=route.upstream.url + (route.upstream_path or ctx.path.wire),
            subprotocol=upgraded.protocol,
            client=ctx.client,
        )
    except BaseException:
        upgraded.transport.abort()  # not left open behind a session that never began
        raise
    return client, tail, upgraded, paused, handshake


async def _connect(conn: Listener, request: Request, ctx: Context, rt: Runtime, session: Session) -> Upgraded:
    """The upstream handshake, or :exc:`Refused` with why. A session ended meanwhile
    (a drain, a newer session for its agent id, the client gone) stops waiting at once,
    not after the backend, or a retry waiting for it, has made up its mind."""
    route = session.route
    path, fields = upstream_request(
        ctx, request.fields, session.agent_id, identity=rt.identity_headers, local=conn.local
    )
    deflate = _deflate_offer(ctx) if route.compression else None
    target = rt.pool.target(route.upstream)
    # The session ending cancels this task where it waits: no second task, no wait on two futures.
    task = asyncio.current_task(conn.front.loop)
    assert task is not None
    waiting, ended = True, False

    def cancel(_: asyncio.Future[EndCause]) -> None:
        nonlocal ended
        if waiting:
            ended = True
            task.cancel()

    session.stopped.add_done_callback(cancel)
    try:
        upgraded = await open_websocket(
            route,
            target,
            rt.pool.tls(target),
            path,
            fields,
            offered_protocols(ctx.headers),
            deflate,
            agent_id=session.agent_id,
        )
    except asyncio.CancelledError:
        if ended and task.uncancel() == 0:
            session.refuse_if_ended()  # cancelled only because the session ended: raises
        raise
    except Exception as exc:
        failure = rejection_for(exc, session.agent_id)
        if failure is None:
            raise
        raise Refused(failure) from None
    finally:
        waiting = False
        session.stopped.remove_done_callback(cancel)
    try:
        session.refuse_if_ended()  # as the upstream handshake finished
    except BaseException:
        upgraded.transport.abort()
        raise
    return upgraded


def _deflate_offer(ctx: Context) -> str | None:
    """The client's permessage-deflate offers (RFC 7692 section 5), as it wrote them, and
    nothing else it offered: frames are relayed as they are, so the upstream must agree to
    what the client will send."""
    offers = [
        offer.strip()
        for value in ctx.headers.getall("Sec-WebSocket-Extensions", ())
        for offer in value.split(",")
        if offer.split(";")[0].strip().lower() == "permessage-deflate"
    ]
    return ", ".join(offers) or None


def _switching(ctx: Context, upgraded: Upgraded, conn: Listener) -> bytes:
    """The client's 101 (RFC 6455 section 4.2.2), in one write."""
    key = ctx.headers["Sec-WebSocket-Key"].strip().encode()
    out = [_SWITCHING, b"Sec-WebSocket-Accept: %s\r\n" % accept_for(key)]
    if upgraded.protocol:
        out.append(b"Sec-WebSocket-Protocol: %s\r\n" % upgraded.protocol.encode("latin-1"))
    if upgraded.extensions:
        out.append(b"Sec-WebSocket-Extensions: %s\r\n" % upgraded.extensions.encode("latin-1"))
    out.append(b"Server: sidecar\r\n")
    out.append(conn.front.clock.date_field())
    out.append(b"\r\n")
    return b"".join(out)


async def _run(
    session: Session, rt: Runtime, client: Transport, tail: bytes, upgraded: Upgraded, paused: bool, handshake: float
) -> None:
    """Relay one session and account for it: gauge, counters, histograms, log line."""
    loop = session.stopped.get_loop()
    metrics, route, config = rt.metrics, session.route, rt.config
    counts = metrics.sessions.route(route.name)
    counts.opened(handshake)
    up = metrics.relayed.open(route.name, "upstream")
    down = metrics.relayed.open(route.name, "downstream")
    opened = loop.time()
    end = End("sidecar", *SIDECAR_ERROR)
    deflate = upgraded.extensions is not None and "permessage-deflate" in tokens_of(upgraded.extensions)
    relay = Relay(
        max_message_size=route.max_message_size,
        deflate=deflate,
        close_timeout=config.close_timeout,
        stall_timeout=config.stall_timeout,
        keepalive_interval=config.keepalive_interval,
        wheel=rt.wheel,
        up=up,
        down=down,
        context={"route": route.name, "agent_id": session.agent_id},
        resets=resets(upgraded.extensions) if deflate and upgraded.extensions else (False, False),
    )

    def stopped(future: asyncio.Future[EndCause]) -> None:
        if not future.cancelled():
            relay.stop(future.result().code, future.result().reason)

    try:
        relay.start(client, tail, upgraded.transport, upgraded.pending, paused=(paused, upgraded.paused))
        del upgraded, client, tail
        # The sidecar ending the session (a drain, a newer session) tells the relay directly:
        # a callback, not a wait on two futures for the session's whole life.
        session.stopped.add_done_callback(stopped)
        # asyncio.shield's way, without its calls: cancelling this task cancels the waiter,
        # never relay.ended (the relay resolves it once both connections are gone).
        waiter: asyncio.Future[End] = loop.create_future()

        def ended(done: asyncio.Future[End]) -> None:
            if not waiter.cancelled():
                waiter.set_result(done.result())

        relay.ended.add_done_callback(ended)
        end = await waiter
    except asyncio.CancelledError:
        relay.stop(*SIDECAR_ERROR)
        raise
    except Exception as error:  # a bug: logged once, 1011 to both legs, never a half-open socket
        relay.failed(None, error)
        end = await asyncio.shield(relay.ended)
    finally:
        session.stopped.remove_done_callback(stopped)
        if session.state is State.OPEN:
            session.move(State.CLOSING)
        metrics.relayed.close(up)
        metrics.relayed.close(down)
        duration = loop.time() - opened
        counts.closed(end.initiator, close_code_label(end.code), duration)
        if end.cut is not None:
            metrics.ws_cut_off.labels(route.name, *end.cut).inc()
        if logger.isEnabledFor(logging.INFO):
            event(
                logging.INFO,
                "ws.closed",
                route=route.name,
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


def tokens_of(value: str) -> set[str]:
    """The extension names in a Sec-WebSocket-Extensions value."""
    return {offer.split(";")[0].strip().lower() for offer in value.split(",")}


__all__ = ["check_handshake", "start_session"]
