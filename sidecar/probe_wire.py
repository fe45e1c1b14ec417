"""The bytes of one WebSocket client connection, for ``sidecar probe``. Pure: no I/O.

Just enough of RFC 6455 for a probe, kept strict so that what passes here passes for
a real agent: the URL (section 3), the client's opening handshake and its check of the
server's answer (section 4.1), masked client frames (section 5.3), and an incremental
parser of the server's frames (section 5.2) that refuses what a client must refuse.
The response head is read with bounded sizes (RFC 9112 section 2 and 5).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
MAX_HEAD = 64 * 1024  # a response head larger than this is refused
MAX_HEADERS = 100
MAX_PAYLOAD = 16 * 1024 * 1024  # a server frame larger than this ends the probe
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 section 5.6.2
_STATUS_LINE = re.compile(r"HTTP/(\d)\.(\d) (\d{3})(?: (.*))?")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
# Sent as is: RFC 3986's path and query characters, and '%' (an escape the user typed).
_PATH_SAFE = "/?:@!$&'()*+,;=-._~%"
# A query parameter or header whose name says it carries a credential (Sec-WebSocket-* aside).
_CREDENTIAL_NAME = re.compile(
    r"token|secret|key|pass|pwd|auth|sig|session|cookie|jwt|credential|api|ticket|hmac", re.IGNORECASE
)
# Query parameters that are credentials only as the whole name (OAuth's ?code=, ?pw=...):
# inside a longer one they are ordinary (country_code). Not ?t=: socket.io's cache-buster.
_CREDENTIAL_QUERY = frozenset({"code", "pw", "pin", "otp", "hash"})
# A subprotocol offered in Sec-WebSocket-Protocol that carries one (browsers cannot set
# Authorization on a WebSocket): Kubernetes' prefix, a word naming a credential, or a
# piece of at least 16 letters and digits, or at least 8 with a digit (a random value).
_K8S_BEARER = "base64url.bearer.authorization.k8s.io."
_PROTOCOL_WORD = re.compile(r"bearer|token|auth|jwt|secret|pass|key|credential|session", re.IGNORECASE)
_MARKER = re.compile(r"[A-Za-z]+(?:[-_.][A-Za-z]+)*")  # words only: 'bearer', 'access_token'


class ProtocolViolation(Exception):
    """The server broke HTTP/1.1 or RFC 6455 in a way a client must refuse."""


class Opcode(enum.IntEnum):
    """RFC 6455 section 5.2."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


@dataclass(frozen=True)
class Target:
    """Where the probe connects, from the URL."""

    tls: bool
    host: str  # a name, or an IP address without brackets
    port: int
    resource: str  # the request target: path and query, as sent
    query_names: tuple[str, ...]  # each name, "=" after it when it has a value: shown instead of the query
    credentials: tuple[str, ...] = ()  # query values that are credentials (by their name), as typed and sent

    @property
    def authority(self) -> str:
        """``Host`` header value: the port only when it is not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.tls else 80) else f"{host}:{self.port}"

    @property
    def path(self) -> str:
        return self.resource.split("?", 1)[0]

    def shown(self, secrets: tuple[str, ...] = ()) -> str:
        """The URL with each query value replaced by ``…``, and so is a name that may be a
        value (a bare ``?abc``, or one of ``secrets``)."""
        query = "&".join(
            "…" if "=" not in pair or pair.split("=", 1)[0] in secrets else pair.split("=", 1)[0] + "=…"
            for pair in self.query_names
        )
        return f"{'wss' if self.tls else 'ws'}://{self.authority}{self.path}" + (f"?{query}" if query else "")


def parse_target(url: str) -> Target:
    """A ``ws://`` or ``wss://`` URL; ``ValueError`` with a usage message otherwise."""
    if _UNSAFE.search(url) or " " in url:
        raise ValueError("the URL has spaces or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        raise ValueError(f"a WebSocket URL starts with ws:// or wss://, not {scheme}:// (agents use wss:// on Railway)")
    if scheme not in ("ws", "wss"):
        raise ValueError("the URL must start with ws:// or wss://")
    if parts.fragment or url.endswith("#"):
        raise ValueError("a WebSocket URL has no #fragment (RFC 6455 section 3)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials do not belong in the URL: pass the token with --token-env VAR")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the URL's port is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise ValueError("the URL has no host")
    tls = scheme == "wss"
    resource = quote(parts.path or "/", safe=_PATH_SAFE) + (
        f"?{quote(parts.query, safe=_PATH_SAFE)}" if parts.query else ""
    )
    pairs = tuple(pair for pair in parts.query.split("&") if pair)
    names = tuple(pair.split("=", 1)[0] + ("=" if "=" in pair else "") for pair in pairs)
    found = [
        value
        for name, _, raw in (pair.partition("=") for pair in pairs)
        if raw and (_CREDENTIAL_NAME.search(unquote(name)) or unquote(name).lower() in _CREDENTIAL_QUERY)
        for value in (raw, quote(raw, safe=_PATH_SAFE), unquote(raw))
    ]
    return Target(tls, parts.hostname, port if port else (443 if tls else 80), resource, names, tuple(found))


def credentials(target: Target, headers: list[tuple[str, str]]) -> list[str]:
    """What no output may show beside the token: the URL's credential query values, and
    the values of headers that carry one (``Authorization``, ``Cookie``, ``X-Api-Key``...),
    whole, without their scheme (``Bearer x``) and each cookie's value."""
    found = list(target.credentials)
    for name, value in headers:
        if name.lower() == "sec-websocket-protocol":
            found += protocol_credentials(value)
        elif _CREDENTIAL_NAME.search(name) and not name.lower().startswith("sec-websocket-"):
            found += [value, value.split(" ", 1)[-1]]
            found += [c.partition("=")[2].strip() for c in value.split(";")] if name.lower() == "cookie" else []
    return [s for s in dict.fromkeys(found) if s]


def protocol_credentials(value: str) -> list[str]:
    """The subprotocols offered in ``value`` that carry a credential: one that follows a
    word naming it (``bearer, <token>``), Kubernetes' ``base64url.bearer.authorization.k8s.io.<token>``
    (and the token, decoded), or one that looks random or has such a word beside other
    characters (``x-token.5b1e9c77``). Ordinary names (``graphql-ws``, ``ocpp1.6``) are not."""
    found: list[str] = []
    after_marker = False
    for entry in (e.strip(" \t") for e in value.split(",")):
        if not entry:
            continue
        if entry.lower().startswith(_K8S_BEARER):
            encoded = entry[len(_K8S_BEARER) :]
            found += [entry, encoded, _base64url_text(encoded)]
        elif after_marker or _random_looking(entry):
            found.append(entry)
        elif _PROTOCOL_WORD.search(entry):
            if not (_MARKER.fullmatch(entry) and len(entry) <= 32):
                found.append(entry)
            else:  # a word alone names what comes next
                after_marker = True
                continue
        after_marker = False
    # Not a subprotocol token, but typed: 'Bearer <token>' as one entry; its token alone too.
    found += [c.split()[-1] for c in found if len(c.split()) > 1]
    return [s for s in found if s]


def _random_looking(entry: str) -> bool:
    pieces = re.split(r"[^A-Za-z0-9]+", entry)
    return any(len(p) >= 16 or (len(p) >= 8 and any(c.isdigit() for c in p)) for p in pieces)


def _base64url_text(encoded: str) -> str:
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return ""


def parse_header_option(text: str) -> tuple[str, str]:
    """``-H 'Name: value'`` -> (name, value); ``ValueError`` with a usage message."""
    name, colon, value = text.partition(":")
    if not colon or not _TOKEN.fullmatch(name):
        # Never quoted: a mistyped header ('Authorization Bearer x', 'X-Api-Key=x') holds its credential.
        wrong = "this one has no ':'" if not colon else "the name before its ':' has other characters (a space?)"
        raise ValueError(f"-H takes 'Name: value' with a header name of letters, digits and -: {wrong}")
    if _UNSAFE.search(value.replace("\t", " ")):
        raise ValueError(f"-H {name}: the value has control characters")
    return name, value.strip(" \t")


def check_field(what: str, value: str) -> None:
    """A token or agent id goes into a header: no line breaks or other controls."""
    if not value or _UNSAFE.search(value):
        raise ValueError(f"the {what} is empty or has control characters (a newline?)")


def accept_for(key: str) -> str:
    """The Sec-WebSocket-Accept a server must answer ``key`` with (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


def request_headers(
    target: Target, key: str, *, token: str | None, agent_id: str | None, extra: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The handshake's headers (RFC 6455 section 4.1). Each ``-H`` replaces the header of
    its name the probe would send (the first time), or is added; an empty value removes it."""
    headers = [
        ("Host", target.authority),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
        ("User-Agent", "sidecar-probe"),
    ]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))  # RFC 6750 section 2.1
    if agent_id is not None:
        headers.append(("X-Edge-Agent-Id", agent_id))
    own = {n.lower(): i for i, (n, _) in enumerate(headers)}
    for name, value in extra:
        index = own.pop(name.lower(), None)  # only the probe's own, and each once
        if index is not None:
            headers[index] = (name, value)
        else:
            headers.append((name, value))
    return [(n, v) for n, v in headers if v]


def build_request(target: Target, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"GET {target.resource} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


@dataclass(frozen=True)
class Head:
    """A response's status line and header fields, in order."""

    status: int
    phrase: str
    headers: tuple[tuple[str, str], ...]

    def getall(self, name: str) -> list[str]:
        lower = name.lower()
        return [v for n, v in self.headers if n.lower() == lower]

    def get(self, name: str) -> str | None:
        values = self.getall(name)
        return values[0] if values else None

    def tokens(self, name: str) -> list[str]:
        """A comma-separated list header's elements, lower-cased (RFC 9110 section 5.6.1)."""
        return [t.strip().lower() for v in self.getall(name) for t in v.split(",") if t.strip()]


def head_end(buffer: bytes) -> int | None:
    """Where the head ends (after its empty line), or ``None`` if it has not yet."""
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end != -1:
        return end + 4
    if len(buffer) >= MAX_HEAD:
        raise ProtocolViolation(f"the response head is over {MAX_HEAD // 1024} KiB")
    return None


def parse_head(raw: bytes) -> Head:
    """An HTTP/1.x response head, the final empty line included or not."""
    lines = raw.decode("latin-1").split("\r\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise ProtocolViolation("the answer is not HTTP/1.x (no status line)")
    if match.group(1) != "1":
        raise ProtocolViolation(f"the answer is HTTP/{match.group(1)}.{match.group(2)}, not HTTP/1.1")
    fields = [line for line in lines[1:] if line]
    if len(fields) > MAX_HEADERS:
        raise ProtocolViolation(f"the response has over {MAX_HEADERS} header fields")
    headers = []
    for line in fields:
        name, colon, value = line.partition(":")
        if line[0] in " \t":  # RFC 9112 section 5.2: obsolete line folding
            raise ProtocolViolation("the response folds a header over two lines (obsolete)")
        if not colon or not _TOKEN.fullmatch(name):
            raise ProtocolViolation("the response has a malformed header line")
        headers.append((name, value.strip(" \t")))
    return Head(int(match.group(3)), match.group(4) or "", tuple(headers))


def upgrade_problem(head: Head, key: str, offered: list[str]) -> str | None:
    """``None`` if a 101 completes the handshake for ``key`` (RFC 6455 section 4.1,
    the client's checks of the server's answer), else what is wrong with it."""
    if head.tokens("Upgrade") != ["websocket"]:
        return "the 101 has no 'Upgrade: websocket'"
    if "upgrade" not in head.tokens("Connection"):
        return "the 101 has no 'Connection: Upgrade'"
    accepts = head.getall("Sec-WebSocket-Accept")
    if accepts != [accept_for(key)]:
        return "its Sec-WebSocket-Accept is " + ("missing" if not accepts else "not the one the key requires")
    if head.getall("Sec-WebSocket-Extensions"):
        return "the 101 chose an extension the probe did not offer"
    chosen = head.getall("Sec-WebSocket-Protocol")
    if chosen and (len(chosen) > 1 or chosen[0].strip() not in offered):
        return "the 101 chose a subprotocol the probe did not offer"
    return None


def encode_frame(opcode: Opcode, payload: bytes, mask: bytes) -> bytes:
    """One final frame from the client: always masked (RFC 6455 section 5.3)."""
    if len(mask) != 4:
        raise ValueError("a masking key is 4 bytes")
    length = len(payload)
    head = bytes([0x80 | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + length.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: str) -> bytes:
    """A close frame's body: the code, then the UTF-8 reason (RFC 6455 section 5.5.1)."""
    return code.to_bytes(2, "big") + reason.encode("utf-8")


@dataclass(frozen=True)
class Frame:
    fin: bool
    opcode: Opcode
    payload: bytes


def parse_frame(buffer: bytes | bytearray) -> tuple[Frame, int] | None:
    """The first frame in ``buffer`` and the bytes it took, or ``None`` if it is not all there."""
    if len(buffer) < 2:
        return None
    first, second = buffer[0], buffer[1]
    if first & 0x70:
        raise ProtocolViolation("a frame has RSV bits set and no extension was negotiated (RFC 6455 section 5.2)")
    try:
        opcode = Opcode(first & 0x0F)
    except ValueError:
        raise ProtocolViolation(f"a frame has the reserved opcode {first & 0x0F:#x}") from None
    if second & 0x80:
        raise ProtocolViolation("the server masked a frame (RFC 6455 section 5.1: it must not)")
    length, offset = second & 0x7F, 2
    if length >= 126:
        size = 2 if length == 126 else 8
        if len(buffer) < 2 + size:
            return None
        length, offset = int.from_bytes(buffer[2 : 2 + size], "big"), 2 + size
    fin = bool(first & 0x80)
    if opcode >= Opcode.CLOSE and (not fin or length > 125):
        raise ProtocolViolation("a control frame is fragmented or over 125 bytes (RFC 6455 section 5.5)")
    if length > MAX_PAYLOAD:
        raise ProtocolViolation(f"a frame of {length} bytes is over the probe's {MAX_PAYLOAD // 2**20} MiB")
    if len(buffer) < offset + length:
        return None
    return Frame(fin, opcode, bytes(buffer[offset : offset + length])), offset + length


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """A close frame's code (``None``: it sent none, read as 1005) and reason."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise ProtocolViolation("a close frame has a 1-byte body (RFC 6455 section 5.5.1)")
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")
