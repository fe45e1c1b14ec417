"""Origins as RFC 6454 serialises them. Pure: no I/O, no aiohttp.

A browser sends ``Origin: scheme://host[:port]`` (RFC 6454 section 6.2: scheme and
host lower-case, the port only when it is not the scheme's default), or ``null``
for an opaque origin. Allow-list entries and the header are both brought to that
form, then compared exactly: no wildcards, no suffix matching.
"""

from __future__ import annotations

import re

_DEFAULT_PORTS = {"http": 80, "https": 443}
# scheme "://" host [ ":" port ], nothing after: RFC 6454 section 7.1 (serialized-origin)
_ORIGIN = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::([0-9]{1,5}))?")


def serialize_origin(text: str) -> str | None:
    """``text`` as RFC 6454 serialises an origin, or ``None`` if it is not one
    (``null``, a path, userinfo, a query, a bad port, non-ASCII)."""
    m = _ORIGIN.fullmatch(text.strip(" \t"))
    if m is None:
        return None
    scheme, host, port_text = m.group(1).lower(), m.group(2).lower(), m.group(3)
    if not host.strip(".") or ".." in host:
        return None
    if port_text is None:
        return f"{scheme}://{host}"
    port = int(port_text)
    if not 0 < port < 65536:
        return None
    if _DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origin_allowed(header: list[str], allowed: frozenset[str] | None) -> bool:
    """``header`` holds every Origin value the request carried. No list: anything
    goes. With a list: no Origin is allowed (not a browser: browsers always send
    one on a WebSocket handshake, RFC 6455 section 4.1 item 8); ``null``, a
    malformed value or more than one header line is not."""
    if allowed is None or not header:
        return True
    if len(header) > 1:
        return False
    origin = serialize_origin(header[0])
    return origin is not None and origin in allowed
