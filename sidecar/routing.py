"""Request path -> route. Pure: no I/O, no aiohttp.

Matching is exact on the decoded, canonical path (``paths.canonicalize``: a path
that is not canonical never gets here), so no spelling of a path can reach a route
it does not literally name. A near miss of a route's path (case, trailing ``/`` or
``.``) is answered with the path that was meant, never with a shorter prefix route.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .config import Route


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
