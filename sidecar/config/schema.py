"""``routes.yaml`` text -> a ``Config``: the reader and the section builders.

Validation collects every problem, each with its ``file:line``, instead of stopping
at the first. ``${VAR}`` and ``${VAR:-default}`` are expanded in scalar values (never
in keys), after YAML parsing, so an environment value can never change the file's
structure; ``$$`` is a literal ``$``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from yaml.nodes import Node, ScalarNode, SequenceNode

from ..headers import is_reserved
from ..origins import serialize_origin
from .model import (
    DEFAULT_MAX_MESSAGE_SIZE,
    AgentIdRule,
    AuthPolicy,
    Config,
    IPNetwork,
    Problem,
    Retry,
    Route,
    Upstream,
    digest_secret,
)
from .reader import HEADER_NAME, Reader, Unreadable, compose, named_nodes
from .redaction import bearer_texts, redact, secret_names, secret_values

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_TOP = {"listen", "metrics", "log", "health", "limits", "upstreams", "auth", "routes"}


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
    reader = Reader(file, env, strict, secret_names(bearer))
    config = _build(reader, root, text)
    problems = redact(reader.problems, secret_values(bearer, env))
    if any(p.severity == "error" for p in problems):
        return None, problems
    return config, problems


def _build(ld: Reader, root: Node, text: str) -> Config | None:
    top = ld.mapping(root, "top level", _TOP)
    if top is None:
        return None
    settings: dict[str, object] = {}
    if "listen" in top:
        _listen(ld, top["listen"], settings)
    if "metrics" in top:
        _metrics(ld, top["metrics"], settings)
    if "log" in top:
        _log(ld, top["log"], settings)
    if "health" in top:
        _health(ld, top["health"], settings)
    if "limits" in top:
        _limits(ld, top["limits"], settings)
    upstreams, upstream_names = _upstreams(ld, top.get("upstreams"), root)
    policies, policy_nodes = _policies(ld, top.get("auth"))
    auth_refs: set[str] = set()  # auth policies some route names, valid or not
    defined = (upstream_names, set(policy_nodes))
    routes = _routes(ld, top.get("routes"), root, upstreams, policies, defined, auth_refs)
    _health_not_routed(ld, top.get("routes"), routes, settings)
    for name, policy_node in policy_nodes.items():
        if name not in auth_refs:
            ld.warn(policy_node, f"auth.{name}: not used by any route")
    routed = {route.upstream.name for route in routes}
    for name, upstream_node in named_nodes(top.get("upstreams")).items():
        if name in upstreams and name not in routed:
            ld.warn(upstream_node, f"upstreams.{name}: not used by any route (and not probed by the readiness check)")
    return Config(
        routes=tuple(routes),
        upstreams=upstreams,
        auth=policies,
        source=ld.file,
        digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        **settings,  # type: ignore[arg-type]
    )


def _listen(ld: Reader, node: Node, out: dict[str, object]) -> None:
    keys = {
        "host", "port", "header_timeout", "close_timeout", "stall_timeout", "drain_timeout",
        "trusted_proxies", "client_ip_header", "keepalive_interval",
    }  # fmt: skip
    m = ld.mapping(node, "listen", keys) or {}
    if "host" in m:
        out["listen_host"] = ld.string(m["host"], "listen.host")
    if "port" in m:
        out["port"] = ld.integer(m["port"], "listen.port", 0, 65535)
    for key in ("header_timeout", "close_timeout", "stall_timeout", "drain_timeout"):
        if key in m:
            out[key] = ld.duration(m[key], f"listen.{key}")
    if "keepalive_interval" in m:
        out["keepalive_interval"] = ld.duration_or_off(m["keepalive_interval"], "listen.keepalive_interval")
    if "trusted_proxies" in m:
        out["trusted_proxies"] = _networks(ld, m["trusted_proxies"], "listen.trusted_proxies")
    if "client_ip_header" in m and (header := ld.string(m["client_ip_header"], "listen.client_ip_header")):
        if HEADER_NAME.fullmatch(header):
            out["client_ip_header"] = header
        else:
            ld.error(m["client_ip_header"], f"listen.client_ip_header: {header!r} is not a valid header name")
    _drop_none(out)


def _metrics(ld: Reader, node: Node, out: dict[str, object]) -> None:
    m = ld.mapping(node, "metrics", {"host", "port"}) or {}
    if "host" in m:
        out["metrics_host"] = ld.string(m["host"], "metrics.host")
    if "port" in m:
        out["metrics_port"] = ld.integer(m["port"], "metrics.port", 0, 65535)
    _drop_none(out)


def _log(ld: Reader, node: Node, out: dict[str, object]) -> None:
    m = ld.mapping(node, "log", {"level", "format"}) or {}
    if "level" in m:
        level = ld.string(m["level"], "log.level")
        if level is not None and level.lower() not in {"debug", "info", "warning", "error"}:
            ld.error(m["level"], f"log.level: expected debug, info, warning or error, got {level!r}")
        elif level is not None:
            out["log_level"] = level.lower()
    if "format" in m:
        fmt = ld.string(m["format"], "log.format")
        if fmt is not None and fmt.lower() not in {"json", "text"}:
            ld.error(m["format"], f"log.format: expected json or text, got {fmt!r}")
        elif fmt is not None:
            out["log_format"] = fmt.lower()


def _health(ld: Reader, node: Node, out: dict[str, object]) -> None:
    m = ld.mapping(node, "health", {"live", "ready"}) or {}
    for key in ("live", "ready"):
        path = ld.string(m[key], f"health.{key}") if key in m else None
        if path is not None and _path_ok(ld, m[key], f"health.{key}", path):
            out[f"{key}_path"] = path
    if out.get("live_path", "/healthz") == out.get("ready_path", "/readyz"):
        ld.error(node, "health: 'live' and 'ready' must be different paths")


def _health_not_routed(ld: Reader, node: Node | None, routes: list[Route], settings: Mapping[str, object]) -> None:
    """A route may not name a health path: the sidecar answers it before routing, so
    the route would silently never see it. (A prefix covering one is fine, and
    ``sidecar check`` lists it.)"""
    health = {str(settings.get("live_path", "/healthz")), str(settings.get("ready_path", "/readyz"))}
    for route in routes:
        for path in health.intersection(route.paths):
            ld.error(
                _path_node(node, route.name, path) or node,
                f"route '{route.name}': path {path} is a health check path, answered by the sidecar itself; "
                "change the route or health.live / health.ready",
            )


def _path_node(routes: Node | None, name: str, path: str) -> Node | None:
    """Where route ``name`` writes ``path`` (for the problem's line)."""
    for spec in routes.value if isinstance(routes, SequenceNode) else ():
        fields = named_nodes(spec)
        paths = fields.get("paths")
        if isinstance(fields.get("name"), ScalarNode) and fields["name"].value == name and paths is not None:
            items = paths.value if isinstance(paths, SequenceNode) else [paths]
            return next((item for item in items if isinstance(item, ScalarNode) and item.value == path), paths)
    return None


def _limits(ld: Reader, node: Node, out: dict[str, object]) -> None:
    m = ld.mapping(node, "limits", {"auth_failures", "auth_window", "tracked_clients", "max_sessions"}) or {}
    if "auth_failures" in m:
        out["auth_failures"] = ld.integer(m["auth_failures"], "limits.auth_failures", 1, 1_000_000)
    if "auth_window" in m:
        out["auth_window"] = ld.duration(m["auth_window"], "limits.auth_window")
    if "tracked_clients" in m:
        out["tracked_clients"] = ld.integer(m["tracked_clients"], "limits.tracked_clients", 1, 10_000_000)
    if "max_sessions" in m:
        out["max_sessions"] = ld.integer(m["max_sessions"], "limits.max_sessions", 1, 10_000_000)
    _drop_none(out)


def _networks(ld: Reader, node: Node, where: str) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for item in ld.sequence(node, where) or []:
        text = ld.string(item, where) or ""
        for entry in filter(None, (part.strip() for part in text.split(","))):  # "a, b" from one variable
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                ld.error(item, f"{where}: {entry!r} is not an IP address or network (such as 10.0.0.0/8)")
    return tuple(networks)


def _drop_none(out: dict[str, object]) -> None:
    for key in [k for k, v in out.items() if v is None]:
        del out[key]


def _upstreams(ld: Reader, node: Node | None, root: Node) -> tuple[dict[str, Upstream], set[str]]:
    """The valid upstreams, and the names of every one defined (valid or not)."""
    if node is None:
        # At the top-level mapping, like a missing 'routes': every problem has a line.
        ld.error(root, "upstreams: missing (at least one upstream is needed)")
        return {}, set()
    out: dict[str, Upstream] = {}
    specs = ld.mapping(node, "upstreams", set()) or {}
    for name, spec in specs.items():
        where = f"upstreams.{name}"
        m = ld.mapping(spec, where, {"url", "connect_timeout", "read_timeout"})
        if m is None:
            continue
        if "url" not in m:
            ld.error(spec, f"{where}: missing 'url'")
            continue
        url = ld.string(m["url"], f"{where}.url")
        if url is None:
            continue
        problem = _url_problem(url)
        if problem:
            ld.error(m["url"], f"{where}.url: {problem}")
            continue
        base_path = urlsplit(url).path.rstrip("/")
        if base_path and not _path_ok(ld, m["url"], f"{where}.url", base_path):
            continue
        kwargs: dict[str, float] = {}
        for key in ("connect_timeout", "read_timeout"):
            if key in m and (value := ld.duration(m[key], f"{where}.{key}")) is not None:
                kwargs[key] = value
        out[name] = Upstream(name=name, url=url.rstrip("/"), **kwargs)
    return out, set(specs)


def _url_problem(url: str) -> str | None:
    if not url:
        return "is empty"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "has no host"
    if parts.username or parts.password:
        return "must not carry credentials (user:password@)"
    if parts.query or parts.fragment:
        return "must not have a query string or fragment"
    return None


def _policies(ld: Reader, node: Node | None) -> tuple[dict[str, AuthPolicy], dict[str, Node]]:
    out: dict[str, AuthPolicy] = {}
    specs = {} if node is None else ld.mapping(node, "auth", set()) or {}
    for name, spec in specs.items():
        where = f"auth.{name}"
        m = ld.mapping(spec, where, {"bearer", "agent_id"})
        if m is None:
            continue
        digests: tuple[bytes, ...] = ()
        if "bearer" in m:
            digests = _secrets(ld, m["bearer"], f"{where}.bearer")
        else:
            ld.error(spec, f"{where}: missing 'bearer' (the list of accepted secrets)")
        rule = _agent_id(ld, m["agent_id"], f"{where}.agent_id") if "agent_id" in m else None
        out[name] = AuthPolicy(name=name, secret_digests=digests, agent_id=rule)
    return out, specs


_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 section 2.1


def _secrets(ld: Reader, node: Node, where: str) -> tuple[bytes, ...]:
    items = ld.sequence(node, where) or []
    digests: list[bytes] = []
    unset: list[str] = []
    used: list[str] = []
    invalid = False
    for item in items:
        expanded = ld.text(item, where)
        if expanded is None:
            invalid = True
            continue
        unset += expanded.unset
        used += expanded.used
        if expanded.value and (not expanded.used or expanded.defaulted):
            ld.warn(item, f"{where}: a secret is written in the file; use ${{VAR}} so it comes from the environment")
        if not expanded.value:
            continue  # an optional secret (${EDGE_SECRET_PREVIOUS:-}) that is not set
        if not _B64TOKEN.fullmatch(expanded.value):
            # Never quote the value: it is a secret.
            ld.error(item, f"{where}: a secret has characters a Bearer token cannot carry (RFC 6750 section 2.1)")
            invalid = True
            continue
        digests.append(digest_secret(expanded.value))
    if not digests and not unset and not invalid:
        names = ", ".join(dict.fromkeys(used)) or "the list"
        ld.error(node, f"{where}: no secret is set ({names} empty); requests could never be admitted")
    return tuple(digests)


def _agent_id(ld: Reader, node: Node, where: str) -> AgentIdRule | None:
    m = ld.mapping(node, where, {"header", "query", "pattern", "required", "forward_header"})
    if m is None:
        return None
    kwargs: dict[str, object] = {}
    for key in ("header", "forward_header"):
        if key in m and (value := ld.string(m[key], f"{where}.{key}")) is not None:
            if not HEADER_NAME.fullmatch(value):
                ld.error(m[key], f"{where}.{key}: {value!r} is not a valid header name")
            elif is_reserved(value):
                ld.error(m[key], f"{where}.{key}: {value!r} is a header the sidecar or HTTP itself owns")
            else:
                kwargs[key] = value
    if "query" in m and (query := ld.string(m["query"], f"{where}.query")) is not None:
        kwargs["query"] = query or None
    if "pattern" in m and (pattern := ld.string(m["pattern"], f"{where}.pattern")) is not None:
        try:
            kwargs["pattern"] = re.compile(pattern)
        except (re.error, OverflowError) as exc:  # OverflowError: 'a{4294967296}'
            ld.error(m["pattern"], f"{where}.pattern: not a valid regular expression ({exc})")
        except RecursionError:  # the regex parser recurses once per nested group
            ld.error(m["pattern"], f"{where}.pattern: not a valid regular expression (groups nested too deeply)")
    if "required" in m and (required := ld.boolean(m["required"], f"{where}.required")) is not None:
        kwargs["required"] = required
    if "header" in kwargs and "forward_header" not in kwargs:
        kwargs["forward_header"] = kwargs["header"]
    return AgentIdRule(**kwargs)  # type: ignore[arg-type]


_ROUTE_KEYS = {
    "name", "type", "paths", "prefix", "upstream", "upstream_path", "auth",
    "forward_authorization", "max_message_size", "origins", "max_sessions", "duplicate_agent",
    "compression", "query_token", "retry",
}  # fmt: skip
_WEBSOCKET_ONLY = ("origins", "max_sessions", "duplicate_agent", "compression")


def _routes(
    ld: Reader,
    node: Node | None,
    root: Node,
    upstreams: Mapping[str, Upstream],
    policies: Mapping[str, AuthPolicy],
    defined: tuple[set[str], set[str]],
    auth_refs: set[str],
) -> list[Route]:
    if node is None:
        ld.error(root, "routes: missing (at least one route is needed)")
        return []
    routes: list[Route] = []
    seen_paths: dict[str, str] = {}
    seen_names: set[str] = set()
    for index, spec in enumerate(ld.sequence(node, "routes") or []):
        route, name, claims = _route(ld, spec, f"routes[{index}]", upstreams, policies, defined, auth_refs)
        # Names and paths are checked even for a route with other errors: every problem is listed.
        where = f"routes[{index}] ({name})" if name else f"routes[{index}]"
        if name is not None and name in seen_names:
            ld.error(spec, f"{where}: duplicate route name '{name}'")
        if name is not None:
            seen_names.add(name)
        for path in claims:
            if path in seen_paths:
                ld.error(spec, f"{where}: path {path} is already used by route '{seen_paths[path]}'")
            seen_paths[path] = name or f"routes[{index}]"
        if route is not None:
            routes.append(route)
    return routes


def _route(
    ld: Reader,
    spec: Node,
    where: str,
    upstreams: Mapping[str, Upstream],
    policies: Mapping[str, AuthPolicy],
    defined: tuple[set[str], set[str]],
    auth_refs: set[str],
) -> tuple[Route | None, str | None, tuple[str, ...]]:
    """The route (``None`` if it has errors), its name and the paths it claims.

    ``defined`` names every upstream and auth policy in the file, valid or not: a
    reference to one that failed validation is not reported a second time."""
    defined_upstreams, defined_policies = defined
    m = ld.mapping(spec, where, _ROUTE_KEYS)
    if m is None:
        return None, None, ()
    ok = True
    name = ld.string(m["name"], f"{where}.name") if "name" in m else None
    if name is None or not _NAME.fullmatch(name):
        ld.error(m.get("name", spec), f"{where}.name: required, lower-case letters, digits, '_' or '-' (got {name!r})")
        ok = False
    where = f"{where} ({name})" if name else where
    kind = ld.string(m["type"], f"{where}.type") if "type" in m else None
    if kind not in ("websocket", "http"):
        ld.error(m.get("type", spec), f"{where}.type: required, 'websocket' or 'http' (got {kind!r})")
        ok = False
    paths: list[str] = []
    prefix = None
    if ("paths" in m) == ("prefix" in m):
        ld.error(spec, f"{where}: give exactly one of 'paths' (exact) or 'prefix'")
        ok = False
    for item in ld.sequence(m["paths"], f"{where}.paths") or [] if "paths" in m else []:
        path = ld.string(item, f"{where}.paths")
        if path is not None and _path_ok(ld, item, f"{where}.paths", path):
            paths.append(path)
    if "prefix" in m and (prefix := ld.string(m["prefix"], f"{where}.prefix")) is not None:
        if not _path_ok(ld, m["prefix"], f"{where}.prefix", prefix):
            prefix = None
        prefix = None if prefix is None else prefix.rstrip("/") + "/"
    upstream = None
    if "upstream" not in m:
        ld.error(spec, f"{where}: missing 'upstream'")
    elif (up_name := ld.string(m["upstream"], f"{where}.upstream")) is not None:
        upstream = upstreams.get(up_name)
        if upstream is None and up_name not in defined_upstreams:
            ld.error(
                m["upstream"],
                f"{where}.upstream: no upstream named '{up_name}' ({_defined(defined_upstreams)})",
            )
    upstream_path = None
    if "upstream_path" in m and (upstream_path := ld.string(m["upstream_path"], f"{where}.upstream_path")) is not None:
        if not _path_ok(ld, m["upstream_path"], f"{where}.upstream_path", upstream_path):
            upstream_path = None
        if "prefix" in m:
            ld.error(m["upstream_path"], f"{where}.upstream_path: only routes with exact 'paths' can rewrite the path")
    policy = None
    if "auth" in m and (auth_name := ld.string(m["auth"], f"{where}.auth")) is not None:
        auth_refs.add(auth_name)
        policy = policies.get(auth_name)
        if policy is None and auth_name not in defined_policies:
            ld.error(
                m["auth"],
                f"{where}.auth: no auth policy named '{auth_name}' ({_defined(defined_policies)})",
            )
    forward = (
        ld.boolean(m["forward_authorization"], f"{where}.forward_authorization")
        if "forward_authorization" in m
        else False
    )
    max_size = ld.size(m["max_message_size"], f"{where}.max_message_size") if "max_message_size" in m else None
    if max_size is not None and kind != "websocket":
        ld.error(m["max_message_size"], f"{where}.max_message_size: only WebSocket routes have messages")
    admission = _admission(ld, m, where, kind == "websocket", policy is not None or "auth" in m)
    retry = _retry(ld, m["retry"], f"{where}.retry", kind) if "retry" in m else None
    claims = (*paths, *((prefix + "*",) if prefix else ()))
    valid_name = name if name is not None and _NAME.fullmatch(name) else None
    if not ok or upstream is None or not claims:
        return None, valid_name, claims
    assert name is not None
    route = Route(
        name=name,
        websocket=kind == "websocket",
        upstream=upstream,
        paths=tuple(paths),
        prefix=prefix,
        upstream_path=upstream_path,
        auth=policy,
        forward_authorization=bool(forward),
        max_message_size=max_size or DEFAULT_MAX_MESSAGE_SIZE,
        retry=retry,
        **admission,  # type: ignore[arg-type]
    )
    return route, name, claims


def _retry(ld: Reader, node: Node, where: str, kind: str | None) -> Retry | None:
    m = ld.mapping(node, where, {"attempts", "backoff"})
    if m is None:
        return None
    if kind != "websocket":
        # A plain request may have a body or side effects: not safe to send twice.
        ld.error(node, f"{where}: only WebSocket routes retry (their upstream handshake)")
        return None
    if "attempts" not in m:
        ld.error(node, f"{where}: missing 'attempts' (tries in all, the first included)")
        return None
    attempts = ld.integer(m["attempts"], f"{where}.attempts", 1, 100)
    backoff = ld.duration(m["backoff"], f"{where}.backoff") if "backoff" in m else Retry.backoff
    if attempts is None or backoff is None:
        return None
    return Retry(attempts, backoff)


def _admission(ld: Reader, m: dict[str, Node], where: str, websocket: bool, has_auth: bool) -> dict[str, object]:
    """A route's admission keys: origins, max_sessions, duplicate_agent, compression, query_token."""
    out: dict[str, object] = {}
    for key in _WEBSOCKET_ONLY:
        if key in m and not websocket:
            ld.error(m[key], f"{where}.{key}: only WebSocket routes have this")
    if "origins" in m:
        out["origins"] = _origins(ld, m["origins"], f"{where}.origins")
    if "max_sessions" in m:
        out["max_sessions"] = ld.integer(m["max_sessions"], f"{where}.max_sessions", 1, 10_000_000)
    if "duplicate_agent" in m and (policy := ld.string(m["duplicate_agent"], f"{where}.duplicate_agent")):
        if policy not in ("replace", "reject", "allow"):
            ld.error(
                m["duplicate_agent"], f"{where}.duplicate_agent: expected replace, reject or allow, got {policy!r}"
            )
        else:
            out["duplicate_agent"] = policy
    for key in ("compression", "query_token"):
        if key in m:
            out[key] = ld.boolean(m[key], f"{where}.{key}")
    if out.get("query_token") and not has_auth:
        ld.error(m["query_token"], f"{where}.query_token: only routes with 'auth' take a token")
    _drop_none(out)
    return out


def _origins(ld: Reader, node: Node, where: str) -> frozenset[str] | None:
    allowed: set[str] = set()
    items = ld.sequence(node, where)
    for item in items or []:
        text = ld.string(item, where)
        origin = None if text is None else serialize_origin(text)
        if text is None:
            continue
        if origin is None:
            ld.error(item, f"{where}: {text!r} is not an origin; write scheme://host[:port], no path or '/' at the end")
        else:
            allowed.add(origin)
    if items == []:
        ld.error(node, f"{where}: empty; list the allowed origins, or leave the key out to allow any")
    return frozenset(allowed) or None


def _defined(names: set[str]) -> str:
    return "defined: " + (", ".join(sorted(names)) or "none")


def _path_ok(ld: Reader, node: Node, where: str, path: str) -> bool:
    # Imported here: routing imports this module for Route.
    from ..routing import BadPath, canonicalize

    try:
        canonical = canonicalize(path)
    except BadPath as exc:
        ld.error(node, f"{where}: {path!r} is not a canonical path ({exc.why})")
        return False
    if canonical.wire != path or "%" in path:
        ld.error(node, f"{where}: write {path!r} without percent-escapes")
        return False
    return True
