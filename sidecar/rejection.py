"""A :class:`~sidecar.reasons.Rejection` -> the response, the log line and the counter.

The one place a refusal is turned into output, so the five spellings of a reason
(status, header, body, log, metric) cannot drift apart.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.web_request import BaseRequest

from .auth import www_authenticate
from .config import Route
from .logs import event
from .metrics import NO_ROUTE
from .reasons import Reason, Rejection
from .runtime import Runtime


def reject(
    request: BaseRequest,
    rt: Runtime,
    rejection: Rejection,
    route: Route | None,
    *,
    websocket: bool,
    suggestion: str | None = None,
) -> web.Response:
    reason = rejection.reason
    route_label = route.name if route is not None else NO_ROUTE
    body: dict[str, object] = {
        "error": reason.value,
        "message": reason.message,
        "route": route.name if route is not None else None,
    }
    if rejection.detail:
        body["detail"] = rejection.detail
    if suggestion:
        body["did_you_mean"] = suggestion
    if reason is Reason.NO_ROUTE:
        body["websocket_paths"] = list(rt.router.websocket_paths)
    headers = {"X-Sidecar-Reason": reason.value, "Server": "sidecar"}
    if rejection.upstream_status is not None:
        body["upstream_status"] = rejection.upstream_status
        headers["X-Sidecar-Upstream-Status"] = str(rejection.upstream_status)
    if rejection.retry_after is not None:
        headers["Retry-After"] = str(rejection.retry_after)
    if reason.status == 401:
        headers["WWW-Authenticate"] = www_authenticate(reason, request.headers.getall("Authorization", ()))
    if reason is Reason.NOT_WEBSOCKET:
        headers["Upgrade"] = "websocket"  # RFC 9110 section 15.5.22
        headers["Connection"] = "Upgrade"
    if reason is Reason.BAD_HANDSHAKE:
        headers["Sec-WebSocket-Version"] = "13"  # RFC 6455 section 4.4
    response = web.Response(
        status=reason.status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )
    if websocket:
        # A refused upgrade ends the connection: nothing the client sends next may
        # be read as a new request.
        response.force_close()
        rt.metrics.ws_rejections.labels(route_label, reason.value).inc()
    else:
        rt.metrics.http_rejections.labels(route_label, reason.value).inc()
    event(
        logging.WARNING,
        "ws.rejected" if websocket else "http.rejected",
        reason=reason.value,
        status=reason.status,
        route=route_label,
        method=request.method,
        path=request.path[:256],
        agent_id=rejection.agent_id,
        client=rt.client_of(request),
        detail=rejection.detail,
        upstream_status=rejection.upstream_status,
    )
    return response
