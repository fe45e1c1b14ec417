"""The public listener's connections, before any route is involved.

:class:`HeaderDeadline` cuts off connections that do not deliver a request head in
time (slowloris). aiohttp has no header-read timeout, so the listener arms a timer
when it accepts a connection and again after each response; a request reaching the
handler (its head fully parsed) disarms it. A connection still without a request
head when the timer fires is closed, and so is an idle keep-alive connection.

:class:`Connection` is aiohttp's request handler with the sidecar's own answer to
requests its parser refuses: a reason like every other refusal, and never the
offending line, which aiohttp would echo and log (it may hold the token).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .reasons import Reason

Refuse = Callable[[BaseRequest, Reason], web.StreamResponse]

# Request-head limits. aiohttp's parser enforces these (line length, field length,
# field count); the app checks the total (MAX_HEAD_BYTES), like nginx's 4 x 8 KiB.
HEAD_LIMITS = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 100}
MAX_HEAD_BYTES = 32 * 1024


class Connection(RequestHandler):
    """One client connection. ``refuse`` answers a request the parser rejected."""

    __slots__ = ("_refuse",)

    def __init__(self, manager: web.Server, *, refuse: Refuse, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._refuse = refuse

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)  # a bug: logged with its traceback
        too_large = isinstance(exc, LineTooLong) or "Too many headers" in str(exc)
        # Both reasons close the connection: the parser's state is unknown.
        return self._refuse(request, Reason.HEADERS_TOO_LARGE if too_large else Reason.BAD_REQUEST)


class HeaderDeadline:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._timers: dict[RequestHandler, asyncio.TimerHandle] = {}

    def wrap(self, factory: Callable[[], RequestHandler]) -> Callable[[], RequestHandler]:
        """A protocol factory for ``loop.create_server`` that arms the timer on accept."""

        def accept() -> RequestHandler:
            protocol = factory()
            self.arm(protocol)
            return protocol

        return accept

    def arm(self, protocol: RequestHandler) -> None:
        self.disarm(protocol)
        loop = asyncio.get_running_loop()
        self._timers[protocol] = loop.call_later(self.timeout, self._expire, protocol)

    def disarm(self, protocol: RequestHandler) -> None:
        timer = self._timers.pop(protocol, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, protocol: RequestHandler) -> None:
        self._timers.pop(protocol, None)
        transport = protocol.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol = request.protocol
        self.disarm(protocol)
        response = await handler(request)
        if not isinstance(response, web.WebSocketResponse):
            self.arm(protocol)
        return response
