"""Headers and query -> admit or a :class:`Reason`. Pure: no I/O, no aiohttp.

Bearer tokens follow RFC 6750 section 2.1. Tokens are compared as SHA-256 digests
with :func:`hmac.compare_digest` against every configured secret, so neither the
token's length nor which secret matched shows in the timing.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from multidict import MultiMapping

from .config import AgentIdRule, AuthPolicy, digest_secret
from .reasons import Reason

# credentials = "Bearer" 1*SP b64token  (RFC 6750 section 2.1; scheme is case-insensitive)
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")
# Never in an agent id, whatever the route's pattern: C0 and C1 controls (Unicode Cc, NEL
# U+0085 among them), the line and paragraph separators U+2028/U+2029 (str.splitlines and
# log viewers break lines there), and lone surrogates (aiohttp decodes bytes that are not
# UTF-8 to them; they do not reach the backend as the id the sidecar checked and logged).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def check_bearer(authorization: Sequence[str], policy: AuthPolicy) -> Reason | None:
    """``authorization`` holds every Authorization header value the request carried."""
    if not authorization:
        return Reason.MISSING_TOKEN
    if len(authorization) > 1:
        return Reason.MALFORMED_TOKEN
    m = _BEARER.fullmatch(authorization[0].strip(" \t"))
    if m is None:
        return Reason.MALFORMED_TOKEN
    digest = digest_secret(m.group(1))  # compared as digests, as the secrets are stored
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


def resolve_agent_id(header: Sequence[str], query: Sequence[str], rule: AgentIdRule) -> Admission:
    """Every value given (header and query, repeats included) must be valid and equal."""
    given = [*header, *query]
    if not given:
        return Admission(None, Reason.MISSING_AGENT_ID if rule.required else None)
    for value in given:
        if _CONTROL.search(value) or not rule.pattern.fullmatch(value):
            return Admission(None, Reason.INVALID_AGENT_ID)
    if len(set(given)) > 1:
        return Admission(None, Reason.AGENT_ID_MISMATCH)
    return Admission(given[0])


def admit(policy: AuthPolicy | None, headers: MultiMapping[str], query: MultiMapping[str]) -> Admission:
    """The token first, then the agent id: the order the reasons table documents."""
    if policy is None:
        return Admission(None)
    reason = check_bearer(headers.getall("Authorization", ()), policy)
    rule = policy.agent_id
    if rule is None:
        return Admission(None, reason)
    agent = resolve_agent_id(
        headers.getall(rule.header, ()) if rule.header else (),
        query.getall(rule.query, ()) if rule.query else (),
        rule,
    )
    if reason is not None:
        return Admission(agent.agent_id, reason)  # the id, when valid, still helps the log line
    return agent
