"""What the backend is sent, and what the client gets back: headers and query. Pure: no
I/O, no aiohttp.

Hop-by-hop fields are dropped both ways (RFC 9110 section 7.6.1), so are the fields the
sidecar owns and the ones it vouches for (the agent id headers), in every spelling a
CGI-style backend would read as the same name; then the sidecar adds its own.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from multidict import CIMultiDict, MultiMapping

from .auth import without_query_token
from .config import Route
from .headers import FORWARDED_PREFIX, HOP_BY_HOP, SIDECAR_OWNED, WEBSOCKET_OWNED, tokens


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
    query_token: Sequence[str] = (),
    request_id: str | None = None,
) -> CIMultiDict[str]:
    """The request's end-to-end headers, minus what the sidecar owns, plus its own.

    ``identity`` names the headers the sidecar vouches for (the agent id headers of
    every auth policy): a client's copy never passes, on any route, catch-all included.
    ``X-Forwarded-For/-Proto/-Host`` are the sidecar's own view of the connection,
    unless ``trusted`` (the peer is a configured proxy): then the proxy's are kept
    and the peer appended to ``X-Forwarded-For``. ``query_token``: the tokens the
    request carried in its query (RFC 6750 section 2.3), passed on as ``Authorization``
    where the route forwards it, never in the URL. ``request_id``: sent as the one
    ``X-Request-Id`` (a client's own is dropped, in any spelling), so the backend logs
    the id the sidecar does.
    """
    drop = _dropped(route.websocket, route.auth is not None and not route.forward_authorization, identity)
    named = tokens(headers, "Connection")  # RFC 9110 section 7.6.1: these are hop-by-hop too
    if named:
        drop = drop | {_dashed(name) for name in named}
    if request_id is not None:
        drop = drop | {"x-request-id"}
    out: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in headers.items() if (d := _dashed(k)) not in drop and not d.startswith(FORWARDED_PREFIX)
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
    if request_id is not None:
        out["X-Request-Id"] = request_id
    if route.forward_authorization and query_token and "Authorization" not in headers:
        out["Authorization"] = f"Bearer {query_token[0]}"
    return out


@functools.lru_cache(maxsize=64)
def _dropped(websocket: bool, strip_authorization: bool, identity: frozenset[str]) -> frozenset[str]:
    """The fields never forwarded on such a route (built once, not per request)."""
    drop = HOP_BY_HOP | SIDECAR_OWNED | identity
    if websocket:
        drop |= WEBSOCKET_OWNED
    if strip_authorization:
        drop |= {"authorization"}
    return frozenset(_dashed(name) for name in drop)


def _dashed(name: str) -> str:
    """A header name as CGI-style backends (WSGI, PHP, Rack) read it: '_' and '-' are
    the same there (both X_Edge_Agent_Id and X-Edge-Agent-Id become HTTP_X_EDGE_AGENT_ID),
    so a client's underscore spelling must not pass for a header the sidecar owns."""
    return name.lower().replace("_", "-")


def upstream_query(raw_query: str, route: Route) -> str:
    """The query string the backend is sent: the client's, byte for byte, minus the
    token on a route that takes one there (it is never passed on in a URL)."""
    return without_query_token(raw_query) if route.query_token and route.auth is not None else raw_query


def response_headers(headers: MultiMapping[str]) -> CIMultiDict[str]:
    """A backend's response headers as the client gets them: end-to-end ones only."""
    drop = HOP_BY_HOP | tokens(headers, "Connection")
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)
