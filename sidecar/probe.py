"""``sidecar probe URL``: one WebSocket connection, walked a step at a time.

resolve (every address) -> connect (TCP) -> tls (wss only) -> upgrade (the HTTP
handshake) -> ping (and its pong) -> close (the close handshake); it stops at the
first step that fails and says how to fix it. Written on asyncio streams and ssl from
the standard library, because a WebSocket client library hides the steps this must
show; the bytes come from :mod:`sidecar.probe_wire` and every word of the verdict
from :mod:`sidecar.probe_report`. The token is sent, never shown: the output names it
by its length and fingerprint (:mod:`sidecar.fingerprint`).

Exit status: 0 when every step passed, 1 when one failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import secrets
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from . import fingerprint
from . import probe_report as rp
from . import probe_wire as wire

T = TypeVar("T")
_READ = 64 * 1024
_BODY = 64 * 1024  # of a sidecar's JSON refusal
USAGE_HELP = """\
Walks one WebSocket connection to URL a step at a time: resolve, connect, tls (wss://),
upgrade, ping, close. Stops at the first step that fails and names the fix. Exit status:
0 when every step passed, 1 when one failed, 2 on bad usage. The token is never shown:
its length and fingerprint are (compare with 'sidecar fingerprint' where the server runs).

example, on the edge machine:
  sidecar probe "wss://<sidecar domain>/edge/ws?edge_agent_id=$AGENT" --token-env EDGE_SECRET
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="ws:// or wss:// URL, as the agent uses it")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token-env", metavar="VAR", help="send 'Authorization: Bearer' with the token in $VAR")
    token.add_argument("--token", metavar="TOKEN", help="the same, from the command line (shows in ps and history)")
    parser.add_argument("--agent-id", metavar="ID", help="send X-Edge-Agent-Id: ID")
    parser.add_argument(
        "-H",
        dest="headers",
        action="append",
        default=[],
        metavar="'Name: value'",
        help="a header to send; replaces the probe's own of that name ('Name:' removes it); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="per step (default: 10)")
    parser.add_argument(
        "--cacert",
        metavar="FILE",
        help="trust the CA certificates in FILE instead of the system's (default: the system's, or SSL_CERT_FILE)",
    )


@dataclass(frozen=True)
class Plan:
    """What to send, checked before anything goes on the wire."""

    target: wire.Target
    headers: list[tuple[str, str]]
    key: str  # the Sec-WebSocket-Key sent ('' if -H removed it)
    offered: list[str]  # subprotocols offered with -H
    timeout: float
    tls: ssl.SSLContext | None
    token: str | None

    def secrets(self) -> list[str]:
        """What no output may show: the token, the URL's credentials (``?token=``) and the
        headers' (``-H 'Cookie: ...'``, ``Authorization``), :func:`sidecar.probe_wire.credentials`."""
        return [s for s in (self.token, *wire.credentials(self.target, self.headers)) if s]


def plan_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Plan:
    """The probe the arguments ask for; ``ValueError`` with a usage message."""
    target = wire.parse_target(args.url)
    token: str | None = args.token
    if args.token_env is not None:
        token = environ.get(args.token_env)
        if not token:
            raise ValueError(f"--token-env {args.token_env}: the variable is {'empty' if token == '' else 'not set'}")
    if token is not None:
        wire.check_field("token", token)
    if args.agent_id is not None:
        wire.check_field("agent id", args.agent_id)
    if not 0 < args.timeout <= 3600:
        raise ValueError("--timeout takes seconds, more than 0 and at most 3600")
    extra = [wire.parse_header_option(h) for h in args.headers]
    key = base64.b64encode(secrets.token_bytes(16)).decode("ascii")  # RFC 6455 section 4.1: random
    headers = wire.request_headers(target, key, token=token, agent_id=args.agent_id, extra=extra)
    sent = {name.lower(): value for name, value in reversed(headers)}
    offered = [p.strip() for n, v in headers if n.lower() == "sec-websocket-protocol" for p in v.split(",")]
    context = None
    if target.tls:
        try:
            context = ssl.create_default_context(cafile=args.cacert)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"--cacert {args.cacert}: cannot read CA certificates: {exc}") from None
    return Plan(target, headers, sent.get("sec-websocket-key", ""), offered, args.timeout, context, token)


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    try:
        plan = plan_from(args, os.environ if environ is None else environ)
    except ValueError as exc:
        print(f"sidecar probe: error: {exc}", file=sys.stderr)
        return 2
    fp = token = None
    if plan.token is not None:
        fp = fingerprint.fingerprint(plan.token)
        token = f"{len(fingerprint.secret_bytes(plan.token))} bytes, {fp}"
    agent = f"; agent id {args.agent_id}" if args.agent_id else ""
    heading = f"probe {plan.target.shown(tuple(plan.secrets()))} (token: {token or 'none'}{agent})"
    report = asyncio.run(walk(plan, token=token, token_fingerprint=fp, heading=heading))
    print(rp.render_json(report) if args.json else rp.render(report))
    return 1 if report.failed else 0


# --- the walk -------------------------------------------------------------------


class _Failed(Exception):
    """A step failed: what it found (the step's detail) and the hint."""

    def __init__(self, detail: str, hint: str) -> None:
        super().__init__(detail)
        self.detail, self.hint = detail, hint


@dataclass
class _Walk:
    plan: Plan
    peer: rp.PeerText
    token: str | None  # its description (length and fingerprint)
    steps: list[rp.Step] = field(default_factory=list)
    # What the --json object reports beside the steps, learnt on the way.
    status: int | None = None
    reason: str | None = None
    sidecar: bool = False
    close_code: int | None = None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    buffer: bytearray = field(default_factory=bytearray)  # read, not yet parsed

    async def step(self, name: str, action: Awaitable[tuple[T, str]]) -> T:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.plan.timeout):
                value, detail = await action
        except TimeoutError:
            failure = _Failed(f"no answer within {self.plan.timeout:g} s", rp.timeout_hint(name, self.plan.timeout))
        except _Failed as exc:
            failure = exc
        except wire.ProtocolViolation as exc:
            failure = _Failed(str(exc), rp.violation_hint(str(exc)))
        except OSError as exc:  # a reset, or a write to a connection the peer ended
            failure = self.lost(name, exc)
        else:
            self.steps.append(rp.Step(name, True, _ms(start), detail))
            return value
        self.steps.append(rp.Step(name, False, _ms(start), failure.detail))
        raise failure

    def lost(self, step: str, exc: OSError) -> _Failed:
        error = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        if step in ("ping", "close"):
            self.close_code = 1006
            return _Failed(f"no close frame (1006): {error}", rp.after_upgrade_hint(step, None, ""))
        return _Failed(f"the connection failed: {error}", rp.no_answer_hint())

    def outcome(self, hint: str) -> rp.Outcome:
        return rp.Outcome(hint, self.status, self.reason, self.sidecar, self.close_code)


async def walk(
    plan: Plan, *, token: str | None = None, token_fingerprint: str | None = None, heading: str = ""
) -> rp.Report:
    """Runs the steps; the report of those that ran. ``token`` describes the token (its
    length and fingerprint) for the hints."""
    w = _Walk(plan, rp.PeerText(*plan.secrets()), token)
    t = plan.target
    try:
        addresses = await w.step("resolve", _resolve(t))
        await w.step("connect", _connect(w, addresses, t))
        if plan.tls is not None:
            await w.step("tls", _tls(w, plan.tls, t))
        await w.step("upgrade", _upgrade(w))
        await w.step("ping", _ping(w))
        await w.step("close", _close(w))
        outcome = w.outcome(rp.PASSED)
    except _Failed as failure:
        outcome = w.outcome(failure.hint)
    finally:
        if w.writer is not None:
            await _hang_up(w.writer)
    return rp.Report(tuple(w.steps), outcome, token_fingerprint, heading)


async def _hang_up(writer: asyncio.StreamWriter) -> None:
    """Ends the connection after what was written (a close frame's answer, say) has gone:
    at once for TCP, within a second for TLS's close_notify (RFC 8446 section 6.1)."""
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


async def _resolve(t: wire.Target) -> tuple[list[str], str]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        error = exc.strerror or str(exc)
        raise _Failed(f"{t.host}: {error}", rp.resolve_hint(t.host, error)) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return addresses, f"{t.host} -> {', '.join(addresses)}"


async def _connect(w: _Walk, addresses: list[str], t: wire.Target) -> tuple[None, str]:
    errors = []
    for address in addresses:  # in getaddrinfo's order, as most clients do
        try:
            w.reader, w.writer = await asyncio.open_connection(address, t.port, limit=_READ)
        except OSError as exc:
            errors.append(f"{address}: {os.strerror(exc.errno) if exc.errno else exc}")
            continue
        tried = f" ({'; '.join(errors)})" if errors else ""
        return None, f"{address} port {t.port}{tried}"
    raise _Failed("; ".join(errors), rp.connect_hint(t.host, t.port))


async def _tls(w: _Walk, context: ssl.SSLContext, t: wire.Target) -> tuple[None, str]:
    assert w.writer is not None
    try:
        await w.writer.start_tls(context, server_hostname=t.host)
    except ssl.SSLCertVerificationError as exc:
        code = exc.verify_code
        raise _Failed(rp.tls_verdict(code, exc.verify_message), rp.tls_hint(t.host, t.port, code)) from None
    except (OSError, EOFError) as exc:
        detail = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        raise _Failed(f"TLS failed: {detail}", rp.tls_hint(t.host, t.port, None)) from None
    tls = w.writer.get_extra_info("ssl_object")
    assert isinstance(tls, ssl.SSLObject)
    return None, f"{tls.version()}; {_certificate(tls.getpeercert() or {}, w.peer)}"


def _names(value: object, wanted: dict[str, str]) -> str:
    """``CN=x, O=y`` from getpeercert()'s nested tuples (RDNs of (type, value) pairs)."""
    pairs = [
        f"{wanted[pair[0]]}={pair[1]}"
        for rdn in (value if isinstance(value, tuple) else ())
        for pair in (rdn if isinstance(rdn, tuple) else ())
        if isinstance(pair, tuple) and len(pair) == 2 and pair[0] in wanted
    ]
    return ", ".join(pairs)


def _certificate(cert: Mapping[str, object], peer: rp.PeerText) -> str:
    names = {"commonName": "CN", "organizationName": "O"}
    # subjectAltName is one level flatter than a name: a tuple of (type, value) pairs.
    alt = _names((cert.get("subjectAltName", ()),), {"DNS": "DNS", "IP Address": "IP"})
    found = f"subject {peer(_names(cert.get('subject'), names) or '(none)')}; names {peer(alt) or '(none)'}"
    found += f"; issuer {peer(_names(cert.get('issuer'), names) or '(none)')}"
    not_after = cert.get("notAfter")
    if isinstance(not_after, str):
        expires = ssl.cert_time_to_seconds(not_after)
        left = int((expires - time.time()) // 86400)
        found += f"; expires {time.strftime('%Y-%m-%d', time.gmtime(expires))} (in {left} days)"
    return found


# --- after the connection: the handshake and frames ---------------------------------


async def _read_more(w: _Walk) -> bool:
    """Adds what arrived to the buffer; ``False`` once the stream has ended."""
    assert w.reader is not None
    data = await w.reader.read(_READ)
    w.buffer += data
    return bool(data)


def _send(w: _Walk, opcode: wire.Opcode, payload: bytes) -> None:
    assert w.writer is not None
    # RFC 6455 section 5.3: a fresh, unpredictable masking key for every frame.
    w.writer.write(wire.encode_frame(opcode, payload, secrets.token_bytes(4)))


async def _upgrade(w: _Walk) -> tuple[None, str]:
    assert w.writer is not None
    plan = w.plan
    w.writer.write(wire.build_request(plan.target, plan.headers))
    await w.writer.drain()
    while (end := wire.head_end(bytes(w.buffer))) is None:
        if not await _read_more(w):
            got = f"{len(w.buffer)} bytes and no complete HTTP head" if w.buffer else "nothing"
            raise _Failed(f"the connection ended before an answer ({got})", rp.no_answer_hint())
    head = wire.parse_head(bytes(w.buffer[:end]))
    del w.buffer[:end]
    w.status = head.status
    if head.status != 101:
        body = await _body(w, head) if head.get("X-Sidecar-Reason") is not None else b""
        answer = rp.answer_of(head, body, w.peer)
        w.reason, w.sidecar = answer.reason, answer.reason is not None
        raise _Failed(rp.answer_detail(answer), rp.answer_hint(answer, path=plan.target.path, token=w.token))
    problem = wire.upgrade_problem(head, plan.key, plan.offered)
    if problem is not None:
        raise _Failed(f"101, but {problem}", rp.bad_upgrade_hint(problem))
    return None, "101 Switching Protocols; Sec-WebSocket-Accept verified"


async def _body(w: _Walk, head: wire.Head) -> bytes:
    """A refusal's body, at most 64 KiB: Content-Length bytes, or up to the end of the stream."""
    length = head.get("Content-Length") or ""
    want = min(int(length), _BODY) if length.isdigit() else _BODY
    while len(w.buffer) < want and await _read_more(w):
        pass
    return bytes(w.buffer[:want])


async def _next_frame(w: _Walk, step: str) -> wire.Frame:
    """The server's next frame. Before the close step a close frame fails ``step``; in any
    step, so does the end of the stream (no close frame: what a client reports as 1006)."""
    while (parsed := wire.parse_frame(w.buffer)) is None:
        if not await _read_more(w):
            w.close_code = 1006  # RFC 6455 section 7.1.5: closed with no close frame
            raise _Failed("no close frame (1006): the connection ended", rp.after_upgrade_hint(step, None, ""))
    frame, used = parsed
    del w.buffer[:used]
    if frame.opcode is wire.Opcode.CLOSE and step != "close":
        code, reason = wire.parse_close(frame.payload)
        w.close_code, reason = code or 1005, w.peer(reason)
        _send(w, wire.Opcode.CLOSE, frame.payload[:2])  # RFC 6455 section 5.5.1: answer with the code
        said = f" '{reason}'" if reason else ""
        raise _Failed(
            f"closed by the server: {code or 'no code (1005)'}{said}", rp.after_upgrade_hint(step, code, reason)
        )
    return frame


async def _ping(w: _Walk) -> tuple[None, str]:
    assert w.writer is not None
    payload = b"sidecar probe " + secrets.token_hex(8).encode("ascii")
    _send(w, wire.Opcode.PING, payload)
    await w.writer.drain()
    messages = 0
    while True:
        frame = await _next_frame(w, "ping")
        if frame.opcode is wire.Opcode.PONG and frame.payload == payload:
            break  # any other pong is unsolicited (RFC 6455 section 5.5.3): not ours
        if frame.opcode is wire.Opcode.PING:
            _send(w, wire.Opcode.PONG, frame.payload)  # RFC 6455 section 5.5.2
        elif frame.opcode in (wire.Opcode.TEXT, wire.Opcode.BINARY):
            messages += 1
    before = f"; {messages} message(s) from the server came first" if messages else ""
    return None, f"pong with the same {len(payload)}-byte payload{before}"


async def _close(w: _Walk) -> tuple[None, str]:
    assert w.writer is not None
    _send(w, wire.Opcode.CLOSE, wire.close_payload(1000, "sidecar probe done"))
    await w.writer.drain()
    while (frame := await _next_frame(w, "close")).opcode is not wire.Opcode.CLOSE:
        pass  # RFC 6455 section 5.5.1: after sending close, read until the peer's
    code, reason = wire.parse_close(frame.payload)
    w.close_code, reason = code or 1005, w.peer(reason)
    said = f" '{reason}'" if reason else ""
    answered = "echoed" if code == 1000 else "answered with"
    return None, f"sent 1000; the server {answered} {code or 'no code (1005)'}{said}"
