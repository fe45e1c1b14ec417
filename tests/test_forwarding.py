"""sidecar.forwarding: what the backend is sent, as a table (no sockets): the rules held by
a readable model (``forward_headers`` here), and the data plane's ``forward_fields`` held to
the model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, MultiMapping

from sidecar import forwarding
from sidecar.config import AgentIdRule, AuthPolicy, Route, Upstream
from sidecar.forwarding import _dashed, _dropped, forward_fields, upstream_query
from sidecar.headers import FORWARDED_PREFIX, tokens

UPSTREAM = Upstream("backend", "http://127.0.0.1:8000")
POLICY = AuthPolicy("edge", agent_id=AgentIdRule())
WS = Route("edge", True, UPSTREAM, paths=("/edge/ws",), auth=POLICY, forward_authorization=True)
HTTP = Route("default", False, UPSTREAM, prefix="/")
IDENTITY = frozenset({"x-edge-agent-id"})


def forward_headers(
    headers: MultiMapping[str],
    route: Route,
    agent_id: str | None,
    *,
    identity: frozenset[str],
    remote: str | None,
    scheme: str,
    host: str,
    trusted: bool = False,
    query_token: Sequence[str] = (),
    request_id: str | None = None,
) -> CIMultiDict[str]:
    """The model of :func:`sidecar.forwarding.forward_fields` the tables below hold the rules
    to (readable: a multidict in, a multidict out): the request's end-to-end headers, minus
    what the sidecar owns, plus its own.

    ``identity`` names the headers the sidecar vouches for (the agent id headers of
    every auth policy): a client's copy never passes, on any route, catch-all included.
    ``X-Forwarded-For/-Proto/-Host`` are the sidecar's own view of the connection,
    unless ``trusted`` (the peer is a configured proxy): then the proxy's are kept
    and the peer appended to ``X-Forwarded-For``. ``query_token``: the tokens the
    request carried in its query (RFC 6750 section 2.3), passed on as ``Authorization``
    where the route forwards it, never in the URL. ``request_id``: sent as the one
    ``X-Request-Id`` (a client's own is dropped, in any spelling), so the backend logs
    the id the sidecar does.
    """
    drop = _dropped(route.websocket, route.auth is not None and not route.forward_authorization, identity)
    named = tokens(headers, "Connection")  # RFC 9110 section 7.6.1: these are hop-by-hop too
    if named:
        drop = drop | {_dashed(name) for name in named}
    if request_id is not None:
        drop = drop | {"x-request-id"}
    out: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in headers.items() if (d := _dashed(k)) not in drop and not d.startswith(FORWARDED_PREFIX)
    )
    rule = route.auth.agent_id if route.auth is not None else None
    # Set after the Connection-token filtering: a client cannot strip these.
    if rule is not None and agent_id is not None:
        out[rule.forward_header] = agent_id
    if trusted:
        # A proxy we trust (Railway's edge) saw the client first: keep its view, add ours.
        chain = ", ".join(headers.getall("X-Forwarded-For", ()))
        remote = f"{chain}, {remote}" if chain and remote else chain or remote
        scheme = headers.get("X-Forwarded-Proto", scheme)
        host = headers.get("X-Forwarded-Host", host)
    if remote:
        out["X-Forwarded-For"] = remote
    out["X-Forwarded-Proto"] = scheme
    out["X-Forwarded-Host"] = host
    if request_id is not None:
        out["X-Request-Id"] = request_id
    if route.forward_authorization and query_token and "Authorization" not in headers:
        out["Authorization"] = f"Bearer {query_token[0]}"
    return out


def forwarded(
    route: Route,
    sent: list[tuple[str, str]],
    agent: str | None = None,
    *,
    remote: str = "203.0.113.9",
    scheme: str = "http",
    trusted: bool = False,
    query_token: list[str] | None = None,
    request_id: str | None = None,
) -> CIMultiDict[str]:
    return forward_headers(
        CIMultiDict(sent),
        route,
        agent,
        identity=IDENTITY,
        remote=remote,
        scheme=scheme,
        host="example.com",
        trusted=trusted,
        query_token=query_token or (),
        request_id=request_id,
    )


@pytest.mark.parametrize(
    ("route", "sent", "kept"),
    [
        (
            HTTP,
            [("Accept", "a"), ("Cookie", "c=1"), ("Set-Cookie", "x")],
            [("Accept", "a"), ("Cookie", "c=1"), ("Set-Cookie", "x")],
        ),
        # Hop-by-hop fields (RFC 9110 section 7.6.1), and those named in Connection.
        (HTTP, [("Connection", "close, X-Secret"), ("X-Secret", "s"), ("TE", "trailers"), ("Keep-Alive", "5")], []),
        (HTTP, [("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("Proxy-Authorization", "p")], []),
        # What the sidecar owns, in every spelling a CGI backend reads as the same.
        (
            HTTP,
            [("Host", "evil"), ("Forwarded", "for=1.1.1.1"), ("X-Real-IP", "1.1.1.1"), ("Expect", "100-continue")],
            [],
        ),
        (HTTP, [("X-Forwarded-Port", "1"), ("x_forwarded_for", "1.1.1.1"), ("X_Real_IP", "1.1.1.1")], []),
        (HTTP, [("X-Edge-Agent-Id", "forged"), ("X_Edge_Agent_Id", "forged")], []),
        # A WebSocket route: each leg negotiates its own handshake fields.
        (
            WS,
            [
                ("Sec-WebSocket-Key", "k"),
                ("Sec-WebSocket-Extensions", "permessage-deflate"),
                ("Sec-WebSocket-Protocol", "p"),
            ],
            [],
        ),
        (HTTP, [("Sec-WebSocket-Key", "k")], [("Sec-WebSocket-Key", "k")]),
        # Authorization: passed on where the route forwards it (or has no auth), else dropped.
        (WS, [("Authorization", "Bearer t")], [("Authorization", "Bearer t")]),
        (replace(WS, forward_authorization=False), [("Authorization", "Bearer t")], []),
        (HTTP, [("Authorization", "Basic x")], [("Authorization", "Basic x")]),
    ],
)
def test_what_passes(route: Route, sent: list[tuple[str, str]], kept: list[tuple[str, str]]) -> None:
    out = forwarded(route, sent)
    own = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
    assert [(k, v) for k, v in out.items() if k.lower() not in own] == kept


def test_the_sidecar_adds_its_own_view_of_the_connection() -> None:
    out = forwarded(HTTP, [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https")], scheme="http")
    assert (out["X-Forwarded-For"], out["X-Forwarded-Proto"], out["X-Forwarded-Host"]) == (
        "203.0.113.9",
        "http",
        "example.com",
    )


def test_a_trusted_proxys_view_is_kept_and_extended() -> None:
    sent = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-For", "7.7.7.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "app.example"),
    ]
    out = forwarded(HTTP, sent, remote="100.64.0.1", trusted=True)
    assert out.getall("X-Forwarded-For") == ["6.6.6.6, 7.7.7.7, 100.64.0.1"]
    assert (out["X-Forwarded-Proto"], out["X-Forwarded-Host"]) == ("https", "app.example")


def test_the_checked_agent_id_replaces_any_the_client_sent() -> None:
    out = forwarded(WS, [("X-Edge-Agent-Id", "forged"), ("Connection", "X-Edge-Agent-Id")], agent="edge_1")
    assert out.getall("X-Edge-Agent-Id") == ["edge_1"]


@pytest.mark.parametrize(
    ("sent", "query_token", "authorization"),
    [
        ([], ["qtoken"], ["Bearer qtoken"]),  # from the query, as a header (never in the URL)
        ([("Authorization", "Bearer h")], ["qtoken"], ["Bearer h"]),  # a header wins
        ([], [], []),
    ],
)
def test_a_query_token_goes_on_as_authorization(
    sent: list[tuple[str, str]], query_token: list[str], authorization: list[str]
) -> None:
    route = replace(WS, query_token=True)
    assert forwarded(route, sent, query_token=query_token).getall("Authorization", []) == authorization
    assert (
        forwarded(replace(route, forward_authorization=False), [], query_token=query_token).getall("Authorization", [])
        == []
    )


@pytest.mark.parametrize(
    ("route", "query", "sent"),
    [
        (WS, "edge_agent_id=a&access_token=t", "edge_agent_id=a&access_token=t"),  # not a token route: as is
        (replace(WS, query_token=True), "edge_agent_id=a&access_token=t&x=%20", "edge_agent_id=a&x=%20"),
        (replace(WS, query_token=True), "access%5Ftoken=t&b=1", "b=1"),  # any spelling of the name
        (HTTP, "a=1&a=2", "a=1&a=2"),
    ],
)
def test_upstream_query(route: Route, query: str, sent: str) -> None:
    assert upstream_query(query, route) == sent


# --- forward_fields: the same decisions on raw fields, for the data plane's hot path ----------

NAMES = st.sampled_from(
    [
        "Accept", "Connection", "connection", "X-Secret", "Keep-Alive", "Authorization", "authorization",
        "X-Forwarded-For", "x-forwarded-for", "X_Forwarded_For", "X-Forwarded-Proto", "X-Forwarded-Host",
        "X-Edge-Agent-Id", "X_Edge_Agent_Id", "Host", "Content-Length", "Sec-WebSocket-Key", "Cookie", "TE",
        "X-Request-Id", "x_request_id",
    ]
)  # fmt: skip
VALUES = st.sampled_from(["a", "close, X-Secret", "X_Secret, keep-alive", "203.0.113.7", "Bearer t", "é\udcff"])


@given(
    st.lists(st.tuples(NAMES, VALUES), max_size=8),
    st.sampled_from([WS, HTTP, replace(WS, forward_authorization=False)]),
    st.sampled_from([None, "edge_1"]),
    st.booleans(),
    st.sampled_from([[], ["tok"]]),
    st.sampled_from([None, "req-1"]),
)
def test_forward_fields_decides_as_forward_headers(
    sent: list[tuple[str, str]],
    route: Route,
    agent: str | None,
    trusted: bool,
    query_token: list[str],
    request_id: str | None,
) -> None:
    raw = [(name.encode("latin-1"), value.encode("utf-8", "surrogateescape")) for name, value in sent]
    expected = forwarded(route, sent, agent, trusted=trusted, query_token=query_token, request_id=request_id)
    lines = b"".join(
        b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("utf-8", "surrogateescape"))
        for name, value in expected.items()
    )
    got = forward_fields(
        raw,
        route,
        agent,
        identity=IDENTITY,
        remote="203.0.113.9",
        scheme="http",
        host="example.com",
        trusted=trusted,
        query_token=query_token,
        request_id=request_id,
    )
    assert got == lines


def test_forward_fields_reframed_drops_content_length_in_every_spelling() -> None:
    raw = [(b"Content-Length", b"3"), (b"content_length", b"3"), (b"Accept", b"a")]
    got = forward_fields(raw, HTTP, None, identity=IDENTITY, remote=None, scheme="http", host="h", reframed=True)
    assert got == b"Accept: a\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n"


def test_a_plan_kept_for_these_names_still_reads_each_requests_connection() -> None:
    """What forward_fields keeps is planned once per list of names; the fields Connection
    names are this request's own: the same names with another Connection value drop others."""

    def sent(named: bytes) -> bytes:
        raw = [(b"Connection", named), (b"X-A", b"1"), (b"X-B", b"2")]
        return forward_fields(raw, HTTP, None, identity=IDENTITY, remote=None, scheme="http", host="h")

    tail = b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n"
    assert sent(b"x-a") == b"X-B: 2\r\n" + tail
    assert sent(b"X_B") == b"X-A: 1\r\n" + tail
    assert sent(b"keep-alive") == b"X-A: 1\r\nX-B: 2\r\n" + tail
    assert sent(b"x-a") == b"X-B: 2\r\n" + tail  # the plan for these names and x-a, kept: the same


def test_the_plans_kept_stay_bounded_whatever_names_clients_send() -> None:
    for n in range(3 * forwarding._PLANS_HELD):
        raw = [(b"X-Name-%d" % n, b"v")]
        got = forward_fields(raw, HTTP, None, identity=IDENTITY, remote=None, scheme="http", host="h")
        assert got.startswith(b"X-Name-%d: v\r\n" % n)
    long = [(b"X-" + b"n" * 2000, b"v")]
    forward_fields(long, HTTP, None, identity=IDENTITY, remote=None, scheme="http", host="h")
    named_long = [(b"Connection", b"x-" + b"n" * 2000), (b"X-A", b"1")]
    forward_fields(named_long, HTTP, None, identity=IDENTITY, remote=None, scheme="http", host="h")
    assert len(forwarding._PLANS) <= forwarding._PLANS_HELD
    assert all(sum(map(len, names)) <= 1024 for _, names, _ in forwarding._PLANS)
    assert all(sum(map(len, names)) + sum(map(len, named)) <= 1024 for _, names, named in forwarding._PLANS)
