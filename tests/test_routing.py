"""sidecar.paths and sidecar.routing: canonical paths and path -> route resolution. No sockets."""

from __future__ import annotations

import pytest

from sidecar.config import Config, load_config
from sidecar.paths import BadPath, CanonicalPath, canonicalize
from sidecar.routing import Router

from .conftest import ROOT


def load(text: str) -> Config:
    config, problems = load_config(text, env={"EDGE_SECRET": "abc"})
    assert config is not None, [str(p) for p in problems]
    return config


@pytest.fixture(scope="module")
def shipped() -> Router:
    return Router(load((ROOT / "routes.yaml").read_text()).routes)


# --- canonicalize: accepted ---------------------------------------------------

ACCEPTED = [
    # raw, decoded, wire
    ("/", "/", "/"),
    ("/edge/ws", "/edge/ws", "/edge/ws"),
    ("/edge/ws/", "/edge/ws/", "/edge/ws/"),  # a trailing slash is not an empty segment
    ("/%65dge", "/edge", "/edge"),  # unreserved escapes are decoded on the wire too
    ("/%65dge/%77s", "/edge/ws", "/edge/ws"),
    ("/a%41%7e%7E%2D%5F%2e", "/aA~~-_.", "/aA~~-_."),
    ("/%2a", "/*", "/%2A"),  # other escapes are kept, hex upper-cased
    ("/a%3a", "/a:", "/a%3A"),
    ("/a%20b", "/a b", "/a%20b"),
    ("/%C3%A9", "/\u00e9", "/%C3%A9"),
    ("/%e2%82%ac", "/\u20ac", "/%E2%82%AC"),
    ("/...", "/...", "/..."),  # three dots is a name, not a dot segment
    ("/a.b/.c/..d", "/a.b/.c/..d", "/a.b/.c/..d"),
    ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
]


@pytest.mark.parametrize(("raw", "decoded", "wire"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_canonicalize_accepts(raw: str, decoded: str, wire: str) -> None:
    assert canonicalize(raw) == CanonicalPath(decoded=decoded, wire=wire)


# --- canonicalize: refused ----------------------------------------------------

REFUSED = [
    # raw, why
    ("//", "empty segment ('//')"),
    ("//edge/ws", "empty segment ('//')"),
    ("/edge//ws", "empty segment ('//')"),
    ("/./", "dot segment"),
    ("/edge/./ws", "dot segment"),
    ("/../", "dot segment"),
    ("/edge/ws/..", "dot segment"),
    ("/edge/.", "dot segment"),
    ("/%2e%2e/edge/ws", "dot segment"),
    ("/.%2E/edge/ws", "dot segment"),
    ("/edge/%2E", "dot segment"),
    ("/edge%2Fws", "encoded '/' (%2F)"),
    ("/edge%2fws", "encoded '/' (%2F)"),
    ("/edge%5Cws", "refused character %5C"),
    ("/edge%5cws", "refused character %5C"),
    ("/edge\\ws", "refused character '\\\\'"),
    ("/edge/ws;jsessionid=1", "refused character ';'"),
    ("/edge/ws%3Bx", "refused character %3B"),
    ("/edge/ws%3bx", "refused character %3B"),
    ("/edge/ws\x00", "refused character '\\x00'"),
    ("/edge/ws%00", "refused character %00"),
    ("/edge/ws%0d%0aX-Injected:1", "refused character %0D"),
    ("/edge/ws%0A", "refused character %0A"),
    ("/edge/ws\r\n", "refused character '\\r'"),
    ("/edge/ws\t", "refused character '\\t'"),
    ("/edge ws", "refused character ' '"),
    ("/edge/message#x", "refused character '#'"),
    ("/edge/ws#", "refused character '#'"),
    ('/edge/"ws"', "refused character '\"'"),
    ("/edge/<ws>", "refused character '<'"),
    ("/edge/ws|x", "refused character '|'"),
    ("/edge/wsé", "refused character 'é'"),
    ("/edge%252Fmessage", "refused character %25"),
    ("/a%25b", "refused character %25"),
    ("/edge\x7f", "refused character '\\x7f'"),
    ("/edge%7F", "refused character %7F"),
    ("/\u00e9", "refused character '\u00e9'"),
    ("/edge/ws%", "malformed percent-escape"),
    ("/edge/ws%4", "malformed percent-escape"),
    ("/edge/ws%zz", "malformed percent-escape"),
    ("/edge/ws%4g", "malformed percent-escape"),
    ("/edge/ws%%41", "malformed percent-escape"),
    ("/edge/ws%ff", "percent-escapes are not valid UTF-8"),
    ("/%C3%28", "percent-escapes are not valid UTF-8"),
    ("/%C0%AF", "percent-escapes are not valid UTF-8"),  # overlong '/'
    ("http://x/edge/ws", "the path must start with '/'"),
    ("*", "the path must start with '/'"),
    ("", "the path must start with '/'"),
    ("edge/ws", "the path must start with '/'"),
]


@pytest.mark.parametrize(("raw", "why"), REFUSED, ids=[repr(r[0]) for r in REFUSED])
def test_canonicalize_refuses(raw: str, why: str) -> None:
    with pytest.raises(BadPath) as info:
        canonicalize(raw)
    assert info.value.why == why
    assert str(info.value) == why
    assert isinstance(info.value, ValueError)


# --- Router on the shipped routes.yaml ----------------------------------------

RESOLVED = [
    # path, route name (None: no route), suggestion
    ("/edge/ws", "edge", None),
    ("/ws/edge", "edge", None),
    ("/edge/message", "edge-message", None),
    ("/", "default", None),
    ("/anything/else", "default", None),
    ("/edge", "default", None),
    ("/edge/wss", "default", None),
    ("/edge/ws/x", "default", None),
    # near misses of an exact path: refused with the path that was meant, never
    # handed to the catch-all (which has no auth).
    ("/EDGE/WS", None, "/edge/ws"),
    ("/Edge/Ws", None, "/edge/ws"),
    ("/edge/ws/", None, "/edge/ws"),
    ("/edge/ws.", None, "/edge/ws"),
    ("/edge/ws./", None, "/edge/ws"),
    ("/edge/ws//", None, "/edge/ws"),
    ("/WS/EDGE/", None, "/ws/edge"),
    ("/Edge/Message", None, "/edge/message"),
    ("/edge/message/", None, "/edge/message"),
]


@pytest.mark.parametrize(("path", "name", "suggestion"), RESOLVED, ids=[r[0] for r in RESOLVED])
def test_resolve_shipped(shipped: Router, path: str, name: str | None, suggestion: str | None) -> None:
    resolution = shipped.resolve(path)
    assert (resolution.route.name if resolution.route else None, resolution.suggestion) == (name, suggestion)


def test_websocket_paths_shipped(shipped: Router) -> None:
    assert shipped.websocket_paths == ("/edge/ws", "/ws/edge")


def test_resolved_route_is_the_config_route(shipped: Router) -> None:
    route = shipped.resolve("/ws/edge").route
    assert route is not None
    assert route.websocket is True
    assert route.upstream_path == "/edge/ws"
    assert route.auth is not None and route.auth.name == "edge"
    default = shipped.resolve("/x").route
    assert default is not None and default.auth is None and default.prefix == "/"


# --- Router on small inline configs -------------------------------------------

PREFIXES = """\
upstreams:
  b: {url: 'http://127.0.0.1:1'}
routes:
  - {name: api, type: http, prefix: /api, upstream: b}
  - {name: v2, type: http, prefix: /api/v2/, upstream: b}
  - {name: special, type: http, paths: [/api/v2/special], upstream: b}
  - {name: sock, type: websocket, paths: [/api/ws], upstream: b}
"""

PREFIX_CASES = [
    ("/api", "api", None),
    ("/api/", "api", None),
    ("/api/x", "api", None),
    ("/api/x/y", "api", None),
    ("/apix", None, None),
    ("/ap", None, None),
    ("/", None, None),
    ("/other", None, None),
    ("/api/v2", "v2", None),  # longest prefix wins, with or without its slash
    ("/api/v2/", "v2", None),
    ("/api/v2/x", "v2", None),
    ("/api/v2x", "api", None),
    ("/api/v2/special", "special", None),  # exact before any prefix
    ("/api/v2/special/x", "v2", None),
    ("/API/V2/SPECIAL", None, "/api/v2/special"),
    ("/api/v2/special/", None, "/api/v2/special"),
    ("/api/ws", "sock", None),
    ("/api/WS", None, "/api/ws"),
    # near misses of a longer prefix never fall through to a shorter one (found by
    # tests/test_fuzz_paths.py: '/a.' reached the catch-all of a config with prefix /a/)
    ("/api/v2.", None, "/api/v2/"),
    ("/api/v2 ", None, "/api/v2/"),
    ("/api/V2.", None, "/api/v2/"),
    ("/api/v2/.. ", "v2", None),  # '.. ' is a name, inside the prefix
]


@pytest.mark.parametrize(("path", "name", "suggestion"), PREFIX_CASES, ids=[c[0] for c in PREFIX_CASES])
def test_resolve_prefixes(path: str, name: str | None, suggestion: str | None) -> None:
    router = Router(load(PREFIXES).routes)
    resolution = router.resolve(path)
    assert (resolution.route.name if resolution.route else None, resolution.suggestion) == (name, suggestion)


def test_prefix_is_stored_with_trailing_slash() -> None:
    routes = load(PREFIXES).routes
    assert [(r.name, r.prefix, r.describe_paths()) for r in routes] == [
        ("api", "/api/", "/api/*"),
        ("v2", "/api/v2/", "/api/v2/*"),
        ("special", None, "/api/v2/special"),
        ("sock", None, "/api/ws"),
    ]


def test_websocket_paths_inline() -> None:
    assert Router(load(PREFIXES).routes).websocket_paths == ("/api/ws",)


def test_no_routes_resolves_nothing() -> None:
    router = Router([])
    assert router.websocket_paths == ()
    resolution = router.resolve("/edge/ws")
    assert (resolution.route, resolution.suggestion) == (None, None)


def test_exact_root_path_is_not_a_near_miss_of_everything() -> None:
    text = """\
upstreams:
  b: {url: 'http://127.0.0.1:1'}
routes:
  - {name: root, type: http, paths: [/], upstream: b}
"""
    router = Router(load(text).routes)
    assert router.resolve("/").route is not None
    resolution = router.resolve("/x")
    assert (resolution.route, resolution.suggestion) == (None, None)


def test_near_miss_of_exact_root_does_not_reach_the_catch_all() -> None:
    """Found by tests/test_fuzz_paths.py: '/%20' went to the catch-all beside an exact '/'."""
    text = """\
upstreams:
  b: {url: 'http://127.0.0.1:1'}
routes:
  - {name: root, type: http, paths: [/], upstream: b}
  - {name: all, type: http, prefix: /, upstream: b}
"""
    router = Router(load(text).routes)

    def resolve(path: str) -> tuple[str | None, str | None]:
        resolution = router.resolve(path)
        return (resolution.route.name if resolution.route else None, resolution.suggestion)

    assert resolve("/") == ("root", None)
    assert resolve("/x") == ("all", None)
    for near in ("/ ", "/...", "/ /"):
        assert resolve(near) == (None, "/")


def test_prefixes_that_differ_in_case_each_serve_their_own_spelling() -> None:
    """Found by the long run of tests/test_fuzz_paths.py: with prefixes /A/ and /a/, '/a/x' was
    refused with 'did you mean /A/' (the first of the two as long), though /a/ names it."""
    text = """\
upstreams:
  b: {url: 'http://127.0.0.1:1'}
routes:
  - {name: upper, type: http, prefix: /A/, upstream: b}
  - {name: lower, type: http, prefix: /a/, upstream: b}
  - {name: all, type: http, prefix: /, upstream: b}
"""
    router = Router(load(text).routes)

    def resolve(path: str) -> tuple[str | None, str | None]:
        resolution = router.resolve(path)
        return (resolution.route.name if resolution.route else None, resolution.suggestion)

    assert (resolve("/A/x"), resolve("/A")) == (("upper", None), ("upper", None))
    assert (resolve("/a/x"), resolve("/a")) == (("lower", None), ("lower", None))
    assert resolve("/a.") == (None, "/A/")  # a near miss of both, still refused
    assert resolve("/b") == ("all", None)
