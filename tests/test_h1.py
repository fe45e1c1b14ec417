"""sidecar.h1: the request-head checks llhttp leaves to its caller, and the heads the sidecar
writes, as tables (no sockets)."""

from __future__ import annotations

import pytest

from sidecar import h1
from sidecar.reasons import Reason

HOST = (b"Host", b"x")


@pytest.mark.parametrize(
    ("method", "target", "version", "fields", "reason"),
    [
        ("GET", b"/a", (1, 1), [HOST], None),
        ("GET", b"/a", (1, 0), [], None),  # HTTP/1.0 needs no Host
        ("POST", b"/a", (1, 0), [(b"Transfer-Encoding", b"chunked")], Reason.BAD_REQUEST),  # RFC 9112 section 6.1
        ("GET", b"/a", (1, 1), [], Reason.BAD_REQUEST),  # RFC 9112 section 3.2
        ("GET", b"/a", (1, 1), [HOST, (b"host", b"y")], Reason.BAD_REQUEST),
        ("POST", b"/a", (1, 1), [HOST, (b"Content-Type", b"a"), (b"content-type", b"b")], Reason.BAD_REQUEST),
        ("GET", b"/a", (1, 1), [HOST, (b"Sec-WebSocket-Key1", b"x")], Reason.BAD_REQUEST),
        ("GET", b"/a", (1, 1), [HOST, (b"X", b"a" * 8000)] * 3, Reason.BAD_REQUEST),  # Host twice first
        ("GET", b"/a", (1, 1), [HOST] + [(b"X-%d" % i, b"a" * 8000) for i in range(5)], Reason.HEADERS_TOO_LARGE),
        ("OPTIONS", b"*", (1, 1), [HOST], None),
        ("GET", b"*", (1, 1), [HOST], Reason.BAD_REQUEST),
        ("GET", b"http://evil/x", (1, 1), [HOST], None),  # absolute-form: routing refuses it (bad_path)
        ("GET", b"http:///x", (1, 1), [HOST], Reason.BAD_REQUEST),
        ("GET", b"x", (1, 1), [HOST], Reason.BAD_REQUEST),
        ("CONNECT", b"host:443", (1, 1), [HOST], None),
    ],
)
def test_check_head(
    method: str, target: bytes, version: tuple[int, int], fields: list[h1.Field], reason: Reason | None
) -> None:
    if reason is None:
        h1.check_head(method, target, version, fields)
    else:
        with pytest.raises(h1.HeadError) as refused:
            h1.check_head(method, target, version, fields)
        assert refused.value.reason is reason
        assert b"a" * 100 not in str(refused.value).encode()  # never a field's value


def test_fields_decode_and_encode_back_byte_for_byte() -> None:
    raw = [(b"X-Edge-Agent-Id", b"ab\xffcd"), (b"X", "é".encode())]
    decoded = h1.decode_fields(raw)
    assert decoded["x-edge-agent-id"] == "ab\udcffcd"  # a lone surrogate: refused by the agent id check
    assert decoded["X"] == "é"
    assert [h1.encode_value(v) for v in decoded.values()] == [b"ab\xffcd", "é".encode()]


@pytest.mark.parametrize(
    ("fields", "body"),
    [
        ([], False),
        ([(b"Content-Length", b"0")], False),
        ([(b"Content-Length", b"2")], True),
        ([(b"Transfer-Encoding", b"chunked")], True),
    ],
)
def test_has_body(fields: list[h1.Field], body: bool) -> None:
    assert h1.has_body(fields) is body


def test_answer_head() -> None:
    date = b"Date: x\r\n"
    head = h1.answer_head(401, [("Server", "sidecar")], 5, close=True, version=b"1.1", date=date)
    assert head == (
        b"HTTP/1.1 401 Unauthorized\r\nServer: sidecar\r\nDate: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
    )
    # A 426 names its own Connection (RFC 9110 section 15.5.22): not a second one.
    upgrade = h1.answer_head(426, [("Connection", "Upgrade")], 0, close=True, version=b"1.1", date=date)
    assert upgrade.count(b"Connection") == 1
    assert h1.answer_head(200, [], 0, close=False, version=b"1.0", date=date).endswith(
        b"Connection: keep-alive\r\n\r\n"
    )
    assert h1.answer_head(400, [], 0, close=True, version=b"0.9", date=date).startswith(b"HTTP/0.9 400 Bad Request\r\n")


def test_the_date_field_is_rfc_9110s_imf_fixdate() -> None:
    field = h1.Clock().date_field()
    assert field.startswith(b"Date: ") and field.endswith(b" GMT\r\n")


def test_a_relayed_head_drops_hop_by_hop_fields_and_keeps_repeats() -> None:
    fields = [
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Connection", b"X-Hop"),
        (b"X-Hop", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Content-Length", b"0"),
    ]
    head, *_ = h1.relayed_head(fields, 200, b"OK", (1, 1), no_body=False, keep=True, date=b"Date: x\r\n")
    assert head == b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n" + (
        b"Server: sidecar\r\nDate: x\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("coding", "version", "passed"),
    [
        (b"chunked", (1, 1), b"chunked"),
        (b"gzip", (1, 1), b"gzip, chunked"),  # read to the close, chunked by the sidecar
        (b"gzip, chunked", (1, 1), b"gzip, chunked"),
        (b"chunked", (1, 0), None),  # close-delimited, no Transfer-Encoding to HTTP/1.0
        (b"gzip", (1, 0), ValueError),  # it would reach the client still coded, unnamed
        (b"gzip, chunked", (1, 0), ValueError),
        (b"chunked, gzip", (1, 1), ValueError),  # re-chunked, it would be chunked twice
        (b"chunked, chunked", (1, 1), ValueError),
    ],
)
def test_a_relayed_heads_transfer_coding(coding: bytes, version: tuple[int, int], passed: object) -> None:
    fields = [(b"Transfer-Encoding", coding)]
    if passed is ValueError:
        with pytest.raises(ValueError, match="transfer coding"):
            h1.relayed_head(fields, 200, b"OK", version, no_body=False, keep=True, date=b"")
        h1.relayed_head(fields, 200, b"OK", version, no_body=True, keep=True, date=b"")  # a HEAD's: no body to pass
        return
    head, rechunked, until_eof, keep, _ = h1.relayed_head(
        fields, 200, b"OK", version, no_body=False, keep=True, date=b""
    )
    te = [line for line in head.split(b"\r\n") if line.lower().startswith(b"transfer-encoding:")]
    assert te == ([] if passed is None else [b"Transfer-Encoding: " + passed])
    assert (rechunked, until_eof, keep) == (version >= (1, 1), not coding.endswith(b"chunked"), version >= (1, 1))
