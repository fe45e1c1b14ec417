"""SECURITY.md, proved: each row's defence tried as an attacker would try it.

Attacks go over raw sockets (``asyncio.open_connection``) so the exact bytes reach
the sidecar: HTTP and WebSocket client libraries normalise paths, refuse bad
headers and frame messages properly, which is exactly what an attacker does not do.
Every test asserts what the attacker sees (status, ``X-Sidecar-Reason``, close
code) and what the backend received (usually: nothing).
"""

from __future__ import annotations

import ast
import asyncio
import hmac
import logging
import pickle
import posixpath
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pytest
from aiohttp import web

from sidecar.config import load_config

from .conftest import AGENT, GOOD, OLD_SECRET, ROOT, SECRET, Sidecar, StartSidecar, config_for
from .upstream import Backend
from .wire import (
    close_code,
    close_code_after,
    echoes,
    exchange,
    formatted,
    handshake,
    head_lines,
    masked_frame,
    open_raw_websocket,
    parse_response,
    plain,
    raw_upstream,
    reason_of,
    statuses,
    until,
    ws_connect,
)

SHIPPED = (ROOT / "routes.yaml").read_text()


def shipped_with(*edits: tuple[str, str]) -> str:
    """The shipped routes.yaml with each (old, new) edit, each of which must apply."""
    text = SHIPPED
    for old, new in edits:
        assert old in text, f"routes.yaml no longer says {old!r}"
        text = text.replace(old, new)
    return text


WRONG = "wrong-secret-4f1c2a9e7b"


# --- raw-socket helpers ------------------------------------------------------------------


async def echo_works(sidecar: Sidecar) -> None:
    """A bystander: a fresh, legitimate session still gets its echo."""
    async with ws_connect(sidecar) as ws:
        await echoes(ws, "still here")


# --- a backend that trusts the path too much ------------------------------------------


@dataclass
class LenientBackend:
    """A backend behind the catch-all that normalises paths the way careless servers do
    (merges slashes, resolves dot segments, decodes %2F and %5C, turns '\\' into '/',
    drops ';params', stops at NUL, ignores case and a trailing '/' or '.') and trusts
    the sidecar for auth: whatever normalises to /edge/message or /edge/ws it serves as
    the agents' endpoint, no questions asked. Every request is recorded."""

    seen: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    @staticmethod
    def normalise(raw_path: str) -> str:
        path = unquote(raw_path.partition("?")[0]).split("\x00")[0].replace("\\", "/")
        path = "/".join(segment.partition(";")[0] for segment in path.split("/"))
        path = posixpath.normpath("/" + path.lstrip("/")).lower().rstrip("/.")
        return path or "/"

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request.raw_path)
        if self.normalise(request.raw_path) in ("/edge/message", "/edge/ws"):
            return web.Response(text="edge endpoint served")
        return web.Response(text="something else")

    async def start(self) -> LenientBackend:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site.port
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def lenient() -> AsyncIterator[LenientBackend]:
    backend = await LenientBackend().start()
    yield backend
    assert backend.runner is not None
    await backend.runner.cleanup()


# === 1. path tricks ======================================================================

# (template, outcome). {a}/{b} is the route's path: edge/message or edge/ws.
PATH_TRICKS = [
    ("//{a}/{b}", "bad_path"),
    ("/{a}//{b}", "bad_path"),
    ("/./{a}/{b}", "bad_path"),
    ("/{a}/./{b}", "bad_path"),
    ("/x/../{a}/{b}", "bad_path"),
    ("/x/%2e%2e/{a}/{b}", "bad_path"),
    ("/x/%2E%2e/{a}/{b}", "bad_path"),
    ("/x/.%2E/{a}/{b}", "bad_path"),
    ("/%2e/{a}/{b}", "bad_path"),
    ("/{a}/{b}/..", "bad_path"),
    ("/{a}/{b}/.", "bad_path"),
    ("/{a}%2F{b}", "bad_path"),
    ("/{a}%2f{b}", "bad_path"),
    ("/{a}%5C{b}", "bad_path"),
    ("/{a}%5c{b}", "bad_path"),
    ("/{a}\\{b}", "bad_path"),
    ("/{a}/{b};x=1", "bad_path"),
    ("/{a};x=1/{b}", "bad_path"),
    ("/{a}/{b}%3B", "bad_path"),
    ("/{a}/{b}%00", "bad_path"),
    ("/{a}/{b}%00.json", "bad_path"),
    ("/{a}/{b}%09", "bad_path"),
    ("/{a}%252F{b}", "bad_path"),  # double encoding: a double-decoding backend would see %2F
    ("/{a}%C0%AF{b}", "bad_path"),  # overlong UTF-8 '/'
    ("/{a}/{b}#x", "bad_path"),
    ("http://backend/{a}/{b}", "bad_path"),  # absolute-form
    ("/{A}/{B}", "no_route"),  # case
    ("/{a}/{B}", "no_route"),
    ("/{a}/{b}/", "no_route"),  # trailing slash
    ("/{a}/{b}.", "no_route"),  # trailing dot
    ("/{a}/{b}%2E", "no_route"),
    ("/{a}/{b}%20", "no_route"),
    ("/{a}/{b}\x00", "bad_request"),  # a raw NUL never gets past the parser
    ("/%65dge/{b}", "exact"),  # encoded unreserved: it IS the route, so the route's auth applies
]

# (kind, route leaf, how the request is sent)
PATH_TARGETS = [("http", "message"), ("websocket", "ws"), ("plain-to-ws", "ws")]
EXACT = {"http": (401, "missing_token"), "websocket": (401, "missing_token"), "plain-to-ws": (426, "not_websocket")}
OUTCOME = {"bad_path": (400, "bad_path"), "no_route": (404, "no_route"), "bad_request": (400, "bad_request")}


def trick_request(kind: str, target: str) -> bytes:
    # No Authorization: the attacker has no token. The agent id is valid, so only the
    # token (or the path) can stop the request.
    identity = {"X-Edge-Agent-Id": AGENT}
    if kind == "websocket":
        return handshake(target, identity | {"Connection": "Upgrade, close"})
    return plain("GET" if kind == "plain-to-ws" else "POST", target, identity, b"{}")


@pytest.mark.parametrize(("kind", "leaf"), PATH_TARGETS, ids=[k for k, _ in PATH_TARGETS])
@pytest.mark.parametrize(("template", "outcome"), PATH_TRICKS, ids=[t for t, _ in PATH_TRICKS])
async def test_path_tricks_never_reach_the_backend_without_the_token(
    lenient: LenientBackend, start_sidecar: StartSidecar, kind: str, leaf: str, template: str, outcome: str
) -> None:
    sidecar = await start_sidecar(config_for(lenient.url))
    target = template.format(a="edge", b=leaf, A="Edge", B=leaf.capitalize())
    response = await exchange(sidecar.port, trick_request(kind, target))
    status, reason = EXACT[kind] if outcome == "exact" else OUTCOME[outcome]
    assert statuses(response) == [status], response[:200]
    assert reason_of(response) == reason
    assert lenient.seen == []


async def test_a_slash_merging_backend_never_gets_edge_message_through_the_catch_all(
    lenient: LenientBackend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start_sidecar(config_for(lenient.url))
    # The backend really is lenient: asked directly, it serves //edge/message to anyone.
    direct = await exchange(lenient.port, plain("POST", "//edge/message", body=b"{}"))
    assert direct.endswith(b"edge endpoint served")
    lenient.seen.clear()
    # Through the sidecar: refused with and without the token (a token does not make a
    # non-canonical path acceptable), and the backend sees nothing.
    for headers in ({"X-Edge-Agent-Id": AGENT}, GOOD):
        for path in ("//edge/message", "/edge//message", "///edge/message", "//edge//message/"):
            response = await exchange(sidecar.port, plain("POST", path, headers, b"{}"))
            assert (statuses(response), reason_of(response)) == ([400], "bad_path")
    assert lenient.seen == []
    # The canonical path still needs, and with the token gets, the real route.
    missing = await exchange(sidecar.port, plain("POST", "/edge/message", {"X-Edge-Agent-Id": AGENT}, b"{}"))
    assert reason_of(missing) == "missing_token"
    assert lenient.seen == []
    served = await exchange(sidecar.port, plain("POST", "/edge/message", GOOD, b"{}"))
    assert statuses(served) == [200] and served.endswith(b"edge endpoint served")
    assert lenient.seen == ["/edge/message"]


# === 2. WebSocket smuggling ===============================================================

# Requests an attacker pipelines behind a handshake, hoping for a raw tunnel to the backend.
SMUGGLED = (
    b"GET /edge/message HTTP/1.1\r\nHost: x\r\n\r\nGET /internal/admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
)
FORBIDDEN_UPSTREAM = shipped_with(("upstream_path: /edge/ws", "upstream_path: /forbidden/ws"))


@pytest.mark.parametrize(
    ("headers", "status", "reason", "upstream_saw"),
    [
        (GOOD, 502, "upstream_rejected", ["/forbidden/ws"]),  # the backend says 403
        (GOOD | {"Sec-WebSocket-Version": "8"}, 400, "bad_handshake", []),  # the sidecar refuses itself
        ({"X-Edge-Agent-Id": AGENT}, 401, "missing_token", []),
    ],
    ids=["upstream-refuses", "bad-version", "no-token"],
)
async def test_a_refused_handshake_with_pipelined_requests_is_not_a_tunnel(
    backend: Backend,
    start_sidecar: StartSidecar,
    headers: dict[str, str],
    status: int,
    reason: str,
    upstream_saw: list[str],
) -> None:
    """RFC 6455 section 4.1: no 101, no WebSocket; the sidecar answers once and closes,
    so nothing pipelined behind a refused upgrade is read as anything at all."""
    sidecar = await start_sidecar(config_for(backend.url, FORBIDDEN_UPSTREAM))
    response = await exchange(sidecar.port, handshake("/edge/ws", headers) + SMUGGLED)
    assert statuses(response) == [status]  # one answer, then the connection is closed
    assert reason_of(response) == reason
    assert [seen.path for seen in backend.seen] == upstream_saw


async def test_bytes_pipelined_after_a_101_are_frames_not_requests(sidecar: Sidecar, backend: Backend) -> None:
    """After the 101 the connection speaks RFC 6455 framing only: an HTTP request written
    behind the handshake is a malformed frame (1002), never a request to the backend."""
    reader, writer, _ = await open_raw_websocket(sidecar.port, handshake("/edge/ws", GOOD) + SMUGGLED)
    assert await close_code(reader) == 1002
    writer.close()
    await until(lambda: backend.closes)
    assert backend.closes[0][0] == 1002
    assert [seen.path for seen in backend.seen] == ["/edge/ws"]


FAKE_101 = {
    "wrong-accept": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBhY2NlcHQ=\r\n\r\n",
    "no-accept": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "not-websocket": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
}


@pytest.mark.parametrize("answer", FAKE_101.values(), ids=FAKE_101.keys())
async def test_an_upstream_101_without_a_valid_accept_is_not_a_tunnel(
    start_sidecar: StartSidecar, answer: bytes
) -> None:
    """RFC 6455 section 4.1: the client (here the sidecar) fails the connection unless the
    101 carries Upgrade: websocket and the Sec-WebSocket-Accept of its own key."""
    received: list[bytes] = []

    async def fake_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(answer + b"tunnelled bytes from the backend")
        await writer.drain()
        received.append(await reader.read())  # whatever else arrives, until the sidecar hangs up
        writer.close()

    async with raw_upstream(fake_upstream) as url:
        sidecar = await start_sidecar(config_for(url))
        response = await exchange(sidecar.port, handshake("/edge/ws", GOOD) + masked_frame(0x1, b"hi") + SMUGGLED)
        await until(lambda: len(received) == 2)
    assert statuses(response) == [502]
    assert reason_of(response) == "upstream_rejected"
    assert parse_response(response).headers.get("X-Sidecar-Upstream-Status") == "101"
    assert b"tunnelled bytes" not in response
    assert received[0].startswith(b"GET /edge/ws HTTP/1.1\r\n")
    assert received[1] == b""  # not one byte of the client's


@pytest.mark.parametrize("path", ["/edge/message", "/anything"])
@pytest.mark.parametrize(
    "upgrade",
    [{"Upgrade": "websocket"}, {"Upgrade": "WebSocket"}, {"Upgrade": "h2c, websocket"}],
    ids=["websocket", "case", "listed-second"],
)
async def test_an_upgrade_on_a_plain_http_route_never_upgrades(
    sidecar: Sidecar, backend: Backend, path: str, upgrade: dict[str, str]
) -> None:
    response = await exchange(sidecar.port, handshake(path, GOOD | upgrade))
    assert statuses(response) == [404]
    assert reason_of(response) == "no_route"
    assert backend.seen == []


H2C = {"Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"}


@pytest.mark.parametrize("path", ["/edge/message", "/anything"])
@pytest.mark.parametrize(
    "connection", ["Upgrade, HTTP2-Settings, close", "close"], ids=["connection-names-them", "connection-does-not"]
)
async def test_h2c_upgrade_and_http2_settings_are_never_forwarded(
    sidecar: Sidecar, backend: Backend, path: str, connection: str
) -> None:
    """RFC 9110 section 7.6.1 / RFC 7540 section 3.2: Upgrade and HTTP2-Settings are
    hop-by-hop, whether or not Connection names them; no 101 results."""
    response = await exchange(sidecar.port, plain("POST", path, GOOD | H2C | {"Connection": connection}, b"{}"))
    assert statuses(response) == [200]
    (seen,) = backend.seen
    for name in ("upgrade", "http2-settings", "connection"):
        assert name not in seen.headers, name


async def test_a_backend_101_to_a_plain_request_is_not_passed_on_nor_pooled(start_sidecar: StartSidecar) -> None:
    """A backend that answers a plain request with 101 (RFC 9110 section 15.2.2 forbids
    it: no Upgrade was sent) has left HTTP on that connection: the client gets 502, not
    a 101, and the connection is closed rather than reused for the next request."""
    connections: list[list[bytes]] = []

    async def switching_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = [await reader.readuntil(b"\r\n\r\n")]
        connections.append(received)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
        await writer.drain()
        received.append(await reader.read())  # anything written into the switched connection
        writer.close()

    async with raw_upstream(switching_upstream) as url:
        sidecar = await start_sidecar(config_for(url))
        for path in ("/first", "/second"):
            response = await exchange(sidecar.port, plain("GET", path))
            assert statuses(response) == [502]
            assert reason_of(response) == "upstream_rejected"
            assert parse_response(response).headers.get("X-Sidecar-Upstream-Status") == "101"
        await until(lambda: len(connections) == 2 and all(len(c) == 2 for c in connections))
    assert [c[0].split(b" ")[1] for c in connections] == [b"/first", b"/second"]  # one connection each
    assert [c[1] for c in connections] == [b"", b""]  # nothing written after the 101


async def test_an_http2_preface_is_refused(sidecar: Sidecar, backend: Backend) -> None:
    response = await exchange(sidecar.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert statuses(response) == [400]
    assert reason_of(response) == "bad_request"
    assert backend.seen == []


async def test_http_0_9_is_refused_not_proxied(sidecar: Sidecar, backend: Backend) -> None:
    # No headers (no Host, no token) and no status line: nothing to check, nothing to say.
    response = await exchange(sidecar.port, b"GET /anything\r\n\r\n")
    assert response.startswith(b"HTTP/0.9 400 ")  # aiohttp echoes the request's version
    assert reason_of(response) == "bad_request"
    assert backend.seen == []


# === 3. HTTP request smuggling and hop-by-hop abuse ======================================

_NEXT = b"GET /edge/message HTTP/1.1\r\nHost: x\r\n\r\n"  # the request an attacker hides
SMUGGLING = {
    "cl-and-te": b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + _NEXT,
    "te-and-cl": b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + _NEXT,
    "two-cl": b"Content-Length: 4\r\nContent-Length: 44\r\n\r\nabcd" + _NEXT,
    "cl-list": b"Content-Length: 4, 44\r\n\r\nabcd" + _NEXT,
    "te-chunked-identity": b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + _NEXT,
    "te-xchunked": b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + _NEXT,
    "te-twice": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n" + _NEXT,
    "space-before-colon": b"Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + _NEXT,
    "vertical-tab": b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n" + _NEXT,
    "obs-fold": b"Transfer-Encoding: identity\r\n chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + _NEXT,
    "bare-lf": b"Content-Length: 0\nX: y\r\n\r\n" + _NEXT,
    "bare-cr": b"Content-Length: 0\rX: y\r\n\r\n" + _NEXT,
    "chunk-size-bare-lf": b"Transfer-Encoding: chunked\r\n\r\n4\nabcd\r\n0\r\n\r\n" + _NEXT,
    "chunk-size-overflow": b"Transfer-Encoding: chunked\r\n\r\n1000000000000000000004\r\nabcd\r\n0\r\n\r\n" + _NEXT,
    "chunk-size-0x": b"Transfer-Encoding: chunked\r\n\r\n0x4\r\nabcd\r\n0\r\n\r\n" + _NEXT,
    "cl-plus": b"Content-Length: +4\r\n\r\nabcd" + _NEXT,
    "cl-negative": b"Content-Length: -1\r\n\r\n" + _NEXT,
}


@pytest.mark.parametrize("path", ["/anything", "/edge/message"])
@pytest.mark.parametrize("attack", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_ambiguous_request_framing_is_refused(
    sidecar: Sidecar, backend: Backend, path: str, attack: bytes
) -> None:
    """RFC 9112 sections 6.1 and 6.3: a request whose body length is ambiguous is
    refused (400) and the connection closed, so no second request hides in its body."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode() + head_lines(GOOD)
    response = await exchange(sidecar.port, head + attack)
    assert statuses(response) == [400]
    assert reason_of(response) == "bad_request"
    assert backend.seen == []


async def test_the_backend_gets_the_sidecars_own_framing(sidecar: Sidecar, backend: Backend) -> None:
    """A valid chunked body that looks like a second request stays body: the sidecar
    parses the client's framing and re-frames the body itself (one request upstream)."""
    body = b"0\r\n\r\n" + _NEXT
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    request = b"POST /anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    response = await exchange(sidecar.port, request + chunked)
    assert statuses(response) == [200]
    assert [(seen.path, seen.body) for seen in backend.seen] == [("/anything", body)]


@pytest.mark.parametrize(
    "connection",
    [
        "close, X-Edge-Agent-Id",
        "close, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host",
        "close, Authorization",
        "close, x-edge-agent-id, X-Forwarded-For, Authorization",
    ],
)
async def test_connection_cannot_strip_or_replace_the_sidecars_headers(
    sidecar: Sidecar, backend: Backend, connection: str
) -> None:
    """RFC 9110 section 7.6.1 lets a client name hop-by-hop fields in Connection; the
    sidecar removes them, then sets its own: identity and X-Forwarded-* survive."""
    forged = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil"}
    response = await exchange(sidecar.port, plain("POST", "/edge/message", GOOD | forged | {"Connection": connection}))
    assert statuses(response) == [200]
    (seen,) = backend.seen
    assert seen.headers["x-edge-agent-id"] == [AGENT]
    assert seen.headers["x-forwarded-for"] == ["127.0.0.1"]
    assert seen.headers["x-forwarded-proto"] == ["http"]
    assert seen.headers["x-forwarded-host"] == ["x"]
    # Named in Connection, Authorization is hop-by-hop (RFC 9110 section 7.6.1): the
    # client's own copy is never passed on beside it.
    assert seen.headers.get("authorization") == (None if "Authorization" in connection else [f"Bearer {SECRET}"])


async def test_connection_cannot_strip_the_identity_from_a_websocket_handshake(
    sidecar: Sidecar, backend: Backend
) -> None:
    _, writer, _ = await open_raw_websocket(
        sidecar.port, handshake("/edge/ws", GOOD | {"Connection": "Upgrade, X-Edge-Agent-Id"})
    )
    writer.close()
    (seen,) = backend.seen
    assert seen.headers["x-edge-agent-id"] == [AGENT]


FORGED = {
    "X-Forwarded-For": "6.6.6.6",
    "x-FORWARDED-proto": "https",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "1",
    "X-Forwarded-Prefix": "/admin",
    "Forwarded": "for=6.6.6.6;proto=https",
    "X-Real-IP": "6.6.6.6",
    # Underscore spellings: CGI/WSGI-style backends map '-' and '_' to the same name
    # (HTTP_X_FORWARDED_FOR), so these would pass for the real thing there.
    "X_Forwarded_For": "6.6.6.6",
    "X_Real_IP": "6.6.6.6",
    "X_Edge_Agent_Id": "admin",
}


@pytest.mark.parametrize("route", ["catch-all", "edge-message", "edge-websocket"])
async def test_client_forwarding_headers_are_never_trusted(sidecar: Sidecar, backend: Backend, route: str) -> None:
    """Only a peer in listen.trusted_proxies may speak for the client (none here)."""
    if route == "edge-websocket":
        _, writer, _ = await open_raw_websocket(sidecar.port, handshake("/edge/ws", GOOD | FORGED))
        writer.close()
    else:
        path = "/anything" if route == "catch-all" else "/edge/message"
        assert statuses(await exchange(sidecar.port, plain("POST", path, GOOD | FORGED))) == [200]
    (seen,) = backend.seen
    for name in ("x-forwarded-port", "x-forwarded-prefix", "forwarded", "x-real-ip"):
        assert name not in seen.headers, name
    for name in ("x_forwarded_for", "x_real_ip", "x_edge_agent_id"):
        assert name not in seen.headers, name
    assert seen.headers["x-forwarded-for"] == ["127.0.0.1"]
    assert seen.headers["x-forwarded-proto"] == ["http"]
    assert seen.headers["x-forwarded-host"] == ["x"]
    if route != "catch-all":
        assert seen.headers["x-edge-agent-id"] == [AGENT]


# === 4. header injection through the agent id ============================================

BAD_QUERY_IDS = [
    "edge_1%0d%0aX-Injected:%201",
    "edge_1%0D%0A%0D%0AGET%20/internal%20HTTP/1.1",
    "%0d%0a",
    "edge_1%0aX-Injected:%201",
    "edge_1%0dX-Injected:%201",
    "edge_1%00",
    "edge%E2%80%A8X-Injected",  # U+2028, a line separator to some parsers
    "%C3%A9dge",  # unicode
    "edge%201",
    "edge,admin",
    "edge%2F..%2Fadmin",
    "x" * 129,  # over-long
    "%20",
]
BAD_HEADER_IDS: list[tuple[bytes, str]] = [
    (b"edge_1\r\nX-Injected: 1", "missing_token"),  # CRLF ends the line: see the test
    (b"edge_1\nX-Injected: 1", "bad_request"),  # bare LF
    (b"edge_1\rX-Injected: 1", "bad_request"),  # bare CR
    (b"edge_1\x00X-Injected: 1", "bad_request"),  # NUL
    ("édge".encode(), "invalid_agent_id"),
    (b"edge\t1", "invalid_agent_id"),
    (b"edge 1", "invalid_agent_id"),
    (b"x" * 129, "invalid_agent_id"),
    (b"edge_1, admin", "invalid_agent_id"),
]


def agent_request(route: str, query: str = "", raw_id: bytes | None = None, token: bool = True) -> bytes:
    headers = {"Authorization": f"Bearer {SECRET}"} if token else {}
    extra = b"X-Edge-Agent-Id: " + raw_id + b"\r\n" if raw_id is not None else b""
    path = ("/edge/ws" if route == "websocket" else "/edge/message") + (f"?edge_agent_id={query}" if query else "")
    if route == "websocket":
        return handshake(path, headers | {"Connection": "Upgrade, close"}, extra)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n".encode()
    return head + head_lines(headers) + extra + b"\r\n"


def assert_no_injected_line(response: bytes) -> None:
    head = response.partition(b"\r\n\r\n")[0].lower()
    assert b"\r\nx-injected" not in head and b"\nx-injected" not in head


@pytest.mark.parametrize("route", ["http", "websocket"])
@pytest.mark.parametrize("agent_id", BAD_QUERY_IDS, ids=[i[:40] for i in BAD_QUERY_IDS])
async def test_agent_id_injection_in_the_query_is_refused(
    sidecar: Sidecar, backend: Backend, route: str, agent_id: str
) -> None:
    response = await exchange(sidecar.port, agent_request(route, query=agent_id))
    assert statuses(response) == [400]
    assert reason_of(response) == "invalid_agent_id"
    assert_no_injected_line(response)
    assert backend.seen == []


@pytest.mark.parametrize("route", ["http", "websocket"])
@pytest.mark.parametrize(("raw_id", "reason"), BAD_HEADER_IDS, ids=range(len(BAD_HEADER_IDS)))
async def test_agent_id_injection_in_the_header_is_refused(
    sidecar: Sidecar, backend: Backend, route: str, raw_id: bytes, reason: str
) -> None:
    # A raw CRLF cannot be inside a header value: it ends the line, and what follows is
    # one more header of the client's, with no more authority than any other. Sent
    # without the token, it must not get the request in (401, nothing upstream).
    response = await exchange(sidecar.port, agent_request(route, raw_id=raw_id, token=reason != "missing_token"))
    assert statuses(response) == [401 if reason == "missing_token" else 400]
    assert reason_of(response) == reason
    assert_no_injected_line(response)
    assert backend.seen == []


PERMISSIVE = shipped_with(("pattern: '[A-Za-z0-9_.-]{1,128}'", "pattern: '[^/]{1,128}'"))


@pytest.mark.parametrize("agent_id", ["edge%0d%0aX-Injected:%201", "edge%00", "edge%7f", "edge%09"])
async def test_control_characters_fail_even_a_permissive_pattern(
    backend: Backend, start_sidecar: StartSidecar, agent_id: str
) -> None:
    """An operator's loose pattern cannot let CR, LF, NUL or DEL into a header value."""
    sidecar = await start_sidecar(config_for(backend.url, PERMISSIVE))
    for route in ("http", "websocket"):
        response = await exchange(sidecar.port, agent_request(route, query=agent_id))
        assert (statuses(response), reason_of(response)) == ([400], "invalid_agent_id")
        assert_no_injected_line(response)
    assert backend.seen == []


# === 5. slow and greedy clients ===========================================================

QUICK = shipped_with(("header_timeout: 10s", "header_timeout: 300ms"), ("stall_timeout: 60s", "stall_timeout: 300ms"))
SMALL = shipped_with(("max_message_size: 4MiB", "max_message_size: 1KiB"))


async def test_a_slowloris_is_cut_off_and_other_sessions_are_unaffected(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    """The head must be complete within header_timeout of the connection opening,
    however steadily the bytes trickle in (nginx's client_header_timeout)."""
    sidecar = await start_sidecar(config_for(backend.url, QUICK))
    async with ws_connect(sidecar) as established:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(b"GET /edge/ws HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            for i in range(1000):
                writer.write(b"X-%d: y\r\n" % i)
                await asyncio.sleep(0.02)

        dripping = asyncio.ensure_future(trickle())
        try:
            closed_with = await asyncio.wait_for(reader.read(), 10)
            assert not dripping.done()  # cut off while still sending, not after
        finally:
            dripping.cancel()
            writer.close()
        assert closed_with == b"" or statuses(closed_with) == [408]
        # The established session and a new one are unaffected.
        await echoes(established, "older session")
        await echo_works(sidecar)
    assert [seen.path for seen in backend.seen] == ["/edge/ws", "/edge/ws"]


async def test_a_client_that_stops_reading_is_cut_off_and_the_backend_told(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start_sidecar(config_for(backend.url, QUICK))
    _, writer, _ = await open_raw_websocket(sidecar.port)
    writer.write(masked_frame(0x1, b"flood 64 1048576"))  # 64 MiB asked for; none of it read
    await until(lambda: backend.closes)
    assert backend.closes == [(1001, "client went away")]
    await echo_works(sidecar)
    await until(lambda: sidecar.sample("sidecar_ws_connections_active", route="edge") == 0)
    writer.transport.abort()


async def test_a_frame_declaring_a_huge_length_is_refused_before_its_payload(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    """The declared length is checked against max_message_size before any payload is
    buffered: a header claiming 2**62 bytes gets 1009 at once (RFC 6455 section 7.4.1)."""
    sidecar = await start_sidecar(config_for(backend.url, SMALL))
    assert await close_code_after(sidecar.port, masked_frame(0x2, b"a few bytes", declared=1 << 62)) == 1009
    await until(lambda: backend.closes)
    assert backend.closes[0][0] == 1009
    await echo_works(sidecar)


async def test_endless_continuation_frames_end_with_1009_at_the_limit(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    """A message fragmented forever (RFC 6455 section 5.4) counts toward the limit as it
    grows: 1009 to the sender once past 1 KiB, a close to the backend, which never got
    a byte of it, and other sessions keep working."""
    sidecar = await start_sidecar(config_for(backend.url, SMALL))
    chunk = b"c" * 100
    fragments = masked_frame(0x1, chunk, fin=False) + b"".join(masked_frame(0x0, chunk, fin=False) for _ in range(1000))
    assert await close_code_after(sidecar.port, fragments) == 1009
    await until(lambda: backend.closes)
    assert backend.closes[0][0] == 1009
    assert sidecar.sample("sidecar_ws_messages_total", route="edge", direction="upstream") == 0
    await echo_works(sidecar)


async def test_a_whole_message_over_the_limit_gets_1009_and_the_backend_a_close(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start_sidecar(config_for(backend.url, SMALL))
    assert await close_code_after(sidecar.port, masked_frame(0x2, b"z" * 1025)) == 1009
    await until(lambda: backend.closes)
    assert backend.closes[0][0] == 1009
    assert sidecar.sample("sidecar_ws_messages_total", route="edge", direction="upstream") == 0  # never relayed
    await echo_works(sidecar)


BAD_FRAMES = {
    "ping-over-125-bytes": masked_frame(0x9, b"p" * 126),  # RFC 6455 section 5.5
    "fragmented-ping": masked_frame(0x9, b"p", fin=False),  # section 5.5
    "continuation-first": masked_frame(0x0, b"orphan"),  # section 5.4
    "new-message-mid-fragments": masked_frame(0x1, b"a", fin=False) + masked_frame(0x1, b"b"),  # section 5.4
    "reserved-opcode": masked_frame(0x3, b"x"),  # section 5.2
    "reserved-bits": masked_frame(0x1, b"x", rsv1=True),  # RSV1 without an extension, section 5.2
    "close-with-1-byte": masked_frame(0x8, b"\x03"),  # section 5.5.1
}


@pytest.mark.parametrize("bad", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
async def test_protocol_violations_close_both_legs_with_1002(sidecar: Sidecar, backend: Backend, bad: bytes) -> None:
    """A frame RFC 6455 forbids fails that session (1002 to the sender, 1002 to the
    backend) and is never relayed; other sessions keep working."""
    assert await close_code_after(sidecar.port, bad) == 1002
    await until(lambda: backend.closes)
    assert backend.closes[0][0] == 1002
    assert sidecar.sample("sidecar_ws_messages_total", route="edge", direction="upstream") == 0
    await echo_works(sidecar)


# === 6. the secret ========================================================================


async def test_tokens_are_compared_in_constant_time_against_every_secret(
    backend: Backend, start_sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hmac.compare_digest on fixed-size SHA-256 digests, against every configured secret
    whichever matches: neither the token's length nor which secret matched shows in the
    time taken, and the decision is compare_digest's."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    sidecar = await start_sidecar(config_for(backend.url, EDGE_SECRET_PREVIOUS=OLD_SECRET))
    for token, status in ((WRONG, 401), (SECRET, 200), (OLD_SECRET, 200), ("x", 401)):
        calls.clear()
        headers = GOOD | {"Authorization": f"Bearer {token}"}
        assert statuses(await exchange(sidecar.port, plain("POST", "/edge/message", headers))) == [status]
        assert len(calls) == 2  # both secrets, whatever matched
        assert all(len(a) == len(b) == 32 for a, b in calls)  # digests, never the token itself
    # The decision is compare_digest's own: make it say no, and the right token is refused.
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: False)
    response = await exchange(sidecar.port, plain("POST", "/edge/message", GOOD))
    assert reason_of(response) == "invalid_token"


async def test_the_secret_is_never_in_logs_metrics_or_bodies(
    backend: Backend, start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sidecar = await start_sidecar(config_for(backend.url), metrics_port=0)
    port, responses = sidecar.port, []
    for token in (SECRET, WRONG):
        bearer = {"Authorization": f"Bearer {token}", "X-Edge-Agent-Id": AGENT}
        for request in (
            plain("POST", "/edge/message", bearer),
            plain("POST", "/edge/message", bearer | {"X-Edge-Agent-Id": "bad id"}),
            plain("POST", "/edge/message", {"Authorization": f"Bearer {token} extra"}),
            plain("POST", "/edge/message", {"Authorization": f"Basic {token}"}),
            plain("POST", "//edge/message", bearer),
            handshake("/edge/ws", bearer | {"X-Edge-Agent-Id": "bad id"}),
            handshake("/edge/ws", bearer | {"Sec-WebSocket-Version": "8"}),
            f"GET /edge/ws HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\nX: y\r\n\r\n".encode(),  # unparseable
            plain("GET", "/x", {"Authorization": f"Bearer {token}", "X-Big": "a" * 9000}),  # 431
        ):
            responses.append(await exchange(port, request))
    async with ws_connect(sidecar) as ws:
        await ws.send("hello")
        await ws.recv()
    await until(lambda: sidecar.sample("sidecar_ws_connections_active", route="edge") == 0)
    await backend.stop()  # now the backend is unavailable: 502s with details
    responses.append(await exchange(port, plain("POST", "/edge/message", GOOD)))
    responses.append(await exchange(port, handshake("/edge/ws", GOOD)))
    assert statuses(responses[-1]) == [502]
    metrics = await exchange(sidecar.running.metrics_port or 0, plain("GET", "/metrics"))
    assert b"sidecar_http_rejections_total" in metrics
    # Everything logged in this process but the test's own client (websockets logs the
    # headers it sends at DEBUG): the sidecar's, aiohttp's, asyncio's ...
    records = [record for record in caplog.records if not record.name.startswith("websockets")]
    logged = [record.getMessage() for record in records]
    logged += formatted(records)
    assert len(logged) > 40  # the session above did log
    for secret in (SECRET, WRONG):
        assert not [line for line in logged if secret in line]
        assert not [r for r in responses if secret.encode() in r]
        assert secret.encode() not in metrics


def test_config_objects_never_hold_the_secret() -> None:
    config = config_for("http://127.0.0.1:1", EDGE_SECRET_PREVIOUS=OLD_SECRET)
    views = [repr(config), str(config), *map(repr, config.auth.values()), *map(repr, config.routes)]
    for secret in (SECRET, OLD_SECRET):
        assert not [view for view in views if secret in view]
        assert secret.encode() not in pickle.dumps(config)  # not anywhere in the object graph
    # Nor its digest: a repr is not the place to offer one for offline guessing.
    for policy in config.auth.values():
        assert all(
            digest.hex() not in repr(policy) and repr(digest) not in repr(policy) for digest in policy.secret_digests
        )


def test_a_rejected_secret_is_never_quoted_in_config_problems() -> None:
    bad = "has spaces and é"
    config, problems = load_config(SHIPPED, env={"EDGE_SECRET": bad, "UPSTREAM_URL": "http://127.0.0.1:1"})
    assert config is None
    messages = [str(problem) for problem in problems]
    assert any("secret" in message for message in messages)
    assert not [message for message in messages if bad in message or "has spaces" in message]


# === 7. /metrics only on the metrics listener ==============================================


@pytest.mark.parametrize("path", ["/metrics", "/metrics/", "/METRICS", "/%6detrics", "//metrics"])
async def test_the_public_port_never_serves_the_sidecars_metrics(
    backend: Backend, start_sidecar: StartSidecar, path: str
) -> None:
    sidecar = await start_sidecar(config_for(backend.url), metrics_port=0)
    response = await exchange(sidecar.port, plain("GET", path))
    assert b"sidecar_" not in response
    if reason_of(response) is None:
        assert statuses(response) == [200]  # the backend's answer, through the catch-all
        assert [seen.raw_path for seen in backend.seen] == [path.replace("%6d", "m")]  # m is unreserved
    else:
        assert backend.seen == []


async def test_the_public_health_checks_carry_no_metrics_addresses_or_secret(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    """/healthz and /readyz are on the public port by design (the platform's health
    check): they say ok or why not (a failing upstream's host:port and the error, for
    the operator: issue 11), and nothing else an attacker could use."""
    sidecar = await start_sidecar(config_for(backend.url), metrics_port=0)
    answers = [await exchange(sidecar.port, plain("GET", path)) for path in ("/healthz", "/readyz")]
    assert [statuses(answer) for answer in answers] == [[200], [200]]
    await backend.stop()  # not ready now (once the cached probe expires): the 503 says why

    async def not_ready() -> bool:
        answers.append(await exchange(sidecar.port, plain("GET", "/readyz")))
        return statuses(answers[-1]) == [503]

    await until(not_ready)
    assert b"upstream_unavailable" in answers[-1]
    metrics_port = str(sidecar.running.metrics_port).encode()
    for answer in answers:
        for leak in (b"sidecar_", metrics_port, SECRET.encode(), b"fp1:"):
            assert leak not in answer
        # The backend's address only where it failed, named with why.
        failed = f'"backend": "127.0.0.1:{backend.port}: '.encode()
        assert answer.count(str(backend.port).encode()) == answer.count(failed) == (answer is answers[-1])
    assert backend.seen == []


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (plain("GET", "/"), 404),
        (plain("GET", "/edge/message"), 404),
        (plain("POST", "/edge/message", GOOD), 404),
        (handshake("/edge/ws", GOOD | {"Connection": "Upgrade, close"}), 404),
        (plain("GET", "/metrics/../edge/message"), 404),
        (plain("GET", "/anything"), 404),
        (plain("POST", "/metrics"), 405),
    ],
    ids=["root", "edge-message", "edge-message-authenticated", "websocket", "dot-segments", "catch-all", "post"],
)
async def test_the_metrics_listener_serves_nothing_but_metrics(
    backend: Backend, start_sidecar: StartSidecar, request_bytes: bytes, status: int
) -> None:
    sidecar = await start_sidecar(config_for(backend.url), metrics_port=0)
    assert sidecar.running.metrics_port
    response = await exchange(sidecar.running.metrics_port, request_bytes)
    assert statuses(response) == [status]
    assert b"sidecar_" not in response
    assert backend.seen == []
    scrape = await exchange(sidecar.running.metrics_port, plain("GET", "/metrics"))
    assert statuses(scrape) == [200] and b"sidecar_http_rejections_total" in scrape


# === SECURITY.md names only tests that exist ==============================================

_TEST_ID = re.compile(r"(tests/[\w/]+\.py)::(\w+)(?:\[[^\]]*\])?")


def security_rows(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each row of SECURITY.md's table: (its number, the test ids in its test cell)."""
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 4 or not cells[0].isdigit():
            continue
        rows.append((cells[0], _TEST_ID.findall(cells[-1])))
    return rows


def functions_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


def test_every_security_row_names_a_test_that_exists() -> None:
    rows = security_rows((ROOT / "SECURITY.md").read_text())
    assert len(rows) >= 7
    numbers = [number for number, _ in rows]
    assert len(set(numbers)) == len(numbers), "row numbers repeat"
    defined: dict[str, set[str]] = {}
    for number, ids in rows:
        assert ids, f"SECURITY.md row {number} names no test"
        for path, name in ids:
            assert (ROOT / path).is_file(), f"row {number}: {path} does not exist"
            if path not in defined:
                defined[path] = functions_in(ROOT / path)
            assert name in defined[path], f"row {number}: {path}::{name} does not exist"


def test_the_security_md_check_fails_on_a_row_without_a_test_or_a_missing_test() -> None:
    """The check above can fail: a row with no test, and a row naming a missing one."""
    table = "| # | threat | what | test |\n|---|---|---|---|\n"
    assert security_rows(table + "| 1 | x | y | none yet |\n") == [("1", [])]
    (row,) = security_rows(table + "| 2 | x | y | `tests/test_security.py::test_nope[a]` |\n")
    assert row == ("2", [("tests/test_security.py", "test_nope")])
    assert "test_nope" not in functions_in(ROOT / "tests/test_security.py")
    assert "test_every_security_row_names_a_test_that_exists" in functions_in(ROOT / "tests/test_security.py")
