"""The config model: what ``routes.yaml`` becomes. Frozen dataclasses and their defaults.

Pure: no YAML and no I/O here (YAML is ``reader``'s; the sections are built in
``schema``, ``targets`` and ``routes``, each default taken from the classes below).
A secret is held only as its SHA-256 digest (``digest_secret``), so no ``repr``, log
line or exception can carry one.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_AGENT_ID_PATTERN = r"[A-Za-z0-9_.-]{1,128}"
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
ALL_INTERFACES = "*"  # every IPv4 and IPv6 address (Railway's private network may be IPv6)
# Railway's edge, trusted by default where the process runs on Railway (``railway``): it
# connects from the shared address space of RFC 6598 and names the client in X-Real-IP.
RAILWAY_EDGE: IPNetwork = ipaddress.IPv4Network("100.64.0.0/10")
RAILWAY_CLIENT_IP_HEADER = "X-Real-IP"
DuplicateAgent = Literal["replace", "reject", "allow"]
LogFormat = Literal["json", "text"]
OnExpiry = Literal["close", "ignore"]

# JWT algorithms (RFC 7518 section 3.1, RFC 8037 for EdDSA). "none" is never one of them.
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
# An HMAC key at least as long as the hash's output (RFC 7518 section 3.2: HS256, 32 bytes).
MIN_JWT_SECRET_BYTES = 32
# How long an agent id may be when the pattern itself has no bound (``.+``).
UNBOUNDED_AGENT_ID_LENGTH = 256


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file, at ``line`` (1-based; 0 = whole file) and, where
    known (a YAML syntax error), ``column`` (1-based; 0 = the line)."""

    file: str
    line: int
    message: str
    severity: Severity = "error"
    column: int = 0

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.line and self.column:
            where += f":{self.column}"
        return f"{where}: {self.severity}: {self.message}"


@dataclass(frozen=True)
class Upstream:
    name: str
    url: str  # scheme://host[:port][/base], no userinfo/query (validated)
    connect_timeout: float = 10.0
    read_timeout: float = 60.0


@dataclass(frozen=True)
class AgentIdRule:
    header: str | None = "X-Edge-Agent-Id"
    query: str | None = "edge_agent_id"
    pattern: re.Pattern[str] = re.compile(DEFAULT_AGENT_ID_PATTERN)
    required: bool = True
    forward_header: str = "X-Edge-Agent-Id"
    # The longest id the pattern can match: longer input is refused before the pattern
    # runs, so an operator's pattern never backtracks over a whole 8 KiB header.
    max_length: int = 128


@dataclass(frozen=True)
class JwtPolicy:
    """JSON Web Tokens an auth policy accepts (``auth.<name>.jwt``).

    ``secrets`` are the HMAC keys, current first: verification needs them as they are,
    so they are held, but never shown (``repr=False``; ``sidecar check`` names them by
    fingerprint). Asymmetric keys come from ``jwks_url`` at run time, never from the file.
    """

    secrets: tuple[bytes, ...] = field(default=(), repr=False)
    jwks_url: str | None = None
    algorithms: tuple[str, ...] = ("HS256",)
    issuer: str | None = None  # iss must equal it
    audience: str | None = None  # aud must contain it
    agent_claim: str = "sub"  # the claim whose value is the agent id
    leeway: float = 30.0  # seconds of clock skew allowed on exp, nbf and iat
    on_expiry: OnExpiry = "close"  # close: an open session ends at exp + leeway (4401)


@dataclass(frozen=True)
class AuthPolicy:
    name: str
    secret_digests: tuple[bytes, ...] = field(repr=False, default=())
    agent_id: AgentIdRule | None = None
    # The variables its bearer and jwt.secrets lists name (names, not values): what 'sidecar
    # check' and the start-up log list as set or unset, with the fingerprints of those set.
    secret_variables: tuple[str, ...] = ()
    jwt: JwtPolicy | None = None


@dataclass(frozen=True)
class Retry:
    """Retrying the upstream WebSocket handshake, for a backend that is waking up or
    restarting: up to ``attempts`` tries in all (the first included), waiting
    ``backoff``, doubled after each failure, jittered; all within the upstream's
    ``connect_timeout``."""

    attempts: int
    backoff: float = 0.2


@dataclass(frozen=True)
class Route:
    name: str
    websocket: bool
    upstream: Upstream
    paths: tuple[str, ...] = ()
    prefix: str | None = None  # always ends with '/'
    upstream_path: str | None = None
    auth: AuthPolicy | None = None
    forward_authorization: bool = False
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    origins: frozenset[str] | None = None  # RFC 6454 serialised; None: any Origin
    max_sessions: int | None = None  # WebSocket sessions on this route at once
    duplicate_agent: DuplicateAgent = "replace"  # a second session with the same agent id
    compression: bool = False  # permessage-deflate (RFC 7692) on both legs
    query_token: bool = False  # accept ?access_token= (RFC 6750 section 2.3)
    retry: Retry | None = None

    def describe_paths(self) -> str:
        if self.prefix is not None:
            return self.prefix + "*"
        return ", ".join(self.paths)


@dataclass(frozen=True)
class StateConfig:
    """The ``state`` section: where the fleet's shared state lives. ``redis`` empty: this
    process's own tables (one replica, as before). The URL may carry a password, so it
    is left out of ``repr``; :attr:`display` is the URL with the password replaced."""

    redis: str = field(default="", repr=False)  # redis://, rediss:// or unix://; "" = in-process
    key_prefix: str = "sidecar:"  # so that several services can share one Redis
    lease_ttl: float = 30.0  # how long an agent's lease outlives a replica that died
    timeout: float = 0.25  # the longest a handshake waits on Redis

    @property
    def display(self) -> str:
        """The URL as it may be shown or logged: the password (if any) as ``<secret>``."""
        return display_url(self.redis)


def display_url(url: str) -> str:
    """``url`` with its password replaced by ``<secret>``: the userinfo's after its first
    ':' (``redis://user:password@host``), and a ``password=`` query parameter
    (``unix:///run/redis.sock?password=...``, as redis-py reads it)."""
    base, question, query = url.partition("?")
    scheme, sep, rest = base.partition("://")
    if sep and "@" in rest:
        userinfo, host = rest.rsplit("@", 1)
        if ":" in userinfo:
            base = f"{scheme}://{userinfo.partition(':')[0]}:{REDACTED_PASSWORD}@{host}"
    if question:
        params = [
            f"{name}={REDACTED_PASSWORD}" if name.lower() == "password" else f"{name}{eq}{value}"
            for name, eq, value in (param.partition("=") for param in query.split("&"))
        ]
        query = "&".join(params)
    return base + question + query


REDACTED_PASSWORD = "<secret>"


@dataclass(frozen=True)
class Config:
    routes: tuple[Route, ...]
    upstreams: Mapping[str, Upstream]
    auth: Mapping[str, AuthPolicy]
    listen_host: str = ALL_INTERFACES
    # Proxies in front of the sidecar (Railway's edge) whose X-Forwarded-* are kept.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # A header in which a trusted proxy names the client (Railway's edge: X-Real-IP).
    client_ip_header: str | None = None
    # Why those two are what they are ("listen.trusted_proxies", Railway's default, or
    # "default"): for 'sidecar check' and the start-up log.
    trusted_proxies_from: str = "default"
    client_ip_header_from: str = "default"
    port: int = 8080
    header_timeout: float = 10.0
    close_timeout: float = 5.0
    stall_timeout: float = 60.0
    # The sidecar's own pings on both legs of a session (0.0: off): idle sessions
    # survive proxies that cut idle connections, and a peer that stops answering is cut off.
    keepalive_interval: float = 25.0
    drain_timeout: float = 10.0  # SIGTERM: sessions are closed spread over this window
    live_path: str = "/healthz"  # answered by the sidecar itself, before routing
    ready_path: str = "/readyz"
    metrics_host: str = ALL_INTERFACES
    metrics_port: int = 9100
    log_level: str = "info"
    log_format: LogFormat = "json"
    # Admission limits (the ``limits`` section).
    auth_failures: int = 10  # failed authentications per client address ...
    auth_window: float = 60.0  # ... within this many seconds, then 429 for as long
    tracked_clients: int = 100_000  # addresses the failure table holds at most
    max_sessions: int = 10_000  # WebSocket sessions in all
    state: StateConfig = StateConfig()  # the ``state`` section: shared by the fleet, or in-process
    source: str = "<memory>"
    digest: str = ""


def identity_headers(config: Config) -> frozenset[str]:
    """Lower-cased names of the headers the sidecar vouches for: every auth policy's
    agent id header and forward header. A client's copy is never passed upstream."""
    names: set[str] = set()
    for policy in config.auth.values():
        rule = policy.agent_id
        if rule is not None:
            names |= {h.lower() for h in (rule.header, rule.forward_header) if h}
    return frozenset(names)


def digest_secret(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()
