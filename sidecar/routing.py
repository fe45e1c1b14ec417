"""Request path -> route. Pure: no I/O, no aiohttp.

Matching is exact on the decoded, canonical path (RFC 3986 section 6.2.2): a
path that is not canonical is refused outright rather than normalised, so no
spelling of a path (``//edge/ws``, ``/edge/ws/..``, ``%2e%2e``, ``%2F``,
``;params``) can reach a route it does not literally name, and no lenient
backend behind the catch-all can be handed such a spelling either.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass

from .config import Route

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_HEX = frozenset(string.hexdigits)
# What may stand unescaped in a path (RFC 3986 section 3.3: pchar and '/'), less
# ';', which some backends read as path parameters. Anything else raw ('#', '\\',
# space, '"', '<', non-ASCII ...) is refused: a backend or client library could
# cut the path there or read it differently.
_RAW_OK = frozenset(_UNRESERVED | set("!$&'()*+,=:@/"))
# Bytes refused even percent-encoded: separators a backend may reinterpret ('\\',
# ';'), '%' itself (a double-decoding backend would see a second escape) and
# control characters. An encoded '/' is refused too (below).
_REFUSED = frozenset(b"\\;%") | frozenset(range(0x20)) | {0x7F}


class BadPath(ValueError):
    """The request target is not a canonical absolute path."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class CanonicalPath:
    """``decoded`` is what routes match against; ``wire`` is what an upstream is sent
    (unreserved characters decoded, every other escape kept, hex in upper case)."""

    decoded: str
    wire: str


def canonicalize(raw: str) -> CanonicalPath:
    """Validate a raw request path (no query string) and return its canonical forms.

    Raises :class:`BadPath` naming the first problem found.
    """
    if not raw.startswith("/"):
        raise BadPath("the path must start with '/'")
    decoded = bytearray()
    wire: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch == "%":
            hexpair = raw[i + 1 : i + 3]
            if len(hexpair) != 2 or not set(hexpair) <= _HEX:
                raise BadPath("malformed percent-escape")
            byte = int(hexpair, 16)
            if byte == 0x2F:
                raise BadPath("encoded '/' (%2F)")
            if byte in _REFUSED:
                raise BadPath(f"refused character %{byte:02X}")
            decoded.append(byte)
            wire.append(chr(byte) if chr(byte) in _UNRESERVED else "%" + hexpair.upper())
            i += 3
            continue
        if ch not in _RAW_OK:
            raise BadPath(f"refused character {ch!r}")
        decoded.append(ord(ch))
        wire.append(ch)
        i += 1
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise BadPath("percent-escapes are not valid UTF-8") from None
    segments = text.split("/")[1:]
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            raise BadPath("dot segment")
        if not segment and index != len(segments) - 1:
            raise BadPath("empty segment ('//')")
    return CanonicalPath(decoded=text, wire="".join(wire))


def _near_key(path: str) -> str:
    # Case, and trailing '/', '.' or spaces: what lenient backends ignore.
    return path.rstrip("/. ").casefold()


@dataclass(frozen=True)
class Resolution:
    """The route for a path, or ``None`` with, where the path is a near miss of a
    route's exact path (case, trailing slash or dot), the path that was meant."""

    route: Route | None
    suggestion: str | None = None


class Router:
    """Exact paths first, then the longest prefix. Built once per config."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._exact: dict[str, Route] = {}
        self._near: dict[str, str] = {}
        prefixed: list[Route] = []
        for route in routes:
            for path in route.paths:
                self._exact[path] = route
                # '/' too: its near key is '', which '/%20' and '/...' share.
                self._near[_near_key(path)] = path
            if route.prefix is not None:
                prefixed.append(route)
        self._prefixed = sorted(prefixed, key=lambda r: len(r.prefix or ""), reverse=True)
        self.websocket_paths: tuple[str, ...] = tuple(path for path, route in self._exact.items() if route.websocket)

    def resolve(self, path: str) -> Resolution:
        route = self._exact.get(path)
        if route is not None:
            return Resolution(route)
        meant = self._near.get(_near_key(path))
        if meant is not None:
            # A variant of a literal route path must not slip through to a prefix
            # route: a case-insensitive backend would serve it without the auth.
            return Resolution(None, suggestion=meant)
        folded = path.casefold()
        miss: str | None = None
        for candidate in self._prefixed:  # longest first
            prefix = candidate.prefix
            assert prefix is not None
            if miss is not None and len(prefix) < len(miss):
                break  # a near miss must not fall through to a shorter prefix
            # Prefixes end with '/': '/api/' covers '/api' and '/api/...', not '/apix'. A near
            # miss of the prefix ('/API', '/api.', '/api%20') is caught here like one of an
            # exact path: a shorter prefix (the catch-all) must not carry it to a lenient backend.
            if folded.startswith(prefix.casefold()) or _near_key(path) == _near_key(prefix):
                if path.startswith(prefix) or path == prefix[:-1]:
                    return Resolution(candidate)
                # Keep looking at prefixes as long: '/A/' and '/a/' may both be routes.
                miss = miss or prefix
        return Resolution(None, suggestion=miss)
