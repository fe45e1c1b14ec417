"""Pure: the inflated size of permessage-deflate messages, measured as they pass.

On a route with ``compression: true`` the extension is negotiated end to end and
compressed frames pass through the relay as they are; the route's size limit and
``sidecar_ws_bytes_total`` are still on the inflated size (tests/test_compression.py).
So each direction of such a session has a :class:`Meter`: fed the payload of each
compressed message (:class:`sidecar.frames.Deflated` says where it lies, unmasked
with :func:`sidecar.frames.unmask`), it inflates it in bounded steps, counts the
output and throws it away. A deflate bomb (megabytes from a few kilobytes) never
costs more than one step's output: it is refused as soon as the count passes the
limit. Routes without compression have no meter and pay nothing.

RFC 7692 section 7.2.2: the sender removed the 0x00 0x00 0xff 0xff that ends each
message's deflate block, so it is put back at each message's end. A sender that
resets its compressor per message (``*_no_context_takeover``, :func:`resets`) lets
the meter drop its inflater (and its 32 KiB window) between messages; otherwise the
window is kept, as the next message may refer back into it. A block with BFINAL set
ends a deflate stream (RFC 7692 section 7.2.3.3 allows it as a flush): an inflater
past it reads nothing more, so whatever follows, in the same message or the next,
is measured by a fresh one. Never left unmeasured: a bomb behind a final block is
refused like any other.
"""

from __future__ import annotations

import zlib

_TAIL = b"\x00\x00\xff\xff"
_STEP = 64 * 1024  # the most inflated output held at once


class Meter:
    """One direction of a permessage-deflate session (see the module docstring)."""

    __slots__ = ("_inflater", "_limit", "_reset", "inflated", "size", "wire")

    def __init__(self, limit: int, *, reset: bool = False) -> None:
        self._limit = limit  # the most a message may inflate to
        self._reset = reset  # the sender resets its context per message (no_context_takeover)
        self._inflater: zlib._Decompress | None = None
        self.size = 0  # inflated bytes of the message in progress
        self.wire = 0  # compressed payload bytes fed, in all
        self.inflated = 0  # what they inflated to, in all (messages in progress included)

    def feed(self, payload: bytes, last: bool) -> str | None:
        """Count what ``payload`` (unmasked) inflates to; ``last`` when it ends its message.
        ``None`` if all is well, else why the message must be refused: over the limit
        (:attr:`too_big`), or not deflate data at all."""
        self.wire += len(payload)
        data = payload + _TAIL if last else payload
        try:
            while data:
                inflater = self._inflater
                if inflater is None:
                    inflater = self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                while True:
                    out = len(inflater.decompress(data, _STEP))
                    self.size += out
                    self.inflated += out
                    if self.size > self._limit:
                        return self.too_big
                    data = inflater.unconsumed_tail
                    if not data and out < _STEP:
                        break
                if inflater.eof:  # a final block: what follows it is a new stream ...
                    self._inflater = None
                    data = inflater.unused_data
                    if last and len(data) <= len(_TAIL):
                        break  # ... unless it is only the end put back above
        except zlib.error:
            return "compressed message is not valid deflate data"
        if last:
            self.size = 0
            if self._reset:
                self._inflater = None
        return None

    @property
    def too_big(self) -> str:
        # The scanner's words for the same limit (sidecar.frames).
        return f"message larger than {self._limit} bytes"


def resets(agreed: str) -> tuple[bool, bool]:
    """Whether the client and the server reset their compressors per message, from the
    ``Sec-WebSocket-Extensions`` a session agreed on (RFC 7692 section 7.1.1)."""
    for extension in agreed.split(","):
        name, *params = (part.strip().lower() for part in extension.split(";"))
        if name == "permessage-deflate":
            given = {param.partition("=")[0].strip() for param in params}
            return "client_no_context_takeover" in given, "server_no_context_takeover" in given
    return False, False
