"""Properties of path canonicalisation and route matching (hypothesis). No sockets.

The threat: a spelling of a path that reaches a route it does not literally name, or that
a lenient backend behind a catch-all reads as a route that demands auth. Profiles: see
tests/conftest.py (HYPOTHESIS_PROFILE=long for a long run).
"""

from __future__ import annotations

import string
from urllib.parse import unquote

import pytest
from hypothesis import assume, event, example, given
from hypothesis import strategies as st

from sidecar.config import Route, Upstream, load_config
from sidecar.paths import BadPath, CanonicalPath, canonicalize
from sidecar.routing import Router

from .conftest import ROOT

UNRESERVED = set(string.ascii_letters + string.digits + "-._~")
RAW_OK = UNRESERVED | set("!$&'()*+,=:@/")

# --- strategies ---------------------------------------------------------------------


def escape(byte: int, upper: bool = True) -> str:
    text = f"%{byte:02X}"
    return text if upper else text.lower()


escapes = st.builds(escape, st.integers(0, 255), st.booleans())
# Percent-encoded UTF-8 of any character (surrogates excluded: they have no UTF-8).
encoded_chars = st.builds(
    lambda ch, upper: "".join(escape(b, upper) for b in ch.encode("utf-8")), st.characters(codec="utf-8"), st.booleans()
)
# Biased toward what canonicalisation must get right.
TRICKS = [
    "/", "/", "/", ".", "..", "%", "%2", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%25", "%00", "%3B", "\\", ";",
    "\x00", "\r", "\n", "\t", " ", "#", "?", "\x7f", "\x85", "\u2028", "\u00e9", "\udc80", "~", ":", "@", "*",
    *"0123456789abcdefABCDEF",
]  # fmt: skip
tricky = st.sampled_from(TRICKS)
fragments = st.one_of(tricky, escapes, encoded_chars, st.text(max_size=3), st.sampled_from(sorted(RAW_OK)))
random_paths = st.builds(
    lambda lead, parts: lead + "".join(parts), st.sampled_from(["/", "/", "/", "", "//"]), st.lists(fragments)
)

REAL = ["/", "/edge/ws", "/ws/edge", "/edge/message", "/edge/message/", "/api/v1/items", "/health"]
MUTATIONS = [
    "/", "//", "/./", "/../", "/.", "/..", ".", "%2e", "%2E%2e", "%2F", "%2f", "%5C", "\\", ";x=1", ";",
    "%00", "\x00", "%3B", "%20", " ", "%", "%%", "%25", "%252F", "%C0%AF", "\t", "#", "?", "%0d%0a",
]  # fmt: skip


@st.composite
def real_paths(draw: st.DrawFn) -> str:
    """A real-looking path with a few mutations: inserted tricks, case flips, escapes."""
    path = list(draw(st.sampled_from(REAL)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(path)))
        action = draw(st.sampled_from(["insert", "case", "encode", "delete"]))
        if action == "insert":
            path[at:at] = [draw(st.sampled_from(MUTATIONS))]
        elif at < len(path) and action == "case":
            path[at] = path[at].swapcase()
        elif at < len(path) and action == "encode" and len(path[at]) == 1:
            path[at] = "".join(escape(b, draw(st.booleans())) for b in path[at].encode("utf-8", "surrogatepass"))
        elif at < len(path) and action == "delete":
            del path[at]
    return "".join(path)


any_paths = st.one_of(random_paths, real_paths())


def try_canonicalize(raw: str) -> CanonicalPath | None:
    try:
        canonical = canonicalize(raw)
    except BadPath as exc:
        event(f"refused: {exc.why[:20]}")  # --hypothesis-show-statistics shows the mix
        return None
    event("accepted")
    return canonical


# --- canonicalize -----------------------------------------------------------------------


@given(any_paths)
@example("/edge/ws%2e")
@example("/%2e%2E/edge/message")
@example("/%C0%AF")
@example("/edge/\udc80")
def test_canonicalize_accepts_only_canonical_paths(raw: str) -> None:
    canonical = try_canonicalize(raw)  # anything but BadPath fails the test
    if canonical is None:
        return
    decoded, wire = canonical.decoded, canonical.wire
    # Idempotent: the wire form is its own canonical form, with the same meaning.
    assert canonicalize(wire) == canonical
    # The decoded form is the percent-decoding of the wire form and of the raw path.
    assert unquote(wire, errors="strict") == decoded
    assert unquote(raw, errors="strict") == decoded
    # No empty segment (but a trailing '/'), no dot segment.
    segments = decoded.split("/")[1:]
    assert "." not in segments and ".." not in segments
    assert "" not in segments[:-1]
    # No separator a backend may reinterpret, raw or escaped; no controls; no escaped '%'.
    assert decoded.startswith("/") and wire.startswith("/")
    assert decoded.count("/") == wire.count("/")  # never an encoded '/'
    for bad in ("\\", ";", "%2F", "%5C", "%00", "%25", "%3B", *map(chr, range(0x20)), "\x7f"):
        assert bad not in wire.upper() if bad.startswith("%") else bad not in wire
    assert not any(ch in decoded for ch in "\\;" + "".join(map(chr, [*range(0x20), 0x7F])))
    # The wire form: allowed raw characters and upper-case escapes of what is not unreserved.
    i = 0
    while i < len(wire):
        if wire[i] == "%":
            pair = wire[i + 1 : i + 3]
            assert pair == pair.upper() and chr(int(pair, 16)) not in UNRESERVED
            i += 3
        else:
            assert wire[i] in RAW_OK
            i += 1


SEGMENT = st.text(alphabet=sorted(UNRESERVED | set("!$&'()*+,=:@")), min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)


@given(st.lists(SEGMENT, max_size=5), st.booleans())
def test_canonicalize_accepts_every_plain_path(segments: list[str], trailing: bool) -> None:
    raw = "/" + "/".join(segments) + ("/" if trailing and segments else "")
    assert canonicalize(raw) == CanonicalPath(decoded=raw, wire=raw)


# --- Router: random configs -------------------------------------------------------------

UPSTREAM = Upstream(name="up", url="http://127.0.0.1:1")
WORDS = ["a", "b", "A", "api", "edge", "ws", "message", "x.y", "~"]
vocab_path = st.lists(st.sampled_from(WORDS), max_size=3).map(lambda parts: "/" + "/".join(parts))


@st.composite
def routers(draw: st.DrawFn) -> list[Route]:
    """Routes as sidecar.config would accept them: canonical paths, every path and prefix claimed
    once, prefixes ending in '/'. Drawn from a small vocabulary so they collide."""
    claimed: set[str] = set()
    routes: list[Route] = []
    for index in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            prefix = draw(vocab_path).rstrip("/") + "/"
            if prefix + "*" in claimed:
                continue
            claimed.add(prefix + "*")
            routes.append(Route(name=f"r{index}", websocket=False, upstream=UPSTREAM, prefix=prefix))
        else:
            candidates = draw(st.lists(st.one_of(vocab_path, vocab_path.map(lambda p: p + "/")), min_size=1))
            paths = tuple(p for p in dict.fromkeys(c.replace("//", "/") for c in candidates) if p not in claimed)
            if not paths:
                continue
            claimed.update(paths)
            routes.append(Route(name=f"r{index}", websocket=draw(st.booleans()), upstream=UPSTREAM, paths=paths))
    return routes


@st.composite
def request_paths(draw: st.DrawFn) -> str:
    """A vocabulary path spelt the ways lenient backends forgive: case, trailing '/', '.', ' '."""
    path = draw(vocab_path)
    if draw(st.booleans()):
        path = "".join(ch.swapcase() if draw(st.booleans()) else ch for ch in path)
    path += draw(st.sampled_from(["", "", "/", ".", "%20", "/%20", "/.", "..", "/x", "/A"]))
    return draw(st.one_of(st.just(path), real_paths(), random_paths))


def lenient(path: str) -> str:
    """What a lenient backend makes of a path: case-insensitive, trailing '/', '.' and
    spaces ignored (RFC 3986 section 6.2.2 does not allow either; backends do it anyway)."""
    return path.casefold().rstrip("/. ")


def under(path: str, prefix: str) -> bool:
    """Does a prefix ('/api/') cover the path ('/api' and '/api/...')?"""
    return path.startswith(prefix) or path == prefix[:-1]


def lenient_under(path: str, prefix: str) -> bool:
    return path.casefold().startswith(prefix.casefold()) or lenient(path) == lenient(prefix)


@given(routers(), request_paths())
@example([Route("a", False, UPSTREAM, prefix="/a/"), Route("all", False, UPSTREAM, prefix="/")], "/a.")
@example([Route("root", False, UPSTREAM, paths=("/",)), Route("all", False, UPSTREAM, prefix="/")], "/%20")
def test_no_path_reaches_a_route_it_does_not_name(routes: list[Route], raw: str) -> None:
    canonical = try_canonicalize(raw)
    assume(canonical is not None)
    assert canonical is not None
    path = canonical.decoded
    resolution = Router(routes).resolve(path)
    exact = [r for r in routes if path in r.paths]
    if exact:  # an exact path beats any prefix
        assert resolution.route is exact[0]
        return
    route = resolution.route
    if route is None:
        return
    # The route literally names the path ...
    assert route.prefix is not None and under(path, route.prefix)
    # ... through the longest prefix that covers it ...
    longer = [r for r in routes if r.prefix and len(r.prefix) > len(route.prefix)]
    assert not [r for r in longer if under(path, r.prefix or "")]
    # ... and no lenient backend reads it as another route's exact path or longer prefix.
    for other in routes:
        if other is not route:
            assert not [p for p in other.paths if lenient(p) == lenient(path)], (path, other.paths)
    assert not [r for r in longer if lenient_under(path, r.prefix or "")], path


@given(routers().filter(lambda routes: any(r.prefix for r in routes)), st.data())
def test_router_serves_what_nothing_else_claims(routes: list[Route], data: st.DataObject) -> None:
    """Refusal is not a blanket answer: a path under a prefix, that no lenient reading sends
    to another route, reaches the longest prefix that covers it."""
    prefix = data.draw(st.sampled_from([r.prefix for r in routes if r.prefix]))
    path = data.draw(st.sampled_from([prefix + data.draw(vocab_path)[1:], prefix[:-1] or "/"]))
    covering = sorted((r for r in routes if r.prefix and under(path, r.prefix)), key=lambda r: -len(r.prefix or ""))
    best = covering[0]
    assume(path not in {p for r in routes for p in r.paths})
    assume(not [p for r in routes for p in r.paths if lenient(p) == lenient(path)])
    longer = [r.prefix for r in routes if r.prefix and len(r.prefix) > len(best.prefix or "")]
    assume(not [p for p in longer if lenient_under(path, p)])
    assert Router(routes).resolve(path).route is best


# --- Router: the shipped routes.yaml ------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> Router:
    config, problems = load_config((ROOT / "routes.yaml").read_text(), env={"EDGE_SECRET": "abc"})
    assert config is not None, problems
    return Router(config.routes)


AUTHENTICATED = {"/edge/ws", "/ws/edge", "/edge/message"}


@given(any_paths)
@example("/edge/%6Dessage")  # an escaped unreserved character is the same path (RFC 3986 section 6.2.2.2)
@example("//edge/message")
@example("/edge/message/")
@example("/edge/message.")
@example("/edge/message%20")
@example("/EDGE/message")
@example("/edge/me%C5%BFsage")  # U+017F LONG S casefolds to 's'
def test_shipped_routes_only_by_their_own_spelling(shipped: Router, raw: str) -> None:
    canonical = try_canonicalize(raw)
    if canonical is None:
        return
    route = shipped.resolve(canonical.decoded).route
    event(f"route: {route.name if route else None}")
    if route is not None and route.name in ("edge", "edge-message"):
        assert canonical.decoded in route.paths and canonical.wire == canonical.decoded
    if route is not None and route.name == "edge-message":
        assert canonical.wire == "/edge/message"
    if route is not None and route.name == "default":
        # The catch-all never carries a spelling a lenient backend reads as an authenticated path.
        assert lenient(canonical.decoded) not in {lenient(p) for p in AUTHENTICATED}
        assert lenient(unquote(canonical.wire)) not in {lenient(p) for p in AUTHENTICATED}
