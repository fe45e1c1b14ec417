"""llhttp two ways: aiohttp's C ``HttpRequestParser``/``HttpResponseParser`` (through
``aiohttp.http``) against httptools, on the requests and responses of the harness's HTTP
phase, each taken as far as the data plane needs it (method, target, version, fields as a
multidict, body, keep-alive). The issue's rule: stay on aiohttp within about 10%.

    .venv/bin/python bench/parsers.py          # min of 5 rounds, microseconds per message

Prints one JSON line. CPU time (process_time), so a busy machine changes it less.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httptools
from aiohttp.http import HttpRequestParser, HttpResponseParser
from multidict import CIMultiDict, CIMultiDictProxy

REQUEST = (
    b"POST /edge/message HTTP/1.1\r\nHost: 127.0.0.1:19200\r\nAuthorization: Bearer bench-secret\r\n"
    b"X-Edge-Agent-Id: edge_1\r\nContent-Type: application/json\r\nContent-Length: 44\r\n\r\n"
    b'{"chat":"hello","text":"benchmark message"}.'
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nDate: Mon, 01 Dec 2025 06:00:00 GMT\r\n"
    b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 62\r\n\r\n" + b"x" * 62
)
N = 50_000


class _Protocol:
    """What aiohttp's parsers need of a protocol (for the body's StreamReader)."""

    connected = True

    def pause_reading(self) -> None: ...
    def resume_reading(self, resume_parser: bool = True) -> None: ...


class _Collect:
    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)


def _timed(one: Any) -> float:
    started = time.process_time()
    for _ in range(N):
        one()
    return (time.process_time() - started) / N * 1e6


async def _round() -> dict[str, float]:
    loop = asyncio.get_running_loop()
    aio_request = HttpRequestParser(_Protocol(), loop, 2**16, max_line_size=8190, max_field_size=8190)  # type: ignore[arg-type]
    aio_response = HttpResponseParser(_Protocol(), loop, 2**16, max_line_size=8190, max_field_size=8190)  # type: ignore[arg-type]

    def aiohttp_request() -> None:
        messages, _, _ = aio_request.feed_data(REQUEST)
        message, payload = messages[0]
        _ = (message.method, message.path, message.version, message.headers, message.should_close)
        payload.read_nowait()

    def aiohttp_response() -> None:
        messages, _, _ = aio_response.feed_data(RESPONSE)
        message, payload = messages[0]
        _ = (message.code, message.headers)
        payload.read_nowait()

    collect = _Collect()
    ht_request = httptools.HttpRequestParser(collect)
    ht_response = httptools.HttpResponseParser(collect)

    def httptools_request() -> None:
        collect.fields, collect.body, collect.url = [], [], b""
        ht_request.feed_data(REQUEST)
        headers = CIMultiDictProxy(
            CIMultiDict([(n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in collect.fields])
        )
        _ = (ht_request.get_method(), collect.url, ht_request.get_http_version(), headers, b"".join(collect.body))
        ht_request.should_keep_alive()

    def httptools_response() -> None:
        collect.fields, collect.body = [], []
        ht_response.feed_data(RESPONSE)
        _ = (ht_response.get_status_code(), collect.fields, b"".join(collect.body))

    return {
        "aiohttp_request_us": _timed(aiohttp_request),
        "httptools_request_us": _timed(httptools_request),
        "aiohttp_response_us": _timed(aiohttp_response),
        "httptools_response_us": _timed(httptools_response),
    }


def main() -> None:
    rounds = [asyncio.run(_round()) for _ in range(5)]
    best = {key: round(min(r[key] for r in rounds), 2) for key in rounds[0]}
    best["request_ratio"] = round(best["aiohttp_request_us"] / best["httptools_request_us"], 2)
    best["response_ratio"] = round(best["aiohttp_response_us"] / best["httptools_response_us"], 2)
    print(json.dumps(best))


if __name__ == "__main__":
    main()
