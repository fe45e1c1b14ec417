"""Plain HTTP routes: a streaming reverse proxy on pooled keep-alive connections.

One :class:`Forward` per request, driven by callbacks from both connections (no task, no
coroutine per request). The request goes upstream with the sidecar's own framing: a body
that is complete when the head is handled is sent with ``Content-Length``, head and body in
one write; the rest of a longer one streams as it arrives (``Content-Length`` kept, or
chunked). The response is parsed (llhttp) and streamed back as it arrives, what one read
brought in one write, re-framed where needed (chunked to an HTTP/1.1 client, or
close-delimited to HTTP/1.0). Backpressure both ways: a connection whose write buffer is
full stops the other from being read. Redirects are passed back, encodings left alone,
hop-by-hop fields dropped (RFC 9110 section 7.6.1), repeated ones such as Set-Cookie kept.

The upstream connection goes back to the pool only when the response was read to its end
with nothing after it in the read, the request fully sent, and neither side asked to close;
never after a 101 (RFC 9110 section 15.2.2: a plain request never asks to switch) or a HEAD:
its parser is stopped at the head, so nothing would see a body a faulty backend sends after
it, late, as the start of the next response on that connection (maybe another client's).
"""

from __future__ import annotations

import asyncio
import logging

import httptools

from . import h1
from .accounting import record
from .admission import authenticate
from .config import Route
from .context import Context
from .forwarding import upstream_request
from .listener import PAUSE_BODY, Handler, Listener, Request, Timer
from .logs import event
from .pool import Connection, Exchange, Target, keep_alive_hint
from .reasons import Reason, Refused, Rejection
from .refusal import refuse
from .requests import declared_length
from .runtime import Runtime
from .upstream import UpstreamError, rejection_for

CLIENT_CLOSED = 499  # nginx's convention for "the client closed the request before the response"


def proxy(conn: Listener, request: Request, ctx: Context, rt: Runtime, route: Route) -> None:
    """Admit and forward a plain request; :exc:`Refused` when it is not admitted."""
    agent_id = authenticate(ctx, rt, route)  # the rate limit, then the token and agent id
    Forward(conn, request, ctx, rt, route, agent_id).start()


class _Stop(Exception):
    """Stops the response parser: the response is over (a HEAD), or not HTTP any more (101)."""


class Forward(Handler, Exchange):
    """One request, from its head to the end of its response (see the module docstring)."""

    __slots__ = (
        "_answered", "_chunked_down", "_chunked_up", "_connecting", "_ended", "_extra", "_fields", "_first", "_hint",
        "_interim", "_keep_client", "_keep_upstream", "_last", "_out", "_parser", "_pending", "_reason", "_retried",
        "_sent_all", "_stall", "_status", "_timer", "_until_eof", "agent_id", "conn", "ctx", "done", "request", "route",
        "rt", "target", "upstream",
    )  # fmt: skip

    def __init__(
        self, conn: Listener, request: Request, ctx: Context, rt: Runtime, route: Route, agent_id: str | None
    ) -> None:
        self.conn, self.request, self.ctx, self.rt, self.route = conn, request, ctx, rt, route
        self.agent_id = agent_id
        self.target: Target = rt.pool.target(route.upstream)
        self.upstream: Connection | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._pending: list[bytes] = []  # request body not yet sent
        self._chunked_up = False  # the request body goes upstream chunked
        self._first = b""  # the first write upstream, kept while it may be sent again
        self._retried = False
        self._sent_all = False  # the request is sent to its end
        self._parser = httptools.HttpResponseParser(self)
        self._stall = h1.Stall()  # a head, chunk line or trailers that never end: stopped
        self._fields: list[h1.Field] = []
        self._reason = b""
        self._status = 0
        self._keep_upstream = False
        self._interim = False
        self._ended = False  # the response is parsed to its end (completed once the read is parsed)
        self._extra = False  # the upstream sent bytes after the end: its connection is closed
        self._answered = False  # the response head is written to the client
        self._chunked_down = False
        self._until_eof = False
        self._keep_client = True
        self._out: list[bytes] = []
        self._timer: Timer | None = None
        self._hint: float | None = None  # how long the upstream keeps an idle connection
        self._last = 0.0
        self.done = False

    # --- the request ---------------------------------------------------------------------

    def start(self) -> None:
        request = self.request
        path, fields = upstream_request(  # reframed: the sidecar frames the body itself
            self.ctx,
            request.fields,
            self.agent_id,
            identity=self.rt.identity_headers,
            local=self.conn.local,
            reframed=True,
        )
        body = request.take_body(self)
        target = (self.target.base + path).encode("utf-8", "surrogateescape")
        head = [b"%s %s HTTP/1.1\r\nHost: %s\r\n%s" % (request.method.encode(), target, self.target.host_field, fields)]
        if request.complete:
            data = b"".join(body)
            if data or request.method in h1.BODY_METHODS or h1.has_body(request.fields):
                head.append(b"Content-Length: %d\r\n" % len(data))
            self._sent_all = True
        else:
            length = declared_length(request)
            if length < 0:
                self._chunked_up = True
                head.append(b"Transfer-Encoding: chunked\r\n")
                body = [h1.chunk(part) for part in body if part]
            else:
                head.append(b"Content-Length: %d\r\n" % length)
            data = b"".join(body)
            if "100-continue" in self.ctx.headers.get("Expect", "").lower() and request.version >= (1, 1):
                self._out.append(h1.CONTINUE)  # RFC 9110 section 10.1.1: Expect is not passed on
                self._flush()
        head.append(b"\r\n")
        self._first = b"".join(head) + data
        self.conn.handler = self
        self.rt.requests.add(self)
        connection = self.rt.pool.take(self.target)
        if connection is not None:
            self._attach(connection)
        else:
            self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self.route.upstream.connect_timeout):
                connection = await self.rt.pool.open(self.target)
        except Exception as exc:
            self._fail(exc)
            return
        if self.done:
            self.rt.pool.give(connection)
        else:
            self._attach(connection)

    def _attach(self, connection: Connection) -> None:
        self._connecting = None
        if self._timer is not None:  # a second try
            self._timer.cancel()
            self._parser = httptools.HttpResponseParser(self)
        self.upstream = connection
        connection.exchange = self
        transport = connection.transport
        assert transport is not None
        if self.conn.writing_paused:  # full before this exchange had an upstream: not read until it drains
            transport.pause_reading()
        pending, self._pending = self._pending, []
        transport.write(self._first + b"".join(pending))
        if not (self._sent_all and connection.reused and self.request.method in h1.IDEMPOTENT):
            self._first = b""  # it will not be sent again
        if self._sent_all is False and self.request.complete:
            self._end_body()
        # the client's body waits while the upstream's buffer is full, filled by this write or before
        (self.conn.pause if connection.writing_paused else self.conn.resume)(PAUSE_BODY)
        self._last = self.conn.front.loop.time()
        self._timer = self.conn.front.schedule(self.route.upstream.read_timeout, self._check_read)

    def request_body(self, chunk: bytes) -> None:
        if self.done or not chunk:
            return
        self._last = self.conn.front.loop.time()  # read_timeout: the backend waits for the body
        data = h1.chunk(chunk) if self._chunked_up else chunk
        if self.upstream is None or self.upstream.transport is None:
            self._pending.append(data)
            if sum(map(len, self._pending)) > 64 * 1024:
                self.conn.pause(PAUSE_BODY)
        else:
            self.upstream.transport.write(data)

    def request_end(self) -> None:
        if not self.done and self.upstream is not None:
            self._end_body()

    def _end_body(self) -> None:
        self._sent_all = True
        if self._chunked_up and self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(b"0\r\n\r\n")

    # --- the response ------------------------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        self._last = self.conn.front.loop.time()
        self._first = b""  # something came back: never sent again
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, _Stop) as exc:
            if self._ended:  # what followed the end is dropped, never parsed as the next response
                self._extra = True  # closed, never reused (a HEAD's too: its parser stops at the head)
            elif not isinstance(exc.__context__, _Stop) and not isinstance(exc, _Stop):
                self._broke(UpstreamError("ClientResponseError"))
                return
        if self._stall.over(len(data)) and not self._ended:
            self._broke(UpstreamError("ClientResponseError"))  # 502 before the head; after it, cut short
            return
        if self._ended and not self.done:
            self._complete()  # only now: the whole read is parsed, so what followed the end is known
        self._flush()

    def on_message_begin(self) -> None:
        if self._ended:  # a second response nobody asked for: the connection is out of step
            raise _Stop
        self._fields = []
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._answered:
            self._fields.append((name, value))  # not after the head: a trailer, dropped

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 100 Continue, 103 Early Hints: not passed on
            return
        if status == 101:
            # RFC 9110 section 15.2.2: a server may switch only to a protocol the request's
            # Upgrade named, and a plain request never carries Upgrade: a broken or hostile
            # backend. Its connection speaks something else now: never reused.
            self._drop_upstream()
            detail = "the backend switched protocols on a plain HTTP request"
            self._refuse(Rejection(Reason.UPSTREAM_REJECTED, detail, upstream_status=101, agent_id=self.agent_id))
            raise _Stop
        self._status = status
        self._keep_upstream = parser.should_keep_alive()
        head_only = self.request.method == "HEAD"
        self._out.append(self._response_head(status, head_only or status in (204, 304)))  # ValueError: 502
        self._answered = True
        if head_only:
            self._ended = True
            raise _Stop  # llhttp would wait for the body a HEAD's Content-Length describes

    def on_body(self, chunk: bytes) -> None:
        self._stall.moved = True
        self._out.append(h1.chunk(chunk) if self._chunked_down else chunk)

    def on_chunk_complete(self) -> None:
        self._stall.moved = True

    def on_message_complete(self) -> None:
        self._stall.moved = True
        if self._interim:
            self._interim = False
            return
        self._ended = True

    def _response_head(self, status: int, no_body: bool) -> bytes:
        request, front = self.request, self.conn.front
        keep, date = request.keep_alive and not front.closing, front.clock.date_field()
        head, self._chunked_down, self._until_eof, self._keep_client, hint = h1.relayed_head(
            self._fields, status, self._reason, request.version, no_body=no_body, keep=keep, date=date
        )
        if hint is not None:
            self._hint = keep_alive_hint(hint)
        return head

    def _complete(self) -> None:
        if self._chunked_down:
            self._out.append(b"0\r\n\r\n")
        self._flush()
        connection, self.upstream = self.upstream, None
        if connection is not None:
            if self._keep_upstream and self._sent_all and not (self._extra or self._until_eof):
                self.rt.pool.give(connection, self._hint)
            else:
                connection.exchange = None
                connection.close()
        self._end(self._status, keep_client=self._keep_client)

    # --- failures ----------------------------------------------------------------------

    def upstream_lost(self, exc: Exception | None) -> None:
        self.upstream = None
        if self.done:
            return
        if self._answered and self._until_eof:
            self._complete()  # a close-delimited body ends with the connection (RFC 9112 section 6.3)
            return
        if not self._answered and self._first and not self._retried:
            self._retried = True  # a kept-alive connection the backend had just closed: once more, anew
            self._connecting = asyncio.ensure_future(self._connect())
            return
        self._broke(UpstreamError("ServerDisconnectedError"))

    def upstream_paused(self, paused: bool) -> None:
        (self.conn.pause if paused else self.conn.resume)(PAUSE_BODY)

    def client_paused(self, paused: bool) -> None:
        transport = self.upstream.transport if self.upstream is not None else None
        if transport is not None:
            (transport.pause_reading if paused else transport.resume_reading)()

    def client_lost(self) -> None:
        if self.done:
            return
        self._drop_upstream()
        if self._answered:
            ctx = self.ctx
            event(logging.DEBUG, "http.client_gone", route=ctx.route_name, client=ctx.client, request_id=ctx.request_id)
        self._end(self._status if self._answered else CLIENT_CLOSED, keep_client=False)

    def cancel(self) -> None:
        """A hurried stop: cut short, the client's connection closed without an answer."""
        if not self.done:
            self._drop_upstream()
            self.conn.close()
            self._end(self._status if self._answered else CLIENT_CLOSED, keep_client=False)

    def _check_read(self) -> None:
        self._timer = None
        if self.done:
            return
        timeout = self.route.upstream.read_timeout
        idle = self.conn.front.loop.time() - self._last
        if idle < timeout:
            self._timer = self.conn.front.schedule(timeout - idle, self._check_read)
            return
        self._broke(TimeoutError())

    def _fail(self, exc: BaseException) -> None:
        """Connecting failed: the client is told why."""
        if self.done:
            return
        rejection = rejection_for(exc, self.agent_id)
        if rejection is None:
            rejection = Rejection(Reason.UPSTREAM_UNAVAILABLE, type(exc).__name__, agent_id=self.agent_id)
        self._refuse(rejection)

    def _broke(self, exc: BaseException) -> None:
        """The backend failed after the request went: before the response head, the client
        gets the reason; after it, a truncated body (the connection is closed)."""
        self._drop_upstream()
        if not self._answered:
            self._fail(exc)
            return
        name = exc.name if isinstance(exc, UpstreamError) else "ServerTimeoutError"
        event(logging.WARNING, "http.upstream_broke", route=self.route.name, error=name, request_id=self.ctx.request_id)
        self._flush()
        self.conn.close()
        self._end(self._status, keep_client=False)

    def _refuse(self, rejection: Rejection) -> None:
        self._drop_upstream()
        self._status = rejection.reason.status
        self._out.clear()
        self.conn.answer(refuse(self.ctx, self.rt, rejection), self.request)
        self._end(self._status, keep_client=None)

    def _drop_upstream(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        connection, self.upstream = self.upstream, None
        if connection is not None:
            connection.exchange = None
            connection.abort()

    # --- the end -------------------------------------------------------------------------

    def _flush(self) -> None:
        transport = self.conn.transport
        if self._out and transport is not None:
            transport.write(b"".join(self._out))  # one part: that part itself, not a copy
        self._out.clear()

    def _end(self, status: int, *, keep_client: bool | None) -> None:
        """Recorded once; ``keep_client`` None: the listener already finished the request."""
        if self.done:
            return
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.rt.requests.discard(self)
        record(self.ctx, self.rt, status, self.conn.front.loop.time())
        if keep_client is not None and self.conn.current is self.request:
            self.conn.finish(keep_alive=keep_client)


__all__ = ["CLIENT_CLOSED", "Forward", "Refused", "proxy", "record"]
