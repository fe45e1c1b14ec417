"""Who may in, for both kinds of route: the rate limit, then the token and agent id.

The decisions are the pure ones of :mod:`sidecar.auth` and :mod:`sidecar.limits`;
this module only feeds them the request's context and the current config, and raises
:exc:`~sidecar.reasons.Refused` when they refuse.
"""

from __future__ import annotations

import logging

from .auth import TOKEN_FAILURES, admit
from .config import Route
from .context import Context
from .limits import client_key, probably_a_proxy
from .logs import event
from .reasons import Reason, Refused, Rejection
from .runtime import Runtime


def authenticate(ctx: Context, rt: Runtime, route: Route) -> str | None:
    """The agent id (``None`` when the route has none), or :exc:`Refused`.

    A client address over its failure budget is refused before its token is even
    compared (so a blocked attacker learns nothing more); a failed token counts. A
    signed token's expiry, when it ends the session, is recorded in ``ctx.expires_at``."""
    if route.auth is None:
        return None
    config = rt.config  # read now: a reload swaps it
    key = client_key(ctx.client)
    wait = rt.failures.retry_after(key, ctx.started)
    if wait is not None:
        raise Refused(Rejection(Reason.RATE_LIMITED, retry_after=wait))
    admission = admit(route.auth, ctx.headers, ctx.query, query_token=route.query_token, keys=rt.keys.sets)
    if admission.refresh is not None:
        rt.keys.wanted(admission.refresh)  # never waited for: see sidecar.jwks
    if admission.reason in TOKEN_FAILURES:
        _warn_if_keyed_on_a_proxy(ctx, rt)
        rt.failures.record_failure(
            key, ctx.started, limit=config.auth_failures, window=config.auth_window, capacity=config.tracked_clients
        )
    if admission.reason is not None:
        raise Refused(admission.rejection(ctx.headers.getall("Authorization", ())))
    ctx.expires_at = admission.expires_at
    return admission.agent_id


def _warn_if_keyed_on_a_proxy(ctx: Context, rt: Runtime) -> None:
    """Once per process: failures counted against what looks like a proxy's address
    (one not in trusted_proxies: none set, or Railway's edge not where it was expected)
    lock out every client behind it together."""
    if rt.warned_proxy or ctx.trusted or not probably_a_proxy(ctx.peer):
        return
    rt.warned_proxy = True
    event(
        logging.WARNING,
        "auth.failures_keyed_on_proxy",
        peer=ctx.peer,
        fix="set listen.trusted_proxies (TRUSTED_PROXIES) to the proxy's network, and "
        "listen.client_ip_header (CLIENT_IP_HEADER) if it names the client in a header such as X-Real-IP",
    )
