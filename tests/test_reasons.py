"""sidecar.reasons: the one table of rejection reasons (status, wire code, message)."""

from __future__ import annotations

import re

import pytest

from sidecar.reasons import Reason, Rejection

# The table: wire code -> HTTP status. Written out, not derived, so a
# changed status or a renamed code fails here.
EXPECTED = {
    "bad_request": 400,
    "headers_too_large": 431,
    "no_route": 404,
    "bad_path": 400,
    "not_websocket": 426,
    "bad_handshake": 400,
    "missing_token": 401,
    "malformed_token": 401,
    "invalid_token": 401,
    "missing_agent_id": 400,
    "invalid_agent_id": 400,
    "agent_id_mismatch": 400,
    "upstream_unavailable": 502,
    "upstream_timeout": 504,
    "upstream_rejected": 502,
    "draining": 503,
    "origin_denied": 403,
    "rate_limited": 429,
    "over_capacity": 503,
    "duplicate_agent": 409,
    "token_expired": 401,
    "agent_not_allowed": 403,
}


def test_the_reasons_are_exactly_the_table() -> None:
    assert {r.value: r.status for r in Reason} == EXPECTED


@pytest.mark.parametrize(("code", "status"), EXPECTED.items(), ids=list(EXPECTED))
def test_status(code: str, status: int) -> None:
    assert Reason(code).status == status


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.value)
def test_message_is_a_sentence(reason: Reason) -> None:
    message = reason.message
    assert isinstance(message, str)
    assert message.strip() == message
    assert len(message) > 20
    assert message.endswith(".")
    assert message[0].isupper()


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.value)
def test_value_is_snake_case_of_the_member_name(reason: Reason) -> None:
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", reason.value)
    assert reason.value == reason.name.lower()


def test_values_and_messages_are_unique() -> None:
    values = [r.value for r in Reason]
    messages = [r.message for r in Reason]
    assert len(set(values)) == len(values) == 22
    assert len(set(messages)) == len(messages)


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        (Reason.NO_ROUTE, ["websocket_paths"]),
        (Reason.MISSING_TOKEN, ["Authorization: Bearer <EDGE_SECRET>"]),
        (Reason.MALFORMED_TOKEN, ["RFC 6750"]),
        (Reason.INVALID_TOKEN, ["EDGE_SECRET"]),
        (Reason.MISSING_AGENT_ID, ["X-Edge-Agent-Id", "edge_agent_id"]),
        (Reason.BAD_HANDSHAKE, ["Sec-WebSocket-Version: 13", "GET"]),
        (Reason.UPSTREAM_UNAVAILABLE, ["UPSTREAM_URL"]),
        (Reason.UPSTREAM_REJECTED, ["X-Sidecar-Upstream-Status"]),
        (Reason.DRAINING, ["Retry-After"]),
        (Reason.RATE_LIMITED, ["Retry-After"]),
        (Reason.OVER_CAPACITY, ["Retry-After"]),
        (Reason.ORIGIN_DENIED, ["Origin"]),
        (Reason.TOKEN_EXPIRED, ["sidecar token AGENT_ID"]),
        (Reason.AGENT_NOT_ALLOWED, ["X-Edge-Agent-Id", "edge_agent_id"]),
    ],
    ids=lambda x: x.value if isinstance(x, Reason) else None,
)
def test_message_tells_what_to_do(reason: Reason, words: list[str]) -> None:
    for word in words:
        assert word in reason.message


def test_rejection_defaults() -> None:
    rejection = Rejection(Reason.NO_ROUTE)
    assert (rejection.detail, rejection.upstream_status, rejection.agent_id, rejection.retry_after) == (
        None,
        None,
        None,
        None,
    )
    with pytest.raises(AttributeError):
        rejection.reason = Reason.BAD_PATH  # type: ignore[misc]
