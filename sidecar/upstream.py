"""Talking to the backend: URLs, forwarded headers, and the WebSocket handshake.

aiohttp's client errors are translated to :class:`~sidecar.reasons.Rejection` here
and nowhere else (:func:`rejection_for`).
"""

from __future__ import annotations

import asyncio

import aiohttp
from multidict import CIMultiDict, MultiMapping
from yarl import URL

from .config import Route, Upstream
from .handshake import tokens
from .reasons import Reason, Rejection

# RFC 9110 section 7.6.1: hop-by-hop fields, plus the ones the sidecar owns. Any
# field named in Connection is hop-by-hop too (removed in forward_headers).
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "proxy-authorization", "proxy-authenticate", "http2-settings",
    }
)  # fmt: skip
_SIDECAR_OWNED = frozenset({"host", "expect", "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
_WEBSOCKET_OWNED = frozenset(
    {
        "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
        "sec-websocket-protocol", "sec-websocket-accept", "content-length",
    }
)  # fmt: skip

# What aiohttp's client would otherwise add on its own: the backend sees only what
# the client sent (plus the forwarding headers).
SKIP_AUTO_HEADERS = ("Accept-Encoding", "User-Agent", "Content-Type")


def upstream_url(upstream: Upstream, path: str, query_string: str) -> URL:
    """``path`` is already canonical and percent-encoded."""
    return URL(upstream.url + path + ("?" + query_string if query_string else ""), encoded=True)


def forward_headers(
    headers: MultiMapping[str],
    route: Route,
    agent_id: str | None,
    *,
    remote: str | None,
    scheme: str,
    host: str,
) -> CIMultiDict[str]:
    """The request's end-to-end headers, minus what the sidecar owns, plus its own."""
    drop = HOP_BY_HOP | _SIDECAR_OWNED | tokens(headers, "Connection")
    if route.websocket:
        drop |= _WEBSOCKET_OWNED
    if route.auth is not None and not route.forward_authorization:
        drop |= {"authorization"}
    rule = route.auth.agent_id if route.auth is not None else None
    if rule is not None:
        drop |= {h.lower() for h in (rule.header, rule.forward_header) if h}
    out: CIMultiDict[str] = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)
    # Set after the Connection-token filtering: a client cannot strip these.
    if rule is not None and agent_id is not None:
        out[rule.forward_header] = agent_id
    if remote:
        out["X-Forwarded-For"] = remote
    out["X-Forwarded-Proto"] = scheme
    out["X-Forwarded-Host"] = host
    return out


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
) -> aiohttp.ClientWebSocketResponse[bool]:
    """Open the upstream leg. Raises whatever :func:`rejection_for` maps.

    aiohttp checks the 101 and ``Sec-WebSocket-Accept`` (RFC 6455 section 4.1) and
    raises :class:`aiohttp.WSServerHandshakeError` otherwise.
    """
    async with asyncio.timeout(route.upstream.connect_timeout):
        return await client.ws_connect(
            url,
            headers=headers,
            protocols=protocols,
            autoclose=False,
            autoping=True,
            compress=0,
            max_msg_size=route.max_message_size + 1,  # aiohttp refuses sizes >= its limit
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=close_timeout),
            decode_text=False,
        )
