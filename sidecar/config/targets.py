"""What routes name: the ``upstreams`` and ``auth`` sections of ``routes.yaml``.

Each builder reads its section with a ``Reader`` and returns the valid entries and
every name defined (``Named``), so that a route naming an entry that had problems of
its own is not reported a second time. Every problem is recorded on the reader, with
its line, and the builder goes on.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from yaml.nodes import Node

from ..headers import is_reserved
from .environment import railway_marker
from .jwt_policy import jwt_policy
from .model import AgentIdRule, AuthPolicy, Upstream, digest_secret
from .patterns import max_length, nested_quantifier
from .reader import HEADER_NAME, Fields, Reader, path_ok

T = TypeVar("T")

_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 section 2.1


@dataclass(frozen=True)
class Named(Generic[T]):
    """A section of named entries: the valid ones, and every name defined (valid or
    not) with its node, for references and for a problem's line."""

    valid: dict[str, T]
    defined: dict[str, Node]


@dataclass(frozen=True)
class Targets:
    """What a route may name: the valid upstreams and auth policies, and every one defined
    (valid or not): a reference to one that failed validation is not reported a second time."""

    upstreams: Named[Upstream]
    policies: Named[AuthPolicy]


def defined_names(section: Named[T]) -> str:
    """For a message about a name no entry has: the names there are."""
    return "defined: " + (", ".join(sorted(section.defined)) or "none")


# --- upstreams ---------------------------------------------------------------------------


def upstreams(rd: Reader, node: Node | None, root: Node) -> Named[Upstream]:
    if node is None:
        # At the top-level mapping, like a missing 'routes': every problem has a line.
        rd.error(root, "upstreams: missing (at least one upstream is needed)")
        return Named({}, {})
    out: dict[str, Upstream] = {}
    specs = rd.mapping(node, "upstreams", set()) or {}
    for name, spec in specs.items():
        where = f"upstreams.{name}"
        m = rd.mapping(spec, where, {"url", "connect_timeout", "read_timeout"})
        if m is None:
            continue
        if "url" not in m:
            rd.error(spec, f"{where}: missing 'url'")
            continue
        expanded = rd.text(m["url"], f"{where}.url")
        if expanded is None:
            continue
        url = expanded.value
        problem = _url_problem(url)
        if problem:
            rd.error(m["url"], f"{where}.url: {problem}")
            continue
        if expanded.defaulted and _loopback(url) and (marker := railway_marker(rd.env)):
            _loopback_on_railway(rd, m["url"], f"{where}.url", url, expanded.used, marker)
            if rd.strict:
                continue
        base_path = urlsplit(url).path.rstrip("/")
        if base_path and not path_ok(rd, m["url"], f"{where}.url", base_path):
            continue
        fields = Fields(rd, m, where)
        out[name] = Upstream(
            name=name,
            url=url.rstrip("/"),
            connect_timeout=fields.duration("connect_timeout", Upstream.connect_timeout),
            read_timeout=fields.duration("read_timeout", Upstream.read_timeout),
        )
    return Named(out, specs)


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
    if parts.netloc.endswith(":"):
        # 'http://backend.railway.internal:' is what '...:${{backend.PORT}}' leaves when
        # the reference does not resolve; urlsplit reads it as no port at all (80).
        return (
            "has an empty port (nothing after the ':', as an unresolved reference such as ${{backend.PORT}} "
            "leaves it); write the port, or leave out the ':' for the scheme's default"
        )
    if parts.username or parts.password:
        return "must not carry credentials (user:password@)"
    if parts.query or parts.fragment:
        return "must not have a query string or fragment"
    return None


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_on_railway(rd: Reader, node: Node, where: str, url: str, used: tuple[str, ...], marker: str) -> None:
    """An upstream that is the default written in the file, on this machine, while on
    Railway: there, that is the sidecar's own container, never the backend."""
    names = ", ".join(dict.fromkeys(used)) or "its variable"
    parts = urlsplit(url)
    address = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    message = (
        f"{where}: {names} is not set (or empty), so the url falls back to the default written in the file, "
        f"{rd.show(node, address)}; on Railway ({marker} is set) that address is the sidecar's own container, "
        f"never the backend: set {names} to the backend's private URL (such as http://backend.railway.internal:8000)"
    )
    (rd.error if rd.strict else rd.warn)(node, message)


# --- auth --------------------------------------------------------------------------------


def policies(rd: Reader, node: Node | None) -> Named[AuthPolicy]:
    out: dict[str, AuthPolicy] = {}
    specs = {} if node is None else rd.mapping(node, "auth", set()) or {}
    for name, spec in specs.items():
        where = f"auth.{name}"
        m = rd.mapping(spec, where, {"bearer", "jwt", "agent_id"})
        if m is None:
            continue
        digests: tuple[bytes, ...] = ()
        names: tuple[str, ...] = ()
        if "bearer" in m:
            digests, names = _secrets(rd, m["bearer"], f"{where}.bearer")
        elif "jwt" not in m:
            rd.error(spec, f"{where}: missing 'bearer' (the list of accepted secrets) or 'jwt' (signed tokens)")
        jwt, jwt_names = jwt_policy(rd, m["jwt"], f"{where}.jwt", digests) if "jwt" in m else (None, ())
        rule = _agent_id(rd, m["agent_id"], f"{where}.agent_id") if "agent_id" in m else None
        variables = tuple(dict.fromkeys(names + jwt_names))
        out[name] = AuthPolicy(name=name, secret_digests=digests, agent_id=rule, jwt=jwt, secret_variables=variables)
    return Named(out, specs)


# Shorter than this, a secret can be guessed (or found from its fingerprint) by trying
# candidates; 'openssl rand -hex 32' gives 64 characters.
SHORT_SECRET = 16


def _secrets(rd: Reader, node: Node, where: str) -> tuple[tuple[bytes, ...], tuple[str, ...]]:
    """The digests of the secrets a bearer list accepts, and the variables it names."""
    items = rd.sequence(node, where) or []
    digests: list[bytes] = []
    unset: list[str] = []
    used: list[str] = []
    invalid = False
    for item in items:
        expanded = rd.text(item, where)
        if expanded is None:
            invalid = True
            continue
        unset += expanded.unset
        used += expanded.used
        if expanded.value and (not expanded.used or expanded.defaulted):
            rd.warn(item, f"{where}: a secret is written in the file; use ${{VAR}} so it comes from the environment")
        if not expanded.value:
            continue  # an optional secret (${EDGE_SECRET_PREVIOUS:-}) that is not set
        # Never quote the value, here or below: it is a secret.
        if not _B64TOKEN.fullmatch(expanded.value):
            rd.error(item, f"{where}: a secret has characters a Bearer token cannot carry (RFC 6750 section 2.1)")
            invalid = True
            continue
        if len(expanded.value) < SHORT_SECRET:
            named = " + ".join(expanded.used) or "a secret written in the file"
            rd.warn(
                item,
                f"{where}: {named} is shorter than {SHORT_SECRET} characters, easy to guess; "
                "use a long random one (openssl rand -hex 32)",
            )
        digests.append(digest_secret(expanded.value))
    if not digests and not unset and not invalid:
        names = ", ".join(dict.fromkeys(used)) or "the list"
        rd.error(node, f"{where}: no secret is set ({names} empty); requests could never be admitted")
    return tuple(digests), tuple(dict.fromkeys(used))


def _agent_id(rd: Reader, node: Node, where: str) -> AgentIdRule | None:
    m = rd.mapping(node, where, {"header", "query", "pattern", "required", "forward_header"})
    if m is None:
        return None
    header = _identity_header(rd, m, "header", where)
    forward_header = _identity_header(rd, m, "forward_header", where)
    query = AgentIdRule.query
    if "query" in m and (text := rd.string(m["query"], f"{where}.query")) is not None:
        query = text or None
    pattern, longest = AgentIdRule.pattern, AgentIdRule.max_length
    if "pattern" in m and (source := rd.string(m["pattern"], f"{where}.pattern")) is not None:
        try:
            pattern = re.compile(source)
        except (re.error, OverflowError) as exc:  # OverflowError: 'a{4294967296}'
            rd.error(m["pattern"], f"{where}.pattern: not a valid regular expression ({exc})")
        except RecursionError:  # the regex parser recurses once per nested group
            rd.error(m["pattern"], f"{where}.pattern: not a valid regular expression (groups nested too deeply)")
        else:
            longest = _pattern_bound(rd, m["pattern"], f"{where}.pattern", source)
    return AgentIdRule(
        header=header or AgentIdRule.header,
        query=query,
        pattern=pattern,
        required=Fields(rd, m, where).boolean("required", AgentIdRule.required),
        # The agent id goes upstream in the header it came in, unless told otherwise.
        forward_header=forward_header or header or AgentIdRule.forward_header,
        max_length=longest,
    )


def _pattern_bound(rd: Reader, node: Node, where: str, source: str) -> int:
    """The longest id ``source`` admits (longer input is refused before it runs); a
    warning for an unbounded pattern and for nested quantifiers (catastrophic backtracking)."""
    longest, bounded = max_length(source)
    if not bounded:
        rd.warn(
            node, f"{where}: matches ids of any length; ids over {longest} characters are refused (bound it: {{1,128}})"
        )
    if nested_quantifier(source):
        rd.warn(
            node,
            f"{where}: a repeated group contains a repeat (such as (a+)+): backtracking on an id that almost "
            f"matches can take exponential time (input is cut at {longest} characters); write it without nesting",
        )
    return longest


def _identity_header(rd: Reader, m: Mapping[str, Node], key: str, where: str) -> str | None:
    """A header the sidecar vouches for; ``None`` if absent or refused (reported)."""
    value = rd.string(m[key], f"{where}.{key}") if key in m else None
    if value is None:
        return None
    if not HEADER_NAME.fullmatch(value):
        rd.error(m[key], f"{where}.{key}: {rd.quote(m[key], value)} is not a valid header name")
        return None
    if is_reserved(value):
        rd.error(m[key], f"{where}.{key}: {rd.quote(m[key], value)} is a header the sidecar or HTTP itself owns")
        return None
    return value
