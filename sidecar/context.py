"""What one request is, as plain values, computed once when its head is complete.

Pure: no I/O, no aiohttp. The listener fills a :class:`Context` from the parsed head;
every check below the dispatcher reads it instead of re-deriving the client address,
the canonical path, the route or the request's correlation id.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from multidict import MultiDict, MultiDictProxy, MultiMapping
from yarl import URL

from .config import Route
from .paths import CanonicalPath


@dataclass(eq=False, slots=True)
class Context:
    method: str
    target: str  # the request target as sent: path and query, not decoded
    version: tuple[int, int]
    headers: MultiMapping[str]
    peer: str | None  # the connection's peer address
    client: str | None  # the client: the peer, or whom a trusted proxy names (sidecar.clients)
    trusted: bool  # the peer is a trusted proxy
    websocket: bool  # the request asks to upgrade to WebSocket (it may still be malformed)
    started: float  # the event loop's clock when the head was complete
    query_string: str = ""  # the raw query, byte for byte
    path: CanonicalPath | None = None  # set once routing has validated the path
    route: Route | None = None  # set once a route matched
    # Set by admission when a signed token's expiry ends its session (exp + leeway, epoch s).
    expires_at: float | None = None
    _query: MultiDictProxy[str] | None = field(default=None, repr=False)
    _request_id: str | None = field(default=None, repr=False)

    @property
    def raw_path(self) -> str:
        """The target's path, without the query."""
        return self.target.partition("?")[0]

    @property
    def decoded_path(self) -> str:
        """The target's path, percent-decoded (for a log line; routes match
        :attr:`path`, which only a canonical path has)."""
        if self.path is not None:
            return self.path.decoded
        return URL.build(path=self.raw_path, encoded=True).path if self.raw_path.startswith("/") else self.raw_path

    @property
    def query(self) -> MultiMapping[str]:
        """The query's parameters, decoded as the client's URL library encoded them
        ('+' is a space), parsed on first use only."""
        if self._query is None:
            self._query = (
                URL.build(query_string=self.query_string, encoded=True).query
                if self.query_string
                else MultiDictProxy(MultiDict())
            )
        return self._query

    @property
    def route_name(self) -> str | None:
        return self.route.name if self.route is not None else None

    @property
    def request_id(self) -> str:
        """This request's correlation id (:func:`request_id`), chosen on first use."""
        if self._request_id is None:
            self._request_id = request_id(self.headers)
        return self._request_id


# Where a request's id may come from, first found first: Railway's edge sets the first on
# every request; a client (or a proxy in front) may set the second.
REQUEST_ID_HEADERS = ("X-Railway-Request-Id", "X-Request-Id")
# What an id may be: it goes into log lines and a header, so short and plain (RFC 9110
# section 5.6.2 token characters, and '/', '=' and '+' for base64).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._~:/=+@-]{1,128}")


def request_id(headers: MultiMapping[str]) -> str:
    """The id that follows a request across the edge, the sidecar and the backend:
    ``X-Railway-Request-Id``, else ``X-Request-Id``, else one made up here (128 random
    bits, hex). Only a correlation id: any client can send either header, so a value
    is taken only if it is sent once and is 1 to 128 plain characters, and it decides
    nothing (no limit, no log line's trust, no routing)."""
    for name in REQUEST_ID_HEADERS:
        values = headers.getall(name, ())
        if len(values) == 1 and _REQUEST_ID.fullmatch(values[0]):
            return values[0]
    return os.urandom(16).hex()  # secrets.token_hex(16), without its three calls around os.urandom
