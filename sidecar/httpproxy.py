"""Plain HTTP routes: a streaming reverse proxy.

Bodies stream both ways in chunks as they arrive (never buffered whole), redirects
are passed back rather than followed, encodings are left alone, hop-by-hop headers
are dropped (RFC 9110 section 7.6.1) and repeated ones such as Set-Cookie kept.
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from .admission import authenticate
from .auth import QUERY_TOKEN
from .config import Route
from .context import Context
from .forwarding import forward_headers, response_headers, upstream_query
from .logs import event
from .reasons import Reason, Refused, Rejection
from .runtime import Runtime
from .upstream import SKIP_AUTO_HEADERS, rejection_for, upstream_url


async def proxy_http(request: web.Request, ctx: Context, rt: Runtime, route: Route) -> web.StreamResponse:
    """The backend's answer, streamed; :exc:`Refused` when the request is not admitted
    or the backend cannot give one."""
    agent_id = authenticate(ctx, rt, route)  # the rate limit, then the token and agent id
    assert ctx.path is not None
    target = route.upstream_path if (route.upstream_path and route.paths) else ctx.path.wire
    url = upstream_url(route.upstream, target, upstream_query(ctx.query_string, route))
    headers = forward_headers(
        ctx.headers,
        route,
        agent_id,
        identity=rt.identity_headers,
        remote=ctx.peer,
        scheme=request.scheme,
        host=request.host,
        trusted=ctx.trusted,
        query_token=ctx.query.getall(QUERY_TOKEN, ()) if route.query_token else (),
        request_id=ctx.request_id,
    )
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
        failure = rejection_for(exc, agent_id)
        if failure is None:
            raise
        raise Refused(failure) from None

    if upstream.status == 101:
        # RFC 9110 section 15.2.2: a server may switch only to a protocol the request's
        # Upgrade named, and a plain route never forwards Upgrade. A 101 here is a broken
        # or hostile backend: its connection no longer speaks HTTP, so it must not go
        # back to the pool (the next request, maybe another client's, would be written
        # into whatever it switched to), and the client must not be told it switched.
        upstream.close()
        detail = "the backend switched protocols on a plain HTTP request"
        raise Refused(Rejection(Reason.UPSTREAM_REJECTED, detail, upstream_status=101, agent_id=agent_id))
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    response.headers.extend(response_headers(upstream.headers))
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        # The client went away mid-response: nothing to answer, nothing to log loudly.
        upstream.close()  # what is unread must not go back to the pool
        event(logging.DEBUG, "http.client_gone", route=route.name, client=ctx.client)
    except aiohttp.ClientError as exc:
        # The backend broke off mid-body. The status line is gone already, so the
        # client learns it from a truncated body: the connection is closed.
        event(logging.WARNING, "http.upstream_broke", route=route.name, error=type(exc).__name__)
        if request.transport is not None:
            request.transport.close()
    finally:
        upstream.release()  # back to the pool when read to the end; closed otherwise
    return response
