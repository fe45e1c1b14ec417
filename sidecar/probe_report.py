"""What ``sidecar probe`` found, judged and put in words. Pure: no I/O.

The walk (:mod:`sidecar.probe`) records a :class:`Step` for each stage it runs; this
module turns an HTTP answer into a reason and a hint that names the fix, and a
finished probe into the human lines and the ``--json`` object. Everything the server
chose to say (headers, its JSON body, a close reason, a certificate's names) passes
through :class:`PeerText` before it is shown.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .probe_wire import Head

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LIMIT = 200
NOT_A_SIDECAR = (
    "The answer did not come from a sidecar (no X-Sidecar-Reason{server}): if one should be in front of "
    "this URL, it is not (agents connect to the sidecar's domain, not the backend's)."
)


class PeerText:
    """Text the server chose, made safe to print: one line, at most 200 characters, and
    withheld whole if it contains the token (a server that echoes requests would print
    it; a partial mask would show where it was)."""

    def __init__(self, *secrets: str | None) -> None:
        self._secrets = [s for s in secrets if s]

    def __call__(self, text: str) -> str:
        if any(secret in text for secret in self._secrets):
            return "(withheld: it contains the token)"
        text = _CONTROL.sub(" ", text)
        return text if len(text) <= _LIMIT else text[: _LIMIT - 1] + "…"


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    ms: float
    detail: str


@dataclass(frozen=True)
class Outcome:
    """How the probe ended, beside its steps: the fields of the ``--json`` object."""

    hint: str
    status: int | None = None  # the handshake's HTTP status, once there is one
    reason: str | None = None  # X-Sidecar-Reason
    sidecar: bool = False
    close_code: int | None = None  # the peer's, or 1006 for none


@dataclass(frozen=True)
class Report:
    steps: tuple[Step, ...]
    outcome: Outcome
    token_fingerprint: str | None = None
    heading: str = ""

    @property
    def failed(self) -> bool:
        return any(not s.ok for s in self.steps)

    @property
    def failed_step(self) -> str | None:
        return next((s.name for s in self.steps if not s.ok), None)


def as_json(report: Report) -> dict[str, object]:
    """The ``--json`` object, exactly as issue 11 specifies it."""
    o = report.outcome
    return {
        "ok": not report.failed,
        "failed_step": report.failed_step,
        "status": o.status,
        "reason": o.reason,
        "close_code": o.close_code,
        "sidecar": o.sidecar,
        "hint": o.hint,
        "token_fingerprint": report.token_fingerprint,
        "steps": [{"name": s.name, "ok": s.ok, "ms": round(s.ms, 1), "detail": s.detail} for s in report.steps],
    }


def render_json(report: Report) -> str:
    return json.dumps(as_json(report), ensure_ascii=False)


def render(report: Report) -> str:
    """One line per step with what it found and its time, then the verdict."""
    lines = [report.heading] if report.heading else []
    for s in report.steps:
        lines.append(f"  {s.name:<8} {'ok' if s.ok else 'FAIL':<4} {s.ms:8.1f} ms  {s.detail}")
    verdict = f"FAIL at {report.failed_step}" if report.failed else "OK"
    lines.append(f"{verdict}: {report.outcome.hint}")
    return "\n".join(lines)


# --- the steps before and after the handshake ------------------------------------------

PASSED = (
    "every step passed: this URL accepts a WebSocket with what was sent, answers a ping and closes "
    "cleanly; an agent sending the same URL, token and agent id gets in."
)
# OpenSSL's X509_V_ERR_* codes (ssl.SSLCertVerificationError.verify_code) the probe words itself.
_UNTRUSTED = {18: "self-signed", 19: "self-signed in its chain", 20: "issuer unknown here", 21: "issuer unknown here"}
_EXPIRED = {9: "not valid yet", 10: "expired"}
_NAME = frozenset({62, 64})  # the name, or the IP address, is not on the certificate


def resolve_hint(host: str, error: str) -> str:
    return (
        f"{host} does not resolve ({error}): check the host in the URL for a typo, and that the domain "
        "still exists (on Railway: the service's Settings, Networking)."
    )


def connect_hint(host: str, port: int) -> str:
    return (
        f"nothing accepted a connection at {host} port {port}: is the service running, and is the port "
        "right? (wss:// means 443 and ws:// 80 unless the URL names a port.)"
    )


def timeout_hint(step: str, seconds: float) -> str:
    what = {
        "resolve": "the name lookup",
        "connect": "the TCP connection (a firewall dropping it, or a wrong address)",
        "tls": "the TLS handshake (is this port TLS?)",
        "upgrade": "the WebSocket handshake (a server or proxy that holds it, or a backend asleep)",
        "ping": "the ping: the server or a proxy in between does not answer pings (RFC 6455 section 5.5.2)",
        "close": "the close frame (RFC 6455 section 5.5.1: it must answer with one)",
    }[step]
    return f"no answer within {seconds:g} s to {what}. Retry with a longer --timeout to tell slow from silent."


def tls_verdict(verify_code: int | None, message: str) -> str:
    """A certificate failure in words (the step's detail)."""
    if verify_code in _NAME:
        return f"the certificate does not name this host ({message})"
    if verify_code in _UNTRUSTED:
        return f"untrusted certificate chain: {_UNTRUSTED[verify_code]} ({message})"
    if verify_code in _EXPIRED:
        return f"the certificate is {_EXPIRED[verify_code]} ({message})"
    return message


def tls_hint(host: str, port: int, verify_code: int | None) -> str:
    if verify_code in _NAME:
        return (
            f"the server's certificate is not for {host}: the URL's host is not one the certificate names "
            "(a custom domain not set up on the platform, or the wrong host)."
        )
    if verify_code in _UNTRUSTED:
        return (
            "the certificate is not signed by a CA this machine trusts (self-signed, or a private CA): "
            "give the probe that CA with --cacert FILE (or SSL_CERT_FILE), or fix the server's chain."
        )
    if verify_code in _EXPIRED:
        return "the certificate is outside its validity dates: renew it (or check this machine's clock)."
    if verify_code is None:
        return f"TLS failed at {host} port {port}: is this a TLS port? A plain one is ws://, not wss://."
    return "the certificate failed verification: see the detail."


def after_upgrade_hint(step: str, code: int | None, reason: str) -> str:
    """The peer closed (``code``; ``None``: TCP ended with no close frame) during ``step``."""
    if step == "close":
        return (
            "the server did not answer the close frame with its own before the connection ended "
            "(RFC 6455 section 7.1.1): agents see 1006 at every disconnect."
        )
    if code is None:
        return (
            "the server accepted the WebSocket (101), then dropped the connection without a close frame: "
            "an agent sees this as 1006. The server's (or a proxy's) logs say why; a backend that crashes "
            "or refuses only after the upgrade does this."
        )
    said = f" '{reason}'" if reason else ""
    return (
        f"the server accepted the WebSocket (101), then closed it at once with {code}{said}: "
        "this is the refusal an agent sees; the server's logs say why."
    )


def no_answer_hint() -> str:
    return (
        "the server ended the connection without answering the handshake: a TLS port spoken to with "
        "ws:// (use wss://), a server that is not HTTP, or one that drops what it refuses."
    )


def bad_upgrade_hint(problem: str) -> str:
    return (
        f"the server answered 101, but {problem} (RFC 6455 section 4.1): it is not a conforming WebSocket "
        "server, or something in between rewrote the handshake."
    )


def violation_hint(problem: str) -> str:
    return (
        f"the server broke the protocol ({problem}): it is not a conforming HTTP/1.1 WebSocket server, "
        "or something in between (a proxy, an antivirus) rewrites the connection."
    )


# --- the HTTP answer to the handshake ------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A handshake answer other than 101, with what the hint may use (all peer text cleaned)."""

    status: int
    phrase: str
    reason: str | None  # X-Sidecar-Reason
    server: str | None = None
    location: str | None = None
    retry_after: str | None = None
    upstream_status: str | None = None
    message: str | None = None  # the sidecar's JSON body
    detail: str | None = None
    did_you_mean: str | None = None
    websocket_paths: tuple[str, ...] | None = None


def answer_of(head: Head, body: bytes, peer: PeerText) -> Answer:
    """The answer, with the fields of a sidecar's JSON body (when it is one) that hints use."""
    try:
        fields = json.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, ValueError):
        fields = {}
    fields = fields if isinstance(fields, dict) else {}

    def text(value: object) -> str | None:
        return peer(value) if isinstance(value, str) else None

    paths = fields.get("websocket_paths")
    reason = head.get("X-Sidecar-Reason")
    return Answer(
        head.status,
        peer(head.phrase),
        peer(reason) if reason is not None else None,
        server=text(head.get("Server")),
        location=text(head.get("Location")),
        retry_after=text(head.get("Retry-After")),
        upstream_status=text(head.get("X-Sidecar-Upstream-Status")),
        message=text(fields.get("message")),
        detail=text(fields.get("detail")),
        did_you_mean=text(fields.get("did_you_mean")),
        websocket_paths=tuple(peer(p) for p in paths[:20] if isinstance(p, str)) if isinstance(paths, list) else None,
    )


def answer_detail(answer: Answer) -> str:
    """The upgrade step's detail for a refusal: ``404 Not Found; X-Sidecar-Reason: no_route``."""
    parts = [f"{answer.status} {answer.phrase}".strip()]
    if answer.reason is not None:
        parts.append(f"X-Sidecar-Reason: {answer.reason}")
    if answer.server:
        parts.append(f"Server: {answer.server}")
    return "; ".join(parts)


def answer_hint(answer: Answer, *, path: str, token: str | None) -> str:
    """The fix for a refused handshake. ``token`` describes the token sent (its length
    and fingerprint), never the token itself."""
    if answer.reason is None:
        return _plain_hint(answer, path) + " " + NOT_A_SIDECAR.format(server=_server(answer))
    text = _SIDECAR.get(answer.reason, _message)(answer, path, token)
    extras = []
    if answer.detail:
        extras.append(f"Detail: {answer.detail}.")
    if answer.retry_after:
        extras.append(f"Retry after {answer.retry_after} s.")
    return " ".join([f"the sidecar refused it ({answer.status} {answer.reason}): {text}", *extras])


def _server(answer: Answer) -> str:
    return f"; Server: {answer.server}" if answer.server else ""


def _plain_hint(answer: Answer, path: str) -> str:
    status = answer.status
    if 200 <= status < 300:
        return f"the server answered {status} to a WebSocket handshake: {path} is a plain HTTP resource there."
    if 300 <= status < 400:
        where = answer.location or "elsewhere"
        return (
            f"the server redirects ({status}) to {where}: WebSocket clients do not follow redirects; "
            "connect to that URL instead (often wss:// rather than ws://)."
        )
    generic = {
        400: "the server found the handshake malformed.",
        401: "the server wants credentials it did not get or did not accept (its own auth).",
        403: "the server refused it (403 Forbidden): its own auth or an access rule.",
        404: f"the server has nothing at {path}: the path is wrong, or this URL does not reach the service meant.",
        405: f"the server does not take GET at {path}.",
        426: "the server wants an upgrade it did not see: a proxy in between may drop the Upgrade header.",
        429: "the server is rate limiting this client.",
        502: "a proxy in front could not get an answer from the server behind it (down, starting or asleep).",
        503: "the server (or a proxy in front of it) is unavailable: down, starting, asleep or overloaded.",
        504: "a proxy in front timed out waiting for the server behind it.",
    }
    phrase = f" {answer.phrase}" if answer.phrase else ""
    return generic.get(status, f"the server refused the upgrade with {status}{phrase}.")


def _no_route(a: Answer, path: str, token: str | None) -> str:
    paths = a.websocket_paths or ()
    serves = f"this server serves {', '.join(paths)}" if paths else "this server has no WebSocket route at all"
    guess = f" (did you mean {a.did_you_mean}?)" if a.did_you_mean else ""
    return f"no WebSocket route at {path}; {serves}{guess}. Use one of them in the agent's URL, spelled exactly."


def _missing_token(a: Answer, path: str, token: str | None) -> str:
    return (
        "it wants 'Authorization: Bearer <secret>' and none was sent. Run the probe with --token-env VAR "
        "(the variable holding the agent's secret); the agent must send the same header."
    )


def _malformed_token(a: Answer, path: str, token: str | None) -> str:
    return (
        f"the Authorization header is not one 'Bearer <token>' (RFC 6750 section 2.1): the token ({token}) "
        "has characters a Bearer token cannot have (a space, quotes, a line break) or was sent twice."
    )


def _invalid_token(a: Answer, path: str, token: str | None) -> str:
    return (
        f"the token sent ({token}) matches none of the sidecar's secrets. Where the sidecar runs, "
        "'sidecar fingerprint --env EDGE_SECRET' prints its secret's fingerprint (on Railway: "
        "'railway run sidecar fingerprint --env EDGE_SECRET'): the agent's must be the same. A signed "
        "token (JWT) failed verification: the sidecar's ws.rejected log line says why."
    )


def _agent_id(a: Answer, path: str, token: str | None) -> str:
    return (
        f"{a.message or 'the agent id is wrong'} (--agent-id ID sends X-Edge-Agent-Id; or ?edge_agent_id= in the URL)"
    )


def _not_websocket(a: Answer, path: str, token: str | None) -> str:
    return (
        "the sidecar saw a plain HTTP request, not a WebSocket handshake: a proxy in between dropped the "
        f"Upgrade header (or -H removed it). {a.message or ''}"
    ).strip()


def _rate_limited(a: Answer, path: str, token: str | None) -> str:
    return (
        "too many failed authentications from this address: the right token is refused too until the "
        "block ends. Compare fingerprints ('sidecar fingerprint') before trying again."
    )


def _upstream(a: Answer, path: str, token: str | None) -> str:
    said = f", its status {a.upstream_status}" if a.upstream_status else ""
    return f"the sidecar is up and admitted the connection; its backend is the problem{said}. {a.message or ''}".strip()


def _message(a: Answer, path: str, token: str | None) -> str:
    """The sidecar's own words, else where its docs explain the reason (a troubleshooting row)."""
    return a.message or f"see docs/troubleshooting.md#reason-{a.reason} in the sidecar's repository"


_SIDECAR = {
    "no_route": _no_route,
    "missing_token": _missing_token,
    "malformed_token": _malformed_token,
    "invalid_token": _invalid_token,
    "missing_agent_id": _agent_id,
    "invalid_agent_id": _agent_id,
    "agent_id_mismatch": _agent_id,
    "not_websocket": _not_websocket,
    "rate_limited": _rate_limited,
    "upstream_unavailable": _upstream,
    "upstream_timeout": _upstream,
    "upstream_rejected": _upstream,
    "origin_denied": _message,
    "duplicate_agent": _message,
    "over_capacity": _message,
    "draining": _message,
    "bad_request": _message,
    "headers_too_large": _message,
    "bad_handshake": _message,
    "bad_path": _message,
    "token_expired": _message,
    "agent_not_allowed": _message,
}
