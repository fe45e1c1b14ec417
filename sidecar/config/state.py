"""The ``state`` section of ``routes.yaml``: where the fleet's shared state lives.

``state.redis`` empty (the shipped file says ``${REDIS_URL:-}``) keeps the agent table and
the failed-auth budget in this process, as one replica needs. A Redis URL is checked here
and never quoted: it may carry a password, so no problem repeats it, and
:func:`url_secrets` tells ``redaction`` what to keep out of every other message (the same
variable could be referenced in another field whose problem would quote it).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from yaml.nodes import Node, ScalarNode

from .interpolation import expand
from .model import StateConfig
from .reader import Fields, Reader, named_nodes

_KEYS = {"redis", "key_prefix", "lease_ttl", "timeout"}
_SCHEMES = ("redis", "rediss", "unix")
# What redis-py's from_url reads from a query string that makes sense here.
_QUERY = {"db", "username", "password", "ssl_cert_reqs", "ssl_ca_certs", "ssl_check_hostname"}
_SHAPE = "redis://[user:password@]host[:port][/db], rediss://... (TLS) or unix:///path/to/redis.sock"
_MAX_PREFIX = 64


def state(rd: Reader, node: Node | None) -> StateConfig:
    m = {} if node is None else rd.mapping(node, "state", _KEYS) or {}
    fields = Fields(rd, m, "state")
    lease_ttl = fields.duration("lease_ttl", StateConfig.lease_ttl)
    timeout = fields.duration("timeout", StateConfig.timeout)
    if lease_ttl < 1.0:
        rd.error(m.get("lease_ttl"), "state.lease_ttl: must be at least 1s")
        lease_ttl = StateConfig.lease_ttl
    if timeout * 3 > lease_ttl:
        # A lease is renewed every lease_ttl / 3: a renewal must be able to finish in that time.
        rd.error(m.get("timeout") or m.get("lease_ttl"), "state.timeout: must be at most a third of state.lease_ttl")
    return StateConfig(
        redis=_url(rd, m.get("redis")),
        key_prefix=_prefix(rd, m.get("key_prefix")),
        lease_ttl=lease_ttl,
        timeout=timeout,
    )


def _url(rd: Reader, node: Node | None) -> str:
    expanded = rd.text(node, "state.redis") if node is not None else None
    url = expanded.value.strip() if expanded is not None else ""
    if not url:
        return StateConfig.redis  # in-process
    problem = url_problem(url)
    if problem is not None:
        rd.error(node, f"state.redis: {problem}")
        return StateConfig.redis
    if url_secrets(url) and expanded is not None and (not expanded.used or expanded.defaulted):
        rd.warn(
            node, "state.redis: a password is written in the file; use ${REDIS_URL} so it comes from the environment"
        )
    return url


def url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL, without quoting it (it may carry a password)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"is not a valid URL ({_SHAPE})"
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        return f"must start with redis://, rediss:// or unix:// ({_SHAPE})"
    if scheme == "unix":
        if not parts.path:
            return "a unix:// URL names the socket's path (unix:///path/to/redis.sock)"
    elif not parts.hostname:
        return f"has no host ({_SHAPE})"
    elif parts.path.strip("/") and not parts.path.strip("/").isdigit():
        return "the path is the database number (such as /0), nothing else"
    if parts.fragment:
        return "must not have a fragment ('#...')"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _QUERY:
            return f"unknown query parameter {name!r} (known: {', '.join(sorted(_QUERY))})"
        if name == "db" and not value.isdigit():
            return "the db parameter is a database number (such as db=0)"
    return None


def url_secrets(url: str) -> set[str]:
    """The password ``url`` carries, as written and percent-decoded (none: empty)."""
    found: set[str] = set()
    base, _, query = url.partition("?")
    rest = base.partition("://")[2]
    if "@" in rest:
        userinfo = rest.rsplit("@", 1)[0]
        if ":" in userinfo:
            found.add(userinfo.partition(":")[2])
    for param in query.split("&") if query else ():
        name, _, value = param.partition("=")
        if name.lower() == "password":
            found.add(value)
    return {form for secret in found for form in (secret, unquote(secret)) if form}


def state_secrets(root: Node, env: Mapping[str, str]) -> frozenset[str]:
    """The file's ``state.redis`` URL (valid or not) and its password, for ``redaction``:
    a variable that carries either into another field is not quoted there."""
    node = named_nodes(named_nodes(root).get("state")).get("redis")
    if not isinstance(node, ScalarNode):
        return frozenset()
    try:
        url = expand(str(node.value), env).value.strip()
    except ValueError:
        return frozenset()
    return frozenset(url_secrets(url) | ({url} if url_secrets(url) else set()))


def _prefix(rd: Reader, node: Node | None) -> str:
    prefix = rd.string(node, "state.key_prefix") if node is not None else None
    if prefix is None:
        return StateConfig.key_prefix
    if not prefix or len(prefix) > _MAX_PREFIX or any(c.isspace() or not c.isprintable() for c in prefix):
        rd.error(node, f"state.key_prefix: 1 to {_MAX_PREFIX} printable characters without spaces, such as 'sidecar:'")
        return StateConfig.key_prefix
    return prefix
