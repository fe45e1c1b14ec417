"""Plain HTTP routes end to end: real backend, real sidecar, aiohttp and raw sockets as clients."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from sidecar.httpproxy import Forward
from sidecar.listener import Listener

from .conftest import AGENT, GOOD, ROOT, SECRET, Sidecar, StartSidecar, config_for, free_port
from .upstream import Backend
from .wire import (
    exchange,
    log_fields,
    parse_response,
    plain,
    raw_upstream,
    read_response,
    reason_of,
    scrape,
    statuses,
    until,
)


def http(sidecar: Sidecar, path: str) -> str:
    return sidecar.url(path, "http")


async def test_edge_message_is_proxied_with_identity_and_forwarding_headers(sidecar: Sidecar, backend: Backend) -> None:
    headers = {**GOOD, "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil", "Forwarded": "for=6.6.6.6"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(http(sidecar, "/edge/message?x=1"), data=b"hi", headers=headers) as r,
    ):
        assert r.status == 200
        assert await r.json() == {"method": "POST", "path": "/edge/message?x=1", "received": 2}
    seen = backend.seen[0]
    assert seen.body == b"hi"
    assert seen.headers["x-edge-agent-id"] == [AGENT]
    assert seen.headers["authorization"] == [f"Bearer {SECRET}"]
    assert seen.headers["x-forwarded-for"] == ["127.0.0.1"]
    assert seen.headers["x-forwarded-proto"] == ["http"]
    assert seen.headers["x-forwarded-host"] == [f"127.0.0.1:{sidecar.port}"]
    assert "forwarded" not in seen.headers
    assert sidecar.sample("sidecar_http_requests_total", route="edge-message", status_class="2xx") == 1
    assert sidecar.sample("sidecar_http_request_duration_seconds_count", route="edge-message") == 1


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ({"X-Edge-Agent-Id": AGENT}, 401, "missing_token"),
        ({**GOOD, "Authorization": "Bearer nope"}, 401, "invalid_token"),
        ({"Authorization": f"Bearer {SECRET}"}, 400, "missing_agent_id"),
        ({**GOOD, "X-Edge-Agent-Id": "x" * 129}, 400, "invalid_agent_id"),
    ],
)
async def test_edge_message_rejections(
    sidecar: Sidecar, backend: Backend, headers: dict[str, str], status: int, reason: str
) -> None:
    async with aiohttp.ClientSession() as s, s.post(http(sidecar, "/edge/message"), data=b"x", headers=headers) as r:
        assert r.status == status
        assert r.headers["X-Sidecar-Reason"] == reason
        body = await r.json()
        assert (body["error"], body["route"]) == (reason, "edge-message")
        assert SECRET not in json.dumps(body)
    assert backend.seen == []
    assert sidecar.sample("sidecar_http_rejections_total", route="edge-message", reason=reason) == 1
    assert sidecar.sample("sidecar_http_requests_total", route="edge-message", status_class=f"{status // 100}xx") == 1


async def test_catch_all_relays_path_query_and_method_unchanged(sidecar: Sidecar, backend: Backend) -> None:
    forged = {"X-Edge-Agent-Id": "admin", "X-Real-IP": "6.6.6.6", "X-Forwarded-Port": "1"}
    url = http(sidecar, "/api/v1/things?b=2&a=%20x")
    async with aiohttp.ClientSession() as s, s.put(url, data=b"{}", headers=forged) as r:
        assert r.status == 200
    seen = backend.seen[0]
    assert (seen.method, seen.raw_path) == ("PUT", "/api/v1/things?b=2&a=%20x")
    # the identity the sidecar vouches for elsewhere is never passed through from a client
    for name in ("x-edge-agent-id", "x-real-ip", "x-forwarded-port"):
        assert name not in seen.headers, name


async def test_hop_by_hop_headers_are_removed_but_identity_survives(sidecar: Sidecar, backend: Backend) -> None:
    request = (
        b"POST /edge/message HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Authorization: Bearer " + SECRET.encode() + b"\r\nX-Edge-Agent-Id: " + AGENT.encode() + b"\r\n"
        b"Connection: close, X-Edge-Agent-Id, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\n"
        b"TE: trailers\r\nProxy-Authorization: Basic eDp5\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
        b"\r\nhi"
    )
    response = await exchange(sidecar.port, request)
    assert response.startswith(b"HTTP/1.1 200")
    seen = backend.seen[0].headers
    for name in ("x-private", "keep-alive", "te", "proxy-authorization", "upgrade", "http2-settings"):
        assert name not in seen, name
    assert seen["x-edge-agent-id"] == [AGENT]


async def test_upgrade_on_plain_route_never_upgrades(sidecar: Sidecar, backend: Backend) -> None:
    headers = {"Upgrade": "h2c", "Connection": "Upgrade, HTTP2-Settings", "HTTP2-Settings": "AAMAAABkAAQAAP__"}
    async with aiohttp.ClientSession() as s, s.get(http(sidecar, "/anything"), headers=headers) as r:
        assert r.status == 200
    assert "upgrade" not in backend.seen[0].headers


async def test_websocket_upgrade_on_plain_route_is_no_route(sidecar: Sidecar, backend: Backend) -> None:
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect(http(sidecar, "/edge/message"), headers=GOOD)
    assert info.value.status == 404
    assert info.value.headers is not None and info.value.headers["X-Sidecar-Reason"] == "no_route"
    assert backend.seen == []


async def test_repeated_response_headers_are_kept_and_hop_by_hop_dropped(sidecar: Sidecar) -> None:
    async with aiohttp.ClientSession() as s, s.get(http(sidecar, "/cookies")) as r:
        assert r.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
        assert "X-Private" not in r.headers


async def test_redirects_are_passed_back_not_followed(sidecar: Sidecar, backend: Backend) -> None:
    async with aiohttp.ClientSession() as s, s.get(http(sidecar, "/redirect"), allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["Location"] == "/elsewhere"
    assert [seen.path for seen in backend.seen] == ["/redirect"]


async def test_bodies_are_not_decompressed(sidecar: Sidecar) -> None:
    async with aiohttp.ClientSession(auto_decompress=False) as s, s.get(http(sidecar, "/gzip")) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(await r.read()) == b"hello " * 100


async def test_response_streams_before_the_backend_finishes(sidecar: Sidecar, backend: Backend) -> None:
    async with aiohttp.ClientSession() as s, s.get(http(sidecar, "/stream")) as r:
        assert await asyncio.wait_for(r.content.readexactly(6), 10) == b"first;"  # backend still holding
        backend.release.set()
        assert await r.read() == b"second"


async def test_request_body_streams_to_the_backend(sidecar: Sidecar, backend: Backend) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 1000
        # The second chunk is sent only once the backend has the first: a proxy that
        # buffered the whole body would deadlock here.
        await asyncio.wait_for(asyncio.shield(backend.first_chunk), 10)
        yield b"b" * 1000

    async with aiohttp.ClientSession() as s, s.post(http(sidecar, "/upload"), data=body()) as r:
        assert await r.json() == {"received": 2000}


async def test_upstream_unavailable_is_502(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(config_for(f"http://127.0.0.1:{free_port()}"))
    async with aiohttp.ClientSession() as s, s.get(http(sidecar, "/anything")) as r:
        assert (r.status, r.headers["X-Sidecar-Reason"]) == (502, "upstream_unavailable")
        assert (await r.json())["route"] == "default"
    assert sidecar.sample("sidecar_http_rejections_total", route="default", reason="upstream_unavailable") == 1


READ_TIMEOUT = """
upstreams: {backend: {url: "${UPSTREAM_URL}", read_timeout: 300ms}}
routes:
  - {name: default, type: http, prefix: /, upstream: backend}
"""


async def test_upstream_not_answering_is_504(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(config_for(backend.url, READ_TIMEOUT))
    async with aiohttp.ClientSession() as s, s.get(http(sidecar, "/hang")) as r:
        assert (r.status, r.headers["X-Sidecar-Reason"]) == (504, "upstream_timeout")


@pytest.mark.parametrize(
    "path",
    [
        "//edge/message",
        "/edge//message",
        "/edge/./message",
        "/x/../edge/message",
        "/x/%2e%2e/edge/message",
        "/edge%2fmessage",
        "/edge/message;a=b",
        "/edge\\message",
        "/edge/message%00",
        "/edge/message#x",
        "/edge%252Fmessage",
    ],
)
async def test_path_tricks_never_reach_the_backend(sidecar: Sidecar, backend: Backend, path: str) -> None:
    response = await exchange(sidecar.port, plain("POST", path))
    assert response.startswith(b"HTTP/1.1 400")
    assert b"X-Sidecar-Reason: bad_path" in response
    assert backend.seen == []


@pytest.mark.parametrize(
    ("path", "meant"),
    [("/EDGE/MESSAGE", "/edge/message"), ("/edge/message/", "/edge/message"), ("/edge/message%20", "/edge/message")],
)
async def test_near_misses_of_an_authenticated_path_do_not_fall_through(
    sidecar: Sidecar, backend: Backend, path: str, meant: str
) -> None:
    async with aiohttp.ClientSession() as s, s.post(http(sidecar, path), data=b"x") as r:
        assert (r.status, (await r.json())["did_you_mean"]) == (404, meant)
    assert backend.seen == []


@pytest.mark.parametrize("target", ["*", "/x%0Ay", "http://evil/edge/message"])
async def test_every_request_target_gets_the_sidecars_answer(sidecar: Sidecar, backend: Backend, target: str) -> None:
    response = await exchange(
        sidecar.port, f"OPTIONS {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert response.startswith(b"HTTP/1.1 400")
    assert b"X-Sidecar-Reason: bad_path" in response
    assert backend.seen == []


async def test_encoded_unreserved_characters_still_need_the_auth(sidecar: Sidecar, backend: Backend) -> None:
    response = await exchange(sidecar.port, plain("POST", "/%65dge/message"))
    assert response.startswith(b"HTTP/1.1 401")
    assert b"X-Sidecar-Reason: missing_token" in response
    assert backend.seen == []


async def test_sidecar_metrics_are_not_on_the_public_port(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(config_for(backend.url), metrics_port=0)
    async with aiohttp.ClientSession() as s, s.get(http(sidecar, "/metrics")) as r:
        assert "sidecar_" not in await r.text()  # the backend answered, not the sidecar
    assert [seen.path for seen in backend.seen] == ["/metrics"]
    assert sidecar.running.metrics_port is not None
    scraped = await scrape(sidecar.running.metrics_port)
    assert scraped['sidecar_http_requests_total{route="default",status_class="2xx"}'] == 1.0


async def test_client_hanging_up_mid_response_is_quiet(
    sidecar: Sidecar, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert b"first;" in await asyncio.wait_for(reader.readuntil(b"first;"), 10)
    writer.transport.abort()  # gone, mid-response
    backend.release.set()
    async with aiohttp.ClientSession() as s, s.get(http(sidecar, "/cookies")) as r:
        assert r.status == 200  # still serving
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_backend_breaking_off_mid_body_truncates_the_response(sidecar: Sidecar) -> None:
    async with aiohttp.ClientSession() as s, s.get(http(sidecar, "/broken")) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


async def test_head_and_server_header(sidecar: Sidecar) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.head(http(sidecar, "/cookies")) as r:
            assert r.status == 200
            assert await r.read() == b""
        async with s.get(http(sidecar, "/nope/ws"), headers={"Upgrade": "websocket", "Connection": "Upgrade"}) as r:
            assert r.headers["Server"] == "sidecar"  # not aiohttp's name and version


async def test_a_request_the_client_abandons_is_abandoned_upstream_too(sidecar: Sidecar, backend: Backend) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await until(lambda: backend.seen)
    writer.transport.abort()
    await until(lambda: backend.hangs_abandoned != 0)  # not held until read_timeout (60 s)
    await until(lambda: sidecar.sample("sidecar_http_requests_total", route="default", status_class="4xx") != 0)
    # counted as the client's doing (499), not as a sidecar or backend failure
    assert sidecar.sample("sidecar_http_requests_total", route="default", status_class="5xx") == 0


async def test_a_trusted_proxys_forwarding_headers_are_kept_and_extended(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    text = READ_TIMEOUT.replace("read_timeout: 300ms", "read_timeout: 10s")
    sidecar = await start_sidecar(config_for(backend.url, "listen: {trusted_proxies: [127.0.0.0/8]}\n" + text))
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "edge.example"}
    async with aiohttp.ClientSession() as s, s.get(http(sidecar, "/anything"), headers=headers) as r:
        assert r.status == 200
    seen = backend.seen[0].headers
    assert seen["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]  # the proxy's view, then ours
    assert (seen["x-forwarded-proto"], seen["x-forwarded-host"]) == (["https"], ["edge.example"])


async def test_an_untrusted_peers_forwarding_headers_are_replaced(sidecar: Sidecar, backend: Backend) -> None:
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil"}
    async with aiohttp.ClientSession() as s, s.get(http(sidecar, "/anything"), headers=headers) as r:
        assert r.status == 200
    seen = backend.seen[0].headers
    assert (seen["x-forwarded-for"], seen["x-forwarded-proto"]) == (["127.0.0.1"], ["http"])
    assert seen["x-forwarded-host"] == [f"127.0.0.1:{sidecar.port}"]


async def test_logs_name_the_client_a_trusted_proxy_saw_not_a_spoofed_one(
    backend: Backend, start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    sidecar = await start_sidecar(config_for(backend.url, "listen: {trusted_proxies: [127.0.0.0/8]}\n" + READ_TIMEOUT))
    headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}  # the client wrote 6.6.6.6; the proxy appended .7
    async with aiohttp.ClientSession() as s, s.get(http(sidecar, "/x//y"), headers=headers) as r:
        assert r.status == 400
    (line,) = log_fields(caplog, "http.rejected")
    assert line["client"] == "203.0.113.7"


@pytest.mark.parametrize("agent_id", [b"edge\xc2\x851", b"edge\xe2\x80\xa81", b"ab\xffcd"], ids=["NEL", "LS", "0xFF"])
async def test_agent_id_with_unicode_controls_is_refused_whatever_the_pattern(
    backend: Backend, start_sidecar: StartSidecar, agent_id: bytes
) -> None:
    """Found by tests/test_fuzz_auth.py: a permissive pattern let these through to the backend
    (a raw 0xFF reached it as a different id: 'abcd')."""
    text = (ROOT / "routes.yaml").read_text().replace("pattern: '[A-Za-z0-9_.-]{1,128}'", "pattern: '.+'")
    assert "pattern: '.+'" in text
    sidecar = await start_sidecar(config_for(backend.url, text))
    request = (
        b"GET /edge/message HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer " + SECRET.encode() + b"\r\nX-Edge-Agent-Id: " + agent_id + b"\r\n\r\n"
    )
    response = await exchange(sidecar.port, request)
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"X-Sidecar-Reason: invalid_agent_id" in response
    assert backend.seen == []


async def test_a_read_full_of_pipelined_refusals_is_answered_whole(sidecar: Sidecar, backend: Backend) -> None:
    """Refusals are answered at once, inside the dispatch of the request they refuse: each
    answer takes the next request in turn. 2,000 of them in one read all get their answer
    (recursing once a request, the stack gave out at about 200 and the connection died
    with a RecursionError)."""
    one = b"GET /edge/ws HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = await exchange(sidecar.port, one * 2000 + b"GET /edge/ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [426] * 2001
    assert backend.seen == []


# --- an upstream that misbehaves, played byte by byte -------------------------------------


@pytest.mark.parametrize(
    "after",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON", b"garbage", b"HTTP/1.1 200 OK\r\n"],
    ids=["second-response", "garbage", "half-a-head"],
)
async def test_bytes_after_the_end_of_a_response_are_dropped_with_its_connection(
    start_sidecar: StartSidecar, after: bytes
) -> None:
    """An upstream that writes more than the response asked for, in the same write: the
    client gets the response and nothing else (the rest would answer its next request),
    and that upstream connection is closed, never pooled for another request."""
    connections: list[list[bytes]] = []  # the paths each upstream connection was asked for
    closed: list[bool] = []

    async def speak(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        paths: list[bytes] = []
        connections.append(paths)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                path = (await reader.readuntil(b"\r\n\r\n")).split(b" ")[1]
                paths.append(path)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s%s" % (len(path), path, after))
                await writer.drain()
        closed.append(True)
        writer.close()

    async with raw_upstream(speak) as url:
        sidecar = await start_sidecar(config_for(url))
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        for path in (b"/first", b"/second"):
            writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
            response = await read_response(reader)
            assert (response.status, response.body) == (200, path)
        writer.close()
        await until(lambda: len(closed) == 2)
    assert connections == [[b"/first"], [b"/second"]]  # each closed after its response


ENDLESS = 64 * 1024  # past the 41 KiB a head may take to be read, before anything ends it
CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "framing", [b"1;" + b"e" * ENDLESS, b"0\r\nX-Trailer: " + b"a" * ENDLESS], ids=["chunk-line", "trailers"]
)
async def test_a_chunk_line_or_trailers_from_the_client_that_never_end_are_refused(
    sidecar: Sidecar, backend: Backend, framing: bytes
) -> None:
    """llhttp skips chunk extensions and httptools buffers a trailer's value whole: without a
    limit, a client could send them for ever (and grow the trailer in memory)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(b"POST /anything HTTP/1.1\r\nHost: x\r\n" + CHUNKED + framing)  # and never a line end
    answer = await asyncio.wait_for(reader.read(), 10)  # until the sidecar closes
    writer.close()
    assert statuses(answer) == [431]
    assert reason_of(answer) == "headers_too_large"
    assert backend.seen == []


@pytest.mark.parametrize(
    ("response", "status"),
    [
        (b"HTTP/1.1 200 OK\r\n" + CHUNKED + b"1;" + b"e" * ENDLESS, 200),
        (b"HTTP/1.1 200 OK\r\n" + CHUNKED + b"0\r\nX-Trailer: " + b"a" * ENDLESS, 200),
        (b"HTTP/1.1 200 OK\r\nX-Huge: " + b"a" * ENDLESS, 502),
        (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Big-%d: %s\r\n" % (i, b"a" * 4000) for i in range(10)) + b"\r\n", 502),
    ],
    ids=["chunk-line", "trailers", "head", "head-over-32-kib"],
)
async def test_a_chunk_line_trailers_or_head_from_the_upstream_over_the_limits_are_cut_off(
    start_sidecar: StartSidecar, response: bytes, status: int
) -> None:
    """The same limits hold for what the upstream sends: a head that never ends or is over
    32 KiB (even whole in one read) is 502; a body's framing that never ends cuts the
    response short (its head is already the client's); the upstream connection is closed."""
    closed = asyncio.Event()

    async def speak(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)  # and never a line end
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the sidecar hangs up
        closed.set()

    async with raw_upstream(speak) as url:
        sidecar = await start_sidecar(config_for(url))
        answer = await exchange(sidecar.port, plain("GET", "/x"))
        await asyncio.wait_for(closed.wait(), 10)
    assert statuses(answer) == [status]
    if status == 502:
        assert reason_of(answer) == "upstream_unavailable"
        assert b"X-Huge" not in answer and b"X-Big" not in answer
    else:
        assert not answer.endswith(b"0\r\n\r\n")  # no last chunk: the client knows it was cut short


async def test_read_timeout_does_not_cut_off_an_upload_still_sending(start_sidecar: StartSidecar) -> None:
    """read_timeout bounds the wait for the backend's answer; while the client is still
    sending the body the backend is waiting too, and the exchange is not idle."""
    received: list[bytes] = []
    got = asyncio.Event()

    async def speak(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        while len(received) < 4:
            received.append(await reader.readexactly(1))
            got.set()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    async with raw_upstream(speak) as url:
        sidecar = await start_sidecar(config_for(url, READ_TIMEOUT.replace("300ms", "1s")))
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n")
        for byte in b"abcd":
            writer.write(bytes([byte]))
            await asyncio.wait_for(got.wait(), 10)
            got.clear()
            await asyncio.sleep(0.4)  # the client is slow: four bytes take longer than read_timeout
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert statuses(answer) == [200]
    assert b"".join(received) == b"abcd"


@pytest.mark.parametrize(
    "request_",
    [
        b"POST /anything HTTP/1.0\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n0\r\n\r\n",
        b"POST /anything HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    ],
    ids=["http-1.0", "not-chunked-last"],
)
async def test_a_request_transfer_encoding_that_cannot_frame_it_is_refused(
    sidecar: Sidecar, backend: Backend, request_: bytes
) -> None:
    """RFC 9112 section 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing; section 6.3:
    a request whose last coding is not chunked has no length. Either is 400 and the
    connection closes, so the request after it is never read."""
    answer = await exchange(sidecar.port, request_ + b"GET /hidden HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(answer) == [400]
    assert reason_of(answer) == "bad_request"
    assert backend.seen == []


async def test_a_response_whose_last_coding_is_not_chunked_is_read_to_the_close(start_sidecar: StartSidecar) -> None:
    """RFC 9112 section 6.3: the connection's end delimits it; the client gets it whole, its
    codings kept and chunked by the sidecar, and a proper end."""
    body = gzip.compress(b"hello " * 100)

    async def speak(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    async with raw_upstream(speak) as url:
        sidecar = await start_sidecar(config_for(url))
        answer = await exchange(sidecar.port, plain("GET", "/x"))
    response = parse_response(answer)
    assert (response.status, response.headers["Transfer-Encoding"]) == (200, "gzip, chunked")
    chunks, rest = [], response.body
    while True:
        size, _, rest = rest.partition(b"\r\n")
        chunks.append(rest[: int(size, 16)])
        rest = rest[int(size, 16) + 2 :]
        if size == b"0":
            break
    assert (b"".join(chunks), rest) == (body, b"")  # whole, and the last chunk ends it


CODED = gzip.compress(b"hello " * 100)


@pytest.mark.parametrize(
    ("request_", "response"),
    [
        (b"GET /x HTTP/1.0\r\n\r\n", b"Transfer-Encoding: gzip\r\n\r\n" + CODED),
        (
            b"GET /x HTTP/1.0\r\n\r\n",
            b"Transfer-Encoding: gzip, chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(CODED), CODED),
        ),
        (plain("GET", "/x"), b"Transfer-Encoding: chunked, gzip\r\n\r\n" + gzip.compress(b"5\r\nhello\r\n0\r\n\r\n")),
    ],
    ids=["gzip-to-http-1.0", "gzip-chunked-to-http-1.0", "chunked-not-last"],
)
async def test_a_response_coding_that_cannot_be_passed_on_as_it_is_is_502(
    start_sidecar: StartSidecar, request_: bytes, response: bytes
) -> None:
    """RFC 9112 section 6.1: an HTTP/1.0 client cannot be sent Transfer-Encoding, so a body
    coded otherwise than chunked would reach it still coded with nothing naming the coding;
    and chunked may be applied once only, so a body chunked before another coding (read to
    the close) cannot be re-chunked for an HTTP/1.1 client. Either is refused: 502, the
    mapping of any response the sidecar cannot pass on, and none of the body is sent."""

    async def speak(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n" + response)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async with raw_upstream(speak) as url:
        sidecar = await start_sidecar(config_for(url))
        answer = await exchange(sidecar.port, request_)
    assert statuses(answer) == [502]
    assert reason_of(answer) == "upstream_unavailable"
    assert CODED not in answer and b"Transfer-Encoding" not in answer


async def test_a_refusal_before_a_held_back_body_closes_the_connection(sidecar: Sidecar, backend: Backend) -> None:
    """``Expect: 100-continue`` and no 100: the client may send its body or not (RFC 9110
    section 10.1.1), and what comes next cannot be told apart from a next request. The
    refusal says ``Connection: close`` and the connection ends after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(b"POST /edge/message HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    response = await read_response(reader)  # no token: refused before the body is asked for
    assert (response.status, response.headers["X-Sidecar-Reason"]) == (401, "missing_token")
    assert response.headers["Connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the sidecar
    writer.close()
    assert backend.seen == []


@pytest.mark.parametrize("after_head", [b"", b"x" * 1000], ids=["head-only", "a-body-it-should-not-send"])
async def test_a_head_response_ends_at_its_head_and_the_client_connection_goes_on(
    start_sidecar: StartSidecar, after_head: bytes
) -> None:
    """A HEAD's Content-Length describes a body that is not sent: the answer ends with the head
    and the client's next request is answered on the same connection. The upstream's is closed
    after a HEAD, whatever followed the head (a body a HEAD must not get, now or later): those
    bytes are never the next request's answer."""
    connections: list[list[bytes]] = []

    async def speak(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines: list[bytes] = []
        connections.append(lines)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                lines.append((await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[0])
                body = after_head if lines[-1].startswith(b"HEAD ") else b"y" * 1000
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + body)
                await writer.drain()

    async with raw_upstream(speak) as url:
        sidecar = await start_sidecar(config_for(url))
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n")
        head = parse_response(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10))
        assert (head.status, head.headers["Content-Length"]) == (200, "1000")
        writer.write(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await read_response(reader)
        writer.close()
    assert (response.status, response.body) == (200, b"y" * 1000)
    assert connections == [[b"HEAD /a HTTP/1.1"], [b"GET /b HTTP/1.1"]]


@pytest.mark.parametrize(
    "late", [b"hello", b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"], ids=["body", "a-response"]
)
async def test_a_body_sent_late_after_a_head_never_reaches_another_client(
    start_sidecar: StartSidecar, late: bytes
) -> None:
    """RFC 9110 section 9.3.2: a HEAD's response has no content, but a faulty backend (one that
    answers HEAD as GET) may send one, and not in the same read as the head. The HEAD's upstream
    connection is never pooled, so another client's request never goes on it: were it pooled,
    the late bytes would be that request's answer (a 502 for 'hello'; 'POISON' served as it)."""
    connections: list[list[bytes]] = []

    async def speak(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines: list[bytes] = []
        connections.append(lines)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                lines.append((await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[0])
                if lines[-1].startswith(b"HEAD "):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")  # the body comes later
                else:  # late: with the next request's answer
                    stray = late if len(lines) > 1 and lines[-2].startswith(b"HEAD ") else b""
                    writer.write(stray + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

    async with raw_upstream(speak) as url:
        sidecar = await start_sidecar(config_for(url))
        head = await exchange(sidecar.port, plain("HEAD", "/x"))
        assert (statuses(head), parse_response(head).body) == ([200], b"")
        answer = await exchange(sidecar.port, plain("GET", "/y"))  # another client
    assert statuses(answer) == [200]
    assert parse_response(answer).body == b"ok"
    assert connections == [[b"HEAD /x HTTP/1.1"], [b"GET /y HTTP/1.1"]]


async def test_a_response_behind_a_client_buffer_already_full_is_not_read_ahead_of_the_client(
    start_sidecar: StartSidecar,
) -> None:
    """A client pipelines requests whose answers fill its write buffer past the high-water mark
    and then a request for a large body, and reads nothing. The Forward that takes over hears
    of the full buffer before it has an upstream connection: once it has one, it must not read
    it (it was read at full speed, the whole body held for a client that reads nothing: 42 MB
    in the review's run). When the client reads, everything arrives, in order."""
    size, count = 16 * 1024 * 1024, 1000  # 1,000 answers of the sidecar's own: about 200 KiB
    body = bytes(range(256)) * (size // 256)
    upstreams: list[asyncio.StreamWriter] = []
    sent_all = asyncio.Event()

    async def speak(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        upstreams.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()  # returns once the kernel took the last byte
            sent_all.set()
            await reader.read()

    def held_back() -> bool:  # the upstream is not read, and it has bytes the kernel would not take
        handler = conn.handler
        upstream = handler.upstream if isinstance(handler, Forward) else None
        reading = upstream is None or upstream.transport is None or upstream.transport.is_reading()
        return not reading and upstreams[0].transport.get_write_buffer_size() > 0

    async with raw_upstream(speak) as url:
        sidecar = await start_sidecar(config_for(url))
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", sidecar.port))
        reader, writer = await asyncio.open_connection(sock=client)
        try:
            await until(lambda: sidecar.running.front.connections)
            (conn,) = sidecar.running.front.connections
            assert isinstance(conn, Listener) and conn.transport is not None
            transport = conn.transport
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            writer.transport.pause_reading()  # type: ignore[attr-defined]
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * count + b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            await until(lambda: sent_all.is_set() or (upstreams and held_back()))
            assert not sent_all.is_set(), "the upstream was read to the end for a client that reads nothing"
            unsent = upstreams[0].transport.get_write_buffer_size()
            assert size - unsent < 2 * 1024 * 1024  # the kernel's buffers at most: blocked well before the end
            assert transport.get_write_buffer_size() < 2 * 1024 * 1024  # the answers and a read at most
            writer.transport.resume_reading()  # type: ignore[attr-defined]
            for _ in range(count):
                assert (await read_response(reader)).status == 200
            response = await read_response(reader)
        finally:
            writer.close()
    assert (response.status, response.body == body) == (200, True)
    assert sent_all.is_set()


async def test_an_upload_is_not_read_ahead_of_an_upstream_whose_buffer_the_first_write_filled(
    start_sidecar: StartSidecar,
) -> None:
    """A large upload to a backend that reads slowly: the first write upstream (the head and
    the body read with it) already fills the upstream connection's buffer past its mark. The
    client's body must then wait (the pause this write caused was undone as the exchange
    attached, and nothing ever paused it again: the whole upload was held in memory). A pooled
    connection whose buffer an earlier exchange left full is handed over the same way (its
    state is kept on the connection). Then the backend reads, and gets every byte."""
    size = 16 * 1024 * 1024
    body = bytes(range(256)) * (size // 256)
    release = asyncio.Event()

    async def speak(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await release.wait()  # a slow backend: nothing more is read until the test says so
            received = await reader.readexactly(length)
            answer = b"ok" if received == body else b"corrupted"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()

    listening = socket.socket()
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the backend takes little unread
    listening.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(speak, sock=listening)
    async with server:
        url = f"http://127.0.0.1:{listening.getsockname()[1]}"
        sidecar = await start_sidecar(config_for(url))
        for sock in sidecar.running.servers[0].sockets:  # a client's first read brings a lot of body
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        pool = sidecar.running.runtime.pool
        connection = await pool.open(pool.target(config_for(url).routes[-1].upstream))
        assert connection.transport is not None  # a kept-alive connection with a small send buffer:
        connection.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pool.give(connection)  # the kernel takes a few KiB, the rest of a write stays in the sidecar
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        try:
            writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size + body)
            await until(lambda: sidecar.running.front.connections)
            (conn,) = sidecar.running.front.connections
            assert isinstance(conn, Listener)

            def held_back() -> bool:  # the client is not read, and it has bytes the kernel would not take
                transport = conn.transport
                return (
                    transport is not None
                    and not transport.is_reading()
                    and writer.transport.get_write_buffer_size() > 0
                )

            await until(lambda: writer.transport.get_write_buffer_size() == 0 or held_back())
            assert connection.exchange is not None, "the pooled connection was not the one taken"
            assert connection.transport.get_write_buffer_size() < 2 * 1024 * 1024  # bounded, not the upload
            assert writer.transport.get_write_buffer_size() > size // 2, "the upload was read into the sidecar"
            release.set()
            response = await read_response(reader)
        finally:
            writer.close()
    assert (response.status, response.body) == (200, b"ok")
