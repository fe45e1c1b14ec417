"""What the backend is sent: headers and query. Pure: no I/O, no aiohttp.

Hop-by-hop fields are dropped (RFC 9110 section 7.6.1), so are the fields the sidecar
owns and the ones it vouches for (the agent id headers), in every spelling a CGI-style
backend would read as the same name; then the sidecar adds its own. What the client gets
back is :func:`sidecar.h1.relayed_head`'s.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from .auth import QUERY_TOKEN, without_query_token
from .config import Route
from .context import Context
from .headers import HOP_BY_HOP, SIDECAR_OWNED, WEBSOCKET_OWNED


@functools.lru_cache(maxsize=64)
def _dropped(websocket: bool, strip_authorization: bool, identity: frozenset[str]) -> frozenset[str]:
    """The fields never forwarded on such a route (built once, not per request)."""
    drop = HOP_BY_HOP | SIDECAR_OWNED | identity
    if websocket:
        drop |= WEBSOCKET_OWNED
    if strip_authorization:
        drop |= {"authorization"}
    return frozenset(_dashed(name) for name in drop)


def _dashed(name: str) -> str:
    """A header name as CGI-style backends (WSGI, PHP, Rack) read it: '_' and '-' are
    the same there (both X_Edge_Agent_Id and X-Edge-Agent-Id become HTTP_X_EDGE_AGENT_ID),
    so a client's underscore spelling must not pass for a header the sidecar owns."""
    return name.lower().replace("_", "-")


def upstream_query(raw_query: str, route: Route) -> str:
    """The query string the backend is sent: the client's, byte for byte, minus the
    token on a route that takes one there (it is never passed on in a URL)."""
    return without_query_token(raw_query) if route.query_token and route.auth is not None else raw_query


def forward_fields(
    fields: Sequence[tuple[bytes, bytes]],
    route: Route,
    agent_id: str | None,
    *,
    identity: frozenset[str],
    remote: str | None,
    scheme: str,
    host: str,
    trusted: bool = False,
    query_token: Sequence[str] = (),
    reframed: bool = False,
    request_id: str | None = None,
) -> bytes:
    """The request's end-to-end fields as the parser reported them (raw bytes, in order),
    minus what the sidecar owns, plus its own, written out as header lines (no decoding,
    no multidict: the hot path). ``tests/test_forwarding.py`` holds it to a readable model
    of the same rules (``forward_headers`` there), which says what each argument does.
    ``reframed``: the sidecar frames the body itself, so the client's Content-Length is
    dropped too."""
    names = tuple([name for name, _ in fields])
    strip_authorization = route.auth is not None and not route.forward_authorization
    key = (route.websocket, strip_authorization, identity, reframed, request_id is not None)
    plan = _plan_for(key, names, _NONE_NAMED)
    if plan[5]:  # the fields Connection names are hop-by-hop too: the plan for those names
        named = frozenset(t.strip().lower().replace(b"_", b"-") for i in plan[5] for t in fields[i][1].split(b","))
        plan = _plan_for(key, names, named)
    kept, chained, proto_at, host_at, has_authorization, _ = plan
    out = [b"%s: %s\r\n" % fields[i] for i in kept]
    chain = [fields[i][1] for i in chained]
    given_proto = fields[proto_at][1] if proto_at is not None else None
    given_host = fields[host_at][1] if host_at is not None else None
    rule = route.auth.agent_id if route.auth is not None else None
    if rule is not None and agent_id is not None:
        out.append(b"%s: %s\r\n" % (rule.forward_header.encode("latin-1"), agent_id.encode("utf-8", "surrogateescape")))
    forwarded_for = remote.encode() if remote else b""
    proto, shown = scheme.encode(), host.encode("utf-8", "surrogateescape")
    if trusted:
        joined = b", ".join(chain)
        forwarded_for = joined + b", " + forwarded_for if joined and forwarded_for else joined or forwarded_for
        proto = given_proto if given_proto is not None else proto
        shown = given_host if given_host is not None else shown
    if forwarded_for:
        out.append(b"X-Forwarded-For: %s\r\n" % forwarded_for)
    out.append(b"X-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\n" % (proto, shown))
    if request_id is not None:
        out.append(b"X-Request-Id: %s\r\n" % request_id.encode())
    if route.forward_authorization and query_token and not has_authorization:
        out.append(b"Authorization: Bearer %s\r\n" % query_token[0].encode("utf-8", "surrogateescape"))
    return b"".join(out)


_LENGTH = frozenset({b"content-length"})
_REQUEST_ID = frozenset({b"x-request-id"})

# A request's field names (and those its Connection names) -> what forward_fields keeps of
# them: names repeat from request to request; values do not matter but for Connection's.
Plan = tuple[tuple[int, ...], tuple[int, ...], int | None, int | None, bool, tuple[int, ...]]
PlanKey = tuple[bool, bool, frozenset[str], bool, bool]
_PLANS: dict[tuple[PlanKey, tuple[bytes, ...], frozenset[bytes]], Plan] = {}
_PLANS_HELD = 256
_NONE_NAMED: frozenset[bytes] = frozenset()


def _plan_for(key: PlanKey, names: tuple[bytes, ...], named: frozenset[bytes]) -> Plan:
    """The plan for these names, ``named`` by Connection besides, from the bounded cache."""
    plan = _PLANS.get((key, names, named))
    if plan is None:
        plan = _plan(_drop_for(*key) | named, names)
        if len(_PLANS) >= _PLANS_HELD:
            _PLANS.clear()  # names are the client's: a flood of new ones only keeps this cold
        if len(names) <= 32 and sum(map(len, names)) + sum(map(len, named)) <= 1024:
            _PLANS[(key, names, named)] = plan
    return plan


def _drop_for(
    websocket: bool, strip_authorization: bool, identity: frozenset[str], reframed: bool, request_id: bool
) -> frozenset[bytes]:
    drop = _dropped_raw(websocket, strip_authorization, identity)
    if reframed:
        drop = drop | _LENGTH
    if request_id:
        drop = drop | _REQUEST_ID
    return drop


def _plan(drop: frozenset[bytes], names: tuple[bytes, ...]) -> Plan:
    """Which fields pass (by index), which are the client's X-Forwarded-For chain and its
    first X-Forwarded-Proto and -Host, whether it sent Authorization, which are Connection."""
    kept: list[int] = []
    chain: list[int] = []
    proto: int | None = None
    host: int | None = None
    has_authorization = False
    connection: list[int] = []
    for i, name in enumerate(names):
        lower = name.lower()
        dashed = lower.replace(b"_", b"-")
        if lower == b"authorization":
            has_authorization = True
        elif lower == b"connection":
            connection.append(i)
        if dashed in drop or dashed.startswith(b"x-forwarded-"):
            if lower == b"x-forwarded-for":
                chain.append(i)
            elif lower == b"x-forwarded-proto" and proto is None:
                proto = i
            elif lower == b"x-forwarded-host" and host is None:
                host = i
            continue
        kept.append(i)
    return tuple(kept), tuple(chain), proto, host, has_authorization, tuple(connection)


@functools.lru_cache(maxsize=64)
def _dropped_raw(websocket: bool, strip_authorization: bool, identity: frozenset[str]) -> frozenset[bytes]:
    return frozenset(name.encode("latin-1") for name in _dropped(websocket, strip_authorization, identity))


def upstream_request(
    ctx: Context,
    fields: Sequence[tuple[bytes, bytes]],
    agent_id: str | None,
    *,
    identity: frozenset[str],
    local: str,
    reframed: bool = False,
) -> tuple[str, bytes]:
    """What a routed request is sent upstream as, for both kinds of route: the target
    (the route's ``upstream_path``, else the canonical path, and the query as
    :func:`upstream_query` leaves it) and the header lines (:func:`forward_fields`).
    ``local``: the sidecar's own address, the host a request without ``Host`` reached."""
    route, path = ctx.route, ctx.path
    assert route is not None and path is not None
    query = upstream_query(ctx.query_string, route)
    target = (route.upstream_path or path.wire) + ("?" + query if query else "")
    lines = forward_fields(
        fields,
        route,
        agent_id,
        identity=identity,
        remote=ctx.peer,
        scheme="http",
        host=ctx.headers.get("Host") or local,
        trusted=ctx.trusted,
        query_token=ctx.query.getall(QUERY_TOKEN, ()) if route.query_token else (),
        reframed=reframed,
        request_id=ctx.request_id,
    )
    return target, lines
