"""Interim stand-ins for the relay branch's ``Relay`` and ``Wheel`` (issue 13; the `frames`
branch builds them): this module goes when that branch is merged, and ``websocket.py`` and
``runtime.py`` import from ``relay.py`` and ``wheel.py`` instead.

:class:`Relay` here has the agreed interface (docs in /work/DATAPLANE.md) and is a blind byte
pipe: no frame scanning, no size limit, no close codes of its own, no keep-alive. It exists
so that the data plane around the relay (listener, upstream handshake, sessions) runs end to
end before the real relay arrives; the tests of frame handling fail with it, by design.
:class:`Wheel` schedules on the event loop directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from .closing import ABNORMAL, SIDECAR_CLOSING_UPSTREAM, End, Side, close_payload
from .metrics import Tally
from .transport import Transport


class Wheel:
    def __init__(self, tick: float = 0.05) -> None:
        self.tick = tick

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)


class _Pipe(asyncio.Protocol):
    def __init__(self, relay: Relay, other: Transport, side: Side) -> None:
        self.relay, self.other, self.side = relay, other, side

    def data_received(self, data: bytes) -> None:
        self.other.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.other.close()
        self.relay.end(End(self.side, ABNORMAL))


class Relay:
    """A blind pipe with the relay's interface (see the module docstring)."""

    def __init__(
        self,
        *,
        max_message_size: int,
        deflate: bool,
        close_timeout: float,
        stall_timeout: float,
        keepalive_interval: float,
        wheel: Wheel,
        up: Tally,
        down: Tally,
        context: Mapping[str, object],
    ) -> None:
        self.ended: asyncio.Future[End] = asyncio.get_running_loop().create_future()
        self._transports: list[Transport] = []

    def start(self, client: Transport, client_pending: bytes, upstream: Transport, upstream_pending: bytes) -> None:
        client.set_protocol(_Pipe(self, upstream, "client"))
        upstream.set_protocol(_Pipe(self, client, "upstream"))
        self._transports = [client, upstream]
        if client_pending:
            upstream.write(client_pending)
        if upstream_pending:
            client.write(upstream_pending)
        client.resume_reading()
        upstream.resume_reading()

    def stop(self, code: int, reason: str) -> None:
        if not self._transports:
            return
        client, upstream = self._transports
        client.write(bytes((0x88, 2 + len(reason.encode()[:123]))) + close_payload(code, reason.encode()))
        upstream.write(_masked_close(*SIDECAR_CLOSING_UPSTREAM))
        self.end(End("sidecar", code, reason))
        for transport in self._transports:
            transport.close()

    def end(self, end: End) -> None:
        if not self.ended.done():
            self.ended.set_result(end)


def _masked_close(code: int, reason: bytes) -> bytes:
    payload = close_payload(code, reason)
    return bytes((0x88, 0x80 | len(payload))) + b"\x00\x00\x00\x00" + payload  # a zero mask: the payload as is
