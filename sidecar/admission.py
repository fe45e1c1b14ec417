"""Who may in, for both kinds of route: the rate limit, then the token and agent id.

The decisions are the pure ones of :mod:`sidecar.auth` and :mod:`sidecar.limits`;
this module only feeds them the request, the clock and the current config.
"""

from __future__ import annotations

import asyncio

from aiohttp.web_request import BaseRequest

from .auth import TOKEN_FAILURES, Admission, admit
from .config import Route
from .limits import client_key
from .reasons import Reason, Rejection
from .runtime import Runtime


def authenticate(request: BaseRequest, rt: Runtime, route: Route) -> Admission | Rejection:
    """A client address over its failure budget is refused before its token is even
    compared (so a blocked attacker learns nothing more); a failed token counts."""
    if route.auth is None:
        return Admission(None)
    config = rt.config  # read now: a reload swaps it
    key = client_key(rt.client_of(request))
    now = asyncio.get_running_loop().time()
    wait = rt.failures.retry_after(key, now)
    if wait is not None:
        return Rejection(Reason.RATE_LIMITED, retry_after=wait)
    admission = admit(route.auth, request.headers, request.query, query_token=route.query_token)
    if admission.reason in TOKEN_FAILURES:
        rt.failures.record_failure(
            key, now, limit=config.auth_failures, window=config.auth_window, capacity=config.tracked_clients
        )
    if admission.reason is not None:
        return Rejection(admission.reason, detail=admission.detail, agent_id=admission.agent_id)
    return admission
