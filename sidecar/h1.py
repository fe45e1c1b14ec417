"""HTTP/1.1 message heads as the data plane handles them: the checks on a request head that
the parser (llhttp, through httptools) leaves to its caller, and the heads the sidecar
writes. Pure: no I/O; fields are the raw bytes the parser reported.

llhttp, run strictly, already refuses what RFC 9112 makes an error: both Content-Length and
Transfer-Encoding, a repeated or malformed Content-Length, chunked not last, obs-fold,
bare CR or LF, a NUL or control character in a field, malformed chunk sizes (sections
2.2, 5.2, 6.1, 6.3, 7.1). What it does not check is here: the size limits (nginx's
``large_client_header_buffers`` of 4 x 8 KiB), a missing or repeated Host (RFC 9112
section 3.2), the other fields a request may carry once only, the request target's form
(section 3.2), and what a WebSocket handshake may not carry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from email.utils import formatdate
from http import HTTPStatus

from multidict import CIMultiDict

from . import headers
from .reasons import Header, Reason

Field = tuple[bytes, bytes]

MAX_LINE = 8190  # the request line, or one field's name or value
MAX_FIELDS = 100
MAX_HEAD_BYTES = 32 * 1024  # the fields in all, each counted as name + value + 4 (": ", CRLF)
# Past this many bytes of one head, stop reading: whatever it holds is over a limit above.
MAX_HEAD_READ = MAX_HEAD_BYTES + MAX_LINE + 1024


class Stall:
    """The bytes a parser has taken since it last got anywhere (body bytes, a chunk or a message
    ended), counted a read at a time: a head, a chunk line (extensions) or a trailer section
    that never ends is stopped past :data:`MAX_HEAD_READ` (by one read at most), before
    llhttp's spans, which httptools buffers whole, grow without bound."""

    __slots__ = ("moved", "taken")

    def __init__(self) -> None:
        self.moved = False  # set by the parser's callbacks
        self.taken = 0

    def over(self, read: int) -> bool:
        """After feeding the parser ``read`` bytes: has it taken too many without moving?"""
        self.taken = 0 if self.moved else self.taken + read
        self.moved = False
        return self.taken > MAX_HEAD_READ


# RFC 9110: fields whose repetition makes a request ambiguous (the parser rejects a second
# Content-Length itself); refused as aiohttp's strict request parser refuses them.
SINGLETONS = frozenset(
    {
        b"host", b"content-length", b"content-location", b"content-range", b"content-type", b"etag",
        b"max-forwards", b"server", b"transfer-encoding", b"user-agent",
    }
)  # fmt: skip


class HeadError(Exception):
    """A request head that is refused before anything reads it: ``reason`` says why
    (bad_request or headers_too_large); ``detail`` is for the log, never a field's value."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


def check_head(method: str, target: bytes, version: tuple[int, int], fields: Sequence[Field]) -> None:
    """The head as a whole, once complete; :exc:`HeadError` if refused."""
    seen: set[bytes] = set()
    total = 0
    for name, value in fields:
        total += len(name) + len(value) + 4
        lower = name.lower()
        if lower in SINGLETONS:
            if lower in seen:
                raise HeadError(Reason.BAD_REQUEST, f"'{lower.decode()}' given twice")
            seen.add(lower)
        elif lower == b"sec-websocket-key1":  # the hixie-76 handshake, never supported
            raise HeadError(Reason.BAD_REQUEST, "an obsolete WebSocket handshake")
    if total > MAX_HEAD_BYTES:
        raise HeadError(Reason.HEADERS_TOO_LARGE, "the fields are over 32 KiB in all")
    if version < (1, 1) and b"transfer-encoding" in seen:  # RFC 9112 section 6.1: faulty framing
        raise HeadError(Reason.BAD_REQUEST, "Transfer-Encoding in an HTTP/1.0 request")
    if version >= (1, 1) and b"host" not in seen:
        raise HeadError(Reason.BAD_REQUEST, "no Host (RFC 9112 section 3.2)")
    if not target_form_ok(method, target):
        raise HeadError(Reason.BAD_REQUEST, "the request target is in no form RFC 9112 section 3.2 defines")


def target_form_ok(method: str, target: bytes) -> bool:
    """origin-form, absolute-form with an authority, '*' for OPTIONS, authority-form for
    CONNECT (RFC 9112 section 3.2); routing then accepts only a canonical origin-form path."""
    if target.startswith(b"/"):
        return True
    if target == b"*":
        return method == "OPTIONS"
    if method == "CONNECT":
        return b"/" not in target and len(target) > 0
    scheme, sep, rest = target.partition(b"://")
    return bool(sep and scheme.isalpha() and rest[:1] not in (b"", b"/"))


def decode_fields(fields: Iterable[Field]) -> CIMultiDict[str]:
    """Fields as the pure checks read them: names as ASCII, values as UTF-8 with any other
    byte kept as a lone surrogate (so it can be refused, and written back unchanged)."""
    return CIMultiDict([(name.decode("latin-1"), value.decode("utf-8", "surrogateescape")) for name, value in fields])


def encode_value(value: str) -> bytes:
    """A field value back to the bytes it was decoded from (see :func:`decode_fields`)."""
    return value.encode("utf-8", "surrogateescape")


def has_body(fields: Iterable[Field]) -> bool:
    """Does a request with these fields declare a body (RFC 9112 section 6.3)?"""
    for name, value in fields:
        lower = name.lower()
        if lower == b"transfer-encoding" or (lower == b"content-length" and value.strip() not in (b"0", b"")):
            return True
    return False


# --- what the sidecar writes -------------------------------------------------------------


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, version: bytes = b"1.1") -> bytes:
    """``HTTP/1.1 200 OK\\r\\n``, with the standard phrase (built once per status)."""
    line = _STATUS_LINES.get((status, version))
    if line is None:
        line = b"HTTP/%s %d %s\r\n" % (version, status, reason_phrase(status).encode())
        _STATUS_LINES[(status, version)] = line
    return line


class Clock:
    """The Date field's value (RFC 9110 section 6.6.1), formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._field = b""

    def date_field(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._field = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._field


def fields_bytes(headers: Iterable[Header]) -> bytes:
    return b"".join(b"%s: %s\r\n" % (name.encode("latin-1"), encode_value(value)) for name, value in headers)


def answer_head(
    status: int, headers: Sequence[Header], body_length: int, *, close: bool, version: bytes, date: bytes
) -> bytes:
    """The head of an answer the sidecar writes itself: its fields, Date, Content-Length
    and, when the connection ends after it, ``Connection: close`` (unless the answer names
    its own Connection, as a 426 does: RFC 9110 section 15.5.22)."""
    out = [status_line(status, version), fields_bytes(headers), date, b"Content-Length: %d\r\n" % body_length]
    if close and not any(name.lower() == "connection" for name, _ in headers):
        out.append(b"Connection: close\r\n")
    elif not close and version == b"1.0":
        out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    return b"".join(out)


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})  # RFC 9110 section 9.2.2
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # sent with a Content-Length even when empty

# --- what the sidecar passes back --------------------------------------------------------

# Response fields never passed back (RFC 9110 section 7.6.1), plus any named in Connection.
HOP_BY_HOP = frozenset(name.encode() for name in headers.HOP_BY_HOP)
_SERVER = b"Server: sidecar\r\n"


def relayed_head(
    fields: Sequence[Field],
    status: int,
    reason: bytes,
    version: tuple[int, int],
    *,
    no_body: bool,
    keep: bool,
    date: bytes,
) -> tuple[bytes, bool, bool, bool, bytes | None]:
    """A backend's response head as the client gets it: its end-to-end fields (hop-by-hop
    ones and those its Connection names dropped), ``Server: sidecar`` and Date where it gave
    none, and the framing to the client: chunked to HTTP/1.1 for a chunked or close-delimited
    body, close-delimited to HTTP/1.0 (RFC 9112 section 6). Returns (head, re-chunked,
    delimited by the backend's close, client kept alive, the backend's Keep-Alive value).
    :exc:`ValueError` for fields over 32 KiB in all, as for a request's, and for a body it
    cannot pass on as it is: chunked anywhere but last (re-chunked, it would be chunked twice,
    RFC 9112 section 6.1), or coded otherwise for HTTP/1.0 (which cannot be told the coding)."""
    if sum(len(name) + len(value) + 4 for name, value in fields) > MAX_HEAD_BYTES:
        raise ValueError("the response head is over 32 KiB")
    lowered = [name.lower() for name, _ in fields]
    hop = HOP_BY_HOP
    if b"connection" in lowered:
        named = b",".join(v for n, (_, v) in zip(lowered, fields, strict=True) if n == b"connection")
        hop = hop | {t.strip().lower() for t in named.split(b",")}
    hint = fields[lowered.index(b"keep-alive")][1] if b"keep-alive" in lowered else None
    coded = b",".join(v for n, (_, v) in zip(lowered, fields, strict=True) if n == b"transfer-encoding")
    # RFC 9112 section 6.3: chunked last, the chunks end the body; any other coding last, the
    # connection's end does (the codings are passed on, re-chunked); Content-Length is moot
    codings = [c for c in (c.strip().lower() for c in coded.split(b",")) if c]
    chunked = codings[-1:] == [b"chunked"]
    out = [b"HTTP/%d.%d %d %s\r\n" % (*version, status, reason)]
    for lower, field in zip(lowered, fields, strict=True):
        if lower not in hop and not (coded and lower == b"content-length"):
            out.append(b"%s: %s\r\n" % field)
    if b"server" not in lowered:
        out.append(_SERVER)
    if b"date" not in lowered:
        out.append(date)
    rechunked = until_eof = False
    if not no_body and (coded or b"content-length" not in lowered):
        if b"chunked" in codings[:-1] or (version < (1, 1) and codings not in ([], [b"chunked"])):
            raise ValueError("a transfer coding the client cannot be sent as it is")
        until_eof = not chunked
        if version >= (1, 1):
            rechunked = True
            passed = coded if chunked else coded + b", chunked" if coded else b"chunked"
            out.append(b"Transfer-Encoding: %s\r\n" % passed)
        else:
            keep = False  # HTTP/1.0: the end of the connection is the end of the body
    if not keep:
        out.append(b"Connection: close\r\n")
    elif version < (1, 1):
        out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    return b"".join(out), rechunked, until_eof, keep, hint


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk (RFC 9112 section 7.1)."""
    return b"%x\r\n%s\r\n" % (len(data), data)
