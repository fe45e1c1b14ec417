"""Session control for operators, on the metrics listener only: ``GET /sessions`` and
``DELETE /sessions/{agent_id}``.

Enabled only when ``ADMIN_TOKEN`` is set (without it these paths are 404 like any other);
each request carries ``Authorization: Bearer <ADMIN_TOKEN>`` (RFC 6750 section 2.1),
compared in constant time, digest to digest (missing or wrong: 401). The metrics port is
private on Railway; the public listener never answers these paths itself (there,
``/sessions`` is routed like any other path).

With ``state.redis`` the answers are the fleet's: every replica is asked over Redis
(``"scope": "fleet"``). Without it, or while Redis does not answer, this process's own
(``"scope": "replica"``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, field

from aiohttp import web

from . import roster
from .fleet import Unavailable
from .logs import event
from .runtime import Runtime

_NO_CACHE = {"Cache-Control": "no-store"}
_MAX_AGENT_ID = 1024


@dataclass(eq=False)
class Admin:
    rt: Runtime
    replica: str
    token_digest: bytes = field(repr=False)

    @classmethod
    def of(cls, token: str | None, rt: Runtime, replica: str) -> Admin | None:
        """The endpoints, if ``token`` (ADMIN_TOKEN) is set; ``None`` otherwise."""
        if not token:
            return None
        return cls(rt, replica, hashlib.sha256(token.encode("utf-8")).digest())

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/sessions", self.list_sessions, allow_head=False)
        app.router.add_delete("/sessions/{agent_id}", self.end_sessions)

    async def list_sessions(self, request: web.Request) -> web.Response:
        self._authorize(request)
        agent_id = request.query.get("agent_id") or None
        fleet = self.rt.fleet
        if fleet is not None:
            try:
                answers = await fleet.sessions(agent_id)
            except Unavailable:
                pass
            else:
                found = [entry for answer in answers.answers if isinstance(answer, list) for entry in answer]
                body: dict[str, object] = {
                    "sessions": sorted(found, key=lambda e: str(e.get("opened_at"))),
                    "scope": "fleet",
                    "replicas": len(answers.answers),
                }
                if answers.missing:
                    body["missing_replicas"] = answers.missing
                return web.json_response(body, headers=_NO_CACHE)
        body = {"sessions": roster.entries(self.rt.sessions, self.replica, agent_id), "scope": "replica"}
        if fleet is not None:
            body["state"] = "degraded"
        return web.json_response(body, headers=_NO_CACHE)

    async def end_sessions(self, request: web.Request) -> web.Response:
        """200 with the number of sessions closed, 404 when none was. With a fleet, a
        replica that heard the question and did not answer within 2 s may or may not have
        closed one: ``missing_replicas`` says how many, and a 404 then means "none that
        answered had one", as its message says."""
        self._authorize(request)
        agent_id = request.match_info["agent_id"]
        if len(agent_id) > _MAX_AGENT_ID:
            return _error(404, "not_found", "No session has this agent id.")
        extra: dict[str, object] = {}
        closed = None
        if self.rt.fleet is not None:
            try:
                answers = await self.rt.fleet.end(agent_id)
            except Unavailable:
                extra = {"scope": "replica", "state": "degraded"}
            else:
                closed = sum(a for a in answers.answers if isinstance(a, int))
                extra = {"scope": "fleet", **({"missing_replicas": answers.missing} if answers.missing else {})}
        if closed is None:
            closed = roster.end_open(self.rt.sessions, agent_id)
            extra.setdefault("scope", "replica")
        event(logging.INFO, "admin.sessions_ended", agent_id=agent_id, closed=closed, **extra)
        if not closed:
            message = "No open session has this agent id."
            if missing := extra.get("missing_replicas"):
                message = (
                    "No replica that answered has an open session with this agent id; "
                    f"{missing} replica(s) did not answer within 2 s."
                )
            return _error(404, "not_found", message, **extra)
        return web.json_response({"closed": closed, **extra}, headers=_NO_CACHE)

    def _authorize(self, request: web.Request) -> None:
        """Raise a 401 unless the request carries exactly one ``Bearer`` with the token."""
        values = request.headers.getall("Authorization", [])
        scheme, _, token = values[0].partition(" ") if len(values) == 1 else ("", "", "")
        if scheme.lower() != "bearer" or not token.strip(" "):
            challenge = 'Bearer realm="sidecar admin"'
            raise _unauthorized(challenge, "Send 'Authorization: Bearer <ADMIN_TOKEN>'.")
        given = hashlib.sha256(token.strip(" ").encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(given, self.token_digest):
            challenge = 'Bearer realm="sidecar admin", error="invalid_token"'  # RFC 6750 section 3
            raise _unauthorized(challenge, "The token is not ADMIN_TOKEN.")


def _error(status: int, error: str, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": error, "message": message, **extra}, status=status, headers=_NO_CACHE)


def _unauthorized(challenge: str, message: str) -> web.HTTPUnauthorized:
    body = json.dumps({"error": "unauthorized", "message": message})
    return web.HTTPUnauthorized(
        text=body, content_type="application/json", headers={**_NO_CACHE, "WWW-Authenticate": challenge}
    )
