"""Headers and query -> admit or a :class:`Reason`. Pure: no I/O, no aiohttp.

Bearer tokens follow RFC 6750 section 2.1. Tokens are compared as SHA-256 digests
with :func:`hmac.compare_digest` against every configured secret, so neither the
token's length nor which secret matched shows in the timing.

A policy with ``jwt`` also takes signed tokens (JWTs, :mod:`sidecar.tokens`): a token
that matches no shared secret and has a JWT's shape is verified as one. Then the token's
agent claim *is* the agent id: a request that states an id (header or query) must state
that one (403 ``agent_not_allowed``), and one that states none gets the token's.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_plus

from multidict import MultiMapping

from .config import AgentIdRule, AuthPolicy, digest_secret
from .config.model import JwtPolicy
from .keys import EMPTY, KeySet
from .reasons import Reason, Rejection
from .tokens import Failed, looks_like_jwt, verify

# credentials = "Bearer" 1*SP b64token  (RFC 6750 section 2.1; scheme is case-insensitive)
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")
# Never in an agent id, whatever the route's pattern: C0 and C1 controls (Unicode Cc, NEL
# U+0085 among them), the line and paragraph separators U+2028/U+2029 (str.splitlines and
# log viewers break lines there), and lone surrogates (aiohttp decodes bytes that are not
# UTF-8 to them; they do not reach the backend as the id the sidecar checked and logged).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

# The URI query parameter a Bearer token may travel in (RFC 6750 section 2.3),
# accepted only on a route with ``query_token: true``.
QUERY_TOKEN = "access_token"
# The reasons that are a failed attempt at the secret (counted per client address).
TOKEN_FAILURES = frozenset({Reason.MISSING_TOKEN, Reason.MALFORMED_TOKEN, Reason.INVALID_TOKEN})
_QUERY_REFUSED = (
    "a token in the access_token query parameter is not accepted on this route; send it in the Authorization header"
)
_TWO_WAYS = (
    "the token was sent both in the Authorization header and the access_token query "
    "parameter; send it one way only (RFC 6750 section 2)"
)


def bearer_token(authorization: Sequence[str]) -> tuple[str | None, Reason | None]:
    """The token of the one ``Bearer`` credential in ``authorization`` (every Authorization
    header value the request carried), or why there is none."""
    if not authorization:
        return None, Reason.MISSING_TOKEN
    if len(authorization) > 1:
        return None, Reason.MALFORMED_TOKEN
    m = _BEARER.fullmatch(authorization[0].strip(" \t"))
    if m is None:
        return None, Reason.MALFORMED_TOKEN
    return m.group(1), None


def _compare(token: str, policy: AuthPolicy) -> Reason | None:
    digest = digest_secret(token)  # compared as digests, as the secrets are stored
    matched = False
    for secret in policy.secret_digests:
        matched |= hmac.compare_digest(digest, secret)
    return None if matched else Reason.INVALID_TOKEN


def www_authenticate(reason: Reason, authorization: Sequence[str]) -> str:
    """The challenge for a 401 (RFC 6750 section 3): ``error=`` only where a Bearer
    credential was presented; none when the request had no credentials or used
    another scheme (section 3.1)."""
    challenge = 'Bearer realm="sidecar"'
    if reason is Reason.INVALID_TOKEN:
        return challenge + ', error="invalid_token"'
    if reason is Reason.MALFORMED_TOKEN and (
        len(authorization) > 1 or authorization[0].strip(" \t")[:6].lower() == "bearer"
    ):
        return challenge + ', error="invalid_request"'
    return challenge


@dataclass(frozen=True)
class Admission:
    """``reason`` None means admitted. ``agent_id`` is set only when it is valid."""

    agent_id: str | None
    reason: Reason | None = None
    detail: str | None = None  # never a token or a header value
    log_detail: str | None = None  # which check a signed token failed: logged, never sent
    expires_at: float | None = None  # a signed token's: when its open session is closed (epoch s)
    refresh: str | None = None  # a JWKS to fetch again: the token names a key it may have gained

    def rejection(self, authorization: Sequence[str]) -> Rejection:
        """The refusal for a failed admission; a token failure carries its challenge
        (RFC 6750 section 3), built from the ``Authorization`` values the request sent."""
        assert self.reason is not None, "admitted"
        challenge = www_authenticate(self.reason, authorization) if self.reason in TOKEN_FAILURES else None
        return Rejection(
            self.reason, detail=self.detail, agent_id=self.agent_id, challenge=challenge, log_detail=self.log_detail
        )


def resolve_agent_id(header: Sequence[str], query: Sequence[str], rule: AgentIdRule) -> Admission:
    """Every value given (header and query, repeats included) must be valid and equal."""
    given = [*header, *query]
    if not given:
        return Admission(None, Reason.MISSING_AGENT_ID if rule.required else None)
    for value in given:
        if not valid_agent_id(value, rule):
            return Admission(None, Reason.INVALID_AGENT_ID)
    if len(set(given)) > 1:
        return Admission(None, Reason.AGENT_ID_MISMATCH)
    return Admission(given[0])


def valid_agent_id(value: str, rule: AgentIdRule) -> bool:
    """No control character, within the pattern's own length (checked first, so the
    operator's pattern never runs on a whole header), and matching the pattern."""
    return len(value) <= rule.max_length and not _CONTROL.search(value) and rule.pattern.fullmatch(value) is not None


def presented_token(
    authorization: Sequence[str], in_query: Sequence[str], *, query_token: bool
) -> tuple[str | None, Reason | None, str | None]:
    """The token the request presents, or the reason (and a detail) why there is none. The
    header is the way; the query only on a route that opts in, and never both in one
    request (RFC 6750 section 2)."""
    if in_query and not authorization:
        if not query_token:
            return None, Reason.MISSING_TOKEN, _QUERY_REFUSED
        if len(in_query) != 1 or not _B64TOKEN.fullmatch(in_query[0]):
            return None, Reason.MALFORMED_TOKEN, None
        return in_query[0], None, None
    if in_query and query_token:
        return None, Reason.MALFORMED_TOKEN, _TWO_WAYS
    token, reason = bearer_token(authorization)
    return token, reason, None


def admit(
    policy: AuthPolicy | None,
    headers: MultiMapping[str],
    query: MultiMapping[str],
    *,
    query_token: bool = False,
    keys: Mapping[str, KeySet] | None = None,
) -> Admission:
    """The token first, then the agent id: the order the reasons table documents.
    ``keys``: each JWKS URL's keys as last fetched."""
    if policy is None:
        return Admission(None)
    token, reason, detail = presented_token(
        headers.getall("Authorization", ()), query.getall(QUERY_TOKEN, ()), query_token=query_token
    )
    rule = policy.agent_id
    header = headers.getall(rule.header, ()) if rule is not None and rule.header else ()
    in_query = query.getall(rule.query, ()) if rule is not None and rule.query else ()
    if token is not None:
        reason = _compare(token, policy)  # every shared secret, whatever the token: see _compare
        if reason is not None and policy.jwt is not None and looks_like_jwt(token):
            return _admit_jwt(token, policy, policy.jwt, keys or {}, [*header, *in_query])
    if rule is None:
        return Admission(None, reason, detail)
    agent = resolve_agent_id(header, in_query, rule)
    if reason is not None:
        return Admission(agent.agent_id, reason, detail)  # the id, when valid, still helps the log line
    return agent


def _admit_jwt(
    token: str, policy: AuthPolicy, jwt: JwtPolicy, keys: Mapping[str, KeySet], stated: list[str]
) -> Admission:
    """A signed token: verified, then its agent claim is the agent id."""
    outcome = verify(token, jwt, keys.get(jwt.jwks_url, EMPTY) if jwt.jwks_url else EMPTY)
    rule = policy.agent_id
    if isinstance(outcome, Failed):
        refresh = jwt.jwks_url if outcome.refresh else None
        return Admission(None, outcome.reason, log_detail=outcome.why, refresh=refresh)
    agent = outcome.agent
    if rule is not None and not valid_agent_id(agent, rule):
        return Admission(None, Reason.INVALID_AGENT_ID, log_detail="the token's agent claim fails the agent id rule")
    if rule is not None and any(value != agent for value in stated):
        # The stated id is never echoed: it is the client's text, and not verified.
        return Admission(
            agent, Reason.AGENT_NOT_ALLOWED, log_detail="the request states another agent id than its token"
        )
    expires_at = outcome.expires_at + jwt.leeway if jwt.on_expiry == "close" else None
    return Admission(agent if rule is not None else None, expires_at=expires_at)


def without_query_token(raw_query: str) -> str:
    """``raw_query`` minus every ``access_token`` parameter, the rest byte for byte.
    Names are compared decoded, as the request's query is parsed ('+' is a space,
    '&' the only separator), so no spelling of the name slips through."""
    kept = [part for part in raw_query.split("&") if unquote_plus(part.partition("=")[0]) != QUERY_TOKEN]
    return "&".join(kept)
