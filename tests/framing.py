"""Helpers for the frame scanner's tests: a relay's use of a Scanner, and raw frames.

``feed`` does with a scanner what the relay does: passes each chunk with the bytes
the previous call left unconsumed in front, and keeps offsets absolute (from the
start of the stream) so that runs split differently can be compared.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable

from websockets.frames import Frame, Opcode

from sidecar.frames import Boundary, Close, Deflated, Event, Fault, Ping, Pong, Scanner

KEY = b"\x37\xfa\x21\x3d"  # a masking key that changes every byte it touches


def feed(scanner: Scanner, chunks: Iterable[bytes]) -> tuple[int, list[Event], bytes]:
    """(bytes consumed, events at absolute offsets, bytes held back), up to the first fault
    (after which the relay ends the session)."""
    base, held, events = 0, b"", []
    for chunk in chunks:
        data = held + chunk
        end, got = scanner.scan(data)
        assert 0 <= end <= len(data)
        events += [shifted(event, base) for event in got]
        base, held = base + end, data[end:]
        if got and isinstance(got[-1], Fault):
            break
    return base, events, held


def shifted(event: Event, by: int) -> Event:
    if isinstance(event, Ping | Pong | Close | Deflated):
        return dataclasses.replace(event, start=event.start + by, end=event.end + by)
    assert isinstance(event, Boundary | Fault)
    return dataclasses.replace(event, offset=event.offset + by)


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def frame(opcode: Opcode, data: bytes = b"", *, fin: bool = True, client: bool = True) -> bytes:
    """A valid frame, as python-websockets (the independent encoder) writes it."""
    return Frame(opcode, data, fin=fin).serialize(mask=client)


def raw(b0: int, payload: bytes = b"", *, key: bytes | None = KEY, length: int | None = None, width: int = 0) -> bytes:
    """Any frame at all: first byte ``b0``, masked with ``key`` (None: unmasked), the
    length ``length`` (default: the payload's) written in ``width`` bits (7, 16 or 64;
    0: the shortest)."""
    n = len(payload) if length is None else length
    width = width or (7 if n < 126 else 16 if n < 65536 else 64)
    head = (
        bytes([n])
        if width == 7
        else bytes([126]) + n.to_bytes(2, "big")
        if width == 16
        else b"\x7f" + n.to_bytes(8, "big")
    )
    mask_bit = 0x80 if key is not None else 0
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if key is not None else payload
    return bytes([b0, head[0] | mask_bit]) + head[1:] + (key or b"") + body
