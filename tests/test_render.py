"""sidecar.render: what a refusal and a health answer look like, as a table (no sockets)."""

from __future__ import annotations

import json

import pytest

from sidecar.reasons import Reason, Refused, Rejection
from sidecar.render import json_answer, refusal_answer

WS_PATHS = ("/edge/ws", "/ws/edge")


def headers_of(rejection: Rejection, *, websocket: bool = False) -> dict[str, str]:
    answer = refusal_answer(rejection, "edge", WS_PATHS, websocket=websocket)
    names = [name for name, _ in answer.headers]
    assert len(names) == len(set(names)), "a header is sent twice"
    return dict(answer.headers)


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.value)
def test_every_reason_has_its_status_header_and_body(reason: Reason) -> None:
    answer = refusal_answer(Rejection(reason), None, WS_PATHS, websocket=False)
    headers = dict(answer.headers)
    body = json.loads(answer.body)
    assert answer.status == reason.status
    assert headers["X-Sidecar-Reason"] == reason.value == body["error"]
    assert body["message"] == reason.message
    assert body["route"] is None
    assert (headers["Server"], headers["Content-Type"]) == ("sidecar", "application/json; charset=utf-8")


@pytest.mark.parametrize(
    ("rejection", "extra"),
    [
        (Rejection(Reason.NOT_WEBSOCKET), {"Upgrade": "websocket", "Connection": "Upgrade"}),  # RFC 9110 15.5.22
        (Rejection(Reason.BAD_HANDSHAKE), {"Sec-WebSocket-Version": "13"}),  # RFC 6455 section 4.4
        (Rejection(Reason.DRAINING, retry_after=1), {"Retry-After": "1"}),
        (Rejection(Reason.RATE_LIMITED, retry_after=42), {"Retry-After": "42"}),
        (Rejection(Reason.UPSTREAM_REJECTED, upstream_status=403), {"X-Sidecar-Upstream-Status": "403"}),
        (
            Rejection(Reason.INVALID_TOKEN, challenge='Bearer realm="sidecar", error="invalid_token"'),
            {"WWW-Authenticate": 'Bearer realm="sidecar", error="invalid_token"'},
        ),
    ],
    ids=lambda x: x.reason.value if isinstance(x, Rejection) else "",
)
def test_per_reason_headers_are_data(rejection: Rejection, extra: dict[str, str]) -> None:
    headers = headers_of(rejection)
    for name, value in extra.items():
        assert headers[name] == value
    others = {"Upgrade", "Sec-WebSocket-Version", "Retry-After", "X-Sidecar-Upstream-Status", "WWW-Authenticate"}
    assert not (others - set(extra)) & set(headers)  # and nothing else of the kind


def test_the_body_carries_the_facts_that_help() -> None:
    rejection = Rejection(Reason.NO_ROUTE, detail="d", suggestion="/edge/ws")
    body = json.loads(refusal_answer(rejection, None, WS_PATHS, websocket=False).body)
    assert body == {
        "error": "no_route",
        "message": Reason.NO_ROUTE.message,
        "route": None,
        "detail": "d",
        "did_you_mean": "/edge/ws",
        "websocket_paths": ["/edge/ws", "/ws/edge"],
    }
    upstream = json.loads(
        refusal_answer(Rejection(Reason.UPSTREAM_REJECTED, upstream_status=500), "edge", (), websocket=True).body
    )
    assert (upstream["upstream_status"], upstream["route"]) == (500, "edge")
    assert "websocket_paths" not in upstream


@pytest.mark.parametrize(
    ("reason", "websocket", "closes"),
    [
        (Reason.INVALID_TOKEN, False, False),  # a plain request's refusal keeps the connection
        (Reason.INVALID_TOKEN, True, True),  # a refused upgrade ends it
        (Reason.NO_ROUTE, True, True),
        (Reason.BAD_REQUEST, False, True),  # the head could not be read whole
        (Reason.HEADERS_TOO_LARGE, False, True),
    ],
)
def test_which_refusals_end_the_connection(reason: Reason, websocket: bool, closes: bool) -> None:
    assert refusal_answer(Rejection(reason), None, (), websocket=websocket).close is closes


def test_a_health_answer_is_rendered_the_same_way() -> None:
    answer = json_answer(503, {"status": "not_ready"}, [("X-Sidecar-Reason", "draining")])
    assert answer.status == 503
    assert answer.headers[:2] == (("Content-Type", "application/json; charset=utf-8"), ("Server", "sidecar"))
    assert dict(answer.headers)["X-Sidecar-Reason"] == "draining"
    assert json.loads(answer.body) == {"status": "not_ready"}


def test_refused_carries_its_rejection_and_says_it() -> None:
    refused = Refused(Rejection(Reason.BAD_PATH, detail="dot segment"))
    assert refused.rejection.reason is Reason.BAD_PATH
    assert str(refused) == "bad_path (400): dot segment"
