"""``routes.yaml`` text -> a ``Config``: ``load_config``, and the top-level sections.

Validation collects every problem, each with its ``file:line``, instead of stopping
at the first: a builder records a problem on the ``Reader`` and goes on with the
model's default. ``listen``, ``metrics``, ``log``, ``health`` and ``limits`` are read
here, each into a small typed section; ``upstreams`` and ``auth`` in ``targets``,
``routes`` in ``routes``, ``state`` in ``state``. Secrets (the bearer values, the Redis
URL and its password) are found before anything is read, so that no problem quotes one
(``redaction``).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from yaml.nodes import Node, ScalarNode, SequenceNode

from . import railway, routes, targets
from .model import ALL_INTERFACES, Config, IPNetwork, LogFormat, Problem, Route
from .reader import HEADER_NAME, Fields, Reader, Unreadable, compose, named_nodes, path_ok
from .redaction import bearer_texts, secret_names, secret_values
from .state import state, state_secrets

_TOP = {"listen", "metrics", "log", "health", "limits", "state", "upstreams", "auth", "routes"}
_LISTEN_KEYS = {
    "host", "port", "header_timeout", "close_timeout", "stall_timeout", "drain_timeout",
    "trusted_proxies", "client_ip_header", "keepalive_interval",
}  # fmt: skip
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS: dict[str, LogFormat] = {"json": "json", "text": "text"}


def load_config(
    text: str, *, file: str = "routes.yaml", env: Mapping[str, str] | None = None, strict: bool = True
) -> tuple[Config | None, list[Problem]]:
    """Parse and validate ``text``. Returns the config (``None`` if any error) and
    every problem found. ``strict`` makes an unset variable an error (``serve``);
    otherwise it is a warning (``check``, which also runs where secrets are absent)."""
    env = {} if env is None else env
    try:
        root = compose(text, file)
    except Unreadable as exc:
        return None, [exc.problem]
    bearer = bearer_texts(root)
    reader = Reader(file, env, strict, secret_names(bearer), secret_values(bearer, env) | state_secrets(root, env))
    config = _build(reader, root, text)
    # In file order (sections are read in an order of their own); the whole file's first,
    # and problems of one line in the order they were found (a stable sort).
    problems = sorted(reader.problems, key=lambda p: (p.line, p.column))
    if any(p.severity == "error" for p in problems):
        return None, problems
    return config, problems


def _build(rd: Reader, root: Node, text: str) -> Config | None:
    top = rd.mapping(root, "top level", _TOP)
    if top is None:
        return None
    listen = _listen(rd, top.get("listen"))
    metrics = _metrics(rd, top.get("metrics"))
    _ports_differ(rd, top, listen, metrics)
    log = _log(rd, top.get("log"))
    health = _health(rd, top.get("health"))
    limits = _limits(rd, top.get("limits"))
    shared = state(rd, top.get("state"))
    upstreams = targets.upstreams(rd, top.get("upstreams"), root)
    policies = targets.policies(rd, top.get("auth"))
    table = routes.routes(rd, top.get("routes"), root, targets.Targets(upstreams, policies))
    _health_not_routed(rd, top.get("routes"), table.routes, health)
    for name, policy_node in policies.defined.items():
        if name not in table.auth_names:
            rd.warn(policy_node, f"auth.{name}: not used by any route")
    routed = {route.upstream.name for route in table.routes}
    for name, upstream_node in named_nodes(top.get("upstreams")).items():
        if name in upstreams.valid and name not in routed:
            rd.warn(upstream_node, f"upstreams.{name}: not used by any route (and not probed by the readiness check)")
    return Config(
        routes=table.routes,
        upstreams=upstreams.valid,
        auth=policies.valid,
        listen_host=listen.host,
        trusted_proxies=listen.trusted_proxies[0],
        client_ip_header=listen.client_ip_header[0],
        trusted_proxies_from=listen.trusted_proxies[1],
        client_ip_header_from=listen.client_ip_header[1],
        port=listen.port,
        header_timeout=listen.header_timeout,
        close_timeout=listen.close_timeout,
        stall_timeout=listen.stall_timeout,
        keepalive_interval=listen.keepalive_interval,
        drain_timeout=listen.drain_timeout,
        live_path=health.live,
        ready_path=health.ready,
        metrics_host=metrics.host,
        metrics_port=metrics.port,
        log_level=log.level,
        log_format=log.format,
        auth_failures=limits.auth_failures,
        auth_window=limits.auth_window,
        tracked_clients=limits.tracked_clients,
        max_sessions=limits.max_sessions,
        state=shared,
        source=rd.file,
        digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def _section(rd: Reader, node: Node | None, where: str, known: set[str]) -> dict[str, Node]:
    """A top-level section's keys; none if it is absent (or not a mapping: reported)."""
    return {} if node is None else rd.mapping(node, where, known) or {}


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    header_timeout: float
    close_timeout: float
    stall_timeout: float
    drain_timeout: float
    keepalive_interval: float  # 0.0: off
    trusted_proxies: tuple[tuple[IPNetwork, ...], str]  # the value, and why (``railway``)
    client_ip_header: tuple[str | None, str]


def _listen(rd: Reader, node: Node | None) -> Listen:
    m = _section(rd, node, "listen", _LISTEN_KEYS)
    fields = Fields(rd, m, "listen")
    listed = _networks(rd, m["trusted_proxies"], "listen.trusted_proxies") if "trusted_proxies" in m else None
    listen = Listen(
        host=fields.string("host", Config.listen_host),
        port=fields.integer("port", 0, 65535, Config.port),
        header_timeout=fields.duration("header_timeout", Config.header_timeout),
        close_timeout=fields.duration("close_timeout", Config.close_timeout),
        stall_timeout=fields.duration("stall_timeout", Config.stall_timeout),
        drain_timeout=fields.duration("drain_timeout", Config.drain_timeout),
        keepalive_interval=fields.duration_or_off("keepalive_interval", Config.keepalive_interval),
        trusted_proxies=railway.trusted_proxies(listed, rd.env),
        client_ip_header=railway.client_ip_header(_client_ip_header(rd, m), rd.env),
    )
    drain = railway.drain_problem(rd.env, listen.drain_timeout, listen.close_timeout)
    if drain is not None:
        rd.warn(m.get("drain_timeout", node), drain)
    return listen


def _client_ip_header(rd: Reader, m: Mapping[str, Node]) -> str | None:
    """The header named (``none`` included), or ``None`` if none is (an unset variable)."""
    header = rd.string(m["client_ip_header"], "listen.client_ip_header") if "client_ip_header" in m else None
    if not header or header.lower() == railway.NONE:
        return header or None
    if not HEADER_NAME.fullmatch(header):
        shown = rd.quote(m["client_ip_header"], header)
        rd.error(m["client_ip_header"], f"listen.client_ip_header: {shown} is not a valid header name")
        return None
    return header


def _networks(rd: Reader, node: Node, where: str) -> tuple[IPNetwork, ...] | None:
    """The networks listed; ``()`` for ``none``; ``None`` when nothing is (every entry
    an unset variable, as ``${TRUSTED_PROXIES:-}`` is until it is set)."""
    networks: list[IPNetwork] = []
    said = False
    for item in rd.sequence(node, where) or []:
        text = rd.string(item, where) or ""
        for entry in filter(None, (part.strip() for part in text.split(","))):  # "a, b" from one variable
            said = True
            if entry.lower() == railway.NONE:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                rd.error(item, f"{where}: {rd.quote(item, entry)} is not an IP address or network (such as 10.0.0.0/8)")
    return tuple(networks) if said else None


@dataclass(frozen=True)
class Metrics:
    host: str
    port: int


def _metrics(rd: Reader, node: Node | None) -> Metrics:
    fields = Fields(rd, _section(rd, node, "metrics", {"host", "port"}), "metrics")
    return Metrics(
        host=fields.string("host", Config.metrics_host),
        port=fields.integer("port", 0, 65535, Config.metrics_port),
    )


def _ports_differ(rd: Reader, top: Mapping[str, Node], listen: Listen, metrics: Metrics) -> None:
    """The metrics listener cannot share the public one's port (0 is not a port here:
    listen.port 0 picks a free one, metrics.port 0 turns metrics off)."""
    wildcard = {ALL_INTERFACES, "0.0.0.0", "::"}
    overlap = listen.host == metrics.host or bool({listen.host, metrics.host} & wildcard)
    if listen.port and listen.port == metrics.port and overlap:
        node = named_nodes(top.get("metrics")).get("port") or named_nodes(top.get("listen")).get("port")
        rd.error(
            node,
            f"metrics.port: {listen.port} is listen.port too; give metrics a port of their own, or 0 to turn them off",
        )


@dataclass(frozen=True)
class Log:
    level: str
    format: LogFormat


def _log(rd: Reader, node: Node | None) -> Log:
    m = _section(rd, node, "log", {"level", "format"})
    level = Config.log_level
    if "level" in m and (text := rd.string(m["level"], "log.level")) is not None:
        if text.lower() in _LOG_LEVELS:
            level = text.lower()
        else:
            rd.error(m["level"], f"log.level: expected debug, info, warning or error, got {rd.quote(m['level'], text)}")
    fmt = Config.log_format
    if "format" in m and (text := rd.string(m["format"], "log.format")) is not None:
        if text.lower() in _LOG_FORMATS:
            fmt = _LOG_FORMATS[text.lower()]
        else:
            rd.error(m["format"], f"log.format: expected json or text, got {rd.quote(m['format'], text)}")
    return Log(level, fmt)


@dataclass(frozen=True)
class Health:
    live: str
    ready: str


def _health(rd: Reader, node: Node | None) -> Health:
    m = _section(rd, node, "health", {"live", "ready"})
    live = _health_path(rd, m, "live", Config.live_path)
    ready = _health_path(rd, m, "ready", Config.ready_path)
    if node is not None and live == ready:
        rd.error(node, "health: 'live' and 'ready' must be different paths")
    return Health(live, ready)


def _health_path(rd: Reader, m: Mapping[str, Node], key: str, default: str) -> str:
    path = rd.string(m[key], f"health.{key}") if key in m else None
    if path is None or not path_ok(rd, m[key], f"health.{key}", path):
        return default
    return path


def _health_not_routed(rd: Reader, node: Node | None, table: tuple[Route, ...], health: Health) -> None:
    """A route may not name a health path: the sidecar answers it before routing, so
    the route would silently never see it. (A prefix covering one is fine, and
    ``sidecar check`` lists it.)"""
    for route in table:
        for path in {health.live, health.ready}.intersection(route.paths):
            rd.error(
                _path_node(node, route.name, path) or node,
                f"route '{route.name}': path {path} is a health check path, answered by the sidecar itself; "
                "change the route or health.live / health.ready",
            )


def _path_node(table: Node | None, name: str, path: str) -> Node | None:
    """Where route ``name`` writes ``path`` (for the problem's line)."""
    for spec in table.value if isinstance(table, SequenceNode) else ():
        fields = named_nodes(spec)
        paths = fields.get("paths")
        if isinstance(fields.get("name"), ScalarNode) and fields["name"].value == name and paths is not None:
            items = paths.value if isinstance(paths, SequenceNode) else [paths]
            return next((item for item in items if isinstance(item, ScalarNode) and item.value == path), paths)
    return None


@dataclass(frozen=True)
class Limits:
    auth_failures: int
    auth_window: float
    tracked_clients: int
    max_sessions: int


def _limits(rd: Reader, node: Node | None) -> Limits:
    keys = {"auth_failures", "auth_window", "tracked_clients", "max_sessions"}
    fields = Fields(rd, _section(rd, node, "limits", keys), "limits")
    return Limits(
        auth_failures=fields.integer("auth_failures", 1, 1_000_000, Config.auth_failures),
        auth_window=fields.duration("auth_window", Config.auth_window),
        tracked_clients=fields.integer("tracked_clients", 1, 10_000_000, Config.tracked_clients),
        max_sessions=fields.integer("max_sessions", 1, 10_000_000, Config.max_sessions),
    )
