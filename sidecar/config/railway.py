"""Running on Railway: how the sidecar knows, and the defaults and checks that follow.

Pure: reads an environment mapping, no I/O. Railway sets its service variables
(``RAILWAY_ENVIRONMENT_ID``, ``RAILWAY_SERVICE_ID``, ...) in every build and deployment,
and in ``railway run``; where one is set (``environment.railway_marker``), and the file
does not say otherwise:

- ``listen.trusted_proxies`` is Railway's edge, which connects from the shared address
  space of RFC 6598 (``model.RAILWAY_EDGE``), so its view of the client is kept;
- ``listen.client_ip_header`` is ``X-Real-IP``, where the edge names the client.

Without them every agent would share the edge's address, and with it one failed-auth
budget: ten wrong tokens from anyone and every agent gets 429. ``none`` in either key
(``TRUSTED_PROXIES=none``) says "no proxy" explicitly, and wins like any other value.

``RAILWAY_DEPLOYMENT_DRAINING_SECONDS``, where set, is how long Railway waits after
SIGTERM before it kills the old deployment; a drain that cannot finish in it is a warning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from . import model
from .environment import railway_marker
from .model import IPNetwork

DRAINING_SECONDS = "RAILWAY_DEPLOYMENT_DRAINING_SECONDS"
NONE = "none"  # the explicit "no proxy" / "no header" value
SET_IN_FILE = "set in the config file"
DEFAULT = "default"


def detected(env: Mapping[str, str]) -> str | None:
    """Why the process is taken to run on Railway ("Railway's default: RAILWAY_ENVIRONMENT_ID
    is set"), or ``None``: the same test as everywhere else (``environment.railway_marker``)."""
    marker = railway_marker(env)
    return f"Railway's default: {marker} is set" if marker else None


def trusted_proxies(listed: tuple[IPNetwork, ...] | None, env: Mapping[str, str]) -> tuple[tuple[IPNetwork, ...], str]:
    """The proxies to trust and why: ``listed`` (``None``: the file lists none, or only
    variables that are unset), else Railway's edge on Railway, else none."""
    if listed is not None:
        return listed, SET_IN_FILE
    why = detected(env)
    # model.RAILWAY_EDGE is read here, not imported by name: a test stands loopback in for it.
    return ((model.RAILWAY_EDGE,), why) if why else ((), DEFAULT)


def client_ip_header(named: str | None, env: Mapping[str, str]) -> tuple[str | None, str]:
    """The header a trusted proxy names the client in, and why: ``named`` (``None``: not
    set; ``none``: none, explicitly), else ``X-Real-IP`` on Railway, else none."""
    if named is not None:
        return (None if named.lower() == NONE else named), SET_IN_FILE
    why = detected(env)
    return (model.RAILWAY_CLIENT_IP_HEADER, why) if why else (None, DEFAULT)


def drain_problem(env: Mapping[str, str], drain_timeout: float, close_timeout: float) -> str | None:
    """Why the drain does not fit in ``RAILWAY_DEPLOYMENT_DRAINING_SECONDS`` and which
    number to change, or ``None`` (it fits, or the variable is not set).

    The last session's close starts at the end of the drain window and may take
    ``close_timeout``: past ``drain_timeout + close_timeout`` Railway's SIGKILL would cut
    sessions off with no close frame (their agents see 1006)."""
    raw = env.get(DRAINING_SECONDS, "").strip()
    if not raw:
        return None
    try:
        allowed = float(raw)
    except ValueError:
        return f"{DRAINING_SECONDS}: expected a number of seconds, got {raw!r}"
    needed = drain_timeout + close_timeout
    if needed <= allowed:
        return None
    fix = f"raise {DRAINING_SECONDS} (drainingSeconds in railway.json) to at least {math.ceil(needed)}"
    if close_timeout < allowed:
        fix += f", or lower listen.drain_timeout (DRAIN_TIMEOUT) to {_seconds(allowed - close_timeout)}"
    return (
        f"listen.drain_timeout ({_seconds(drain_timeout)}) + listen.close_timeout ({_seconds(close_timeout)}) "
        f"is more than {DRAINING_SECONDS} ({_seconds(allowed)}): Railway would kill this replica before its "
        f"last sessions are closed (their agents see 1006); {fix}"
    )


def _seconds(value: float) -> str:
    return f"{value:g}s"
