"""Request path -> its canonical forms, or a refusal. Pure: no I/O, no aiohttp.

A path is accepted only if it is already canonical (RFC 3986 section 6.2.2): it is
refused outright rather than normalised, so no spelling of a path (``//edge/ws``,
``/edge/ws/..``, ``%2e%2e``, ``%2F``, ``;params``) can reach a route it does not
literally name, and no lenient backend behind the catch-all can be handed such a
spelling either. Routing (``routing``) matches the decoded form; the config
(``config.reader``) accepts only paths written this way.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass

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


@functools.lru_cache(maxsize=4096)  # agents use a few paths: each is checked once, not per request
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
