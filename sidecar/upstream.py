"""Talking to the backend: URLs and the WebSocket handshake (the headers it is sent
are :mod:`sidecar.forwarding`'s).

aiohttp's client errors are translated to :class:`~sidecar.reasons.Rejection` here
and nowhere else (:func:`rejection_for`).
"""

from __future__ import annotations

import asyncio
import logging
import random

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .config import Route, Upstream
from .logs import event
from .reasons import Reason, Rejection

# What aiohttp's client would otherwise add on its own: the backend sees only what
# the client sent (plus the forwarding headers).
SKIP_AUTO_HEADERS = ("Accept-Encoding", "User-Agent", "Content-Type")


def upstream_url(upstream: Upstream, path: str, query_string: str) -> URL:
    """``path`` is already canonical and percent-encoded."""
    return URL(upstream.url + path + ("?" + query_string if query_string else ""), encoded=True)


def rejection_for(exc: BaseException, agent_id: str | None) -> Rejection | None:
    """Map an exception from talking to the backend to the reason a client is given
    (``None``: not a backend failure, let it propagate)."""
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        if exc.status == 101:
            detail = "the backend answered 101 without a valid WebSocket handshake (Sec-WebSocket-Accept)"
            return Rejection(Reason.UPSTREAM_REJECTED, detail, upstream_status=101, agent_id=agent_id)
        return Rejection(Reason.UPSTREAM_REJECTED, upstream_status=exc.status, agent_id=agent_id)
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return Rejection(Reason.UPSTREAM_TIMEOUT, agent_id=agent_id)
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return Rejection(Reason.UPSTREAM_UNAVAILABLE, type(exc).__name__, agent_id=agent_id)
    return None


async def connect_websocket(
    client: aiohttp.ClientSession,
    route: Route,
    url: URL,
    headers: CIMultiDict[str],
    protocols: list[str],
    *,
    close_timeout: float,
    agent_id: str | None = None,
) -> aiohttp.ClientWebSocketResponse[bool]:
    """Open the upstream leg within the upstream's ``connect_timeout``, retries
    included (the route's ``retry``). Raises whatever :func:`rejection_for` maps:
    after the last try, the last failure.

    aiohttp checks the 101 and ``Sec-WebSocket-Accept`` (RFC 6455 section 4.1) and
    raises :class:`aiohttp.WSServerHandshakeError` otherwise.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + route.upstream.connect_timeout
    attempts = route.retry.attempts if route.retry is not None else 1
    async with asyncio.timeout_at(deadline):
        for attempt in range(1, attempts + 1):
            try:
                return await client.ws_connect(
                    url,
                    headers=headers,
                    protocols=protocols,
                    autoclose=False,
                    autoping=False,  # pings and pongs are relayed end to end
                    compress=15 if route.compression else 0,  # permessage-deflate offered only where enabled
                    max_msg_size=route.max_message_size + 1,  # aiohttp refuses sizes >= its limit
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=close_timeout),
                    decode_text=False,
                )
            except Exception as exc:
                why = _worth_retrying(exc)
                if why is None or attempt == attempts or route.retry is None:
                    raise
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
    raise AssertionError("unreachable: the last attempt returns or raises")


# A backend behind a platform proxy that is starting or restarting: the proxy says so.
_RETRY_STATUSES = frozenset({502, 503, 504})


def _worth_retrying(exc: BaseException) -> str | None:
    """Why a failed handshake may succeed if tried again soon (for the log line), or
    ``None``: a refusal, a timeout (the deadline covers retries too) or a mistake
    that will not fix itself (a name that does not resolve, a bad certificate)."""
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"status {exc.status}" if exc.status in _RETRY_STATUSES else None
    if isinstance(exc, (aiohttp.ClientConnectorDNSError, aiohttp.ClientSSLError)):
        return None
    if isinstance(exc, (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
        return type(exc).__name__  # refused, reset, unreachable: nothing listening yet
    return None
