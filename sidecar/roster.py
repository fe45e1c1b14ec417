"""This process's sessions as an operator sees them: listed, and ended by agent id.

Plain values from the session registry, no I/O: the admin endpoints (:mod:`sidecar.admin`)
answer with them, and so does each replica another one asks over Redis
(:mod:`sidecar.fleet`), so a fleet-wide list is these entries put together.
"""

from __future__ import annotations

import logging
import time

from .logs import event
from .sessions import EndCause, Registry, State


def entries(registry: Registry, replica: str, agent_id: str | None = None) -> list[dict[str, object]]:
    """Each session holding a place (``agent_id``'s only, if given), oldest first."""
    return [
        {
            "agent_id": session.agent_id,
            "route": session.route.name,
            "replica": replica,
            "client": session.client,
            "opened_at": rfc3339(session.opened_at),
            "state": session.state.value,
        }
        for session in registry.sessions()
        if agent_id is None or session.agent_id == agent_id
    ]


def end_open(registry: Registry, agent_id: str) -> int:
    """End ``agent_id``'s open sessions with 4403 "closed by operator"; how many there were.
    One still in its handshake has no close frame to be sent: it is left to open."""
    ending = [s for s in registry.sessions(State.OPEN) if s.agent_id == agent_id and s.cause is None]
    for session in ending:
        session.end(EndCause.OPERATOR)
    if ending:
        event(logging.INFO, "ws.closing_by_operator", agent_id=agent_id, sessions=len(ending))
    return len(ending)


def rfc3339(wall: float) -> str:
    """A wall-clock time as RFC 3339 in UTC with milliseconds, as the log lines write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall * 1000) % 1000:03d}Z"
