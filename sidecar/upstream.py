"""Talking to the backend: the failures, mapped to reasons in one place
(:func:`rejection_for`), and the WebSocket upgrade, written by hand on a connection of its
own (:func:`open_websocket`).

The upgrade request carries a fresh ``Sec-WebSocket-Key`` (each leg has its own handshake,
RFC 6455 section 4.1; the client's key never leaves the sidecar), the subprotocols the
client offered, and permessage-deflate only where the route enables it, as the client
offered it (RFC 7692): frames are relayed as they are, so both legs must agree on it. The
101 is accepted only with ``Upgrade: websocket``, ``Connection: upgrade`` and the
``Sec-WebSocket-Accept`` of that key; anything else is the backend refusing.

Failures are named as aiohttp's client named them (``ClientConnectorError`` for a refused
connection ...): the names are in refusal details, log lines and operators' alerts.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import logging
import os
import random
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import httptools

from .config import Route
from .handshake import deflate_answer_problem
from .logs import event
from .pool import Target
from .reasons import Reason, Rejection
from .transport import Transport, socket_transport

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
# A backend behind a platform proxy that is starting or restarting: the proxy says so.
_RETRY_STATUSES = frozenset({502, 503, 504})
MAX_RESPONSE_HEAD = 64 * 1024


class UpstreamError(Exception):
    """Talking to the backend failed; ``name`` is what a refusal's detail calls it."""

    def __init__(self, name: str, *, retry: bool = False) -> None:
        super().__init__(name)
        self.name = name
        self.retry = retry  # it may work if tried again soon


class HandshakeRefused(UpstreamError):
    """The backend answered the upgrade with ``status``, or with a 101 that is not a valid
    WebSocket handshake (``valid`` False; ``why``, in words that quote nothing it sent)."""

    def __init__(self, status: int, *, valid: bool = True, why: str = "without a valid WebSocket handshake") -> None:
        super().__init__("WSServerHandshakeError", retry=status in _RETRY_STATUSES)
        self.status = status
        self.valid = valid
        self.why = why


def accept_for(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for ``key`` (RFC 6455 section 4.2.2)."""
    return binascii.b2a_base64(hashlib.sha1(key + _GUID).digest(), newline=False)  # base64.b64encode's own call


def failure(exc: BaseException) -> UpstreamError | None:
    """``exc`` from connecting or talking to the backend as an :class:`UpstreamError`
    (``None``: not a backend failure)."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, socket.gaierror):
        return UpstreamError("ClientConnectorDNSError")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return UpstreamError("ClientConnectorCertificateError")
    if isinstance(exc, ssl.SSLError):
        return UpstreamError("ClientSSLError")
    if isinstance(exc, OSError):  # refused, reset, unreachable: nothing listening yet
        return UpstreamError("ClientConnectorError", retry=True)
    return None


def rejection_for(exc: BaseException, agent_id: str | None) -> Rejection | None:
    """Map an exception from talking to the backend to the reason a client is given
    (``None``: not a backend failure, let it propagate)."""
    if isinstance(exc, HandshakeRefused):
        if not exc.valid:
            detail = f"the backend answered 101 {exc.why}"
            return Rejection(Reason.UPSTREAM_REJECTED, detail, upstream_status=101, agent_id=agent_id)
        return Rejection(Reason.UPSTREAM_REJECTED, upstream_status=exc.status, agent_id=agent_id)
    if isinstance(exc, TimeoutError):
        return Rejection(Reason.UPSTREAM_TIMEOUT, agent_id=agent_id)
    known = failure(exc)
    if known is not None:
        return Rejection(Reason.UPSTREAM_UNAVAILABLE, known.name, agent_id=agent_id)
    return None


@dataclass(frozen=True)
class Upgraded:
    """An upstream leg past its 101: the transport (its protocol to be replaced by the
    relay's), what the backend sent after the 101, and what it chose."""

    transport: Transport
    pending: bytes
    protocol: str | None  # the subprotocol
    extensions: str | None  # the Sec-WebSocket-Extensions it answered, as it wrote it
    paused: bool = False  # its write buffer is past its high-water mark (the relay starts held back)


class _Handshake(asyncio.Protocol):
    """Reads the backend's answer to the upgrade request, nothing more."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: Transport | None = None
        self.done: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] = loop.create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._fields: list[tuple[bytes, bytes]] = []
        self._read = 0
        self.writing_paused = False

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = socket_transport(transport)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self._read += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as switched:
            self._finish(data[switched.args[0] :])
            return
        except httptools.HttpParserError:
            if self._parser.get_status_code() == 101:  # a 101 without Upgrade: judged, and refused, below
                self._finish(b"")
            elif not self.done.done():
                self.done.set_exception(UpstreamError("ClientResponseError"))
            return
        if self._read > MAX_RESPONSE_HEAD and not self.done.done():
            self.done.set_exception(UpstreamError("ClientResponseError"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        if self._parser.get_status_code() != 101:
            self._finish(b"")  # a refusal: its body is of no interest

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() != 101:  # a 101's own end: where its tail starts comes next
            self._finish(b"")

    def _finish(self, pending: bytes) -> None:
        if self.transport is not None:
            self.transport.pause_reading()  # what follows is the relay's: it resumes reading
        if not self.done.done():
            self.done.set_result((self._parser.get_status_code(), self._fields, pending))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(UpstreamError("ServerDisconnectedError", retry=True))


async def _upgrade_once(
    loop: asyncio.AbstractEventLoop,
    target: Target,
    tls: ssl.SSLContext | None,
    request: bytes,
    key: bytes,
    offered: Sequence[str],
    deflate: str | None,
) -> Upgraded:
    transport, handshake = await loop.create_connection(
        partial(_Handshake, loop), target.host, target.port, ssl=tls, server_hostname=target.host if tls else None
    )
    try:
        assert handshake.transport is not None  # connection_made
        handshake.transport.write(request)
        status, fields, pending = await handshake.done
        if status != 101:
            raise HandshakeRefused(status)
        values: dict[bytes, list[bytes]] = {}
        for name, value in fields:
            values.setdefault(name.lower(), []).append(value.strip())
        upgrade = b",".join(values.get(b"upgrade", [])).lower()
        connection = {t.strip() for t in b",".join(values.get(b"connection", [])).lower().split(b",")}
        if (
            upgrade != b"websocket"
            or b"upgrade" not in connection
            or values.get(b"sec-websocket-accept") != [accept_for(key)]
        ):
            raise HandshakeRefused(101, valid=False, why="without a valid WebSocket handshake (Sec-WebSocket-Accept)")
        chosen = b",".join(values.get(b"sec-websocket-protocol", [])).decode("latin-1").strip()
        extensions = b", ".join(values.get(b"sec-websocket-extensions", [])).decode("latin-1") or None
        # RFC 6455 section 4.1: a client fails the connection on a subprotocol or an extension it
        # did not offer. The client's 101 would name it, and its client fail; or the frames differ.
        if chosen and chosen not in offered:
            raise HandshakeRefused(101, valid=False, why="naming a subprotocol the client did not offer")
        if extensions and not _names(extensions) <= _names(deflate or ""):
            raise HandshakeRefused(101, valid=False, why="naming an extension the client did not offer")
        problem = deflate_answer_problem(deflate or "", extensions) if extensions else None
        if problem is not None:
            raise HandshakeRefused(101, valid=False, why=f"naming {problem}")
        return Upgraded(handshake.transport, pending, chosen or None, extensions, handshake.writing_paused)
    except BaseException:
        transport.abort()
        raise


def _names(extensions: str) -> set[str]:
    """The extension names in a ``Sec-WebSocket-Extensions`` value (RFC 6455 section 9.1)."""
    return {name for extension in extensions.split(",") if (name := extension.split(";")[0].strip().lower())}


def upgrade_request(
    target: Target, path: str, fields: bytes, protocols: Sequence[str], deflate: str | None
) -> tuple[bytes, bytes]:
    """The upgrade request (RFC 6455 section 4.1) and its key. ``fields``: the forwarded
    fields, already written out; ``deflate``: the client's permessage-deflate offer, passed
    on as it was written, or ``None``."""
    key = binascii.b2a_base64(os.urandom(16), newline=False)
    out = [
        b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        % (
            (target.base + path).encode("utf-8", "surrogateescape"),
            target.host_field,
        ),
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n" % key,
    ]
    if protocols:
        out.append(b"Sec-WebSocket-Protocol: %s\r\n" % ", ".join(protocols).encode("latin-1"))
    if deflate:
        out.append(b"Sec-WebSocket-Extensions: %s\r\n" % deflate.encode("latin-1"))
    out.append(fields)
    out.append(b"\r\n")
    return b"".join(out), key


async def open_websocket(
    route: Route,
    target: Target,
    tls: ssl.SSLContext | None,
    path: str,
    fields: bytes,
    protocols: Sequence[str],
    deflate: str | None,
    *,
    agent_id: str | None = None,
) -> Upgraded:
    """Open the upstream leg within the upstream's ``connect_timeout``, retries included
    (the route's ``retry``). Raises what :func:`rejection_for` maps: after the last try,
    the last failure. A retry the deadline cuts short (one started just in time on a
    loaded machine) reports the failure before it: the backend's answer, not the
    sidecar's own budget running out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + route.upstream.connect_timeout
    attempts = route.retry.attempts if route.retry is not None else 1
    last: Exception | None = None
    # The deadline cancels this task where it waits (asyncio.timeout_at's way, without its
    # context manager's calls): a cancellation of its own becomes the timeout.
    task = asyncio.current_task(loop)
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = loop.call_at(deadline, expire)
    try:
        for attempt in range(1, attempts + 1):
            request, key = upgrade_request(target, path, fields, protocols, deflate)
            try:
                return await _upgrade_once(loop, target, tls, request, key, protocols, deflate)
            except Exception as exc:
                why = _worth_retrying(exc)
                if why is None or attempt == attempts or route.retry is None:
                    raise
                last = exc
                # Exponential backoff, jittered so that agents reconnecting together
                # after a backend restart do not retry in lockstep.
                delay = route.retry.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
                if loop.time() + delay >= deadline:
                    raise  # the next try could not start in time: report this failure
                event(
                    logging.INFO,
                    "ws.upstream_retry",
                    route=route.name,
                    agent_id=agent_id,
                    attempt=attempt,
                    attempts=attempts,
                    error=why,
                    retry_in_s=round(delay, 3),
                )
                await asyncio.sleep(delay)
    except asyncio.CancelledError:
        if not expired or task.uncancel() > 0:
            raise  # cancelled from outside (too)
        if last is None:
            raise TimeoutError from None  # the first try hung: the backend did not answer in time
        raise last from None
    except TimeoutError:
        if last is None:
            raise
        raise last from None
    finally:
        timer.cancel()
    raise AssertionError("unreachable: the last attempt returns or raises")


def _worth_retrying(exc: BaseException) -> str | None:
    """Why a failed handshake may succeed if tried again soon (for the log line), or
    ``None``: a refusal, a timeout (the deadline covers retries too) or a mistake that
    will not fix itself (a name that does not resolve, a bad certificate)."""
    known = failure(exc)
    if known is None or not known.retry:
        return None
    return f"status {known.status}" if isinstance(known, HandshakeRefused) else known.name
