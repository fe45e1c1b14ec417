"""RFC 6455 frames as the byte relay sees them: headers scanned, payloads skipped.

After the 101 the relay forwards each leg's bytes as they arrive, frames left as
they are (a client frame keeps the client's mask, which is as valid toward the
upstream). One :class:`Scanner` per direction is fed every chunk. It reads frame
headers and control frames only; data payloads are skipped by arithmetic, never
copied or unmasked. That is enough to count messages and payload bytes, enforce
the message size limit over a whole fragmented message (1009), fail what RFC 6455
says an endpoint must fail on (1002, 1007), report control frames (the relay
swallows the pong to its own ping, and decides how a session ends from the close
code), and report frame boundaries, where the relay may put frames of its own.

The contract: ``end, events = scanner.scan(data)``. ``data[:end]`` is whole frames,
perhaps ending inside a data frame's payload; ``data[end:]`` is an incomplete
header or an incomplete control frame (131 bytes at most) that was not consumed:
the caller holds it back and passes it again at the start of the next chunk. So a
control frame is never split over two writes, and a bad frame is never half
forwarded: a :class:`Fault`'s offset is where the good bytes end.

Policy stays with the relay: the scanner fails only what RFC 6455 (and RFC 7692
for RSV1) makes a protocol error. A close code above 4999, which RFC 6455 leaves
undefined (section 7.4.2 stops at 4999), is reported, not failed. A text frame's
UTF-8 is not checked: the endpoint decides that, and its 1007 comes back. With
permessage-deflate, sizes are what is on the wire, compressed: a route that
allows compression promises a limit on the inflated size (tests/test_compression.py),
which this scanner alone cannot keep.

Encoders for the frames the sidecar injects are at the end: :func:`server_frame`,
:func:`client_frame`, :func:`close_payload`, and :func:`decode_close` to read one.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
PROTOCOL_ERROR, NO_STATUS, INVALID_DATA, MESSAGE_TOO_BIG = 1002, 1005, 1007, 1009

# Close codes an endpoint may send below 3000: RFC 6455 section 7.4.1 and the IANA
# registry (1012-1014). 1004 is reserved; 1005, 1006 and 1015 MUST NOT be sent.
# 3000-4999 are for libraries and applications (section 7.4.2).
_REGISTERED = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

_U16 = struct.Struct("!H").unpack_from
_U64 = struct.Struct("!Q").unpack_from

# The first header byte (FIN, RSV1-3, opcode), classified once into a 256-entry table;
# bit 0 of a kind is FIN.
_BAD, _START, _START_FIN, _MORE, _MORE_FIN, _CONTROL = 0, 2, 3, 4, 5, 9


def _kinds(deflate: bool) -> bytes:
    table = bytearray(256)  # _BAD unless allowed below
    for b0 in range(256):
        fin, rsv, opcode = b0 & 0x80, b0 & 0x70, b0 & 0x0F
        # RSV1 means "compressed" on a message's first frame only (RFC 7692 section 6.1);
        # any other reserved bit no extension defines fails the connection (RFC 6455 section 5.2).
        if rsv and not (deflate and rsv == 0x40 and opcode in (TEXT, BINARY)):
            continue
        if opcode in (TEXT, BINARY):
            table[b0] = _START_FIN if fin else _START
        elif opcode == CONTINUATION:
            table[b0] = _MORE_FIN if fin else _MORE
        elif opcode in (CLOSE, PING, PONG) and fin:  # control frames are never fragmented (5.5)
            table[b0] = _CONTROL
    return bytes(table)


_KINDS = {False: _kinds(False), True: _kinds(True)}


class FrameError(Exception):
    """A frame RFC 6455 says to fail the connection on; ``code`` is the close code for it."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code} {self.reason}"


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes  # unmasked
    start: int  # the frame's span in the chunk scanned
    end: int


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Close:
    code: int  # 1005 for an empty close frame (RFC 6455 section 7.1.5); may be above 4999
    reason: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Boundary:
    """A data frame ends at ``offset`` (reported while ``Scanner.boundaries`` is set)."""

    offset: int


@dataclass(frozen=True, slots=True)
class Fault:
    """The stream is bad from ``offset`` (the bad frame's start) on; send ``code``."""

    code: int
    reason: str
    offset: int


@dataclass(frozen=True, slots=True)
class Deflated:
    """Payload bytes of a compressed message (RSV1 on its first frame, RFC 7692 section 6),
    reported on a permessage-deflate session: ``data[start:end]``, masked with ``key``
    (``b""``: unmasked) from byte ``phase`` of its frame's payload on; ``last`` when
    they end the message."""

    start: int
    end: int
    key: bytes
    phase: int
    last: bool


Event = Ping | Pong | Close | Boundary | Fault | Deflated


class Scanner:
    """One direction of a session: fed every chunk, see the module docstring.

    ``messages`` and ``payload_bytes`` count what was scanned (data frames only);
    ``boundaries`` asks for a :class:`Boundary` at every data frame's end (control
    frames report their own span); ``at_boundary`` says whether the bytes scanned
    so far end between frames, where the relay may write a frame of its own.
    """

    __slots__ = (
        "_compressed",
        "_fault",
        "_fin",
        "_inflate",
        "_key",
        "_kinds",
        "_mask",
        "_max",
        "_open",
        "_phase",
        "_size",
        "_skip",
        "boundaries",
        "messages",
        "payload_bytes",
    )

    def __init__(self, *, from_client: bool, max_message_size: int, deflate: bool = False) -> None:
        self._kinds = _KINDS[deflate]  # deflate: permessage-deflate was negotiated for this session
        self._mask = 0x80 if from_client else 0  # client frames MUST be masked, server frames MUST NOT (5.1)
        self._max = max_message_size
        self._skip = 0  # payload bytes of the current data frame still to come ...
        self._fin = False  # ... and whether that frame ends its message
        self._open = False  # a message has begun and not ended
        self._size = 0  # its payload bytes so far
        self._fault: Fault | None = None
        self._inflate = deflate  # report compressed payloads (Deflated) ...
        self._compressed = False  # ... the current message is one ...
        self._key = b""  # ... its current frame's masking key ...
        self._phase = 0  # ... and how much of that frame's payload has been reported
        self.boundaries = False
        self.messages = 0
        self.payload_bytes = 0

    @property
    def at_boundary(self) -> bool:
        return not self._skip

    def scan(self, data: bytes) -> tuple[int, list[Event]]:
        """Scan ``data`` (starting with what the last call left unconsumed); return how
        far it was consumed and the events in it. Never raises; a fault is final."""
        events: list[Event] = []
        if self._fault is not None:
            events.append(Fault(self._fault.code, self._fault.reason, 0))
            return 0, events
        size, pos = len(data), self._skip
        if pos:  # the rest of a data frame's payload
            if self._compressed:
                self._report(0, min(pos, size), pos <= size, events)
            if pos > size:
                self._skip -= size
                self.payload_bytes += size
                return size, events
            self._skip = 0
            self.payload_bytes += pos
            self._frame_ended(pos, events)
        kinds, mask, limit, boundaries, inflate = self._kinds, self._mask, self._max, self.boundaries, self._inflate
        messages = counted = 0  # kept in locals while scanning: a frame costs no attribute writes
        try:
            while size - pos > 1:
                b0, b1 = data[pos], data[pos + 1]
                kind, length = kinds[b0], b1 & 0x7F
                if not kind or b1 & 0x80 != mask or (kind == _CONTROL and length > 125):
                    raise self._bad_header(b0, b1)
                head = pos + 2
                if length == 126:
                    if size - head < 2:
                        break
                    length = _U16(data, head)[0]
                    head += 2
                elif length == 127:
                    if size - head < 8:
                        break
                    length = _U64(data, head)[0]
                    head += 8
                    if length >> 63:  # "the most significant bit MUST be 0" (5.2)
                        raise FrameError(PROTOCOL_ERROR, "64-bit payload length with its top bit set")
                head += mask >> 5  # the 4-byte masking key
                end = head + length
                if kind == _START_FIN and end <= size and length <= limit and not self._open:
                    messages += 1  # the common case: a whole message in one frame, all here
                    counted += length
                    if inflate and b0 & 0x40:
                        events.append(Deflated(head, end, data[head - 4 : head] if mask else b"", 0, True))
                    pos = end
                    if boundaries:
                        events.append(Boundary(pos))
                elif kind == _CONTROL:
                    if end > size:
                        break
                    events.append(self._control(b0 & 0x0F, data, pos, head, end))
                    pos = end
                elif head > size:
                    break
                else:
                    self._start_frame(kind, length)
                    if inflate:
                        self._deflated(b0, data, head, end, size, events)
                    if end > size:
                        self._skip = end - size
                        counted += size - head
                        pos = size
                        break
                    counted += length
                    pos = end
                    self._frame_ended(pos, events)
        except FrameError as error:
            self._fault = Fault(error.code, error.reason, pos)
            events.append(self._fault)
        self.messages += messages
        self.payload_bytes += counted
        return pos, events

    def _start_frame(self, kind: int, length: int) -> None:
        # A message is one data frame, or one then continuations until FIN (RFC 6455 section 5.4).
        if kind <= _START_FIN:
            if self._open:
                raise FrameError(PROTOCOL_ERROR, "a data frame while a fragmented message is unfinished")
            self._size = length
        else:
            if not self._open:
                raise FrameError(PROTOCOL_ERROR, "a continuation frame with no message begun")
            self._size += length
        if self._size > self._max:
            raise FrameError(MESSAGE_TOO_BIG, f"message larger than {self._max} bytes")
        self._fin = bool(kind & 1)
        self._open = not self._fin

    def _deflated(self, b0: int, data: bytes, head: int, end: int, size: int, events: list[Event]) -> None:
        """A data frame's header, on a permessage-deflate session: whether its message is
        compressed (only a first frame carries RSV1), and its payload in this chunk if so."""
        if b0 & 0x0F:  # text or binary: a message's first frame
            self._compressed = bool(b0 & 0x40)
        if self._compressed:
            self._key = data[head - 4 : head] if self._mask else b""
            self._phase = 0
            self._report(head, min(end, size), end <= size, events)

    def _report(self, start: int, end: int, frame_done: bool, events: list[Event]) -> None:
        events.append(Deflated(start, end, self._key, self._phase, frame_done and self._fin))
        self._phase += end - start

    def _frame_ended(self, offset: int, events: list[Event]) -> None:
        if self._fin:
            self.messages += 1
        if self.boundaries:
            events.append(Boundary(offset))

    def _control(self, opcode: int, data: bytes, start: int, head: int, end: int) -> Event:
        payload = data[head:end]
        if self._mask:
            payload = _masked(payload, data[head - 4 : head])
        if opcode == PING:
            return Ping(payload, start, end)
        if opcode == PONG:
            return Pong(payload, start, end)
        code, reason = decode_close(payload)
        return Close(code, reason, start, end)

    def _bad_header(self, b0: int, b1: int) -> FrameError:
        opcode = b0 & 0x0F
        if opcode not in (CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG):
            return FrameError(PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        if b0 & 0x70:
            return FrameError(PROTOCOL_ERROR, f"reserved bits {b0 & 0x70:#x} set on opcode {opcode:#x}")
        if opcode >= CLOSE and not b0 & 0x80:
            return FrameError(PROTOCOL_ERROR, "fragmented control frame")
        if opcode >= CLOSE and b1 & 0x7F > 125:
            return FrameError(PROTOCOL_ERROR, "control frame payload over 125 bytes")
        return FrameError(PROTOCOL_ERROR, "unmasked client frame" if self._mask else "masked server frame")


def decode_close(payload: bytes) -> tuple[int, str]:
    """A close frame's (code, reason); (1005, "") when empty. Raises :class:`FrameError`
    for a 1-byte payload, a code no endpoint may send, or a reason that is not UTF-8."""
    if not payload:
        return NO_STATUS, ""
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = _U16(payload)[0]
    if code < 3000 and code not in _REGISTERED:
        raise FrameError(PROTOCOL_ERROR, f"close code {code} is not allowed on the wire")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload; the reason is cut to 123 bytes between characters."""
    if not (code in _REGISTERED or 3000 <= code <= 4999):
        raise ValueError(f"close code {code} may not be sent")
    return code.to_bytes(2, "big") + reason.encode()[:123].decode(errors="ignore").encode()


def server_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A control frame toward a client: unmasked (RFC 6455 section 5.1)."""
    return bytes((0x80 | opcode, _control_length(opcode, payload))) + payload


def client_frame(opcode: int, payload: bytes = b"", key: bytes | None = None) -> bytes:
    """A control frame toward a server: masked with a fresh, unpredictable key (RFC 6455 section 5.3)."""
    key = secrets.token_bytes(4) if key is None else key
    return bytes((0x80 | opcode, 0x80 | _control_length(opcode, payload))) + key + _masked(payload, key)


def _control_length(opcode: int, payload: bytes) -> int:
    if opcode not in (CLOSE, PING, PONG) or len(payload) > 125:
        raise ValueError(f"not a control frame: opcode {opcode:#x}, {len(payload)} bytes")
    return len(payload)


def unmask(payload: bytes, key: bytes, phase: int = 0) -> bytes:
    """``payload`` masked with ``key`` from byte ``phase`` of its frame on (RFC 6455 section
    5.3), unmasked; as it is when ``key`` is empty (a server's frame)."""
    if not key:
        return payload
    phase %= 4
    return _masked(payload, key[phase:] + key[:phase])


def _masked(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the repeated key (RFC 6455 section 5.3): one big-int XOR, no byte loop."""
    n = len(payload)
    if not n:
        return b""
    stream = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ stream).to_bytes(n, "big")
