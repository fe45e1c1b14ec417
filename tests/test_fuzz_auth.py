"""Properties of Authorization parsing and agent id validation (hypothesis). No sockets.

Profiles: see tests/conftest.py (HYPOTHESIS_PROFILE=long for a long run).
"""

from __future__ import annotations

import re
import string
import unicodedata

from hypothesis import event, example, given
from hypothesis import strategies as st
from multidict import CIMultiDict, MultiDict

from sidecar.auth import admit, resolve_agent_id, www_authenticate
from sidecar.config import DEFAULT_AGENT_ID_PATTERN, AgentIdRule, AuthPolicy, digest_secret
from sidecar.reasons import Reason

from .conftest import OLD_SECRET, SECRET
from .test_auth import check_bearer

# --- strategies ---------------------------------------------------------------------

B64CHARS = string.ascii_letters + string.digits + "-._~+/"  # RFC 6750 section 2.1 b64token
# Any text, lone surrogates included: aiohttp decodes header bytes with 'surrogateescape'.
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
b64tokens = st.builds(lambda body, pad: body + "=" * pad, st.text(B64CHARS, min_size=1, max_size=40), st.integers(0, 2))
secrets_lists = st.lists(st.one_of(st.sampled_from([SECRET, OLD_SECRET]), b64tokens), min_size=1, max_size=3)


def policy_of(secrets: list[str], rule: AgentIdRule | None = None) -> AuthPolicy:
    return AuthPolicy(name="p", secret_digests=tuple(digest_secret(s) for s in secrets), agent_id=rule)


@st.composite
def authorizations(draw: st.DrawFn, secrets: list[str]) -> str:
    """One Authorization value: mostly 'Bearer <token>'-shaped, with case, spacing and
    token mutations; sometimes any text at all."""
    if draw(st.integers(0, 5)) == 0:
        return draw(any_text)
    scheme = "".join(ch.swapcase() if draw(st.booleans()) else ch for ch in "Bearer")
    scheme = draw(st.sampled_from([scheme, scheme, "Basic", "Token", "Bearer:", "Bear", "Bearerx", "\u0392earer"]))
    sep = draw(st.sampled_from([" ", " ", "  ", "\t", "", ",", " \t", "\u00a0", "="]))
    token = draw(st.one_of(st.sampled_from(secrets), b64tokens, any_text))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(token)))
        junk = draw(st.sampled_from([" ", "\t", "\r\n", "\x00", ",", "=", "==x", "\u00e9", "a", "Bearer "]))
        token = token[:at] + junk + token[at:]
    around = draw(st.sampled_from(["", " ", "\t", "  ", "\n", "\x0b"]))
    return around + scheme + sep + token + draw(st.sampled_from(["", " ", "\t", "\n", around]))


CHALLENGES = {
    f'Bearer realm="sidecar"{error}' for error in ("", ', error="invalid_token"', ', error="invalid_request"')
}


def is_b64token(text: str) -> bool:
    body = text.rstrip("=")
    return bool(body) and all(ch in B64CHARS for ch in body)


def expected_bearer(values: list[str], secrets: list[str]) -> Reason | None:
    """The rule, written independently of sidecar.auth: exactly one header of the form
    'Bearer 1*SP b64token' (scheme case-insensitive, RFC 9110 section 11.1; optional
    whitespace around a field value, section 5.5) whose token is a configured secret."""
    if not values:
        return Reason.MISSING_TOKEN
    if len(values) > 1:
        return Reason.MALFORMED_TOKEN
    scheme, space, rest = values[0].strip(" \t").partition(" ")
    token = rest.lstrip(" ")
    if not (space and scheme.isascii() and scheme.lower() == "bearer" and is_b64token(token)):
        return Reason.MALFORMED_TOKEN
    return None if token in secrets else Reason.INVALID_TOKEN


# --- Authorization --------------------------------------------------------------------


@st.composite
def bearer_cases(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """Configured secrets, and the Authorization values of one request."""
    secrets = draw(secrets_lists)
    return secrets, draw(st.lists(authorizations(secrets), max_size=3))


@given(bearer_cases())
@example(([SECRET], [f" bEaReR  {SECRET}\t"]))
@example(([SECRET], [f"Bearer {SECRET}", f"Bearer {SECRET}"]))
@example(([SECRET], [f"Bearer\u00a0{SECRET}"]))
def test_bearer_admits_exactly_one_well_formed_configured_token(case: tuple[list[str], list[str]]) -> None:
    secrets, values = case
    reason = check_bearer(values, policy_of(secrets))  # never raises
    event(f"reason: {reason}")
    assert reason == expected_bearer(values, secrets), values
    if reason is not None:  # the challenge never raises either, and names only the error
        assert www_authenticate(reason, values) in CHALLENGES


@given(secrets_lists, st.lists(any_text, max_size=4))
def test_bearer_never_raises_on_any_text(secrets: list[str], values: list[str]) -> None:
    reason = check_bearer(values, policy_of(secrets))
    assert reason == expected_bearer(values, secrets)
    if reason is not None:
        assert www_authenticate(reason, values) in CHALLENGES


# --- agent id -------------------------------------------------------------------------

PATTERNS = [DEFAULT_AGENT_ID_PATTERN, ".+", "(?s).*", ".*", r"\S+", r"[^/]+", r"\w{1,8}", "[\x00-\U0010ffff]*"]
ID_CHARS = string.ascii_letters + string.digits + "_.-"
UNSAFE = {"Cc", "Cs", "Zl", "Zp"}  # controls, lone surrogates, line and paragraph separators


def unsafe(value: str) -> bool:
    return any(unicodedata.category(ch) in UNSAFE for ch in value)


rules = st.builds(
    AgentIdRule,
    header=st.sampled_from(["X-Edge-Agent-Id", "X-Agent"]),
    query=st.sampled_from(["edge_agent_id", "agent"]),
    pattern=st.sampled_from(PATTERNS).map(re.compile),
    required=st.booleans(),
)
injections = st.sampled_from(["\r", "\n", "\r\n", "\x00", "\x7f", "\x85", "\x9b", "\u2028", "\u2029", "\udc8a", "\t"])


@st.composite
def agent_ids(draw: st.DrawFn) -> str:
    value = draw(st.one_of(st.text(ID_CHARS, min_size=1, max_size=10), any_text, st.sampled_from(["edge_1", ""])))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(value)))
        value = value[:at] + draw(injections) + value[at:]
    return value


@given(rules, st.lists(agent_ids(), max_size=3), st.lists(agent_ids(), max_size=3))
@example(AgentIdRule(pattern=re.compile(".+")), ["edge\x851"], [])
@example(AgentIdRule(pattern=re.compile(".+")), [], ["edge\u20281"])
@example(AgentIdRule(pattern=re.compile(".+")), ["edge\udc8a"], [])
def test_agent_id_only_when_every_value_is_safe_valid_and_equal(
    rule: AgentIdRule, header: list[str], query: list[str]
) -> None:
    admission = resolve_agent_id(header, query, rule)
    event(f"reason: {admission.reason}")
    given_ = [*header, *query]
    valid = [v for v in given_ if rule.pattern.fullmatch(v) and not unsafe(v)]
    if admission.agent_id is not None:
        assert admission.reason is None
        assert rule.pattern.fullmatch(admission.agent_id)
        assert not unsafe(admission.agent_id)
        assert set(given_) == {admission.agent_id}
    if not given_:
        assert admission == (admission.__class__(None, Reason.MISSING_AGENT_ID if rule.required else None))
    elif len(valid) < len(given_):
        assert admission.reason is Reason.INVALID_AGENT_ID and admission.agent_id is None
    elif len(set(given_)) > 1:  # every value valid, but header and query (or repeats) disagree
        assert admission.reason is Reason.AGENT_ID_MISMATCH and admission.agent_id is None
    else:
        assert admission.reason is None and admission.agent_id == given_[0]


@given(
    secrets_lists,
    st.one_of(st.none(), rules),
    st.data(),
)
def test_admit_never_raises_and_agrees_with_its_parts(
    secrets: list[str], rule: AgentIdRule | None, data: st.DataObject
) -> None:
    names = st.sampled_from(
        ["Authorization", "authorization", "AUTHORIZATION", "X-Edge-Agent-Id", "x-agent", "X-Other"]
    )
    headers = CIMultiDict(data.draw(st.lists(st.tuples(names, st.one_of(authorizations(secrets), agent_ids())))))
    query = MultiDict(data.draw(st.lists(st.tuples(st.sampled_from(["edge_agent_id", "agent", "x"]), agent_ids()))))
    policy = policy_of(secrets, rule)
    admission = admit(policy, headers, query)
    token_reason = check_bearer(headers.getall("Authorization", ()), policy)
    if token_reason is not None:
        assert admission.reason is token_reason
    elif rule is None:
        assert admission.reason is None
    else:
        agent = resolve_agent_id(
            headers.getall(rule.header or "", ()) if rule.header else (),
            query.getall(rule.query or "", ()) if rule.query else (),
            rule,
        )
        assert admission == agent
    if admission.agent_id is not None:
        assert not unsafe(admission.agent_id)
