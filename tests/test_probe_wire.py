"""``sidecar probe``'s pure parts, by tables: the URL, the request it sends, how it
reads the answer and the server's frames (RFC 6455's own examples), and the words it
uses. The probe against real servers is in test_probe.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar import probe_report as rp
from sidecar import probe_wire as wire
from sidecar.reasons import Reason

TOKEN = "probe-token-4f1c2e9a7b"

# --- the URL -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "tls", "host", "port", "resource", "authority", "shown"),
    [
        ("ws://h/", False, "h", 80, "/", "h", "ws://h/"),
        ("ws://h", False, "h", 80, "/", "h", "ws://h/"),
        ("wss://H.example/edge/ws", True, "h.example", 443, "/edge/ws", "h.example", "wss://h.example/edge/ws"),
        ("wss://h:443/x", True, "h", 443, "/x", "h", "wss://h/x"),
        ("ws://h:8080/x", False, "h", 8080, "/x", "h:8080", "ws://h:8080/x"),
        ("WSS://h:80/x", True, "h", 80, "/x", "h:80", "wss://h:80/x"),
        ("ws://[::1]:9000/x", False, "::1", 9000, "/x", "[::1]:9000", "ws://[::1]:9000/x"),
        (
            "wss://b.up.railway.app/edge/ws?edge_agent_id=edge_1&access_token=s3cret",
            True,
            "b.up.railway.app",
            443,
            "/edge/ws?edge_agent_id=edge_1&access_token=s3cret",
            "b.up.railway.app",
            "wss://b.up.railway.app/edge/ws?edge_agent_id=…&access_token=…",  # values never shown
        ),
        ("ws://h/caf\u00e9?q=\u00e9", False, "h", 80, "/caf%C3%A9?q=%C3%A9", "h", "ws://h/caf%C3%A9?q=…"),
        ("ws://h/a%2Fb", False, "h", 80, "/a%2Fb", "h", "ws://h/a%2Fb"),  # escapes kept as typed
    ],
)
def test_parse_target(url: str, tls: bool, host: str, port: int, resource: str, authority: str, shown: str) -> None:
    target = wire.parse_target(url)
    assert (target.tls, target.host, target.port, target.resource) == (tls, host, port, resource)
    assert (target.authority, target.shown()) == (authority, shown)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://h/edge/ws", "not https://"),
        ("http://h/edge/ws", "not http://"),
        ("h/edge/ws", "must start with ws:// or wss://"),
        ("ws:///edge/ws", "no host"),
        ("ws://h:99999/", "port"),
        ("ws://h/x#frag", "no #fragment"),
        ("ws://user:pw@h/", "credentials do not belong in the URL"),
        ("ws://h/a b", "spaces or control characters"),
        ("ws://h/a\nb", "spaces or control characters"),
    ],
)
def test_parse_target_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wire.parse_target(url)


# --- the request -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "parsed"),
    [
        ("X-A: b", ("X-A", "b")),
        ("X-A:b  ", ("X-A", "b")),
        ("Origin: https://app.example.com", ("Origin", "https://app.example.com")),
        ("Upgrade:", ("Upgrade", "")),
    ],
)
def test_header_option(option: str, parsed: tuple[str, str]) -> None:
    assert wire.parse_header_option(option) == parsed


@pytest.mark.parametrize("option", ["no colon", "Bad Name: x", ": x", "X-A: b\r\nInjected: yes", "X-A: \x00"])
def test_header_option_refuses(option: str) -> None:
    with pytest.raises(ValueError):
        wire.parse_header_option(option)


@pytest.mark.parametrize(
    ("option", "says"),
    [
        ("Authorization Bearer s3cr3t-9f2c", "this one has no ':'"),
        ("X-Api-Key=s3cr3t-9f2c", "this one has no ':'"),
        ("Authorization=Bearer s3cr3t-9f2c:x", "the name before its ':' has other characters"),
    ],
    ids=["colon-forgotten", "equals-for-colon", "equals-then-a-colon-in-the-value"],
)
def test_a_mistyped_header_option_is_refused_without_quoting_it(option: str, says: str) -> None:
    """The commonest -H typos hold the credential in what would be the name: the usage
    error says what is wrong, never the text (SECURITY.md row 14)."""
    with pytest.raises(ValueError) as refused:
        wire.parse_header_option(option)
    assert says in str(refused.value)
    assert "s3cr3t" not in str(refused.value)


def test_request_bytes() -> None:
    target = wire.parse_target("ws://h:8080/edge/ws?edge_agent_id=edge_1")
    headers = wire.request_headers(target, "dGhlIHNhbXBsZSBub25jZQ==", token=TOKEN, agent_id="edge_1", extra=[])
    assert wire.build_request(target, headers) == (
        b"GET /edge/ws?edge_agent_id=edge_1 HTTP/1.1\r\n"
        b"Host: h:8080\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"User-Agent: sidecar-probe\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"X-Edge-Agent-Id: edge_1\r\n"
        b"\r\n"
    )


DEFAULTS = [
    ("Host", "h"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "k"),
    ("Sec-WebSocket-Version", "13"),
    ("User-Agent", "sidecar-probe"),
    ("Authorization", "Bearer t"),
]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], DEFAULTS),
        ([("Origin", "https://a")], [*DEFAULTS, ("Origin", "https://a")]),
        ([("upgrade", "h2c")], [DEFAULTS[0], ("upgrade", "h2c"), *DEFAULTS[2:]]),  # replaced in place
        ([("Upgrade", "")], [DEFAULTS[0], *DEFAULTS[2:]]),  # removed
        ([("X-A", "1"), ("X-A", "2")], [*DEFAULTS, ("X-A", "1"), ("X-A", "2")]),
        (  # the first replaces the probe's, the next is added: two Authorization headers
            [("Authorization", "Basic x"), ("Authorization", "Bearer y")],
            [*DEFAULTS[:6], ("Authorization", "Basic x"), ("Authorization", "Bearer y")],
        ),
    ],
)
def test_header_options_replace_remove_or_add(extra: list[tuple[str, str]], expected: list[tuple[str, str]]) -> None:
    headers = wire.request_headers(wire.parse_target("ws://h/"), "k", token="t", agent_id=None, extra=extra)
    assert headers == expected


@pytest.mark.parametrize("value", ["", "a\nb", "a\rb", "tab\tinside"])
def test_a_token_with_control_characters_is_bad_usage(value: str) -> None:
    with pytest.raises(ValueError, match="empty or has control characters"):
        wire.check_field("token", value)


def test_accept_is_rfc_6455_section_1_3_example() -> None:
    assert wire.accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# --- the answer ------------------------------------------------------------------------


def test_head_end_waits_for_the_empty_line_and_bounds_the_head() -> None:
    assert wire.head_end(b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n") is None
    assert wire.head_end(b"HTTP/1.1 101 OK\r\n\r\n\x81\x00") == 19
    with pytest.raises(wire.ProtocolViolation, match="over 64 KiB"):
        wire.head_end(b"HTTP/1.1 200 OK\r\nX: " + b"a" * wire.MAX_HEAD)


def test_parse_head() -> None:
    head = wire.parse_head(
        b"HTTP/1.1 404 Not Found\r\nX-Sidecar-Reason: no_route\r\nConnection: keep-alive, Upgrade\r\n"
        b"Set-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n"
    )
    assert (head.status, head.phrase) == (404, "Not Found")
    assert head.get("x-sidecar-reason") == "no_route"
    assert head.getall("Set-Cookie") == ["a=1", "b=2"]
    assert head.tokens("Connection") == ["keep-alive", "upgrade"]
    assert head.get("Missing") is None
    assert wire.parse_head(b"HTTP/1.0 200\r\n\r\n").phrase == ""


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not HTTP/1.x"),
        (b"HTTP/2.0 200 OK\r\n\r\n", "HTTP/2.0, not HTTP/1.1"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "not HTTP/1.x"),
        (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "folds a header"),
        (b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "over 100 header fields"),
    ],
)
def test_parse_head_refuses(raw: bytes, message: str) -> None:
    with pytest.raises(wire.ProtocolViolation, match=message):
        wire.parse_head(raw)


KEY = "dGhlIHNhbXBsZSBub25jZQ=="
GOOD_101 = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"


@pytest.mark.parametrize(
    ("extra", "offered", "problem"),
    [
        ("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", [], None),
        ("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n", ["chat"], None),
        ("", [], "Sec-WebSocket-Accept is missing"),
        ("Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n", [], "not the one the key requires"),
        (
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
            [],
            "an extension the probe did not offer",
        ),
        (
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n",
            [],
            "a subprotocol the probe did not offer",
        ),
    ],
)
def test_upgrade_problem(extra: str, offered: list[str], problem: str | None) -> None:
    head = wire.parse_head((GOOD_101 + extra + "\r\n").encode())
    found = wire.upgrade_problem(head, KEY, offered)
    assert found == problem if problem is None else problem in (found or "")


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"HTTP/1.1 101 x\r\nConnection: Upgrade\r\n\r\n", "the 101 has no 'Upgrade: websocket'"),
        (b"HTTP/1.1 101 x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", "the 101 has no 'Upgrade: websocket'"),
        (b"HTTP/1.1 101 x\r\nUpgrade: WebSocket\r\n\r\n", "the 101 has no 'Connection: Upgrade'"),
    ],
)
def test_upgrade_problem_headers(raw: bytes, problem: str) -> None:
    assert wire.upgrade_problem(wire.parse_head(raw), KEY, []) == problem


# --- frames (RFC 6455 section 5.7's examples) -----------------------------------------------


def test_client_frames_are_masked_rfc_6455_section_5_7() -> None:
    mask = bytes.fromhex("37fa213d")
    assert wire.encode_frame(wire.Opcode.TEXT, b"Hello", mask) == bytes.fromhex("818537fa213d7f9f4d5158")
    assert wire.encode_frame(wire.Opcode.PONG, b"Hello", mask) == bytes.fromhex("8a8537fa213d7f9f4d5158")
    assert wire.encode_frame(wire.Opcode.PING, b"", mask) == bytes.fromhex("898037fa213d")
    assert wire.encode_frame(wire.Opcode.BINARY, bytes(256), mask)[:8] == bytes.fromhex("82fe010037fa213d")
    assert wire.encode_frame(wire.Opcode.BINARY, bytes(65536), mask)[:14] == bytes.fromhex(
        "82ff000000000001000037fa213d"
    )
    with pytest.raises(ValueError):
        wire.encode_frame(wire.Opcode.PING, b"", b"abc")


def unmask(frame: bytes) -> tuple[int, bytes]:
    """Read a client frame back, independently of the probe's code (RFC 6455 section 5.3)."""
    assert frame[1] & 0x80, "a client frame must be masked"
    length, offset = frame[1] & 0x7F, 2
    if length == 126:
        length, offset = int.from_bytes(frame[2:4], "big"), 4
    elif length == 127:
        length, offset = int.from_bytes(frame[2:10], "big"), 10
    mask, payload = frame[offset : offset + 4], frame[offset + 4 :]
    assert len(payload) == length
    return frame[0], bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@given(st.binary(max_size=70000), st.binary(min_size=4, max_size=4), st.sampled_from(list(wire.Opcode)))
def test_any_payload_round_trips_through_the_mask(payload: bytes, mask: bytes, opcode: wire.Opcode) -> None:
    assert unmask(wire.encode_frame(opcode, payload, mask)) == (0x80 | opcode, payload)


@pytest.mark.parametrize(
    ("data", "frame", "used"),
    [
        (bytes.fromhex("810548656c6c6f"), wire.Frame(True, wire.Opcode.TEXT, b"Hello"), 7),
        (bytes.fromhex("010348656c"), wire.Frame(False, wire.Opcode.TEXT, b"Hel"), 5),
        (bytes.fromhex("80026c6f"), wire.Frame(True, wire.Opcode.CONTINUATION, b"lo"), 4),
        (bytes.fromhex("890548656c6c6f"), wire.Frame(True, wire.Opcode.PING, b"Hello"), 7),
        (bytes.fromhex("8a00") + b"next", wire.Frame(True, wire.Opcode.PONG, b""), 2),
        (bytes.fromhex("827e0100") + bytes(256), wire.Frame(True, wire.Opcode.BINARY, bytes(256)), 260),
        (
            bytes.fromhex("827f0000000000010000") + bytes(65536),
            wire.Frame(True, wire.Opcode.BINARY, bytes(65536)),
            65546,
        ),
        (bytes.fromhex("880203e8"), wire.Frame(True, wire.Opcode.CLOSE, b"\x03\xe8"), 4),
    ],
)
def test_server_frames(data: bytes, frame: wire.Frame, used: int) -> None:
    assert wire.parse_frame(data) == (frame, used)
    for cut in range(used):  # any prefix is "not yet", never an error
        assert wire.parse_frame(data[:cut]) is None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (bytes.fromhex("c100"), "RSV bits"),
        (bytes.fromhex("8300"), "reserved opcode 0x3"),
        (bytes.fromhex("8b00"), "reserved opcode 0xb"),
        (bytes.fromhex("818037fa213d"), "the server masked a frame"),
        (bytes.fromhex("0905"), "control frame is fragmented"),
        (bytes.fromhex("897e0080"), "over 125 bytes"),
        (bytes.fromhex("827f0000000001000001"), "over the probe's 16 MiB"),
    ],
)
def test_server_frames_a_client_must_refuse(data: bytes, problem: str) -> None:
    with pytest.raises(wire.ProtocolViolation, match=problem):
        wire.parse_frame(data)


@pytest.mark.parametrize(
    ("payload", "parsed"),
    [
        (b"", (None, "")),
        (b"\x03\xe8", (1000, "")),
        (b"\x03\xf0policy", (1008, "policy")),
        (b"\x10\x01\xff", (4097, "\ufffd")),
    ],
)
def test_close_payload(payload: bytes, parsed: tuple[int | None, str]) -> None:
    assert wire.parse_close(payload) == parsed
    if parsed[0] is not None and "\ufffd" not in parsed[1]:
        assert wire.close_payload(parsed[0], parsed[1]) == payload


def test_a_one_byte_close_body_is_a_violation() -> None:
    with pytest.raises(wire.ProtocolViolation, match="1-byte"):
        wire.parse_close(b"\x03")


# --- words -----------------------------------------------------------------------------------

PEER = rp.PeerText(TOKEN, None, "")


def test_peer_text_withholds_every_secret_it_is_given() -> None:
    assert rp.PeerText("one", "two")("has two in it") == "(withheld: it contains the token)"
    assert rp.PeerText()("anything") == "anything"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain", "plain"),
        ("two\r\nlines\x00", "two  lines "),
        (f"echo: Bearer {TOKEN}", "(withheld: it contains the token)"),
        ("x" * 300, "x" * 199 + "…"),
    ],
)
def test_peer_text(text: str, shown: str) -> None:
    assert PEER(text) == shown


def sidecar_answer(status: int, reason: str, **body: object) -> rp.Answer:
    head = wire.Head(status, "Phrase", (("X-Sidecar-Reason", reason), ("Server", "sidecar"), ("Retry-After", "7")))
    message = {"message": Reason(reason).message} if reason in {r.value for r in Reason} else {}
    return rp.answer_of(head, json.dumps({"error": reason, **message, **body}).encode(), PEER)


def test_every_reason_of_the_sidecar_has_its_own_hint() -> None:
    for reason in Reason:
        hint = rp.answer_hint(sidecar_answer(reason.status, reason.value), path="/p", token="9 bytes, fp1:aaaaaaaa")
        assert hint.startswith(f"the sidecar refused it ({reason.status} {reason.value}): "), reason
        assert "did not come from a sidecar" not in hint
    assert set(rp._SIDECAR) == {r.value for r in Reason}  # a new reason needs its hint


@pytest.mark.parametrize(
    ("status", "reason", "body", "says"),
    [
        (
            404,
            "no_route",
            {"websocket_paths": ["/edge/ws", "/ws/edge"]},
            "no WebSocket route at /edge/wss; this server serves /edge/ws, /ws/edge.",
        ),
        (404, "no_route", {"websocket_paths": [], "did_you_mean": "/api"}, "has no WebSocket route at all (did you"),
        (401, "missing_token", {}, "none was sent. Run the probe with --token-env VAR"),
        (401, "malformed_token", {}, "the token (9 bytes, fp1:aaaaaaaa) has characters"),
        (401, "invalid_token", {}, "the token sent (9 bytes, fp1:aaaaaaaa) matches none of the sidecar's secrets"),
        (426, "not_websocket", {}, "dropped the Upgrade header (or -H removed it). This path only accepts WebSocket"),
        (403, "origin_denied", {}, Reason.ORIGIN_DENIED.message),
        (409, "duplicate_agent", {}, Reason.DUPLICATE_AGENT.message),
        (429, "rate_limited", {}, "the right token is refused too"),
        (502, "upstream_rejected", {"upstream_status": 403}, "its backend is the problem"),
        (503, "draining", {}, Reason.DRAINING.message),
        (504, "upstream_timeout", {}, Reason.UPSTREAM_TIMEOUT.message),
        (400, "missing_agent_id", {}, "(--agent-id ID sends X-Edge-Agent-Id"),
        (400, "agent_id_mismatch", {"detail": "header and query differ"}, "Detail: header and query differ."),
        (418, "from_the_future", {"message": "a newer sidecar says why"}, "a newer sidecar says why"),
    ],
)
def test_sidecar_hints_use_the_body(status: int, reason: str, body: dict[str, object], says: str) -> None:
    hint = rp.answer_hint(sidecar_answer(status, reason, **body), path="/edge/wss", token="9 bytes, fp1:aaaaaaaa")
    assert says in hint
    assert hint.endswith("Retry after 7 s.")


@pytest.mark.parametrize(
    ("status", "headers", "says"),
    [
        (404, (), "the server has nothing at /edge/ws"),
        (403, (), "its own auth or an access rule"),
        (401, (), "its own auth"),
        (200, (), "/edge/ws is a plain HTTP resource there"),
        (301, (("Location", "wss://h/edge/ws"),), "redirects (301) to wss://h/edge/ws"),
        (426, (), "a proxy in between may drop the Upgrade header"),
        (503, (), "unavailable"),
        (418, (), "refused the upgrade with 418 Phrase"),
    ],
)
def test_plain_hints_say_no_sidecar_answered(status: int, headers: tuple[tuple[str, str], ...], says: str) -> None:
    answer = rp.answer_of(wire.Head(status, "Phrase", (("Server", "railway-edge"), *headers)), b"", PEER)
    hint = rp.answer_hint(answer, path="/edge/ws", token=None)
    assert says in hint
    assert hint.endswith(
        "The answer did not come from a sidecar (no X-Sidecar-Reason; Server: railway-edge): if one should be "
        "in front of this URL, it is not (agents connect to the sidecar's domain, not the backend's)."
    )
    assert answer.reason is None
    assert rp.answer_detail(answer) == f"{status} Phrase; Server: railway-edge"


def test_a_body_that_echoes_the_token_is_withheld() -> None:
    answer = sidecar_answer(404, "no_route", websocket_paths=[f"/{TOKEN}"], detail=f"you sent {TOKEN}")
    hint = rp.answer_hint(answer, path="/x", token=None)
    assert TOKEN not in hint
    assert "this server serves (withheld: it contains the token)" in hint


@pytest.mark.parametrize(
    ("code", "verdict", "says"),
    [
        (62, "the certificate does not name this host", "is not for h.example"),
        (64, "the certificate does not name this host", "is not for h.example"),
        (18, "untrusted certificate chain: self-signed", "--cacert FILE"),
        (20, "untrusted certificate chain: issuer unknown here", "--cacert FILE"),
        (10, "the certificate is expired", "renew it"),
        (None, "msg", "is this a TLS port?"),
    ],
)
def test_tls_words(code: int | None, verdict: str, says: str) -> None:
    assert rp.tls_verdict(code, "msg").startswith(verdict)
    assert says in rp.tls_hint("h.example", 443, code)


@pytest.mark.parametrize(
    ("step", "code", "reason", "says"),
    [
        ("ping", None, "", "dropped the connection without a close frame: an agent sees this as 1006"),
        ("ping", 1008, "policy", "closed it at once with 1008 'policy'"),
        ("ping", 4001, "", "closed it at once with 4001:"),
        ("close", None, "", "did not answer the close frame"),
    ],
)
def test_after_upgrade_words(step: str, code: int | None, reason: str, says: str) -> None:
    assert says in rp.after_upgrade_hint(step, code, reason)


def report(*steps: rp.Step, outcome: rp.Outcome) -> rp.Report:
    return rp.Report(steps, outcome, "fp1:aaaaaaaa", "probe ws://h/x (token: 9 bytes, fp1:aaaaaaaa)")


def test_json_object_is_exactly_the_issues() -> None:
    failed = report(
        rp.Step("resolve", True, 1.234, "h -> 10.0.0.1"),
        rp.Step("connect", True, 0.5, "10.0.0.1 port 80"),
        rp.Step("upgrade", False, 2.26, "404 Not Found; X-Sidecar-Reason: no_route"),
        outcome=rp.Outcome("the fix", status=404, reason="no_route", sidecar=True),
    )
    assert rp.as_json(failed) == {
        "ok": False,
        "failed_step": "upgrade",
        "status": 404,
        "reason": "no_route",
        "close_code": None,
        "sidecar": True,
        "hint": "the fix",
        "token_fingerprint": "fp1:aaaaaaaa",
        "steps": [
            {"name": "resolve", "ok": True, "ms": 1.2, "detail": "h -> 10.0.0.1"},
            {"name": "connect", "ok": True, "ms": 0.5, "detail": "10.0.0.1 port 80"},
            {"name": "upgrade", "ok": False, "ms": 2.3, "detail": "404 Not Found; X-Sidecar-Reason: no_route"},
        ],
    }
    assert json.loads(rp.render_json(failed)) == rp.as_json(failed)
    assert rp.render(failed).splitlines() == [
        "probe ws://h/x (token: 9 bytes, fp1:aaaaaaaa)",
        "  resolve  ok        1.2 ms  h -> 10.0.0.1",
        "  connect  ok        0.5 ms  10.0.0.1 port 80",
        "  upgrade  FAIL      2.3 ms  404 Not Found; X-Sidecar-Reason: no_route",
        "FAIL at upgrade: the fix",
    ]


def test_a_pass() -> None:
    passed = report(rp.Step("resolve", True, 1, "h -> 10.0.0.1"), outcome=rp.Outcome(rp.PASSED, 101, close_code=1000))
    assert (rp.as_json(passed)["ok"], rp.as_json(passed)["failed_step"]) == (True, None)
    assert rp.render(passed).splitlines()[-1] == f"OK: {rp.PASSED}"


def test_a_reason_the_probe_has_no_words_for_points_at_its_troubleshooting_row() -> None:
    # A newer sidecar's reason, without a message in its body.
    reason = "some_future_reason"
    answer = rp.Answer(status=429, phrase="Too Many Requests", reason=reason)
    hint = rp.answer_hint(answer, path="/edge/ws", token=None)
    assert f"docs/troubleshooting.md#reason-{reason}" in hint
    assert "README" not in hint


def test_credentials_are_the_urls_credential_values_and_the_credential_headers() -> None:
    target = wire.parse_target("ws://h/p?edge_agent_id=edge_1&access_token=a%2Bb&bare&Sig=s1")
    assert target.shown() == "ws://h/p?edge_agent_id=…&access_token=…&…&Sig=…"
    headers = [
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Authorization", "Bearer t1"),
        ("Cookie", "a=c1; b=c2"),
        ("X-Edge-Agent-Id", "edge_1"),
    ]
    assert wire.credentials(target, headers) == [
        "a%2Bb",
        "a+b",
        "s1",
        "Bearer t1",
        "t1",
        "a=c1; b=c2",
        "b=c2",
        "c1",
        "c2",
    ]


@pytest.mark.parametrize(
    ("offered", "credentials"),
    [
        ("graphql-ws", []),
        ("graphql-transport-ws, subscriptions-transport-ws, ocpp1.6, ocpp2.0.1, v12.stomp, mqtt", []),
        ("actioncable-v1-json, actioncable-unsupported, wamp.2.json", []),
        ("bearer, opensesame", ["opensesame"]),
        ("Bearer,opensesame, graphql-ws", ["opensesame"]),  # only the entry after the word
        ("access_token, abc", ["abc"]),
        ("x-token.query-secret-5b1e9c77", ["x-token.query-secret-5b1e9c77"]),
        ("chat, 3q2+7wYAAAAAAAAAAAAAAAAA", ["3q2+7wYAAAAAAAAAAAAAAAAA"]),  # random-looking alone
        ("auth.v1", ["auth.v1"]),  # a credential word beside other characters
        ("Bearer opensesame", ["Bearer opensesame", "opensesame"]),  # typed as the Authorization value
        (
            "base64url.bearer.authorization.k8s.io.cXVlcnktc2VjcmV0, base64.binary.k8s.io",
            ["base64url.bearer.authorization.k8s.io.cXVlcnktc2VjcmV0", "cXVlcnktc2VjcmV0", "query-secret"],
        ),
    ],
)
def test_subprotocols_that_carry_a_credential(offered: str, credentials: list[str]) -> None:
    assert wire.protocol_credentials(offered) == credentials
    target = wire.parse_target("ws://h/p")
    assert wire.credentials(target, [("Sec-WebSocket-Protocol", offered)]) == credentials


@pytest.mark.parametrize(
    ("query", "credentials"),
    [
        ("edge_agent_id=edge_1&ticket=k1&code=c1&pw=p1&pwd=p2&passwd=p3&pin=1234&otp=9&hash=h1&hmac=m1", None),
        ("edge_agent_id=edge_1&country_code=us&zipcode=1&decode=x&t=N8hyd6w&EIO=4&transport=websocket", []),
    ],
    ids=["credentials", "ordinary"],
)
def test_credential_query_names(query: str, credentials: list[str] | None) -> None:
    target = wire.parse_target(f"ws://h/p?{query}")
    if credentials is None:  # every value but the agent id's
        credentials = [pair.partition("=")[2] for pair in query.split("&")[1:]]
    assert list(dict.fromkeys(target.credentials)) == credentials


def test_troubleshooting_names_exactly_the_credential_query_names() -> None:
    """docs/troubleshooting.md lists the query names the probe treats as credentials: the
    list is the code's, word for word."""
    text = " ".join((Path(__file__).parent.parent / "docs" / "troubleshooting.md").read_text().split())
    listed = re.search(r"from the query \(a name with (.+?) in it, in any case, or that is exactly (.+?); not", text)
    assert listed is not None
    assert re.findall(r"`([^`]+)`", listed.group(1)) == wire._CREDENTIAL_NAME.pattern.split("|")
    assert sorted(re.findall(r"`([^`]+)`", listed.group(2))) == sorted(wire._CREDENTIAL_QUERY)
