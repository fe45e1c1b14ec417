"""Who may in, for both kinds of route: the rate limit, then the token and agent id.

The decisions are the pure ones of :mod:`sidecar.auth` and :mod:`sidecar.limits`;
this module only feeds them the request, the clock and the current config.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp.web_request import BaseRequest

from .auth import TOKEN_FAILURES, Admission, admit
from .config import Route
from .limits import client_key, probably_a_proxy
from .logs import event
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
        _warn_if_keyed_on_a_proxy(request, rt)
        rt.failures.record_failure(
            key, now, limit=config.auth_failures, window=config.auth_window, capacity=config.tracked_clients
        )
    if admission.reason is not None:
        return Rejection(admission.reason, detail=admission.detail, agent_id=admission.agent_id)
    return admission


def _warn_if_keyed_on_a_proxy(request: BaseRequest, rt: Runtime) -> None:
    """Once per process: failures counted against what looks like a proxy's address
    (no trusted_proxies set) lock out every client behind it together."""
    if rt.warned_proxy or rt.config.trusted_proxies or not probably_a_proxy(request.remote):
        return
    rt.warned_proxy = True
    event(
        logging.WARNING,
        "auth.failures_keyed_on_proxy",
        peer=request.remote,
        fix="set listen.trusted_proxies (TRUSTED_PROXIES) to the proxy's network, and "
        "listen.client_ip_header (CLIENT_IP_HEADER) if it names the client in a header such as X-Real-IP",
    )
