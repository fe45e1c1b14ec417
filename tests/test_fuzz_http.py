"""Property-based tests of the request-head path (the listener, llhttp and sidecar.h1) against
the parser's edge cases: Content-Length with Transfer-Encoding, obs-fold, bare LF and CR, huge
and malformed chunk sizes, pipelined requests, a body on an upgrade, Expect. Each example goes
over a real socket to the real sidecar and a real backend, and asserts what the client and
the backend see: well-formed answers, in order, and never a request the backend was not
meant to get (a request hidden in another's body or head is never one upstream)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import GOOD, Sidecar
from .upstream import Backend
from .wire import exchange, head_lines, statuses

HIDDEN = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"  # what an attacker hides
AUTH = head_lines(GOOD)

# Ways to frame a body, with whether the sidecar must accept it (None: it may go either way).
FRAMINGS: list[tuple[str, bytes, bytes, bool | None]] = [
    ("none", b"", b"", True),
    ("content-length", b"Content-Length: %d\r\n", b"", True),
    ("chunked", b"Transfer-Encoding: chunked\r\n", b"", True),
    ("cl-and-te", b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n", b"", False),
    ("te-and-cl", b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n", b"", False),
    ("two-cl", b"Content-Length: %d\r\nContent-Length: 1\r\n", b"", False),
    ("obs-fold", b"Transfer-Encoding: identity\r\n chunked\r\n", b"", False),
    ("bare-lf", b"Content-Length: %d\nX: y\r\n", b"", False),
    ("bare-cr", b"Content-Length: %d\rX: y\r\n", b"", False),
    ("te-not-last", b"Transfer-Encoding: chunked, identity\r\n", b"", False),
    ("te-unknown", b"Transfer-Encoding: xchunked\r\n", b"", False),
    ("cl-sign", b"Content-Length: +%d\r\n", b"", False),
    ("huge-chunk", b"Transfer-Encoding: chunked\r\n", b"fffffffffffffffffffff\r\n", False),
    ("chunk-0x", b"Transfer-Encoding: chunked\r\n", b"0x4\r\n", False),
    ("chunk-bare-lf", b"Transfer-Encoding: chunked\r\n", b"4\nabcd\r\n", False),
    ("expect", b"Expect: 100-continue\r\nContent-Length: %d\r\n", b"", True),
]


def encode(framing: str, header: bytes, prefix: bytes, body: bytes) -> bytes:
    """A body with its framing header; ``prefix`` goes before the chunks (a bad chunk line)."""
    if b"chunked" in header and framing not in ("cl-and-te", "te-and-cl"):
        chunks = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        filled = header.replace(b"%d", str(len(body)).encode())
        return filled + b"\r\n" + prefix + chunks
    filled = header % len(body) if b"%d" in header else header
    return filled + b"\r\n" + (body if framing != "none" else b"")


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bool | None]:
    """One request: its bytes, and whether it must be accepted (None: either)."""
    name, header, prefix, accepted = draw(st.sampled_from(FRAMINGS))
    method = draw(st.sampled_from([b"POST", b"PUT"]))
    path = draw(st.sampled_from([b"/anything", b"/edge/message"]))
    body = draw(st.sampled_from([b"", b"{}", HIDDEN, b"0\r\n\r\n" + HIDDEN, b"x" * 300]))
    head = b"%s %s HTTP/1.1\r\nHost: x\r\n" % (method, path) + AUTH
    return head + encode(name, header, prefix, body), accepted


FUZZ = settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(st.lists(requests(), min_size=1, max_size=3))
async def test_no_request_is_hidden_from_the_sidecar(
    sidecar: Sidecar, backend: Backend, batch: list[tuple[bytes, bool | None]]
) -> None:
    backend.seen.clear()
    data = b"".join(request for request, _ in batch) + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await exchange(sidecar.port, data)
    got = statuses(answer)
    seen = [s.path for s in backend.seen]
    assert "/smuggled" not in seen  # nothing hidden in a body or a head became a request
    assert len(seen) <= len(got) <= len(batch) + 1  # one answer a request at most, one request upstream each
    # Up to the first request that may be refused, every one is answered, in order.
    for (_, accepted), status in zip(batch, got, strict=False):
        if accepted is None:
            break
        assert (status == 200) is accepted, (batch, got)
        if not accepted:
            assert got[-1] == 400  # the first refused one is the last answer: the connection is closed
            break
    else:
        assert got[-1] == 200 and seen[-1] == "/last"  # all accepted: the pipelined last one too


@FUZZ
@given(st.integers(min_value=1, max_value=8), st.sampled_from([b"", b"hello", HIDDEN]))
async def test_pipelined_requests_are_answered_in_order(
    sidecar: Sidecar, backend: Backend, count: int, body: bytes
) -> None:
    backend.seen.clear()
    one = b"POST /anything?n=%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
    data = b"".join(one % (n, len(body), body) for n in range(count))
    data += b"GET /anything?n=last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await exchange(sidecar.port, data)
    assert statuses(answer) == [200] * (count + 1)
    assert [s.query_string for s in backend.seen] == [f"n={n}" for n in range(count)] + ["n=last"]
    assert [s.body for s in backend.seen[:-1]] == [body] * count  # a body that looks like a request stays body


@FUZZ
@given(
    st.sampled_from([b"Content-Length: 5\r\n\r\nhello", b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"]),
    st.sampled_from([b"", HIDDEN]),
)
async def test_a_body_on_an_upgrade_is_refused_and_nothing_follows_it(
    sidecar: Sidecar, backend: Backend, framing: bytes, after: bytes
) -> None:
    backend.seen.clear()
    head = (
        b"GET /edge/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + AUTH
    )
    answer = await exchange(sidecar.port, head + framing + after)
    assert statuses(answer) == [400]
    assert b"X-Sidecar-Reason: bad_handshake" in answer
    assert backend.seen == []


@FUZZ
@given(st.sampled_from([b"h2c", b"foo/1, bar"]), st.sampled_from([b"{}", b"0\r\n\r\n" + HIDDEN]))
async def test_another_upgrade_with_a_body_is_an_ordinary_request(
    sidecar: Sidecar, backend: Backend, protocol: bytes, body: bytes
) -> None:
    """llhttp stops at the head of any ``Connection: upgrade`` request; one the sidecar does not
    upgrade keeps its body, and what follows is parsed as requests again."""
    backend.seen.clear()
    head = b"POST /anything HTTP/1.1\r\nHost: x\r\nUpgrade: %s\r\nConnection: Upgrade\r\n" % protocol
    request = head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    answer = await exchange(sidecar.port, request + b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [200, 200]
    assert [(s.path, s.body) for s in backend.seen] == [("/anything", body), ("/after", b"")]
    assert "upgrade" not in backend.seen[0].headers
