"""The tests' toolbox for what goes over the sockets: waiting for another component, raw
HTTP exchanges (requests written byte for byte, answers parsed by hand), raw WebSocket
frames, WebSocket sessions and refusals through python `websockets`; and what the sidecar
says about them: its metrics as a scraper reads them, and its log lines.

Raw sockets are for what a client library would not send or would hide: bad paths and
headers, smuggling, exact bytes. A library client is for everything else.

Every test module takes these from here (and fixtures and configs from ``conftest``); no
test module imports from another. Timeouts here are upper bounds for a slow, shared
machine, never speed claims: speed is measured in the benchmarks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import logging
import os
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import aiohttp
import pytest
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sidecar.logs import JsonFormatter, TextFormatter

from .conftest import GOOD, Sidecar
from .upstream import Backend

# --- waiting -------------------------------------------------------------------------------


async def until(condition: Callable[[], object], timeout: float = 10) -> None:  # noqa: ASYNC109 - a bound is the point
    """Poll ``condition`` (awaited if it returns an awaitable) until it is true: for state
    another task, process or peer changes. ``timeout`` is a bound, not a speed claim."""
    async with asyncio.timeout(timeout):
        while True:
            holds = condition()
            if inspect.isawaitable(holds):
                holds = await holds
            if holds:
                return
            await asyncio.sleep(0.01)


# --- raw HTTP ------------------------------------------------------------------------------


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` in one write to 127.0.0.1:``port``; everything the server sends back
    until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def head_lines(headers: Mapping[str, str]) -> bytes:
    """``headers`` as header lines, each ending in CRLF."""
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())


def plain(method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes = b"") -> bytes:
    """An HTTP/1.1 request that asks for the connection to be closed after the answer;
    ``headers`` add to or replace Host, Content-Length and Connection."""
    base = {"Host": "x", "Content-Length": str(len(body)), "Connection": "close"}
    return f"{method} {path} HTTP/1.1\r\n".encode() + head_lines(base | dict(headers or {})) + b"\r\n" + body


def handshake(path: str, headers: Mapping[str, str] | None = None, extra: bytes = b"") -> bytes:
    """A valid RFC 6455 opening handshake (section 4.1) for ``path``, a fresh key; ``headers``
    add to or replace its fields, ``extra`` is raw header lines (repeats, bad bytes)."""
    key = base64.b64encode(os.urandom(16)).decode()
    base = {"Host": "x", "Upgrade": "websocket", "Connection": "Upgrade"}
    base |= {"Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
    return f"GET {path} HTTP/1.1\r\n".encode() + head_lines(base | dict(headers or {})) + extra + b"\r\n"


class Response(NamedTuple):
    """An HTTP response as read off a raw socket."""

    status: int
    headers: CIMultiDict[str]
    body: bytes


def parse_response(data: bytes) -> Response:
    """The first response in ``data``; ``ValueError`` if ``data`` does not start with one."""
    return _split(data)[1]


def statuses(data: bytes) -> list[int]:
    """The status of every HTTP/1.x response in ``data``, in order: a pipelined request that
    was answered shows up here, after the first response's body. Frames after a 101 are not read."""
    found: list[int] = []
    while data:
        try:
            version, response, data = _split(data)
        except ValueError:
            break
        if version not in ("1.0", "1.1"):
            break
        found.append(response.status)
        if response.status == 101:
            break  # what follows is frames
    return found


async def read_response(reader: asyncio.StreamReader) -> Response:
    """The next response on a kept-alive raw connection, its body delimited by Content-Length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(parse_response(head).headers.get("Content-Length", "0"))
    return parse_response(head + await asyncio.wait_for(reader.readexactly(length), 10))


def reason_of(data: bytes) -> str | None:
    """The ``X-Sidecar-Reason`` of the first response in ``data``: why the sidecar refused."""
    return parse_response(data).headers.get("X-Sidecar-Reason")


def _split(data: bytes) -> tuple[str, Response, bytes]:
    """(HTTP version, the first response, what follows it)."""
    head, blank, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    matched = re.match(r"HTTP/(\d\.\d) (\d{3}) ", status_line)
    if not blank or matched is None:
        raise ValueError(f"not an HTTP response: {data[:200]!r}")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        name, _, value = line.partition(":")
        headers.add(name, value.strip())
    status = int(matched[2])
    length = _body_length(status, headers, rest)
    return matched[1], Response(status, headers, rest[:length]), rest[length:]


def _body_length(status: int, headers: CIMultiDict[str], rest: bytes) -> int:
    """How many bytes of ``rest`` the body of a response with these headers takes."""
    if status // 100 == 1:
        return 0
    length = re.match(r"\d+", headers.get("Content-Length", ""))
    if length is not None:
        return int(length[0])
    if headers.get("Transfer-Encoding", "").lower().startswith("chunked"):
        at = 0
        while True:
            line, _, _ = rest[at:].partition(b"\r\n")
            size = int(line.split(b";")[0] or b"0", 16)
            at += len(line) + 2 + size + 2
            if size == 0 or at >= len(rest):
                return at
    return len(rest)  # until the connection closed


@contextlib.asynccontextmanager
async def raw_upstream(
    speak: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A backend that ``speak`` plays byte by byte, one call a connection, on 127.0.0.1
    and a free port: its URL, while the block runs."""
    server = await asyncio.start_server(speak, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


# --- raw WebSocket frames (RFC 6455 section 5) ----------------------------------------------


def masked_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False, declared: int | None = None
) -> bytes:
    """A client frame (section 5.2), masked with a fresh key as a client's must be (section
    5.3). ``rsv1`` marks it compressed (RFC 7692 section 6); ``declared`` puts another
    length in its header than the payload's."""
    length = len(payload) if declared is None else declared
    first = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    if length < 126:
        size = bytes([0x80 | length])
    elif length < 1 << 16:
        size = bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        size = bytes([0x80 | 127]) + struct.pack("!Q", length)
    mask = os.urandom(4)
    return first + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Frame(NamedTuple):
    """A server frame as read off the socket."""

    first: int  # its first byte: FIN, RSV1-3 and the opcode
    payload: bytes

    @property
    def opcode(self) -> int:
        return self.first & 0x0F


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """One frame from the server (unmasked, as a server's must be)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return Frame(first, await reader.readexactly(length))


async def close_code(reader: asyncio.StreamReader) -> int:
    """Skip data frames until the close frame; its code."""
    while True:
        frame = await asyncio.wait_for(read_frame(reader), 10)
        if frame.opcode == 0x8:
            return int(struct.unpack("!H", frame.payload[:2])[0])


async def close_code_after(port: int, frames: bytes) -> int:
    """Open a raw session and send ``frames``: the code of the close the sidecar answers with."""
    reader, writer, _ = await open_raw_websocket(port)
    writer.write(frames)
    try:
        return await close_code(reader)
    finally:
        writer.close()


async def open_raw_websocket(
    port: int, request: bytes | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A raw socket past its 101: (reader, writer, the response head). ``request`` is what is
    written first, by default ``handshake("/edge/ws", GOOD)``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(handshake("/edge/ws", GOOD) if request is None else request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer, head


# --- WebSocket sessions (python `websockets`, a strict RFC 6455 client) ---------------------


def ws_connect(
    sidecar: Sidecar, path: str = "/edge/ws", headers: Mapping[str, str] | None = None, **options: Any
) -> connect:
    """A session to ``path`` (awaitable, or an ``async with``), with ``GOOD`` headers unless
    ``headers`` are given; ``options`` go to ``websockets`` ``connect``."""
    return connect(sidecar.url(path), additional_headers=GOOD if headers is None else headers, **options)


async def closed_by_peer(
    ws: ClientConnection,
    *,
    timeout: float = 10,  # noqa: ASYNC109 - a bound on each wait, as for until()
    skip_messages: bool = True,
) -> tuple[int, str]:
    """Wait for the peer's close frame: the code and reason it carried. Messages that come
    first are passed over, unless ``skip_messages=False``: then the close must come next."""
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
            if not skip_messages:
                break
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason or ""


async def echoes(ws: ClientConnection, message: str = "ping?") -> None:
    """The session works: ``message`` comes back from the echo backend."""
    await ws.send(message)
    assert await asyncio.wait_for(ws.recv(), 10) == message


async def rejected(
    sidecar: Sidecar, path: str, headers: Mapping[str, str], **options: Any
) -> tuple[int, Headers, dict[str, Any]]:
    """A handshake the sidecar must refuse: the status, headers and JSON body (``{}`` if
    empty) of its answer. ``options`` go to ``websockets`` ``connect``."""
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(sidecar, path, headers, **options):
            pass
    response = info.value.response
    return response.status_code, response.headers, json.loads(response.body or b"{}")


async def flooded_non_reader(sidecar: Sidecar, backend: Backend) -> ClientConnection:
    """A client that asked the backend for 64 MiB and reads none of it."""
    ws = await ws_connect(sidecar, max_queue=1, max_size=2 * 1024 * 1024, ping_interval=None)
    await ws.send("flood 64 1048576")
    await until(lambda: backend.flood_sent > 0)
    return ws


# --- metrics, as Prometheus scrapes them -------------------------------------------------------


async def scrape(port: int) -> dict[str, float]:
    """One scrape of the metrics listener on a connection of its own, parsed as Prometheus
    parses it: each series as exposed (``name`` or ``name{label="value",...}``) -> value."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return {
        _series(sample.name, sample.labels): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def until_scraped(port: int, series: str, value: float) -> None:
    """Wait until a scrape shows ``series`` at ``value``: for what only a scrape shows."""

    async def shows() -> bool:
        return (await scrape(port))[series] == value

    await until(shows)


def _series(name: str, labels: Mapping[str, str]) -> str:
    """How the text format writes a series (label values escaped as it escapes them)."""
    if not labels:
        return name
    escaped = (v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for v in labels.values())
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, escaped, strict=True)) + "}"


# --- log lines -------------------------------------------------------------------------------


def log_fields(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The fields of each log line of ``event`` captured so far, oldest first."""
    # sidecar.logs.event passes them as extra={"fields": ...}: an attribute of the record
    return [record.__dict__["fields"] for record in caplog.records if record.getMessage() == event]


def formatted(records: list[logging.LogRecord]) -> list[str]:
    """Each record as ``LOG_FORMAT=json`` and as ``text`` write it: where no secret may show."""
    return [formatter.format(record) for record in records for formatter in (JsonFormatter(), TextFormatter())]
