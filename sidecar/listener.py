"""The public listener's connections: one :class:`Listener` (an ``asyncio.Protocol``) per
client connection, parsing request heads with llhttp (httptools), answering one request at
a time in order (keep-alive, pipelining), and writing each answer the sidecar makes itself
in one write (:meth:`Listener.answer`).

Once a head is complete, :class:`Front` hands it to the dispatcher (:func:`sidecar.app.dispatch`),
which answers it, starts a :class:`Handler` (the plain HTTP proxy, a WebSocket session), or
refuses it. A head the parser or :mod:`sidecar.h1` refuses never reaches it: it is answered
``bad_request`` or ``headers_too_large`` through the refusal boundary (:mod:`sidecar.refusal`),
never quoting the offending line (it may hold the token), and the connection is closed.

The header deadline (slowloris, nginx's ``client_header_timeout``): a complete head within
``listen.header_timeout`` of opening and of each answer, or the connection (idle ones too) closes.
"""

from __future__ import annotations

import asyncio
from collections import deque

import httptools

from . import h1
from .reasons import Reason
from .render import Answer
from .requests import (
    DISCARD,
    METHODS,
    VERSIONS,
    Answering,
    Front,
    Handler,
    Request,
    Schedule,
    Timer,
    declared_length,
    version_of,
)
from .transport import Transport, socket_transport

__all__ = ["PAUSE_BODY", "Front", "Handler", "Listener", "Request", "Schedule", "Timer"]

# Why reading is paused (a bit each): it resumes when none is left.
_PIPELINE, PAUSE_BODY, _UPGRADE = 1, 2, 4
BODY_BUFFER = 64 * 1024  # request body held before its handler takes it, at most (then reading pauses)
_LINGER = 2.0  # seconds a refused client's bytes are read and dropped before the connection closes
_DISCARD_LIMIT = 1024 * 1024  # a refused request's body still to come: read and dropped up to this, else close


class Listener(Answering, asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: Transport | None = None
        self.peer: str | None = None
        self.local: str = ""
        self.handler = None  # answering the current request (told if the write buffer is full)
        self.current: Request | None = None  # the request being answered
        self._queue: deque[Request] = deque()  # parsed and waiting (pipelined)
        self._parsing: Request | None = None  # the request whose body is being parsed
        self._parser = httptools.HttpRequestParser(self)
        self._fields: list[h1.Field] = []
        self._target = b""
        self._in_head = True  # between messages or inside a head (as opposed to a body)
        self._head_read = 0  # bytes read while in a head, to stop one that never ends
        self._stall = h1.Stall()  # and a chunk line or trailers that never end
        self._synthetic = False  # the parser is being primed with a made-up head (see _upgraded)
        self._error: h1.HeadError | None = None  # why a callback stopped the parser
        self._broken: h1.HeadError | None = None  # the parser stopped: refused once the rest is answered
        self._paused = 0
        self._deadline: Timer | None = None
        self._waiting_since = 0.0  # since when a head is awaited (-1: none is)
        self._taken = False  # the connection belongs to someone else now (a WebSocket relay)
        self._dispatching = self._again = False  # inside dispatch; asked for the next meanwhile

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = socket_transport(transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else None
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple):
            host = str(local[0])
            self.local = f"[{host}]:{local[1]}" if ":" in host else f"{host}:{local[1]}"
        self.front.connections.add(self)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._taken or self._broken is not None:
            return  # lingering after a refusal, or someone else's: read and dropped
        current = self._parsing
        if current is not None and current.upgrade:  # waiting for the relay: kept for it
            self._keep_for_relay(current, data)
            return
        if self._in_head:
            self._head_read += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as switched:
            self._upgraded(data[switched.args[0] :])
        except httptools.HttpParserError:
            self._broke(self._error or h1.HeadError(Reason.BAD_REQUEST, "not HTTP/1.1 the parser accepts"))
            return
        stuck = self._stall.over(len(data)) and self._parsing is not None  # inside a body
        if stuck or (self._in_head and self._head_read > h1.MAX_HEAD_READ):
            self._broke(h1.HeadError(Reason.HEADERS_TOO_LARGE, "a head, chunk line or trailers over the limits"))
            return
        self._next()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        self._cancel_deadline()
        self.transport = None
        handler, self.handler = self.handler, None
        if handler is not None and not self._taken:
            handler.client_lost()

    # --- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._synthetic:
            return
        self._fields = []
        self._target = b""
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        if self._synthetic:
            return
        self._target += url
        if len(self._target) > h1.MAX_LINE:
            self._fail(h1.HeadError(Reason.HEADERS_TOO_LARGE, "the request line is over 8190 bytes"))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._synthetic or not self._in_head:
            return  # a trailer (RFC 9112 section 7.1.2): not forwarded, nothing reads it
        fields = self._fields
        fields.append((name, value))
        if len(name) > h1.MAX_LINE or len(value) > h1.MAX_LINE or len(fields) > h1.MAX_FIELDS:
            self._fail(h1.HeadError(Reason.HEADERS_TOO_LARGE, "a field over 8190 bytes, or over 100 fields"))

    def on_headers_complete(self) -> None:
        if self._synthetic:
            return
        parser = self._parser
        version = VERSIONS.get(parser.get_http_version()) or version_of(parser.get_http_version())
        method = METHODS.get(parser.get_method()) or parser.get_method().decode("ascii")
        try:
            h1.check_head(method, self._target, version, self._fields)
        except h1.HeadError as error:
            self._fail(error)
        request = Request(method, self._target, version, self._fields, parser.should_keep_alive())
        request.upgrade = parser.should_upgrade()
        self._in_head = False
        self._head_read = 0
        self._parsing = request
        self._queue.append(request)
        self._disarm()

    def on_body(self, chunk: bytes) -> None:
        request = self._parsing
        self._stall.moved = True
        if request is None:
            return
        request.received += len(chunk)
        if request.sink is not None:
            request.sink.request_body(chunk)
        else:
            request.parts.append(chunk)
            if request.received > BODY_BUFFER:
                self.pause(PAUSE_BODY)

    def on_chunk_complete(self) -> None:
        self._stall.moved = True

    def on_message_complete(self) -> None:
        request = self._parsing
        self._stall.moved = True
        self._synthetic = False
        if request is None or request.upgrade:
            return  # decided in _upgraded, once the parser says where the new protocol starts
        self._parsing = None
        self._in_head = True
        request.complete = True
        if request.sink is not None:
            request.sink.request_end()

    def _fail(self, error: h1.HeadError) -> None:
        self._error = error
        raise error

    # --- the flow of requests ------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing in flight: no request being answered or waiting, none half received."""
        return self.current is None and not self._queue and self._in_head and not self._head_read

    def _next(self) -> None:
        """Answer the next request if none is being answered. A loop: a refusal finishes inside
        ``dispatch``, asking for one more turn, so pipelined refusals never grow the stack."""
        if self._dispatching:
            self._again = True
            return
        while True:
            if self.current is not None or self._taken:
                if self._queue and not self._taken:
                    self.pause(_PIPELINE)  # one waits already: read no more until its turn
                return
            if not self._queue:
                if self._broken is not None:
                    self._refuse_head(self._broken)
                return
            request = self._queue.popleft()
            self.current = request
            if self._queue:
                self.pause(_PIPELINE)  # bounded: what one read brought at most waits here
            self._dispatching, self._again = True, False
            try:
                self.front.dispatch(self, request)
            finally:
                self._dispatching = False
            if not self._again:
                return

    def _upgraded(self, tail: bytes) -> None:
        """The parser stopped after a head with ``Connection: upgrade`` (RFC 9110 section 7.8).
        A WebSocket handshake's tail is the new protocol's, kept for the relay. Any other upgrade
        is not made: its body (which llhttp skipped) and what follows go to a fresh parser,
        primed with a head of the same framing."""
        request = self._parsing
        if request is None:
            return
        if request.websocket_like():
            request.complete = True
            self._keep_for_relay(request, tail)
            return
        request.upgrade = False
        self._parser = httptools.HttpRequestParser(self)
        framing = [(n, v) for n, v in request.fields if n.lower() in (b"content-length", b"transfer-encoding")]
        if h1.has_body(request.fields):
            self._synthetic = True
            prime = b"POST / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"%s: %s\r\n" % f for f in framing) + b"\r\n"
            self._parser.feed_data(prime)  # the head only: its callbacks are ignored
        else:
            self.on_message_complete()
        if tail:
            self.data_received(tail)

    def _keep_for_relay(self, request: Request, data: bytes) -> None:
        """What a WebSocket client sends while its session waits for the upstream, kept for the
        relay. Reading goes on (up to a bound): a client hanging up is noticed at once."""
        request.tail += data
        if len(request.tail) > BODY_BUFFER:
            self.pause(_UPGRADE)

    def finish(self, *, keep_alive: bool) -> None:
        """The current request's answer is written: go on to the next, or close."""
        request, self.current, self.handler = self.current, None, None
        transport = self.transport
        if transport is None or request is None:
            return
        if not (keep_alive and request.keep_alive) or self.front.closing:
            self._end()
            return
        if not request.complete:
            left = declared_length(request) - request.received  # still coming: dropped, unless too much
            if left > _DISCARD_LIMIT or left < 0:
                transport.close()
                return
            request.sink = DISCARD
            request.parts = []
        self.resume(_PIPELINE | PAUSE_BODY)
        self._next()
        if self.current is None and not self._taken:
            self._arm()

    # --- writing -------------------------------------------------------------------------

    def answer(self, answer: Answer, request: Request | None = None) -> None:
        """Write an answer of the sidecar's own, in one write, then finish the request."""
        request = request or self.current
        transport = self.transport
        if transport is None:
            return
        version = b"1.1" if request is None else b"%d.%d" % request.version  # HTTP/0.9 is answered as 0.9
        close = answer.close or self.front.closing or request is None or not request.keep_alive or request.held_back()
        head = h1.answer_head(
            answer.status,
            answer.headers,
            len(answer.body),
            close=close,
            version=version,
            date=self.front.clock.date_field(),
        )
        body = b"" if request is not None and request.method == "HEAD" else answer.body
        transport.write(head + body)
        if request is None or request is not self.current:
            self._end()
            return
        self.finish(keep_alive=not close)

    def take_over(self) -> tuple[Transport, bytes]:
        """Hand the connection to a relay: the transport and what the client sent after its
        handshake. The listener lets go of both."""
        transport, request = self.transport, self.current
        assert transport is not None and request is not None
        self.pause(_UPGRADE)  # until the relay is the transport's protocol (Relay.start resumes)
        self._taken = True
        self._cancel_deadline()
        self.front.connections.discard(self)
        self.current = self.handler = None
        self._queue.clear()
        return transport, request.tail

    def pause(self, reason: int) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= reason

    def resume(self, reason: int) -> None:
        if not self._paused:
            return
        self._paused &= ~reason
        if not self._paused and self.transport is not None and not self._taken:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # --- refusing a head, the deadline -----------------------------------------------------

    def _broke(self, error: h1.HeadError) -> None:
        """The parser refused what came: nothing more is read. Requests parsed whole before
        it are answered first, in order; then the refusal, and the connection closes."""
        self._broken = error
        self.pause(_UPGRADE)
        broken = self._parsing
        if broken is not None and broken in self._queue:
            self._queue.remove(broken)  # its body is bad: it never reaches a handler
        elif broken is not None and broken is self.current:
            handler, self.handler = self.handler, None  # its body broke off mid-way: cut short
            if handler is not None:
                handler.client_lost()
            self.close()
            return
        self._next()

    def _end(self) -> None:
        """Close after what is written. After a refused head the client may still be sending, and
        closing on unread bytes resets the connection, refusal and all (RFC 9112 section 9.6):
        so the sidecar stops writing and reads on, dropping what comes, a moment first."""
        transport = self.transport
        if transport is None:
            return
        if self._broken is None or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._paused = 0
        transport.resume_reading()
        self.front.schedule(_LINGER, self.close)

    def _refuse_head(self, error: h1.HeadError) -> None:
        self._taken = True  # nothing more is parsed on this connection
        self.current = request = self._parsing if self._parsing is not None and not self._parsing.complete else None
        self.front.refuse(self, request, error)

    def _arm(self) -> None:
        """The connection waits for a head from now (one timer per connection, moved lazily)."""
        self._waiting_since = self.front.loop.time()
        if self._deadline is None:
            self._deadline = self.front.schedule(self.front.rt.config.header_timeout, self._expire)

    def _disarm(self) -> None:
        self._waiting_since = -1.0  # a head is complete: no deadline until the next answer

    def _expire(self) -> None:
        self._deadline = None
        if self._taken or self.transport is None:
            return
        timeout = self.front.rt.config.header_timeout
        left = self._waiting_since + timeout - self.front.loop.time()
        if self._waiting_since < 0 or self.current is not None:
            left = timeout  # busy answering: look again later
        if left > 0:
            self._deadline = self.front.schedule(left, self._expire)
        else:
            self.close()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
