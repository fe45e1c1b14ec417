"""sidecar.auth: Bearer token and agent id checks. No sockets."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from multidict import CIMultiDict, MultiDict

from sidecar.auth import Admission, admit, resolve_agent_id, without_query_token, www_authenticate
from sidecar.config import AgentIdRule, AuthPolicy, digest_secret, load_config
from sidecar.reasons import Reason

from .conftest import OLD_SECRET, ROOT, SECRET


@pytest.fixture(scope="module")
def policy() -> AuthPolicy:
    """The shipped ``auth.edge`` policy, mid-rotation (current and previous secret)."""
    env = {"EDGE_SECRET": SECRET, "EDGE_SECRET_PREVIOUS": OLD_SECRET}
    config, problems = load_config((ROOT / "routes.yaml").read_text(), env=env)
    assert config is not None, [str(p) for p in problems]
    return config.auth["edge"]


def test_policy_holds_both_digests(policy: AuthPolicy) -> None:
    assert policy.secret_digests == (digest_secret(SECRET), digest_secret(OLD_SECRET))


# --- the bearer verdict ----------------------------------------------------------


def check_bearer(authorization: list[str] | tuple[str, ...], policy: AuthPolicy) -> Reason | None:
    """The shared-secret verdict on every Authorization value a request carried, as
    :func:`sidecar.auth.admit` makes it (the agent id rule left out)."""
    headers = CIMultiDict(("Authorization", value) for value in authorization)
    return admit(replace(policy, agent_id=None), headers, CIMultiDict()).reason


BEARER = [
    # Authorization values, reason (None: accepted)
    ([], Reason.MISSING_TOKEN),
    ([f"Bearer {SECRET}", f"Bearer {SECRET}"], Reason.MALFORMED_TOKEN),  # two headers, even equal
    ([f"Bearer {SECRET}", "Bearer other"], Reason.MALFORMED_TOKEN),
    ([""], Reason.MALFORMED_TOKEN),
    (["Basic x"], Reason.MALFORMED_TOKEN),
    (["Basic dXNlcjpwYXNz"], Reason.MALFORMED_TOKEN),
    (["Bearer"], Reason.MALFORMED_TOKEN),
    (["Bearer "], Reason.MALFORMED_TOKEN),
    (["Bearer a b"], Reason.MALFORMED_TOKEN),
    (["Bearer tok en"], Reason.MALFORMED_TOKEN),
    ([f"Bearer\t{SECRET}"], Reason.MALFORMED_TOKEN),
    ([f"Bearer{SECRET}"], Reason.MALFORMED_TOKEN),
    ([f"Token {SECRET}"], Reason.MALFORMED_TOKEN),
    ([f"Bearer {SECRET},Bearer {SECRET}"], Reason.MALFORMED_TOKEN),
    ([f"Bearer {SECRET}\n"], Reason.MALFORMED_TOKEN),
    ([f"Bearer {SECRET}\x00"], Reason.MALFORMED_TOKEN),
    (["Bearer =abc"], Reason.MALFORMED_TOKEN),
    (["Bearer t\u00f6ken"], Reason.MALFORMED_TOKEN),
    ([f"Bearer {SECRET}"], None),
    ([f"bearer {SECRET}"], None),  # the scheme is case-insensitive
    ([f"BEARER {SECRET}"], None),
    ([f"BeArEr {SECRET}"], None),
    ([f" Bearer {SECRET} "], None),  # optional whitespace around a field value
    ([f"Bearer  {SECRET}"], None),  # 1*SP
    ([f"Bearer {OLD_SECRET}"], None),  # the previous secret, during a rotation
    (["Bearer wrong"], Reason.INVALID_TOKEN),
    ([f"Bearer {SECRET.upper()}"], Reason.INVALID_TOKEN),  # the token is case-sensitive
    ([f"Bearer {SECRET}x"], Reason.INVALID_TOKEN),
    ([f"Bearer {SECRET[:-1]}"], Reason.INVALID_TOKEN),
    ([f"Bearer {SECRET}=="], Reason.INVALID_TOKEN),
]


@pytest.mark.parametrize(("values", "reason"), BEARER, ids=[repr(b[0]) for b in BEARER])
def test_check_bearer(policy: AuthPolicy, values: list[str], reason: Reason | None) -> None:
    assert check_bearer(values, policy) is reason


def test_check_bearer_without_secrets_admits_nobody() -> None:
    assert check_bearer([f"Bearer {SECRET}"], AuthPolicy(name="empty")) is Reason.INVALID_TOKEN


def test_check_bearer_only_previous_secret() -> None:
    only_old = AuthPolicy(name="old", secret_digests=(digest_secret(OLD_SECRET),))
    assert check_bearer([f"Bearer {OLD_SECRET}"], only_old) is None
    assert check_bearer([f"Bearer {SECRET}"], only_old) is Reason.INVALID_TOKEN


# --- resolve_agent_id -----------------------------------------------------------

RULE = AgentIdRule()

AGENT_IDS = [
    # header values, query values, expected admission
    ([], [], Admission(None, Reason.MISSING_AGENT_ID)),
    (["edge_13238407486"], [], Admission("edge_13238407486")),
    (["edge_1"], [], Admission("edge_1")),
    ([], ["edge_1"], Admission("edge_1")),
    (["a.b-c_D9"], [], Admission("a.b-c_D9")),
    (["a" * 128], [], Admission("a" * 128)),
    (["a" * 129], [], Admission(None, Reason.INVALID_AGENT_ID)),
    ([""], [], Admission(None, Reason.INVALID_AGENT_ID)),
    (["edge_1\r"], [], Admission(None, Reason.INVALID_AGENT_ID)),
    (["edge_1\n"], [], Admission(None, Reason.INVALID_AGENT_ID)),
    (["edge_1\r\nX-Admin: 1"], [], Admission(None, Reason.INVALID_AGENT_ID)),
    (["edge_1\x00"], [], Admission(None, Reason.INVALID_AGENT_ID)),
    (["edge 1"], [], Admission(None, Reason.INVALID_AGENT_ID)),
    (["edge_\u00e9"], [], Admission(None, Reason.INVALID_AGENT_ID)),
    (["edge_\u0661"], [], Admission(None, Reason.INVALID_AGENT_ID)),  # Arabic-Indic digit one
    (["edge/1"], [], Admission(None, Reason.INVALID_AGENT_ID)),
    ([], ["edge 1"], Admission(None, Reason.INVALID_AGENT_ID)),
    (["edge_1"], ["edge_1"], Admission("edge_1")),  # header and query agree
    (["edge_1"], ["edge_2"], Admission(None, Reason.AGENT_ID_MISMATCH)),
    (["edge_1", "edge_1"], [], Admission("edge_1")),
    (["edge_1", "edge_2"], [], Admission(None, Reason.AGENT_ID_MISMATCH)),
    ([], ["edge_1", "edge_2"], Admission(None, Reason.AGENT_ID_MISMATCH)),
    (["edge_1"], ["edge 2"], Admission(None, Reason.INVALID_AGENT_ID)),  # invalid before mismatch
]


@pytest.mark.parametrize(("header", "query", "expected"), AGENT_IDS, ids=[repr(a[:2]) for a in AGENT_IDS])
def test_resolve_agent_id(header: list[str], query: list[str], expected: Admission) -> None:
    assert resolve_agent_id(header, query, RULE) == expected


def test_agent_id_optional() -> None:
    assert resolve_agent_id([], [], AgentIdRule(required=False)) == Admission(None)
    assert resolve_agent_id(["bad id"], [], AgentIdRule(required=False)) == Admission(None, Reason.INVALID_AGENT_ID)


def test_agent_id_control_characters_refused_even_if_the_pattern_allows_them() -> None:
    permissive = AgentIdRule(pattern=re.compile(r".+", re.DOTALL))
    assert resolve_agent_id(["ok id"], [], permissive) == Admission("ok id")
    assert resolve_agent_id(["bad\nid"], [], permissive) == Admission(None, Reason.INVALID_AGENT_ID)
    assert resolve_agent_id(["bad\x7f"], [], permissive) == Admission(None, Reason.INVALID_AGENT_ID)


# Found by tests/test_fuzz_auth.py: with a permissive pattern these were admitted and forwarded.
@pytest.mark.parametrize(
    "value",
    [
        "edge\x851",  # NEL, a C1 control: a line break to str.splitlines
        "edge\x9b1",  # CSI, a C1 control: a terminal escape in text logs
        "edge\u20281",  # LINE SEPARATOR
        "edge\u20291",  # PARAGRAPH SEPARATOR
        "ab\udcffcd",  # byte 0xFF as aiohttp decodes it: the backend got 'abcd'
    ],
)
def test_agent_id_unicode_controls_refused_even_if_the_pattern_allows_them(value: str) -> None:
    permissive = AgentIdRule(pattern=re.compile(r".+", re.DOTALL))
    assert resolve_agent_id([value], [], permissive) == Admission(None, Reason.INVALID_AGENT_ID)
    assert resolve_agent_id([], [value], permissive) == Admission(None, Reason.INVALID_AGENT_ID)


# --- admit ----------------------------------------------------------------------

GOOD = f"Bearer {SECRET}"

ADMIT = [
    # headers, query, expected admission
    ([("Authorization", GOOD), ("X-Edge-Agent-Id", "edge_1")], [], Admission("edge_1")),
    ([("authorization", GOOD), ("x-edge-agent-id", "edge_1")], [], Admission("edge_1")),  # header names: any case
    ([("Authorization", GOOD)], [("edge_agent_id", "edge_1")], Admission("edge_1")),
    ([("Authorization", GOOD), ("X-Edge-Agent-Id", "edge_1")], [("edge_agent_id", "edge_1")], Admission("edge_1")),
    (
        [("Authorization", GOOD), ("X-Edge-Agent-Id", "edge_1")],
        [("edge_agent_id", "edge_2")],
        Admission(None, Reason.AGENT_ID_MISMATCH),
    ),
    ([("Authorization", GOOD)], [], Admission(None, Reason.MISSING_AGENT_ID)),
    ([("Authorization", GOOD)], [("EDGE_AGENT_ID", "edge_1")], Admission(None, Reason.MISSING_AGENT_ID)),  # query
    ([("Authorization", GOOD), ("X-Edge-Agent-Id", "bad id")], [], Admission(None, Reason.INVALID_AGENT_ID)),
    # the token is checked first: its reason wins over any agent id problem
    ([("X-Edge-Agent-Id", "edge_1")], [], Admission("edge_1", Reason.MISSING_TOKEN)),
    ([], [], Admission(None, Reason.MISSING_TOKEN)),
    ([("Authorization", "Bearer wrong"), ("X-Edge-Agent-Id", "bad id")], [], Admission(None, Reason.INVALID_TOKEN)),
    ([("Authorization", "Bearer wrong")], [], Admission(None, Reason.INVALID_TOKEN)),
    ([("Authorization", "Basic x"), ("X-Edge-Agent-Id", "edge_1")], [], Admission("edge_1", Reason.MALFORMED_TOKEN)),
    (
        [("Authorization", GOOD), ("Authorization", GOOD), ("X-Edge-Agent-Id", "edge_1")],
        [],
        Admission("edge_1", Reason.MALFORMED_TOKEN),
    ),
    (
        [("Authorization", "Bearer wrong"), ("X-Edge-Agent-Id", "edge_1")],
        [("edge_agent_id", "edge_2")],
        Admission(None, Reason.INVALID_TOKEN),
    ),
]


@pytest.mark.parametrize(("headers", "query", "expected"), ADMIT, ids=[f"admit{i}" for i in range(len(ADMIT))])
def test_admit(
    policy: AuthPolicy, headers: list[tuple[str, str]], query: list[tuple[str, str]], expected: Admission
) -> None:
    assert admit(policy, CIMultiDict(headers), MultiDict(query)) == expected


def test_admit_without_policy_admits_anything() -> None:
    assert admit(None, CIMultiDict(), MultiDict()) == Admission(None)
    assert admit(None, CIMultiDict({"Authorization": "Basic x"}), MultiDict()) == Admission(None)


def test_admit_policy_without_agent_id_rule() -> None:
    bare = AuthPolicy(name="bare", secret_digests=(digest_secret(SECRET),))
    assert admit(bare, CIMultiDict({"Authorization": GOOD}), MultiDict()) == Admission(None)
    headers = CIMultiDict({"Authorization": "Bearer wrong", "X-Edge-Agent-Id": "edge_1"})
    assert admit(bare, headers, MultiDict()) == Admission(None, Reason.INVALID_TOKEN)


def test_admit_rule_with_header_only() -> None:
    rule = AgentIdRule(header="X-Id", query=None)
    only_header = AuthPolicy(name="h", secret_digests=(digest_secret(SECRET),), agent_id=rule)
    query = MultiDict({"edge_agent_id": "edge_1"})
    assert admit(only_header, CIMultiDict({"Authorization": GOOD}), query) == Admission(None, Reason.MISSING_AGENT_ID)
    headers = CIMultiDict({"Authorization": GOOD, "x-id": "edge_1"})
    assert admit(only_header, headers, MultiDict()) == Admission("edge_1")


CHALLENGE = 'Bearer realm="sidecar"'


@pytest.mark.parametrize(
    ("reason", "authorization", "expected"),
    [
        (Reason.MISSING_TOKEN, [], CHALLENGE),  # no credentials: no error code (RFC 6750 section 3.1)
        (Reason.MALFORMED_TOKEN, ["Basic dXNlcjpwYXNz"], CHALLENGE),  # another scheme: likewise
        (Reason.MALFORMED_TOKEN, ["Bearer"], CHALLENGE + ', error="invalid_request"'),
        (Reason.MALFORMED_TOKEN, ["bearer a b"], CHALLENGE + ', error="invalid_request"'),
        (Reason.MALFORMED_TOKEN, ["Bearer a", "Bearer b"], CHALLENGE + ', error="invalid_request"'),
        (Reason.INVALID_TOKEN, ["Bearer nope"], CHALLENGE + ', error="invalid_token"'),
    ],
)
def test_www_authenticate(reason: Reason, authorization: list[str], expected: str) -> None:
    assert www_authenticate(reason, authorization) == expected


# --- the token in the query (RFC 6750 section 2.3), only where a route opts in -------------

QUERY_REFUSED = (
    "a token in the access_token query parameter is not accepted on this route; send it in the Authorization header"
)
TWO_WAYS = (
    "the token was sent both in the Authorization header and the access_token query "
    "parameter; send it one way only (RFC 6750 section 2)"
)
ID = ("edge_agent_id", "edge_1")
QUERY_TOKENS = [
    # opted in, headers, query, expected admission
    (False, [], [("access_token", SECRET), ID], Admission("edge_1", Reason.MISSING_TOKEN, QUERY_REFUSED)),
    (False, [("Authorization", GOOD)], [("access_token", "x"), ID], Admission("edge_1")),  # just a parameter here
    (True, [], [("access_token", SECRET), ID], Admission("edge_1")),
    (True, [], [("access_token", OLD_SECRET), ID], Admission("edge_1")),
    (True, [], [("access_token", "wrong"), ID], Admission("edge_1", Reason.INVALID_TOKEN)),
    (True, [], [("access_token", "a b"), ID], Admission("edge_1", Reason.MALFORMED_TOKEN)),
    (True, [], [("access_token", ""), ID], Admission("edge_1", Reason.MALFORMED_TOKEN)),
    (True, [], [("access_token", SECRET), ("access_token", SECRET), ID], Admission("edge_1", Reason.MALFORMED_TOKEN)),
    (
        True,
        [("Authorization", GOOD)],
        [("access_token", SECRET), ID],
        Admission("edge_1", Reason.MALFORMED_TOKEN, TWO_WAYS),
    ),
    (True, [("Authorization", GOOD)], [ID], Admission("edge_1")),  # the header still works
    (True, [], [ID], Admission("edge_1", Reason.MISSING_TOKEN)),
]


@pytest.mark.parametrize(
    ("opted_in", "headers", "query", "expected"), QUERY_TOKENS, ids=[f"query{i}" for i in range(len(QUERY_TOKENS))]
)
def test_admit_query_token(
    policy: AuthPolicy,
    opted_in: bool,
    headers: list[tuple[str, str]],
    query: list[tuple[str, str]],
    expected: Admission,
) -> None:
    assert admit(policy, CIMultiDict(headers), MultiDict(query), query_token=opted_in) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ""),
        ("access_token=s", ""),
        ("a=1&access_token=s&b=%20x", "a=1&b=%20x"),
        ("access%5Ftoken=s&a=1", "a=1"),  # any spelling the request's parsed query reads as the name
        ("%61ccess_token=s", ""),
        ("access_token&a", "a"),
        ("access_token=1&access_token=2", ""),
        ("access_tokens=1&my_access_token=2", "access_tokens=1&my_access_token=2"),
        ("a=access_token", "a=access_token"),
    ],
)
def test_without_query_token(raw: str, expected: str) -> None:
    assert without_query_token(raw) == expected
