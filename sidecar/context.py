"""What one request is, as plain values, computed once when its head is complete.

Pure: no I/O, no aiohttp. The listener fills a :class:`Context` from the parsed head;
every check below the dispatcher reads it instead of re-deriving the client address,
the canonical path or the route.
"""

from __future__ import annotations

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
    _query: MultiDictProxy[str] | None = field(default=None, repr=False)

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
