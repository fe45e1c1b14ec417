"""The one table of rejection reasons.

Every refusal the sidecar makes is one :class:`Reason`. The same value becomes the
HTTP status, the ``X-Sidecar-Reason`` header, the ``error`` field of the JSON body,
the ``reason`` field of the log line and the ``reason`` label of the rejection
counters. Nothing else in the package spells a reason code.

A check that refuses raises :exc:`Refused` carrying a :class:`Rejection` (the reason
plus the facts that make it actionable), the way h11's ``ProtocolError`` carries its
status hint; one boundary (:mod:`sidecar.refusal`) catches it and answers. The headers
a refusal adds are data: fixed ones per reason in the table below, the rest derived
from the rejection's own fields (:meth:`Rejection.headers`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

Header = tuple[str, str]


@dataclass(frozen=True)
class _Spec:
    status: int
    message: str
    headers: tuple[Header, ...] = ()  # sent with every refusal for this reason
    closes: bool = False  # the connection ends after the answer (the parser's state is unknown)


class Reason(enum.Enum):
    """Why the sidecar refused a request. ``value`` is the wire code."""

    BAD_REQUEST = "bad_request"
    HEADERS_TOO_LARGE = "headers_too_large"
    NO_ROUTE = "no_route"
    BAD_PATH = "bad_path"
    NOT_WEBSOCKET = "not_websocket"
    BAD_HANDSHAKE = "bad_handshake"
    MISSING_TOKEN = "missing_token"
    MALFORMED_TOKEN = "malformed_token"
    INVALID_TOKEN = "invalid_token"
    MISSING_AGENT_ID = "missing_agent_id"
    INVALID_AGENT_ID = "invalid_agent_id"
    AGENT_ID_MISMATCH = "agent_id_mismatch"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_REJECTED = "upstream_rejected"
    DRAINING = "draining"
    ORIGIN_DENIED = "origin_denied"
    RATE_LIMITED = "rate_limited"
    OVER_CAPACITY = "over_capacity"
    DUPLICATE_AGENT = "duplicate_agent"
    TOKEN_EXPIRED = "token_expired"
    AGENT_NOT_ALLOWED = "agent_not_allowed"

    @property
    def status(self) -> int:
        return _SPECS[self].status

    @property
    def message(self) -> str:
        return _SPECS[self].message

    @property
    def headers(self) -> tuple[Header, ...]:
        return _SPECS[self].headers

    @property
    def closes(self) -> bool:
        return _SPECS[self].closes


_SPECS: dict[Reason, _Spec] = {
    Reason.BAD_REQUEST: _Spec(
        400,
        "The request is not valid HTTP/1.1 (request line or header syntax). Check the "
        "client or anything rewriting requests in between.",
        closes=True,
    ),
    Reason.HEADERS_TOO_LARGE: _Spec(
        431,
        "The request head is too large: a line over 8 KiB, more than 100 header fields, "
        "or more than 32 KiB in all. Send fewer or smaller headers.",
        closes=True,
    ),
    Reason.NO_ROUTE: _Spec(
        404,
        "No route has this path. Use one of the WebSocket paths listed in "
        "'websocket_paths', spelled exactly (case, no trailing slash).",
    ),
    Reason.BAD_PATH: _Spec(
        400,
        "The request path is not in canonical form (empty or dot segments, "
        "encoded slashes or backslashes, ';', control characters or a bad "
        "percent-escape). Send the path exactly as the route names it.",
    ),
    Reason.NOT_WEBSOCKET: _Spec(
        426,
        "This path only accepts WebSocket connections. Connect with a WebSocket "
        "client (ws:// or wss://), not a plain HTTP request.",
        headers=(("Upgrade", "websocket"), ("Connection", "Upgrade")),  # RFC 9110 section 15.5.22
    ),
    Reason.BAD_HANDSHAKE: _Spec(
        400,
        "The WebSocket handshake is malformed: it must be a GET with "
        "'Connection: Upgrade', 'Upgrade: websocket', 'Sec-WebSocket-Version: 13' "
        "and a valid Sec-WebSocket-Key (RFC 6455 section 4.1).",
        headers=(("Sec-WebSocket-Version", "13"),),  # RFC 6455 section 4.4
    ),
    Reason.MISSING_TOKEN: _Spec(
        401,
        "No Authorization header. Send 'Authorization: Bearer <EDGE_SECRET>'.",
    ),
    Reason.MALFORMED_TOKEN: _Spec(
        401,
        "The Authorization header is not a single 'Bearer <token>' "
        "(RFC 6750 section 2.1). Send exactly one header: the word 'Bearer', "
        "a space, then the token.",
    ),
    Reason.INVALID_TOKEN: _Spec(
        401,
        "The Bearer token matches no configured secret, or is a signed token (JWT) that failed "
        "verification. Check that the agent and the sidecar have the same EDGE_SECRET, or give "
        "the agent a token the sidecar's keys verify.",
    ),
    Reason.MISSING_AGENT_ID: _Spec(
        400,
        "No agent id. Send it in the X-Edge-Agent-Id header or the edge_agent_id query parameter.",
    ),
    Reason.INVALID_AGENT_ID: _Spec(
        400,
        "The agent id does not match the allowed pattern (letters, digits, "
        "'_', '-', '.'; see the route's agent_id.pattern).",
    ),
    Reason.AGENT_ID_MISMATCH: _Spec(
        400,
        "The agent id was given more than once with different values (header "
        "and query, or repeated). Send one id, or the same id everywhere.",
    ),
    Reason.UPSTREAM_UNAVAILABLE: _Spec(
        502,
        "The backend could not be reached. Check that it is running and that UPSTREAM_URL points at it.",
    ),
    Reason.UPSTREAM_TIMEOUT: _Spec(
        504,
        "The backend did not answer in time. Check that it is healthy and not overloaded or asleep.",
    ),
    Reason.UPSTREAM_REJECTED: _Spec(
        502,
        "The backend refused the WebSocket handshake (or answered a plain request with "
        "101); its status is in X-Sidecar-Upstream-Status. Check the backend's logs for this path.",
    ),
    Reason.DRAINING: _Spec(
        503,
        "This sidecar replica is shutting down (a redeploy). Reconnect after Retry-After "
        "seconds; the new replica takes the connection.",
    ),
    Reason.ORIGIN_DENIED: _Spec(
        403,
        "The Origin header names a site this route does not allow (cross-site WebSocket "
        "hijacking defence). Connect from an allowed origin, or without an Origin header "
        "from a non-browser client.",
    ),
    Reason.RATE_LIMITED: _Spec(
        429,
        "Too many failed authentication attempts from this address. Fix the token, then "
        "retry after Retry-After seconds.",
    ),
    Reason.OVER_CAPACITY: _Spec(
        503,
        "The sidecar is at its session limit (for this route or in all). Retry after "
        "Retry-After seconds, with backoff.",
    ),
    Reason.DUPLICATE_AGENT: _Spec(
        409,
        "A session with this agent id is already open, and this route refuses a second "
        "one. Close the other session, or give each agent its own id.",
    ),
    Reason.TOKEN_EXPIRED: _Spec(
        401,
        "The signed token (JWT) has expired: its exp, plus the policy's leeway, has passed. "
        "Give the agent a fresh token ('sidecar token AGENT_ID') and reconnect with it.",
        # RFC 6750 section 3: the error, and what it is, for a client that renews its token.
        headers=(
            ("WWW-Authenticate", 'Bearer realm="sidecar", error="invalid_token", error_description="token expired"'),
        ),
    ),
    Reason.AGENT_NOT_ALLOWED: _Spec(
        403,
        "The token names another agent than the id this request states (X-Edge-Agent-Id or "
        "edge_agent_id). With a token, send no agent id or the token's own: each agent needs its own token.",
    ),
}


@dataclass(frozen=True)
class Rejection:
    """A refusal: the reason, plus facts that make it actionable.

    ``detail`` is extra, non-secret text (never a token or header value), sent in the
    body and logged. ``log_detail`` is logged only, never sent: which check failed where
    telling the client would help an attacker (a token's bad signature, unknown key, wrong
    issuer ...).
    """

    reason: Reason
    detail: str | None = None
    upstream_status: int | None = None
    agent_id: str | None = None
    retry_after: int | None = None  # seconds, sent as Retry-After (RFC 9110 section 10.2.3)
    challenge: str | None = None  # WWW-Authenticate, for a 401 (RFC 6750 section 3)
    suggestion: str | None = None  # the path that was meant, for a near miss of a route
    log_detail: str | None = None  # logged, never rendered

    def headers(self) -> tuple[Header, ...]:
        """Every header the refusal is answered with, beyond the body's own."""
        out = [("X-Sidecar-Reason", self.reason.value), *self.reason.headers]
        if self.upstream_status is not None:
            out.append(("X-Sidecar-Upstream-Status", str(self.upstream_status)))
        if self.retry_after is not None:
            out.append(("Retry-After", str(self.retry_after)))
        if self.challenge is not None:
            out.append(("WWW-Authenticate", self.challenge))
        return tuple(out)


class Refused(Exception):
    """Raised by a check that refuses a request; the refusal boundary answers it."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection)
        self.rejection = rejection

    def __str__(self) -> str:
        rejection = self.rejection
        return f"{rejection.reason.value} ({rejection.reason.status})" + (
            f": {rejection.detail}" if rejection.detail else ""
        )
