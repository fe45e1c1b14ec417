"""Talking to the backend: URLs, forwarded headers, and the WebSocket handshake.

aiohttp's client errors are translated to :class:`~sidecar.reasons.Rejection` here
and nowhere else (:func:`rejection_for`).
"""

from __future__ import annotations

import asyncio
import logging
import random

import aiohttp
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict, MultiMapping
from yarl import URL

from .auth import QUERY_TOKEN, without_query_token
from .config import Route, Upstream
from .headers import FORWARDED_PREFIX, HOP_BY_HOP, SIDECAR_OWNED, WEBSOCKET_OWNED, tokens
from .logs import event
from .reasons import Reason, Rejection
from .runtime import Runtime

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
    identity: frozenset[str],
    remote: str | None,
    scheme: str,
    host: str,
    trusted: bool = False,
) -> CIMultiDict[str]:
    """The request's end-to-end headers, minus what the sidecar owns, plus its own.

    ``identity`` names the headers the sidecar vouches for (the agent id headers of
    every auth policy): a client's copy never passes, on any route, catch-all included.
    ``X-Forwarded-For/-Proto/-Host`` are the sidecar's own view of the connection,
    unless ``trusted`` (the peer is a configured proxy): then the proxy's are kept
    and the peer appended to ``X-Forwarded-For``.
    """
    drop = HOP_BY_HOP | SIDECAR_OWNED | identity | tokens(headers, "Connection")
    if route.websocket:
        drop |= WEBSOCKET_OWNED
    if route.auth is not None and not route.forward_authorization:
        drop |= {"authorization"}
    drop = frozenset(_dashed(name) for name in drop)
    out: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in headers.items() if _dashed(k) not in drop and not _dashed(k).startswith(FORWARDED_PREFIX)
    )
    rule = route.auth.agent_id if route.auth is not None else None
    # Set after the Connection-token filtering: a client cannot strip these.
    if rule is not None and agent_id is not None:
        out[rule.forward_header] = agent_id
    if trusted:
        # A proxy we trust (Railway's edge) saw the client first: keep its view, add ours.
        chain = ", ".join(headers.getall("X-Forwarded-For", ()))
        remote = f"{chain}, {remote}" if chain and remote else chain or remote
        scheme = headers.get("X-Forwarded-Proto", scheme)
        host = headers.get("X-Forwarded-Host", host)
    if remote:
        out["X-Forwarded-For"] = remote
    out["X-Forwarded-Proto"] = scheme
    out["X-Forwarded-Host"] = host
    return out


def _dashed(name: str) -> str:
    """A header name as CGI-style backends (WSGI, PHP, Rack) read it: '_' and '-' are
    the same there (both X_Edge_Agent_Id and X-Edge-Agent-Id become HTTP_X_EDGE_AGENT_ID),
    so a client's underscore spelling must not pass for a header the sidecar owns."""
    return name.lower().replace("_", "-")


def upstream_query(request: BaseRequest, route: Route) -> str:
    """The query string the backend is sent: the client's, byte for byte, minus the
    token on a route that takes one there (it is never passed on in a URL)."""
    raw = request.rel_url.raw_query_string
    return without_query_token(raw) if route.query_token and route.auth is not None else raw


def request_headers(request: BaseRequest, rt: Runtime, route: Route, agent_id: str | None) -> CIMultiDict[str]:
    """:func:`forward_headers` for ``request`` as this sidecar received it. A token
    that came in the query goes on as ``Authorization`` where the route forwards it."""
    headers = forward_headers(
        request.headers,
        route,
        agent_id,
        identity=rt.identity_headers,
        remote=request.remote,
        scheme=request.scheme,
        host=request.host,
        trusted=rt.via_trusted_proxy(request.remote),
    )
    token = request.query.getall(QUERY_TOKEN, ()) if route.query_token else ()
    if route.forward_authorization and token and "Authorization" not in request.headers:
        headers["Authorization"] = f"Bearer {token[0]}"
    return headers


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
