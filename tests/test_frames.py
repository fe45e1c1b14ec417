"""sidecar.frames: the relay's frame-header scanner and its encoders, as tables. No sockets.

Valid frames are written by python-websockets (an independent encoder); frames no
library would write are built byte by byte (tests/framing.py).
"""

from __future__ import annotations

import pytest
from websockets.frames import Close as WsClose
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from sidecar.frames import (
    Boundary,
    Close,
    Deflated,
    Fault,
    FrameError,
    Ping,
    Pong,
    Scanner,
    client_frame,
    close_payload,
    decode_close,
    server_frame,
    unmask,
)

from .framing import KEY, feed, frame, raw, split

LIMIT = 1 << 20


def scanner(client: bool = True, limit: int = LIMIT, deflate: bool = False) -> Scanner:
    return Scanner(from_client=client, max_message_size=limit, deflate=deflate)


def fault_of(data: bytes, client: bool = True, **kwargs: int | bool) -> Fault | None:
    events = feed(scanner(client, **kwargs), [data])[1]  # type: ignore[arg-type]
    faults = [e for e in events if isinstance(e, Fault)]
    assert len(faults) <= 1 and (not faults or events[-1] is faults[0])  # a fault is the last word
    return faults[0] if faults else None


TEXT_START = raw(0x01, b"ab")  # a text message's first fragment (FIN clear)
CLOSE_1000 = raw(0x88, b"\x03\xe8")


# --- what RFC 6455 makes a protocol error -------------------------------------------

FAULTS = [
    # (case, stream, from client, fault code, offset of the bad frame)
    *[(f"reserved opcode {op:#x}", raw(0x80 | op), True, 1002, 0) for op in (*range(3, 8), *range(0xB, 0x10))],
    ("RSV1 with no extension", raw(0xC1, b"x"), True, 1002, 0),
    ("RSV2", raw(0xA2, b"x"), True, 1002, 0),
    ("RSV3", raw(0x92, b"x"), False, 1002, 0),
    ("fragmented ping", raw(0x09, b"x"), True, 1002, 0),
    ("fragmented close", raw(0x08), False, 1002, 0),
    ("ping over 125 bytes", raw(0x89, b"p" * 126), True, 1002, 0),
    ("pong with a 16-bit length of 5", raw(0x8A, b"12345", width=16), True, 1002, 0),
    ("continuation with no message", raw(0x80, b"x"), True, 1002, 0),
    ("text while a message is unfinished", TEXT_START + raw(0x81, b"x"), True, 1002, len(TEXT_START)),
    ("binary while a message is unfinished", TEXT_START + raw(0x02, b"x"), True, 1002, len(TEXT_START)),
    ("unmasked client frame", raw(0x81, b"hi", key=None), True, 1002, 0),
    ("masked server frame", raw(0x81, b"hi"), False, 1002, 0),
    ("unmasked client close", raw(0x88, b"\x03\xe8", key=None), True, 1002, 0),
    ("64-bit length, top bit set", raw(0x82, length=1 << 63, width=64), True, 1002, 0),
    ("64-bit length, all ones", raw(0x82, length=(1 << 64) - 1, width=64, key=None), False, 1002, 0),
    ("close with 1 byte", raw(0x88, b"\x03"), True, 1002, 0),
    ("close reason not UTF-8", raw(0x88, b"\x03\xe8\xff"), True, 1007, 0),
    ("close reason cut inside a character", raw(0x88, b"\x0f\xa0" + "é".encode()[:1], key=None), False, 1007, 0),
    ("a bad frame after good ones", CLOSE_1000 + raw(0x83), True, 1002, len(CLOSE_1000)),
]


@pytest.mark.parametrize(("stream", "client", "code", "offset"), [c[1:] for c in FAULTS], ids=[c[0] for c in FAULTS])
def test_protocol_errors_are_faults_at_the_bad_frame(stream: bytes, client: bool, code: int, offset: int) -> None:
    fault = fault_of(stream, client)
    assert fault is not None
    assert (fault.code, fault.offset) == (code, offset)


def test_a_fault_is_detected_as_soon_as_the_header_shows_it_and_ends_the_scan() -> None:
    s = scanner()
    end, events = s.scan(raw(0x83)[:2] + b"more bytes")  # 2 bytes show a reserved opcode
    assert end == 0
    assert events == [Fault(1002, "reserved opcode 0x3", 0)]
    assert s.scan(frame(Opcode.TEXT, b"ok")) == (0, [Fault(1002, "reserved opcode 0x3", 0)])  # final
    assert s.messages == 0


@pytest.mark.parametrize(
    "stream",
    [
        frame(Opcode.TEXT, b"\xff\xfe\xfd"),  # invalid UTF-8 text: the endpoint's call (its 1007 comes back)
        frame(Opcode.TEXT, b"\xe2\x82", fin=False) + frame(Opcode.CONT, b"\xac"),  # a character over two frames
        frame(Opcode.BINARY, b"a", fin=False) + frame(Opcode.PING, b"p") + frame(Opcode.CONT, b"b"),  # 5.4
        frame(Opcode.TEXT, b"a", fin=False) + frame(Opcode.CLOSE, close_payload(1000)),  # close mid-message
        raw(0x82, b"x" * 10, width=64),  # a longer length encoding than needed: not checked, like everyone
    ],
)
def test_what_an_endpoint_may_accept_passes(stream: bytes) -> None:
    assert fault_of(stream) is None


# --- close codes ----------------------------------------------------------------------

# RFC 6455 section 7.4 and the IANA registry; above 4999 the RFC says nothing, so the
# code is reported and the relay decides (today: label "invalid", 1002 to the other side).
CLOSE_CODES = [
    (0, "fault"), (999, "fault"), (1000, 1000), (1001, 1001), (1002, 1002), (1003, 1003),
    (1004, "fault"), (1005, "fault"), (1006, "fault"), (1007, 1007), (1008, 1008), (1009, 1009),
    (1010, 1010), (1011, 1011), (1012, 1012), (1013, 1013), (1014, 1014), (1015, "fault"),
    (1016, "fault"), (2000, "fault"), (2999, "fault"), (3000, 3000), (4000, 4000), (4999, 4999),
    (5000, 5000), (65535, 65535),
]  # fmt: skip


@pytest.mark.parametrize(("code", "seen"), CLOSE_CODES)
@pytest.mark.parametrize("client", [True, False])
def test_close_codes_are_reported_or_faulted(code: int, seen: int | str, client: bool) -> None:
    stream = frame(Opcode.CLOSE, code.to_bytes(2, "big") + b"bye", client=client) if seen != "fault" else b""
    stream = stream or raw(0x88, code.to_bytes(2, "big") + b"bye", key=KEY if client else None)
    events = feed(scanner(client), [stream])[1]
    expected = Fault(1002, f"close code {code} is not allowed on the wire", 0)
    assert events == [expected if seen == "fault" else Close(code, "bye", 0, len(stream))]


def test_an_empty_close_reads_as_1005() -> None:
    stream = frame(Opcode.CLOSE, b"")
    assert feed(scanner(), [stream])[1] == [Close(1005, "", 0, len(stream))]


# --- control frames: payload unmasked, span given ---------------------------------------


@pytest.mark.parametrize("client", [True, False])
def test_control_frames_are_reported_with_their_unmasked_payload_and_span(client: bool) -> None:
    data = frame(Opcode.BINARY, b"x" * 300, client=client)
    ping = frame(Opcode.PING, b"are you there", client=client)
    pong = frame(Opcode.PONG, b"sidecar-keepalive 0123" * 5 + b"12345", client=client)  # 125 bytes
    close = frame(Opcode.CLOSE, WsClose(4001, "bye ☃").serialize(), client=client)
    end, events, held = feed(scanner(client), [data + ping + pong + close])
    a, b, c = len(data), len(data) + len(ping), len(data) + len(ping) + len(pong)
    assert events == [
        Ping(b"are you there", a, b),
        Pong(b"sidecar-keepalive 0123" * 5 + b"12345", b, c),
        Close(4001, "bye ☃", c, c + len(close)),
    ]
    assert (end, held) == (c + len(close), b"")
    # The span is what the relay cuts to swallow its own pong: the rest is still a valid stream.
    assert fault_of((data + ping + pong + close)[:b] + (data + ping + pong + close)[c:], client) is None


def test_a_split_control_frame_is_held_back_whole() -> None:
    ping = frame(Opcode.PING, b"hello")
    s = scanner()
    for cut in range(1, len(ping)):
        assert s.scan(ping[:cut]) == (0, [])  # nothing consumed: the caller holds it all
    assert s.scan(ping) == (len(ping), [Ping(b"hello", 0, len(ping))])


# --- length encodings, masks, split points ----------------------------------------------

LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 70000]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("client", [True, False])
def test_every_length_encoding_at_every_split_point_of_its_header(length: int, client: bool) -> None:
    stream = frame(Opcode.BINARY, b"\x00" * length, client=client) + frame(Opcode.TEXT, b"next", client=client)
    whole = scanner(client)
    assert feed(whole, [stream]) == (len(stream), [], b"")
    header = 2 + (0 if length < 126 else 2 if length < 65536 else 8) + (4 if client else 0)
    for cut in [*range(1, header + 2), len(stream) - 3]:
        s = scanner(client)
        assert feed(s, split(stream, [cut])) == (len(stream), [], b"")
        assert (s.messages, s.payload_bytes) == (2, length + 4)


def test_a_payload_is_skipped_across_chunks_and_counted_as_it_goes() -> None:
    s = scanner()
    stream = frame(Opcode.BINARY, b"z" * 1000)
    end, _ = s.scan(stream[:500])
    assert (end, s.payload_bytes, s.messages, s.at_boundary) == (500, 500 - 8, 0, False)
    assert s.scan(stream[500:]) == (len(stream) - 500, [])
    assert (s.payload_bytes, s.messages, s.at_boundary) == (1000, 1, True)


def test_an_incomplete_header_is_not_consumed() -> None:
    s = scanner(client=False)
    stream = frame(Opcode.TEXT, b"a", client=False) + frame(Opcode.BINARY, b"b" * 70000, client=False)
    assert s.scan(stream[: 3 + 9]) == (3, [])  # the second frame's 10-byte header lacks a byte
    assert s.at_boundary


# --- counting and the size limit -------------------------------------------------------


def test_messages_and_payload_bytes_are_counted_per_message() -> None:
    stream = (
        frame(Opcode.TEXT, b"12345")
        + frame(Opcode.BINARY, b"ab", fin=False)
        + frame(Opcode.PING, b"not counted")
        + frame(Opcode.CONT, b"cd", fin=False)
        + frame(Opcode.CONT, b"", fin=True)
        + frame(Opcode.TEXT, b"")
    )
    s = scanner()
    feed(s, [stream])
    assert (s.messages, s.payload_bytes) == (3, 9)


@pytest.mark.parametrize("client", [True, False])
def test_the_size_limit_applies_to_a_whole_fragmented_message(client: bool) -> None:
    at_limit = frame(Opcode.TEXT, b"y" * 1024, client=client)
    assert fault_of(at_limit, client, limit=1024) is None
    over = frame(Opcode.BINARY, b"z" * 1025, client=client)
    assert fault_of(over, client, limit=1024) == Fault(1009, "message larger than 1024 bytes", 0)
    first = frame(Opcode.TEXT, b"a" * 1000, fin=False, client=client) + frame(Opcode.PING, b"", client=client)
    stream = first + frame(Opcode.CONT, b"b" * 24, fin=False, client=client)  # 1024 bytes in all: at the limit
    s = scanner(client, limit=1024)
    end, events, _ = feed(s, [stream + frame(Opcode.CONT, b"c", client=client)])
    assert events[-1] == Fault(1009, "message larger than 1024 bytes", len(stream))  # before the byte over
    assert (end, s.payload_bytes, s.messages) == (len(stream), 1024, 0)


def test_the_size_limit_is_checked_on_the_header_before_any_payload_arrives() -> None:
    header = frame(Opcode.BINARY, b"z" * 70000)[:14]
    assert scanner(limit=65536).scan(header) == (0, [Fault(1009, "message larger than 65536 bytes", 0)])


# --- permessage-deflate: RSV1 ------------------------------------------------------------

DEFLATE = [
    ("RSV1 on a message's first frame", raw(0xC1, b"x"), None),
    ("RSV1 on a first fragment", raw(0x42, b"x") + raw(0x80, b"y"), None),
    ("RSV1 on a continuation", raw(0x42, b"x") + raw(0xC0, b"y"), 1002),
    ("RSV1 on a ping", raw(0xC9, b"x"), 1002),
    ("RSV2 still", raw(0xA1, b"x"), 1002),
]


@pytest.mark.parametrize(("stream", "code"), [c[1:] for c in DEFLATE], ids=[c[0] for c in DEFLATE])
def test_rsv1_only_where_permessage_deflate_defines_it(stream: bytes, code: int | None) -> None:
    fault = fault_of(stream, deflate=True)
    assert (fault.code if fault else None) == code  # RFC 7692 section 6.1


# --- permessage-deflate: where compressed payloads lie (for sidecar.inflate) ------------


def compressed_messages(stream: bytes, cuts: list[int], client: bool) -> tuple[list[bytes], list[bool]]:
    """Scan ``stream`` cut at ``cuts`` as the relay does; the compressed messages rebuilt
    from the Deflated reports (unmasked), and each report's ``last``."""
    s, held, messages, lasts, current = scanner(client, deflate=True), b"", [], [], b""
    for chunk in split(stream, cuts):
        data = held + chunk
        end, events = s.scan(data)
        assert not any(isinstance(e, Fault) for e in events)
        for e in events:
            if isinstance(e, Deflated):
                current += unmask(data[e.start : e.end], e.key, e.phase)
                lasts.append(e.last)
                if e.last:
                    messages.append(current)
                    current = b""
        held = data[end:]
    return messages, lasts


def compressed(payload: bytes, *, fin: bool = True, first: bool = True, client: bool = True) -> bytes:
    """A data frame with RSV1 (compressed) on a message's first frame; the payload as given."""
    b0 = (0x80 if fin else 0) | (0x42 if first else 0x00)
    return raw(b0, payload, key=KEY if client else None)


@pytest.mark.parametrize("client", [True, False])
def test_compressed_payloads_are_reported_unmaskable_at_every_split_point(client: bool) -> None:
    one = bytes(range(256)) * 3  # 768 bytes: a 16-bit length, and a key phase that matters
    parts = [b"first part ", b"second" * 30, b"third"]
    stream = (
        compressed(one, client=client)
        + frame(Opcode.TEXT, b"not compressed: not reported", client=client)
        + compressed(parts[0], fin=False, client=client)
        + frame(Opcode.PING, b"between fragments", client=client)
        + compressed(parts[1], fin=False, first=False, client=client)
        + compressed(parts[2], first=False, client=client)
    )
    expected = [one, b"".join(parts)]
    whole, lasts = compressed_messages(stream, [], client)
    assert whole == expected and lasts == [True, False, False, True]
    for cut in range(1, len(stream)):
        assert compressed_messages(stream, [cut], client)[0] == expected, cut
    assert compressed_messages(stream, list(range(0, len(stream), 7)), client)[0] == expected


def test_nothing_is_reported_without_deflate_or_for_messages_not_compressed() -> None:
    stream = frame(Opcode.BINARY, b"x" * 300) + frame(Opcode.TEXT, b"y")
    assert [e for e in feed(scanner(deflate=True), [stream])[1] if isinstance(e, Deflated)] == []
    assert feed(scanner(), [frame(Opcode.TEXT, b"hello")]) == (len(frame(Opcode.TEXT, b"hello")), [], b"")


# --- boundaries --------------------------------------------------------------------------


def test_boundaries_are_reported_only_when_asked() -> None:
    one, two = frame(Opcode.TEXT, b"one"), frame(Opcode.BINARY, b"two" * 100)
    s = scanner()
    assert s.scan(one + two) == (len(one + two), [])
    s.boundaries = True
    assert s.scan(two[:10]) == (10, [])
    assert not s.at_boundary  # mid-frame: the relay must wait to inject
    assert s.scan(two[10:] + one) == (
        len(two) - 10 + len(one),
        [Boundary(len(two) - 10), Boundary(len(two) - 10 + len(one))],
    )
    assert s.at_boundary


# --- encoders ------------------------------------------------------------------------------


def read_frame(data: bytes, mask: bool) -> Frame:
    """One frame as python-websockets' parser (the independent decoder) reads it."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=mask)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame: Frame = done.value.value
    return frame


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
@pytest.mark.parametrize("payload", [b"", b"\x03\xe8", b"k" * 125])
def test_injected_frames_are_what_a_strict_peer_reads(opcode: Opcode, payload: bytes) -> None:
    for data, masked in ((server_frame(opcode, payload), False), (client_frame(opcode, payload), True)):
        got = read_frame(data, masked)
        assert (got.opcode, got.data, got.fin) == (opcode, payload, True)
    assert client_frame(opcode, payload, KEY) == raw(0x80 | opcode, payload)


def test_client_frames_get_a_fresh_mask_each() -> None:
    keys = {client_frame(0x9, b"")[2:6] for _ in range(20)}
    assert len(keys) > 1


@pytest.mark.parametrize(("opcode", "payload"), [(0x1, b"text"), (0x9, b"p" * 126), (0x3, b"")])
def test_encoders_refuse_what_is_not_a_control_frame(opcode: int, payload: bytes) -> None:
    with pytest.raises(ValueError, match="not a control frame"):
        server_frame(opcode, payload)
    with pytest.raises(ValueError, match="not a control frame"):
        client_frame(opcode, payload)


def test_close_payload_round_trips_and_cuts_the_reason_between_characters() -> None:
    assert close_payload(1000) == b"\x03\xe8"
    assert decode_close(close_payload(4001, "bye")) == (4001, "bye")
    long = close_payload(1001, "☃" * 50)  # 150 bytes of UTF-8: cut to 41 whole snowmen, 123 bytes
    assert len(long) == 2 + 123 and decode_close(long) == (1001, "☃" * 41)
    cut = close_payload(1001, "a" + "☃" * 50)  # 'a' + 40 snowmen = 121 bytes; a 41st would not fit
    assert decode_close(cut) == (1001, "a" + "☃" * 40)
    assert WsClose.parse(long) == WsClose(1001, "☃" * 41)  # what a strict peer reads


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
def test_close_payload_refuses_codes_no_endpoint_may_send(code: int) -> None:
    with pytest.raises(ValueError, match=str(code)):
        close_payload(code)


@pytest.mark.parametrize(
    ("payload", "code"), [(b"\x03", 1002), (b"\x03\xec", 1002), (b"\x03\xe8\xc3", 1007), (b"\x00\x00", 1002)]
)
def test_decode_close_raises_the_code_to_fail_with(payload: bytes, code: int) -> None:
    with pytest.raises(FrameError) as caught:
        decode_close(payload)
    assert caught.value.code == code
