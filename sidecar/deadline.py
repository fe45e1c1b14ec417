"""Cut off connections that do not deliver a request head in time (slowloris).

aiohttp has no header-read timeout, so the listener arms a timer when it accepts a
connection and again after each response; a request reaching the handler (its
head fully parsed) disarms it. A connection still without a request head when the
timer fires is closed. An idle keep-alive connection is closed the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler


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
