"""Properties of the relay's frame scanner (hypothesis). No sockets.

The threat: a frame the relay passes on that an endpoint must fail on, a frame
miscounted or cut wrongly because a chunk ended in the wrong place, or an input
that raises inside ``data_received``. Valid streams are written by python-websockets;
its parser is the second opinion on single frames. Profiles: see tests/conftest.py.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import assume, given
from hypothesis import strategies as st
from websockets.exceptions import ProtocolError
from websockets.frames import Close as WsClose
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from sidecar.frames import Boundary, Close, Event, Fault, Ping, Pong, Scanner

from .framing import KEY, feed, raw, split

CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4999]
# Sizes either side of each length encoding's limits, and small ones for the rest.
SIZES = st.one_of(st.integers(0, 300), st.sampled_from([125, 126, 127, 65535, 65536, 70000]))


@dataclass
class Stream:
    """Frames as python-websockets encodes them, and what a scanner must make of them."""

    client: bool
    frames: list[bytes] = field(default_factory=list)
    controls: list[tuple[type[Event], object]] = field(default_factory=list)  # (event type, payload or code+reason)
    messages: int = 0
    payload_bytes: int = 0

    def add(self, opcode: Opcode, data: bytes, fin: bool = True) -> None:
        self.frames.append(Frame(opcode, data, fin=fin).serialize(mask=self.client))

    @property
    def data(self) -> bytes:
        return b"".join(self.frames)


@st.composite
def streams(draw: st.DrawFn, client: bool) -> Stream:
    stream = Stream(client)
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            size = draw(SIZES)
            cuts = sorted(draw(st.lists(st.integers(0, size), max_size=3)))
            pieces = [b"m" * (b - a) for a, b in zip([0, *cuts], [*cuts, size], strict=True)]
            for i, piece in enumerate(pieces):
                opcode = Opcode.CONT if i else draw(st.sampled_from([Opcode.TEXT, Opcode.BINARY]))
                stream.add(opcode, piece, fin=i == len(pieces) - 1)
                if draw(st.integers(0, 3)) == 0:
                    control(draw, stream)  # between fragments (RFC 6455 section 5.4)
            stream.messages += 1
            stream.payload_bytes += size
        else:
            control(draw, stream)
    if draw(st.booleans()):
        code, reason = draw(st.sampled_from(CODES)), draw(st.text(max_size=40))
        stream.add(Opcode.CLOSE, WsClose(code, reason).serialize())
        stream.controls.append((Close, (code, reason)))
    return stream


def control(draw: st.DrawFn, stream: Stream) -> None:
    kind, payload = draw(st.sampled_from([Ping, Pong])), draw(st.binary(max_size=125))
    stream.add(Opcode.PING if kind is Ping else Opcode.PONG, payload)
    stream.controls.append((kind, payload))


def observed(event: Event) -> tuple[type[Event], object]:
    if isinstance(event, Close):
        return Close, (event.code, event.reason)
    assert isinstance(event, Ping | Pong)
    return type(event), event.payload


cut_points = st.lists(st.integers(1, 80_000), max_size=12)
LIMIT = 1 << 20


@given(st.booleans().flatmap(streams), cut_points)
def test_a_valid_stream_split_anywhere_reads_as_written(stream: Stream, cuts: list[int]) -> None:
    whole = Scanner(from_client=stream.client, max_message_size=LIMIT)
    parts = Scanner(from_client=stream.client, max_message_size=LIMIT)
    consumed, events, held = feed(whole, [stream.data])
    assert feed(parts, split(stream.data, cuts)) == (consumed, events, held)
    assert (consumed, held) == (len(stream.data), b"")
    assert [observed(e) for e in events] == stream.controls
    for scanner in (whole, parts):
        assert (scanner.messages, scanner.payload_bytes) == (stream.messages, stream.payload_bytes)
        assert scanner.at_boundary


@given(st.booleans().flatmap(streams), cut_points)
def test_boundaries_re_split_a_stream_into_exactly_its_frames(stream: Stream, cuts: list[int]) -> None:
    scanner = Scanner(from_client=stream.client, max_message_size=LIMIT)
    scanner.boundaries = True
    events = feed(scanner, split(stream.data, cuts))[1]
    ends = [e.offset if isinstance(e, Boundary) else e.end for e in events if not isinstance(e, Fault)]
    assert ends == list(itertools.accumulate(len(f) for f in stream.frames))
    assert split(stream.data, ends) == stream.frames
    starts = [0, *ends]
    for i, event in enumerate(events):  # a control frame's span starts where the frame before it ended
        assert not isinstance(event, Ping | Pong | Close) or event.start == starts[i]


def mutated(stream: Stream, at: int, xor: int) -> bytes:
    data = bytearray(stream.data)
    if data:
        data[at % len(data)] ^= xor
    return bytes(data)


anything = st.one_of(
    st.binary(max_size=400),
    st.builds(mutated, st.booleans().flatmap(streams), st.integers(0, 1 << 20), st.integers(1, 255)),
)


@given(anything, cut_points, st.booleans(), st.booleans(), st.sampled_from([0, 1, 125, 1024, LIMIT]))
def test_any_bytes_end_in_events_or_one_fault_never_an_exception(
    data: bytes, cuts: list[int], client: bool, deflate: bool, limit: int
) -> None:
    def scanner() -> Scanner:
        return Scanner(from_client=client, max_message_size=limit, deflate=deflate)

    whole, parts = scanner(), scanner()
    consumed, events, held = feed(whole, [data])
    assert feed(parts, split(data, cuts))[:2] == (consumed, events)
    assert (whole.messages, whole.payload_bytes) == (parts.messages, parts.payload_bytes)
    faults = [e for e in events if isinstance(e, Fault)]
    if faults:
        assert events[-1] == faults[0] and len(faults) == 1
        assert faults[0].code in (1002, 1007, 1009) and consumed == faults[0].offset
    else:
        assert consumed + len(held) == len(data)
        assert len(held) <= 130  # an incomplete header (<= 13) or control frame (<= 130)


def websockets_fails(data: bytes, client: bool) -> bool:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    try:
        next(Frame.parse(reader.read_exact, mask=client))
    except StopIteration as done:
        frame: Frame = done.value
        if frame.opcode is Opcode.CLOSE:
            try:
                WsClose.parse(frame.data)
            except (ProtocolError, UnicodeDecodeError):
                return True
        return False
    except ProtocolError:
        return True
    raise AssertionError("incomplete frame")


@given(st.integers(0, 255), st.booleans(), st.booleans(), st.binary(max_size=130))
def test_a_lone_frame_is_failed_exactly_when_python_websockets_fails_it(
    b0: int, masked: bool, client: bool, payload: bytes
) -> None:
    opcode = b0 & 0x0F
    assume(opcode != 0)  # a lone continuation: websockets checks sequencing above Frame.parse
    # Codes above 4999: RFC 6455 leaves them undefined; websockets fails them, the scanner
    # reports them and the relay decides (the documented difference).
    assume(not (opcode == 8 and len(payload) >= 2 and int.from_bytes(payload[:2], "big") >= 5000))
    data = raw(b0, payload, key=KEY if masked else None)
    events = feed(Scanner(from_client=client, max_message_size=LIMIT), [data])[1]
    assert any(isinstance(e, Fault) for e in events) == websockets_fails(data, client)
