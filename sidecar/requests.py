"""A request as the listener parsed it, what answers it over time (a :class:`Handler`), and
what a listener's connections share (:class:`Front`).

The listener (:mod:`sidecar.listener`) fills a :class:`Request` from llhttp's
callbacks and hands it to the dispatcher; whoever takes it on (the plain HTTP proxy, a
WebSocket session) is its :class:`Handler`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from multidict import CIMultiDictProxy

from . import h1
from .handshake import wants_websocket
from .wheel import Timer as Timer  # re-exported: what a Schedule returns

if TYPE_CHECKING:
    from .runtime import Runtime


Schedule = Callable[[float, Callable[[], None]], Timer]


class Handler:
    """What answers a request over time: the request's body, the client's write buffer and
    its going away are reported to it. The defaults ignore all three."""

    __slots__ = ()

    def request_body(self, chunk: bytes) -> None:
        """More of the request body."""

    def request_end(self) -> None:
        """The request body is complete."""

    def client_paused(self, paused: bool) -> None:
        """The client's write buffer is over (True) or back under (False) its high-water mark."""

    def client_lost(self) -> None:
        """The client's connection is gone."""


DISCARD = Handler()  # takes a body nobody reads


class Answering:
    """A client connection's :class:`Handler` and its write buffer's state: a handler that
    takes over while the buffer is past its high-water mark is told so at once (it would
    otherwise hear of the buffer draining, never of it filling), as a relay taking the
    connection over is (:attr:`writing_paused`)."""

    writing_paused = False  # the client's write buffer is past its high-water mark
    _handler: Handler | None = None

    @property
    def handler(self) -> Handler | None:
        """What answers the current request."""
        return self._handler

    @handler.setter
    def handler(self, handler: Handler | None) -> None:
        self._handler = handler
        if handler is not None and self.writing_paused:
            handler.client_paused(True)

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self._handler is not None:
            self._handler.client_paused(True)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self._handler is not None:
            self._handler.client_paused(False)


class Request:
    """One request as parsed, until it is answered."""

    __slots__ = (
        "_headers",
        "complete",
        "fields",
        "keep_alive",
        "method",
        "parts",
        "received",
        "sink",
        "tail",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self, method: str, target: bytes, version: tuple[int, int], fields: list[h1.Field], keep_alive: bool
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.fields = fields
        self.keep_alive = keep_alive
        self.upgrade = False  # the parser switched protocols after this head (Connection: upgrade)
        self.complete = False  # the body (if any) has all arrived
        self.parts: list[bytes] = []  # body received before a handler took it
        self.received = 0
        self.sink: Handler | None = None  # where the body goes once a handler took it
        self.tail = b""  # what followed an upgrade request (the client's first frames)
        self._headers: CIMultiDictProxy[str] | None = None

    def headers(self) -> CIMultiDictProxy[str]:
        """The fields as the pure checks read them (:func:`sidecar.h1.decode_fields`), decoded
        once for the listener's upgrade decision and the dispatcher's context alike."""
        if self._headers is None:
            self._headers = CIMultiDictProxy(h1.decode_fields(self.fields))
        return self._headers

    def websocket_like(self) -> bool:
        """Does the head ask to upgrade to WebSocket (RFC 6455 section 4.1)? It may still
        be refused as a handshake: then the connection closes after the answer. The
        dispatcher's decision too (:func:`sidecar.handshake.wants_websocket`): were they
        to differ, a plain request's successors would be kept as frames for no relay."""
        return wants_websocket(self.headers())

    def held_back(self) -> bool:
        """Is the rest of the body held back until the client hears ``100 Continue`` (RFC 9110
        section 10.1.1)? A final answer without it leaves the client free to send the body or
        not: what comes next cannot be told apart, so the connection closes after it."""
        held = (n.lower() == b"expect" and v.strip().lower() == b"100-continue" for n, v in self.fields)
        return not self.complete and any(held)

    def take_body(self, sink: Handler) -> list[bytes]:
        """The body so far; what follows goes to ``sink``."""
        self.sink = sink
        parts, self.parts = self.parts, []
        return parts


class Connection(Protocol):
    """What :class:`Front` needs of a connection: whether it is idle, and closing it."""

    @property
    def idle(self) -> bool: ...
    def close(self) -> None: ...


class Front:
    """What every connection of a listener shares: the runtime, the dispatcher, the timers,
    and the set of open connections (for the drain)."""

    def __init__(
        self,
        rt: Runtime,
        dispatch: Callable[[Any, Request], None],
        refuse: Callable[[Any, Request | None, h1.HeadError], None],
        schedule: Schedule,
        connection: Callable[[Front], asyncio.Protocol],
    ) -> None:
        self.rt = rt
        self.connection = connection  # makes the protocol of one client connection
        self.dispatch = dispatch
        self.refuse = refuse
        self.schedule = schedule
        self.clock = h1.Clock()
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self.stopping = False  # close each connection once its answer is written

    def __call__(self) -> asyncio.Protocol:
        return self.connection(self)

    @property
    def closing(self) -> bool:
        """Stopping or draining: no connection is kept alive after its answer (a kept-alive
        connection would pin its client to this replica)."""
        return self.stopping or self.rt.stopping

    def close_idle(self) -> None:
        """Stopping: close every connection with nothing in flight; the rest close after
        their current answer."""
        self.stopping = True
        for connection in list(self.connections):
            if connection.idle:
                connection.close()


VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}
METHODS = {b"GET": "GET", b"POST": "POST", b"PUT": "PUT", b"HEAD": "HEAD", b"DELETE": "DELETE"}


def version_of(text: str) -> tuple[int, int]:
    """llhttp's version string ("1.1") as a tuple."""
    major, _, minor = text.partition(".")
    return int(major), int(minor)


def declared_length(request: Request) -> int:
    """The request's Content-Length, or -1 (none, or chunked: unknown)."""
    for name, value in request.fields:
        if name.lower() == b"content-length":
            return int(value)
    return -1
