"""sidecar.closing: the end-of-session decisions, as a table (no sockets)."""

from __future__ import annotations

import pytest

from sidecar.closing import (
    ABNORMAL,
    Closing,
    End,
    Stopped,
    close_payload,
    closing_after,
    cut_reason,
    on_the_wire,
    passes_as_is,
    reply_to_initiator,
    sidecar_stop,
    to_faulty,
)


@pytest.mark.parametrize(
    ("received", "sent"),
    [
        (1000, 1000),
        (1001, 1001),
        (1011, 1011),
        (1012, 1012),
        (3000, 3000),
        (4409, 4409),
        (4999, 4999),
        (0, 1000),  # an empty close frame, as aiohttp reports it
        (1005, 1000),  # "no status": never sent (RFC 6455 section 7.4.1)
        (1006, 1002),  # "abnormal": never sent
        (1015, 1002),  # "TLS failure": never sent
        (999, 1002),
        (5000, 1002),
        (65535, 1002),
    ],
)
def test_on_the_wire(received: int, sent: int) -> None:
    assert on_the_wire(received) == sent


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        # A close frame: relayed as a closing handshake, the initiator is the side that sent it.
        (Stopped("client", 4000, "bye"), Closing((4000, b"bye"), True, End("client", 4000, "bye"))),
        (Stopped("upstream", 1000, ""), Closing((1000, b""), True, End("upstream", 1000, ""))),
        # An empty close frame: 1000 on the wire, 1005 as the label.
        (Stopped("client", 0), Closing((1000, b""), True, End("client", 1005, ""))),
        # A code that may not go on the wire: 1002 to the other side, the label as received.
        (Stopped("client", 5000), Closing((1002, b""), True, End("client", 5000, ""))),
        # Gone without a close frame: the other side is told, the label is 1006.
        (Stopped("client", None), Closing((1001, b"client went away"), False, End("client", ABNORMAL))),
        (Stopped("upstream", None), Closing((1011, b"upstream went away"), False, End("upstream", ABNORMAL))),
        # A protocol fault: the faulty side already got the code; the other side learns why.
        (
            Stopped("client", 1002, "bad frame", fault=True),
            Closing((1002, b"client: bad frame"), False, End("sidecar", 1002, "bad frame")),
        ),
        (
            Stopped("upstream", 1009, "too big", fault=True),
            Closing((1009, b"upstream: too big"), False, End("sidecar", 1009, "too big")),
        ),
    ],
    ids=lambda x: repr(x)[:60] if isinstance(x, Stopped) else "",
)
def test_closing_after(first: Stopped, expected: Closing) -> None:
    assert closing_after(first) == expected


@pytest.mark.parametrize(
    ("first", "reply", "sent_back"),
    [
        (Stopped("client", 4000, "bye"), Stopped("upstream", 4000, "bye"), (4000, b"bye")),  # echoed
        (Stopped("client", 4000, "bye"), Stopped("upstream", 4009, "other"), (4009, b"other")),  # its own reply
        (Stopped("client", 4000, "bye"), None, (4000, b"bye")),  # no reply in time: the initiator's own
        (Stopped("client", 4000, "bye"), Stopped("upstream", None), (4000, b"bye")),  # it vanished
        (Stopped("client", 4000, "bye"), Stopped("upstream", 1002, "x", fault=True), (4000, b"bye")),
        (Stopped("upstream", 1000), Stopped("client", 1006), (1002, b"")),  # a code not for the wire
    ],
)
def test_reply_to_initiator(first: Stopped, reply: Stopped | None, sent_back: tuple[int, bytes]) -> None:
    assert reply_to_initiator(first, reply) == sent_back


def test_a_close_payload_fits_a_control_frame() -> None:
    payload = close_payload(1000, b"x" * 200)
    assert len(payload) == 125  # RFC 6455 section 5.5: a control frame's payload
    assert payload[:2] == b"\x03\xe8"


def test_a_long_reason_is_cut_at_a_character_boundary() -> None:
    reason = ("\u00e9" * 100).encode()  # two bytes each: 200 bytes
    cut = cut_reason(reason)
    assert len(cut) == 122
    assert cut.decode("utf-8") == "\u00e9" * 61
    assert cut_reason(b"short") == b"short"


@pytest.mark.parametrize(
    ("code", "as_is"),
    [
        (1000, True),
        (1001, True),
        (1012, True),
        (3000, True),
        (4999, True),
        (1005, False),  # an empty close frame: relayed as 1000
        (5000, False),  # undefined above 4999: relayed as 1002
        (65535, False),
    ],
)
def test_a_close_frame_passes_as_is_unless_its_code_must_change(code: int, as_is: bool) -> None:
    assert passes_as_is(code) is as_is


@pytest.mark.parametrize(
    ("first", "sent"),
    [
        (Stopped("client", 1002, "reserved opcode 0x3", fault=True), (1002, b"reserved opcode 0x3")),
        (
            Stopped("upstream", 1009, "message larger than 1024 bytes", fault=True),
            (1009, b"message larger than 1024 bytes"),
        ),
        (Stopped("client", 1007, "close reason is not UTF-8", fault=True), (1007, b"close reason is not UTF-8")),
    ],
)
def test_the_faulty_side_is_sent_its_faults_code_and_why(first: Stopped, sent: tuple[int, bytes]) -> None:
    assert to_faulty(first) == sent


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1012, "service restart: reconnect"),
        (4409, "replaced by a newer session for this agent id"),
        (1011, "sidecar error"),
    ],
)
def test_a_stop_by_the_sidecar_tells_the_client_its_code_and_the_upstream_1001(code: int, reason: str) -> None:
    to_client, to_upstream, end = sidecar_stop(code, reason)
    assert to_client == (code, reason.encode())
    assert to_upstream == (1001, b"sidecar closing the session")
    assert end == End("sidecar", code, reason)
