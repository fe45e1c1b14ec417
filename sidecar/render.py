"""Answers the sidecar writes itself, as plain values: status, headers, body bytes.

Pure: no I/O, no aiohttp. The I/O layer only puts an :class:`Answer` on the wire, so a
refusal looks the same whichever code path refused it, and health checks are rendered
by the same function as refusals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .reasons import Header, Reason, Rejection

SERVER: Header = ("Server", "sidecar")
JSON: Header = ("Content-Type", "application/json; charset=utf-8")


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete response. ``close``: the connection ends after it."""

    status: int
    headers: tuple[Header, ...]
    body: bytes
    close: bool = False


def json_answer(
    status: int, body: Mapping[str, object], headers: Sequence[Header] = (), *, close: bool = False
) -> Answer:
    """A JSON response; ``headers`` come after the content type and ``Server``."""
    return Answer(status, (JSON, SERVER, *headers), json.dumps(body).encode(), close)


def refusal_body(rejection: Rejection, route: str | None, websocket_paths: Sequence[str]) -> dict[str, object]:
    """The JSON body of a refusal: the reason, what to do, and the facts that help."""
    reason = rejection.reason
    body: dict[str, object] = {"error": reason.value, "message": reason.message, "route": route}
    if rejection.detail:
        body["detail"] = rejection.detail
    if rejection.suggestion:
        body["did_you_mean"] = rejection.suggestion
    if reason is Reason.NO_ROUTE:
        body["websocket_paths"] = list(websocket_paths)
    if rejection.upstream_status is not None:
        body["upstream_status"] = rejection.upstream_status
    return body


def refusal_answer(
    rejection: Rejection, route: str | None, websocket_paths: Sequence[str], *, websocket: bool
) -> Answer:
    """A refused upgrade ends its connection (nothing the client sends next may be read
    as a new request), and so does a reason whose request could not be parsed whole."""
    body = refusal_body(rejection, route, websocket_paths)
    close = websocket or rejection.reason.closes
    return json_answer(rejection.reason.status, body, rejection.headers(), close=close)
