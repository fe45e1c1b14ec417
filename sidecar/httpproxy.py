"""Plain HTTP routes: a streaming reverse proxy.

Bodies stream both ways in chunks as they arrive (never buffered whole), redirects
are passed back rather than followed, encodings are left alone, hop-by-hop headers
are dropped (RFC 9110 section 7.6.1) and repeated ones such as Set-Cookie kept.
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from .admission import authenticate
from .config import Route
from .headers import HOP_BY_HOP, tokens
from .logs import event
from .reasons import Reason, Rejection
from .rejection import reject
from .routing import CanonicalPath
from .runtime import Runtime
from .upstream import SKIP_AUTO_HEADERS, rejection_for, request_headers, upstream_query, upstream_url


async def proxy_http(request: web.Request, rt: Runtime, route: Route, path: CanonicalPath) -> web.StreamResponse:
    admission = authenticate(request, rt, route)  # the rate limit, then the token and agent id
    if isinstance(admission, Rejection):
        return reject(request, rt, admission, route, websocket=False)

    target = route.upstream_path if (route.upstream_path and route.paths) else path.wire
    url = upstream_url(route.upstream, target, upstream_query(request, route))
    headers = request_headers(request, rt, route, admission.agent_id)
    timeout = aiohttp.ClientTimeout(
        total=None, connect=route.upstream.connect_timeout, sock_read=route.upstream.read_timeout
    )
    try:
        upstream = await rt.http().request(
            request.method,
            url,
            headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False,
            auto_decompress=False,
            skip_auto_headers=SKIP_AUTO_HEADERS,
            timeout=timeout,
        )
    except Exception as exc:
        failure = rejection_for(exc, admission.agent_id)
        if failure is None:
            raise
        return reject(request, rt, failure, route, websocket=False)

    if upstream.status == 101:
        # RFC 9110 section 15.2.2: a server may switch only to a protocol the request's
        # Upgrade named, and a plain route never forwards Upgrade. A 101 here is a broken
        # or hostile backend: its connection no longer speaks HTTP, so it must not go
        # back to the pool (the next request, maybe another client's, would be written
        # into whatever it switched to), and the client must not be told it switched.
        upstream.close()
        detail = "the backend switched protocols on a plain HTTP request"
        rejection = Rejection(Reason.UPSTREAM_REJECTED, detail, upstream_status=101, agent_id=admission.agent_id)
        return reject(request, rt, rejection, route, websocket=False)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    response.headers.extend(_response_headers(upstream.headers))
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        # The client went away mid-response: nothing to answer, nothing to log loudly.
        upstream.close()  # what is unread must not go back to the pool
        event(logging.DEBUG, "http.client_gone", route=route.name, client=rt.client_of(request))
    except aiohttp.ClientError as exc:
        # The backend broke off mid-body. The status line is gone already, so the
        # client learns it from a truncated body: the connection is closed.
        event(logging.WARNING, "http.upstream_broke", route=route.name, error=type(exc).__name__)
        if request.transport is not None:
            request.transport.close()
    finally:
        upstream.release()  # back to the pool when read to the end; closed otherwise
    return response


def _response_headers(headers: MultiMapping[str]) -> CIMultiDict[str]:
    drop = HOP_BY_HOP | tokens(headers, "Connection")
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)
