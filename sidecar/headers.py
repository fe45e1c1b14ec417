"""Which request headers belong to whom. Pure: no I/O, no aiohttp."""

from __future__ import annotations

from multidict import MultiMapping

# RFC 9110 section 7.6.1: hop-by-hop fields, never forwarded. Any field named in
# Connection is hop-by-hop too (see :func:`tokens`).
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "proxy-authorization", "proxy-authenticate", "http2-settings",
    }
)  # fmt: skip

# Set by the sidecar itself; a client's copy is never trusted. Any X-Forwarded-* as well.
SIDECAR_OWNED = frozenset({"host", "expect", "forwarded", "x-real-ip"})
FORWARDED_PREFIX = "x-forwarded-"

# The WebSocket handshake's own fields: each leg negotiates its own.
WEBSOCKET_OWNED = frozenset(
    {
        "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
        "sec-websocket-protocol", "sec-websocket-accept", "content-length",
    }
)  # fmt: skip


def is_reserved(name: str) -> bool:
    """May the sidecar not be configured to set this header (an agent id header)?"""
    lower = name.lower()
    return (
        lower in HOP_BY_HOP
        or lower in SIDECAR_OWNED
        or lower in WEBSOCKET_OWNED
        or lower.startswith(FORWARDED_PREFIX)
        or lower in ("authorization", "cookie", "content-type")
    )


def tokens(headers: MultiMapping[str], name: str) -> set[str]:
    """The comma-separated tokens of every ``name`` header, lower-cased."""
    return {t.strip().lower() for value in headers.getall(name, ()) for t in value.split(",")}
