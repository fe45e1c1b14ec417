"""Accounting for a plain HTTP request once it is answered: the request counter and the
duration histogram by route and status class, and the ``http.request`` line (at debug
level, its fields built only when that level is on)."""

from __future__ import annotations

import logging

from .context import Context
from .logs import event, logger
from .metrics import NO_ROUTE
from .runtime import Runtime


def record(ctx: Context, rt: Runtime, status: int, now: float) -> None:
    """A plain request answered (at ``now``, the loop's clock): timed and counted by route
    and status class."""
    elapsed = now - ctx.started
    label = ctx.route_name or NO_ROUTE
    rt.metrics.http.observe(label, status, elapsed)
    if logger.isEnabledFor(logging.DEBUG):
        event(
            logging.DEBUG,
            "http.request",
            route=label,
            method=ctx.method,
            status=status,
            duration_s=round(elapsed, 4),
            client=ctx.client,
            request_id=ctx.request_id,
        )
