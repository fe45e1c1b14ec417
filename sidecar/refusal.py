"""The refusal boundary: where a :exc:`~sidecar.reasons.Refused` becomes the response,
the log line and the counter.

The one place a refusal is turned into output, so the five spellings of a reason
(status, header, body, log, metric) cannot drift apart. What the response says is
decided by the pure :func:`sidecar.render.refusal_answer`; this module only writes it.
"""

from __future__ import annotations

import logging

from aiohttp import web
from multidict import CIMultiDict

from .context import Context
from .logs import event
from .metrics import NO_ROUTE
from .reasons import Rejection
from .render import Answer, refusal_answer
from .runtime import Runtime


def response(answer: Answer) -> web.Response:
    """An :class:`Answer` as aiohttp's response."""
    out = web.Response(status=answer.status, body=answer.body, headers=CIMultiDict(answer.headers))
    if answer.close:
        out.force_close()
    return out


def refuse(ctx: Context, rt: Runtime, rejection: Rejection) -> web.Response:
    """Answer, count and log one refusal."""
    reason = rejection.reason
    route = ctx.route_name
    label = route or NO_ROUTE
    counter = rt.metrics.ws_rejections if ctx.websocket else rt.metrics.http_rejections
    counter.labels(label, reason.value).inc()
    event(
        logging.WARNING,
        "ws.rejected" if ctx.websocket else "http.rejected",
        reason=reason.value,
        status=reason.status,
        route=label,
        method=ctx.method,
        path=ctx.decoded_path[:256],
        agent_id=rejection.agent_id,
        client=ctx.client,
        detail=rejection.detail,
        why=rejection.log_detail,  # for the operator only: never in the response
        upstream_status=rejection.upstream_status,
        request_id=ctx.request_id,
    )
    return response(refusal_answer(rejection, route, rt.router.websocket_paths, websocket=ctx.websocket))
