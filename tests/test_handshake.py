"""sidecar.handshake: RFC 6455 section 4.2.1 opening-handshake checks. No sockets."""

from __future__ import annotations

import base64

import pytest
from multidict import CIMultiDict

from sidecar.h1 import decode_fields
from sidecar.handshake import deflate_answer_problem, handshake_problem, offered_protocols, wants_websocket
from sidecar.headers import tokens
from sidecar.requests import Request

KEY = base64.b64encode(b"0123456789abcdef").decode()  # 16 bytes
VALID = [
    ("Host", "sidecar"),
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", KEY),
]


def headers(drop: tuple[str, ...] = (), add: tuple[tuple[str, str], ...] = ()) -> CIMultiDict[str]:
    kept = [(k, v) for k, v in VALID if k.lower() not in {d.lower() for d in drop}]
    return CIMultiDict([*kept, *add])


VALID_CASES = [
    ("GET", (1, 1), headers()),
    ("GET", (2, 0), headers()),
    ("GET", (1, 1), headers(drop=("Connection",), add=(("Connection", "keep-alive, Upgrade"),))),
    ("GET", (1, 1), headers(drop=("Connection",), add=(("connection", "UPGRADE"),))),
    ("GET", (1, 1), headers(drop=("Connection",), add=(("Connection", "keep-alive"), ("Connection", "upgrade")))),
    ("GET", (1, 1), headers(drop=("Upgrade",), add=(("Upgrade", "WebSocket"),))),
    ("GET", (1, 1), headers(drop=("Sec-WebSocket-Key",), add=(("Sec-WebSocket-Key", f" {KEY} "),))),
    ("GET", (1, 1), headers(add=(("Sec-WebSocket-Protocol", "chat"),))),
]


@pytest.mark.parametrize(("method", "version", "hdrs"), VALID_CASES, ids=[f"valid{i}" for i in range(len(VALID_CASES))])
def test_valid_handshake(method: str, version: tuple[int, int], hdrs: CIMultiDict[str]) -> None:
    assert handshake_problem(method, version, hdrs) is None


def key(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


INVALID = [
    ("post", "POST", (1, 1), headers(), "method must be GET, not POST"),
    ("lower-get", "get", (1, 1), headers(), "method must be GET, not get"),
    ("head", "HEAD", (1, 1), headers(), "method must be GET, not HEAD"),
    ("http10", "GET", (1, 0), headers(), "HTTP/1.1 or later is required"),
    ("http09", "GET", (0, 9), headers(), "HTTP/1.1 or later is required"),
    ("no-connection", "GET", (1, 1), headers(drop=("Connection",)), "'Connection' must include 'Upgrade'"),
    (
        "upgrade-list",  # aiohttp would refuse it only after the upstream handshake
        "GET",
        (1, 1),
        headers(drop=("Upgrade",), add=(("Upgrade", "websocket, foo/1"),)),
        "'Upgrade' must be exactly 'websocket'",
    ),
    (
        "upgrade-twice",
        "GET",
        (1, 1),
        headers(drop=("Upgrade",), add=(("Upgrade", "h2c"), ("Upgrade", "websocket"))),
        "'Upgrade' must be exactly 'websocket'",
    ),
    (
        "connection-keep-alive",
        "GET",
        (1, 1),
        headers(drop=("Connection",), add=(("Connection", "keep-alive"),)),
        "'Connection' must include 'Upgrade'",
    ),
    (
        "version-8",
        "GET",
        (1, 1),
        headers(drop=("Sec-WebSocket-Version",), add=(("Sec-WebSocket-Version", "8"),)),
        "'Sec-WebSocket-Version' must be 13",
    ),
    (
        "two-versions",
        "GET",
        (1, 1),
        headers(add=(("Sec-WebSocket-Version", "8"),)),
        "'Sec-WebSocket-Version' must be 13",
    ),
    (
        "two-equal-versions",
        "GET",
        (1, 1),
        headers(add=(("Sec-WebSocket-Version", "13"),)),
        "'Sec-WebSocket-Version' must be 13",
    ),
    (
        "version-list",
        "GET",
        (1, 1),
        headers(drop=("Sec-WebSocket-Version",), add=(("Sec-WebSocket-Version", "13, 8"),)),
        "'Sec-WebSocket-Version' must be 13",
    ),
    (
        "no-version",
        "GET",
        (1, 1),
        headers(drop=("Sec-WebSocket-Version",)),
        "'Sec-WebSocket-Version' must be 13",
    ),
    (
        "missing-key",
        "GET",
        (1, 1),
        headers(drop=("Sec-WebSocket-Key",)),
        "exactly one 'Sec-WebSocket-Key' is required",
    ),
    (
        "two-keys",
        "GET",
        (1, 1),
        headers(add=(("Sec-WebSocket-Key", KEY),)),
        "exactly one 'Sec-WebSocket-Key' is required",
    ),
    (
        "key-not-base64",
        "GET",
        (1, 1),
        headers(drop=("Sec-WebSocket-Key",), add=(("Sec-WebSocket-Key", "not base64!"),)),
        "'Sec-WebSocket-Key' is not valid base64",
    ),
    (
        "key-unpadded",
        "GET",
        (1, 1),
        headers(drop=("Sec-WebSocket-Key",), add=(("Sec-WebSocket-Key", KEY.rstrip("=")),)),
        "'Sec-WebSocket-Key' is not valid base64",
    ),
    (
        "key-15-bytes",
        "GET",
        (1, 1),
        headers(drop=("Sec-WebSocket-Key",), add=(("Sec-WebSocket-Key", key(b"x" * 15)),)),
        "'Sec-WebSocket-Key' must be 16 bytes, base64-encoded",
    ),
    (
        "key-17-bytes",
        "GET",
        (1, 1),
        headers(drop=("Sec-WebSocket-Key",), add=(("Sec-WebSocket-Key", key(b"x" * 17)),)),
        "'Sec-WebSocket-Key' must be 16 bytes, base64-encoded",
    ),
    (
        "key-empty",
        "GET",
        (1, 1),
        headers(drop=("Sec-WebSocket-Key",), add=(("Sec-WebSocket-Key", ""),)),
        "'Sec-WebSocket-Key' must be 16 bytes, base64-encoded",
    ),
]


@pytest.mark.parametrize(
    ("method", "version", "hdrs", "problem"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_handshake(method: str, version: tuple[int, int], hdrs: CIMultiDict[str], problem: str) -> None:
    assert handshake_problem(method, version, hdrs) == problem


def test_handshake_without_upgrade_websocket_is_a_problem() -> None:
    assert handshake_problem("GET", (1, 1), headers(drop=("Upgrade",))) is not None


WANTS = [
    ([("Upgrade", "websocket")], True),
    ([("Upgrade", "WebSocket")], True),
    ([("upgrade", "WEBSOCKET")], True),
    ([("Upgrade", "h2c, websocket")], True),
    ([("Upgrade", "h2c"), ("Upgrade", "websocket")], True),
    ([("Upgrade", " websocket ")], True),
    ([("Upgrade", "h2c")], False),
    ([("Upgrade", "websockets")], False),
    ([("Upgrade", "x-websocket")], False),
    ([("Upgrade", "websocket/13")], False),
    ([("Upgrade", "websocket, h2c")], True),
    ([("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket")], True),
    ([("Connection", "Upgrade"), ("Upgrade", "WebSocket")], True),
    ([("Connection", "websocket")], False),
    ([], False),
]


@pytest.mark.parametrize(("hdrs", "expected"), WANTS, ids=[repr(w[0]) for w in WANTS])
def test_wants_websocket(hdrs: list[tuple[str, str]], expected: bool) -> None:
    assert wants_websocket(CIMultiDict(hdrs)) is expected


@pytest.mark.parametrize(("hdrs", "expected"), WANTS, ids=[repr(w[0]) for w in WANTS])
def test_the_listener_and_the_dispatcher_make_the_one_decision(hdrs: list[tuple[str, str]], expected: bool) -> None:
    """The listener (stop parsing, keep what follows for a relay) and the dispatcher (a
    WebSocket route or a plain one) must agree on every head, or a plain request's
    successors are swallowed as frames."""
    fields = [(name.encode(), value.encode()) for name, value in hdrs]
    request = Request("GET", b"/", (1, 1), fields, keep_alive=True)
    assert request.websocket_like() is wants_websocket(decode_fields(fields)) is expected


def test_tokens_lower_cases_and_splits_every_value() -> None:
    hdrs = CIMultiDict([("Connection", "Keep-Alive, Upgrade"), ("connection", " TE ")])
    assert tokens(hdrs, "Connection") == {"keep-alive", "upgrade", "te"}
    assert tokens(hdrs, "Upgrade") == set()


PROTOCOLS = [
    ([], []),
    ([("Sec-WebSocket-Protocol", "chat")], ["chat"]),
    ([("Sec-WebSocket-Protocol", "chat, superchat")], ["chat", "superchat"]),
    ([("Sec-WebSocket-Protocol", "v2.edge"), ("sec-websocket-protocol", " v1.edge ,,")], ["v2.edge", "v1.edge"]),
    ([("Sec-WebSocket-Protocol", "Chat")], ["Chat"]),  # case kept: subprotocol names are case-sensitive
]


@pytest.mark.parametrize(("hdrs", "expected"), PROTOCOLS, ids=[repr(p[0]) for p in PROTOCOLS])
def test_offered_protocols(hdrs: list[tuple[str, str]], expected: list[str]) -> None:
    assert offered_protocols(CIMultiDict(hdrs)) == expected


DEFLATE_ANSWERS = [
    ("permessage-deflate", "permessage-deflate", True),
    ("permessage-deflate; client_max_window_bits", "permessage-deflate; client_max_window_bits=10", True),
    ("permessage-deflate", "permessage-deflate; client_max_window_bits=10", False),  # RFC 7692 7.1.2.2
    ("permessage-deflate", "permessage-deflate; server_no_context_takeover; client_no_context_takeover", True),
    ("permessage-deflate", "permessage-deflate; server_max_window_bits=10", True),
    ("permessage-deflate; server_max_window_bits=10", "permessage-deflate; server_max_window_bits=12", False),
    ("permessage-deflate; server_max_window_bits=10", "permessage-deflate", False),  # 15 when absent
    ("permessage-deflate; server_max_window_bits=10", "permessage-deflate; server_max_window_bits=9", True),
    ("permessage-deflate; server_max_window_bits=10, permessage-deflate", "permessage-deflate", True),  # the 2nd
    ("permessage-deflate", "permessage-deflate; x_unknown", False),
    ("permessage-deflate", "permessage-deflate; server_no_context_takeover; server_no_context_takeover", False),
    ("permessage-deflate", "permessage-deflate, permessage-deflate", False),
    ("Permessage-Deflate; Client_Max_Window_Bits", 'permessage-deflate; CLIENT_MAX_WINDOW_BITS="9"', True),
]


@pytest.mark.parametrize(("offers", "answer", "fine"), DEFLATE_ANSWERS, ids=[a[1] for a in DEFLATE_ANSWERS])
def test_a_permessage_deflate_answer_must_fit_an_offer(offers: str, answer: str, fine: bool) -> None:
    problem = deflate_answer_problem(offers, answer)
    assert (problem is None) is fine
    assert problem is None or "did not offer" in problem
