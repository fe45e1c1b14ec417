"""The ``routes`` section of ``routes.yaml``: each route read into a ``Route``.

A route names an upstream and, optionally, an auth policy (``targets``). Every problem
is recorded on the ``Reader`` with its line and reading goes on, so one run lists them
all: a route's name and paths are checked for duplicates even when the route has other
errors. Keys are read in a fixed order, which is the order their problems are listed in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from yaml.nodes import Node, ScalarNode

from ..origins import serialize_origin
from .model import DEFAULT_MAX_MESSAGE_SIZE, AuthPolicy, DuplicateAgent, Retry, Route, Upstream
from .reader import Fields, Reader, named_nodes, path_ok
from .targets import Targets, defined_names

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_ROUTE_KEYS = {
    "name", "type", "paths", "prefix", "upstream", "upstream_path", "auth",
    "forward_authorization", "max_message_size", "origins", "max_sessions", "duplicate_agent",
    "compression", "query_token", "retry",
}  # fmt: skip
_WEBSOCKET_ONLY = ("origins", "max_sessions", "duplicate_agent", "compression")
_DUPLICATE_AGENT: dict[str, DuplicateAgent] = {"replace": "replace", "reject": "reject", "allow": "allow"}


@dataclass(frozen=True)
class Routes:
    """The valid routes, and the auth policies some route names (valid or not)."""

    routes: tuple[Route, ...]
    auth_names: frozenset[str]


@dataclass(frozen=True)
class _Read:
    """One route as read: the route (``None`` if it has errors), its name if valid, the
    paths it claims, and the auth policy it names (valid or not)."""

    route: Route | None
    name: str | None
    claims: tuple[str, ...]
    auth: str | None


@dataclass(frozen=True)
class _Paths:
    """A route's ``paths`` (exact) or ``prefix`` (ends with '/'); ``ok`` is false if it
    gives both or neither."""

    paths: tuple[str, ...]
    prefix: str | None
    ok: bool

    @property
    def claims(self) -> tuple[str, ...]:
        return (*self.paths, *((self.prefix + "*",) if self.prefix else ()))


@dataclass(frozen=True)
class _Admission:
    """A route's admission keys, as ``Route`` takes them."""

    origins: frozenset[str] | None
    max_sessions: int | None
    duplicate_agent: DuplicateAgent
    compression: bool
    query_token: bool


def routes(rd: Reader, node: Node | None, root: Node, targets: Targets) -> Routes:
    if node is None:
        rd.error(root, "routes: missing (at least one route is needed)")
        return Routes((), frozenset())
    valid: list[Route] = []
    auth_names: set[str] = set()
    seen_paths: dict[str, str] = {}
    seen_names: set[str] = set()
    for index, spec in enumerate(rd.sequence(node, "routes") or []):
        read = _route(rd, spec, f"routes[{index}]", targets)
        name = read.name
        # Names and paths are checked even for a route with other errors: every problem is listed.
        where = f"routes[{index}] ({name})" if name else f"routes[{index}]"
        if name is not None and name in seen_names:
            rd.error(spec, f"{where}: duplicate route name '{name}'")
        if name is not None:
            seen_names.add(name)
        for path in read.claims:
            if path in seen_paths:
                rd.error(spec, f"{where}: path {path} is already used by route '{seen_paths[path]}'")
            seen_paths[path] = name or f"routes[{index}]"
        if read.auth is not None:
            auth_names.add(read.auth)
        if read.route is not None:
            valid.append(read.route)
    return Routes(tuple(valid), frozenset(auth_names))


def _route(rd: Reader, spec: Node, where: str, targets: Targets) -> _Read:
    m = rd.mapping(spec, _with_name(spec, where), _ROUTE_KEYS)
    if m is None:
        return _Read(None, None, (), None)
    name = rd.string(m["name"], f"{where}.name") if "name" in m else None
    valid_name = name if name is not None and _NAME.fullmatch(name) else None
    if valid_name is None:
        got = "None" if name is None else rd.quote(m["name"], name)
        rd.error(m.get("name", spec), f"{where}.name: required, lower-case letters, digits, '_' or '-' (got {got})")
    where = f"{where} ({rd.show(m['name'], name)})" if name else where
    kind = rd.string(m["type"], f"{where}.type") if "type" in m else None
    if kind not in ("websocket", "http"):
        got = "None" if kind is None else rd.quote(m["type"], kind)
        rd.error(m.get("type", spec), f"{where}.type: required, 'websocket' or 'http' (got {got})")
    paths = _paths(rd, m, spec, where)
    upstream = _upstream(rd, m, spec, where, targets)
    upstream_path = _upstream_path(rd, m, where)
    auth_name, policy = _policy(rd, m, where, targets)
    forward = Fields(rd, m, where).boolean("forward_authorization", Route.forward_authorization)
    max_size = rd.size(m["max_message_size"], f"{where}.max_message_size") if "max_message_size" in m else None
    if max_size is not None and kind != "websocket":
        rd.error(m["max_message_size"], f"{where}.max_message_size: only WebSocket routes have messages")
    admission = _admission(rd, m, where, kind == "websocket", policy is not None or "auth" in m)
    retry = _retry(rd, m["retry"], f"{where}.retry", kind) if "retry" in m else None
    ok = valid_name is not None and kind in ("websocket", "http") and paths.ok
    if not ok or upstream is None or not paths.claims:
        return _Read(None, valid_name, paths.claims, auth_name)
    assert name is not None
    route = Route(
        name=name,
        websocket=kind == "websocket",
        upstream=upstream,
        paths=paths.paths,
        prefix=paths.prefix,
        upstream_path=upstream_path,
        auth=policy,
        forward_authorization=forward,
        max_message_size=max_size or DEFAULT_MAX_MESSAGE_SIZE,
        origins=admission.origins,
        max_sessions=admission.max_sessions,
        duplicate_agent=admission.duplicate_agent,
        compression=admission.compression,
        query_token=admission.query_token,
        retry=retry,
    )
    return _Read(route, name, paths.claims, auth_name)


def _with_name(spec: Node, where: str) -> str:
    """``routes[0] (edge)``: where, with the route's name as written, if it is a valid
    one; a problem found before the name is read names the route too."""
    name = named_nodes(spec).get("name")
    written = name.value if isinstance(name, ScalarNode) else None
    return f"{where} ({written})" if isinstance(written, str) and _NAME.fullmatch(written) else where


def _paths(rd: Reader, m: Mapping[str, Node], spec: Node, where: str) -> _Paths:
    ok = ("paths" in m) != ("prefix" in m)
    if not ok:
        rd.error(spec, f"{where}: give exactly one of 'paths' (exact) or 'prefix'")
    paths: list[str] = []
    for item in rd.sequence(m["paths"], f"{where}.paths") or [] if "paths" in m else []:
        path = rd.string(item, f"{where}.paths")
        if path is not None and path_ok(rd, item, f"{where}.paths", path):
            paths.append(path)
    prefix = rd.string(m["prefix"], f"{where}.prefix") if "prefix" in m else None
    if prefix is not None and not path_ok(rd, m["prefix"], f"{where}.prefix", prefix):
        prefix = None
    return _Paths(tuple(paths), None if prefix is None else prefix.rstrip("/") + "/", ok)


def _upstream(rd: Reader, m: Mapping[str, Node], spec: Node, where: str, targets: Targets) -> Upstream | None:
    if "upstream" not in m:
        rd.error(spec, f"{where}: missing 'upstream'")
        return None
    name = rd.string(m["upstream"], f"{where}.upstream")
    if name is None:
        return None
    upstream = targets.upstreams.valid.get(name)
    if upstream is None and name not in targets.upstreams.defined:
        named = rd.quote(m["upstream"], name)
        rd.error(m["upstream"], f"{where}.upstream: no upstream named {named} ({defined_names(targets.upstreams)})")
    return upstream


def _upstream_path(rd: Reader, m: Mapping[str, Node], where: str) -> str | None:
    path = rd.string(m["upstream_path"], f"{where}.upstream_path") if "upstream_path" in m else None
    if path is None:
        return None
    if not path_ok(rd, m["upstream_path"], f"{where}.upstream_path", path):
        path = None
    if "prefix" in m:
        rd.error(m["upstream_path"], f"{where}.upstream_path: only routes with exact 'paths' can rewrite the path")
    return path


def _policy(rd: Reader, m: Mapping[str, Node], where: str, targets: Targets) -> tuple[str | None, AuthPolicy | None]:
    """The auth policy a route names (valid or not), and the policy if it is valid."""
    name = rd.string(m["auth"], f"{where}.auth") if "auth" in m else None
    if name is None:
        return None, None
    policy = targets.policies.valid.get(name)
    if policy is None and name not in targets.policies.defined:
        named = rd.quote(m["auth"], name)
        rd.error(m["auth"], f"{where}.auth: no auth policy named {named} ({defined_names(targets.policies)})")
    return name, policy


def _retry(rd: Reader, node: Node, where: str, kind: str | None) -> Retry | None:
    m = rd.mapping(node, where, {"attempts", "backoff"})
    if m is None:
        return None
    if kind != "websocket":
        # A plain request may have a body or side effects: not safe to send twice.
        rd.error(node, f"{where}: only WebSocket routes retry (their upstream handshake)")
        return None
    if "attempts" not in m:
        rd.error(node, f"{where}: missing 'attempts' (tries in all, the first included)")
        return None
    attempts = rd.integer(m["attempts"], f"{where}.attempts", 1, 100)
    backoff = rd.duration(m["backoff"], f"{where}.backoff") if "backoff" in m else Retry.backoff
    if attempts is None or backoff is None:
        return None
    return Retry(attempts, backoff)


def _admission(rd: Reader, m: Mapping[str, Node], where: str, websocket: bool, has_auth: bool) -> _Admission:
    """A route's admission keys: origins, max_sessions, duplicate_agent, compression, query_token."""
    for key in _WEBSOCKET_ONLY:
        if key in m and not websocket:
            rd.error(m[key], f"{where}.{key}: only WebSocket routes have this")
    fields = Fields(rd, m, where)
    origins = _origins(rd, m["origins"], f"{where}.origins") if "origins" in m else Route.origins
    max_sessions = fields.integer("max_sessions", 1, 10_000_000, Route.max_sessions)
    duplicate_agent = Route.duplicate_agent
    if "duplicate_agent" in m and (policy := rd.string(m["duplicate_agent"], f"{where}.duplicate_agent")):
        if policy not in _DUPLICATE_AGENT:
            got = rd.quote(m["duplicate_agent"], policy)
            rd.error(m["duplicate_agent"], f"{where}.duplicate_agent: expected replace, reject or allow, got {got}")
        else:
            duplicate_agent = _DUPLICATE_AGENT[policy]
    compression = fields.boolean("compression", Route.compression)
    query_token = fields.boolean("query_token", Route.query_token)
    if query_token and not has_auth:
        rd.error(m["query_token"], f"{where}.query_token: only routes with 'auth' take a token")
    return _Admission(origins, max_sessions, duplicate_agent, compression, query_token)


def _origins(rd: Reader, node: Node, where: str) -> frozenset[str] | None:
    allowed: set[str] = set()
    items = rd.sequence(node, where)
    for item in items or []:
        text = rd.string(item, where)
        origin = None if text is None else serialize_origin(text)
        if text is None:
            continue
        if origin is None:
            got = rd.quote(item, text)
            rd.error(item, f"{where}: {got} is not an origin; write scheme://host[:port], no path or '/' at the end")
        else:
            allowed.add(origin)
    if items == []:
        rd.error(node, f"{where}: empty; list the allowed origins, or leave the key out to allow any")
    return frozenset(allowed) or None
