"""sidecar.config.load_config: every problem at once, each with its file:line. No I/O."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from sidecar.config import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Config,
    Problem,
    Retry,
    digest_secret,
    load_config,
)

from .conftest import ROOT

SHIPPED = (ROOT / "routes.yaml").read_text()
ENV = {"EDGE_SECRET": "abc-0123456789abcdef"}  # 16 characters or more: no warning


def line_of(text: str, needle: str) -> int:
    """1-based number of the only line of ``text`` containing ``needle``."""
    lines = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(lines) == 1, (needle, lines)
    return lines[0]


def messages(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems]


def load_ok(text: str, env: Mapping[str, str] | None = None) -> Config:
    config, problems = load_config(text, env=ENV if env is None else env)
    assert config is not None, messages(problems)
    return config


# --- the shipped routes.yaml ----------------------------------------------------


def test_shipped_loads_without_problems() -> None:
    config, problems = load_config(SHIPPED, env=ENV)
    assert problems == []
    assert config is not None
    assert config.source == "routes.yaml"
    assert len(config.digest) == 64


def test_shipped_routes() -> None:
    config = load_ok(SHIPPED)
    assert [r.name for r in config.routes] == ["edge", "edge-message", "default"]
    edge, message, default = config.routes
    backend = config.upstreams["backend"]

    assert edge.websocket is True
    assert edge.paths == ("/edge/ws", "/ws/edge")
    assert edge.prefix is None
    assert edge.upstream is backend
    assert edge.upstream_path == "/edge/ws"
    assert edge.auth is config.auth["edge"]
    assert edge.forward_authorization is True
    assert edge.max_message_size == 4 * 1024 * 1024 == 4194304
    assert edge.describe_paths() == "/edge/ws, /ws/edge"

    assert message.websocket is False
    assert message.paths == ("/edge/message",)
    assert message.upstream_path is None
    assert message.auth is config.auth["edge"]
    assert message.forward_authorization is True

    assert default.websocket is False
    assert default.paths == ()
    assert default.prefix == "/"
    assert default.auth is None
    assert default.forward_authorization is False
    assert default.upstream_path is None
    assert default.describe_paths() == "/*"


def test_shipped_defaults() -> None:
    config = load_ok(SHIPPED)
    assert (config.listen_host, config.port, config.header_timeout) == ("*", 8080, 10.0)
    assert (config.metrics_host, config.metrics_port) == ("*", 9100)
    assert (config.drain_timeout, config.live_path, config.ready_path) == (10.0, "/healthz", "/readyz")
    assert (config.stall_timeout, config.keepalive_interval) == (60.0, 25.0)
    assert [r.retry for r in config.routes] == [None, None, None]  # shown, commented out
    assert (config.log_level, config.log_format) == ("info", "json")
    assert list(config.upstreams) == ["backend"]
    backend = config.upstreams["backend"]
    assert (backend.name, backend.url, backend.connect_timeout, backend.read_timeout) == (
        "backend",
        "http://127.0.0.1:8000",
        10.0,
        60.0,
    )


def test_shipped_auth_policy() -> None:
    policy = load_ok(SHIPPED).auth["edge"]
    assert policy.secret_digests == (digest_secret(ENV["EDGE_SECRET"]),)
    rule = policy.agent_id
    assert rule is not None
    assert (rule.header, rule.query, rule.required, rule.forward_header) == (
        "X-Edge-Agent-Id",
        "edge_agent_id",
        True,
        "X-Edge-Agent-Id",
    )
    assert rule.pattern.pattern == "[A-Za-z0-9_.-]{1,128}"


OVERRIDES = [
    ({"PORT": "9000"}, "port", 9000),
    ({"PORT": " 9001 "}, "port", 9001),
    ({"METRICS_PORT": "9200"}, "metrics_port", 9200),
    ({"METRICS_PORT": "0"}, "metrics_port", 0),  # 0 turns metrics off
    ({"LOG_FORMAT": "text"}, "log_format", "text"),
    ({"LOG_FORMAT": "TEXT"}, "log_format", "text"),
    ({"LOG_LEVEL": "DEBUG"}, "log_level", "debug"),
    ({"PORT": ""}, "port", 8080),  # ${VAR:-default}: set but empty takes the default
]


@pytest.mark.parametrize(("env", "attr", "value"), OVERRIDES, ids=[repr(o[0]) for o in OVERRIDES])
def test_env_overrides(env: dict[str, str], attr: str, value: object) -> None:
    assert getattr(load_ok(SHIPPED, {**ENV, **env}), attr) == value


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://backend:9000", "http://backend:9000"),
        ("https://backend.internal", "https://backend.internal"),
        ("http://backend:9000/", "http://backend:9000"),  # trailing slash dropped
        ("http://backend:9000/base/", "http://backend:9000/base"),
    ],
)
def test_upstream_url_override(url: str, expected: str) -> None:
    config = load_ok(SHIPPED, {**ENV, "UPSTREAM_URL": url})
    assert config.upstreams["backend"].url == expected
    assert all(r.upstream.url == expected for r in config.routes)


BAD_OVERRIDES = [
    ({"PORT": "eighty"}, "port: ${PORT", "listen.port: expected a whole number, got 'eighty'"),  # ENV's secret is abc
    ({"PORT": "70000"}, "port: ${PORT", "listen.port: 70000 is out of range (0 to 65535)"),
    ({"METRICS_PORT": "-1"}, "port: ${METRICS_PORT", "metrics.port: -1 is out of range (0 to 65535)"),
    ({"LOG_FORMAT": "xml"}, "${LOG_FORMAT", "log.format: expected json or text, got 'xml'"),
    ({"LOG_LEVEL": "loud"}, "${LOG_LEVEL", "log.level: expected debug, info, warning or error, got 'loud'"),
    # an environment value can never change the file's structure
    (
        {"LOG_FORMAT": "text\nlisten: {port: 1}"},
        "${LOG_FORMAT",
        "log.format: expected json or text, got 'text\\nlisten: {port: 1}'",
    ),
]


@pytest.mark.parametrize(("env", "needle", "message"), BAD_OVERRIDES, ids=[repr(b[0]) for b in BAD_OVERRIDES])
def test_bad_env_values(env: dict[str, str], needle: str, message: str) -> None:
    config, problems = load_config(SHIPPED, env={**ENV, **env})
    assert config is None
    assert messages(problems) == [f"routes.yaml:{line_of(SHIPPED, needle)}: error: {message}"]


BAD_URLS = [
    ("ftp://backend", "must start with http:// or https://"),
    ("backend:8000", "must start with http:// or https://"),
    ("http://user:pa55word@backend", "must not carry credentials (user:password@)"),
    ("https://user@backend", "must not carry credentials (user:password@)"),
    ("http://backend/?x=1", "must not have a query string or fragment"),
    ("http://backend/#top", "must not have a query string or fragment"),
    ("http://", "has no host"),
    ("http://backend:99999", "is not a valid URL"),
    ("http://backend/a b", "'/a b' is not a canonical path (refused character ' ')"),
]


@pytest.mark.parametrize(("url", "message"), BAD_URLS, ids=[b[0] for b in BAD_URLS])
def test_bad_upstream_url(url: str, message: str) -> None:
    config, problems = load_config(SHIPPED, env={**ENV, "UPSTREAM_URL": url})
    assert config is None
    found = messages(problems)
    assert found[0] == f"routes.yaml:{line_of(SHIPPED, '${UPSTREAM_URL')}: error: upstreams.backend.url: {message}"
    assert found[1:] == []  # the routes naming it are not reported again
    # the URL may carry a password: it is never quoted
    assert all("pa55word" not in m and url not in m for m in found)


def test_bad_upstream_url_is_one_problem() -> None:
    config, problems = load_config(SHIPPED, env={**ENV, "UPSTREAM_URL": "ftp://backend"})
    assert config is None
    assert messages(problems) == [
        f"routes.yaml:{line_of(SHIPPED, '${UPSTREAM_URL')}: error: upstreams.backend.url: "
        "must start with http:// or https://"
    ]


# --- secrets --------------------------------------------------------------------

SECRET_LINE = line_of(SHIPPED, "- ${EDGE_SECRET}")


def test_edge_secret_unset_strict_is_an_error() -> None:
    config, problems = load_config(SHIPPED, env={}, strict=True)
    assert config is None
    assert messages(problems) == [
        f"routes.yaml:{SECRET_LINE}: error: auth.edge.bearer: "
        "environment variable EDGE_SECRET is referenced but not set"
    ]


def test_edge_secret_unset_lenient_is_a_warning() -> None:
    config, problems = load_config(SHIPPED, env={}, strict=False)
    assert config is not None
    assert messages(problems) == [
        f"routes.yaml:{SECRET_LINE}: warning: auth.edge.bearer: "
        "environment variable EDGE_SECRET is referenced but not set"
    ]
    assert config.auth["edge"].secret_digests == ()


@pytest.mark.parametrize("strict", [True, False])
def test_edge_secret_empty_is_an_error_in_both_modes(strict: bool) -> None:
    config, problems = load_config(SHIPPED, env={"EDGE_SECRET": ""}, strict=strict)
    assert config is None
    assert messages(problems) == [
        f"routes.yaml:{SECRET_LINE}: error: auth.edge.bearer: no secret is set "
        "(EDGE_SECRET, EDGE_SECRET_PREVIOUS empty); requests could never be admitted"
    ]


def test_previous_secret_adds_a_second_digest() -> None:
    config = load_ok(SHIPPED, {"EDGE_SECRET": "current-1", "EDGE_SECRET_PREVIOUS": "previous-0"})
    assert config.auth["edge"].secret_digests == (digest_secret("current-1"), digest_secret("previous-0"))


def test_previous_secret_alone_is_enough_when_current_is_empty() -> None:
    config = load_ok(SHIPPED, {"EDGE_SECRET": "", "EDGE_SECRET_PREVIOUS": "previous-0"})
    assert config.auth["edge"].secret_digests == (digest_secret("previous-0"),)


def test_digest_secret_is_sha256() -> None:
    assert digest_secret("abc").hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


SECRET = "s3cr3t-Value_0123456789"
OLD = "0ld-s3cr3t-9876543210"


def test_secrets_never_in_repr() -> None:
    config = load_ok(SHIPPED, {"EDGE_SECRET": SECRET, "EDGE_SECRET_PREVIOUS": OLD})
    for text in (repr(config), str(config), repr(config.auth), repr(config.routes[0])):
        for secret in (SECRET, OLD):
            assert secret not in text
            assert digest_secret(secret).hex() not in text
            assert repr(digest_secret(secret)) not in text
    assert "secret_digests" not in repr(config)


LEAKY = [
    # environments (and files) that produce problems while a secret is around
    ({"EDGE_SECRET": "has space " + SECRET}, SHIPPED),
    ({"EDGE_SECRET": SECRET + "\n", "EDGE_SECRET_PREVIOUS": OLD}, SHIPPED),
    ({"EDGE_SECRET": SECRET, "EDGE_SECRET_PREVIOUS": OLD, "PORT": "x"}, SHIPPED),
    ({"EDGE_SECRET": SECRET, "UPSTREAM_URL": f"http://agent:{SECRET}@backend"}, SHIPPED),
    ({"EDGE_SECRET": SECRET}, SHIPPED.replace("${EDGE_SECRET}", "${EDGE_SECRET}\n      - " + OLD)),
    ({}, SHIPPED.replace("${EDGE_SECRET}", SECRET)),
    ({}, SHIPPED.replace("${EDGE_SECRET}", SECRET + " !")),
    # A secret's variable referenced in another field, whose problem quotes the value (found by
    # tests/test_fuzz_config.py: 'type: ${EDGE_SECRET}' gave "... (got '<the secret>')").
    ({"EDGE_SECRET": SECRET}, SHIPPED.replace("type: http", "type: ${EDGE_SECRET}")),
    ({"EDGE_SECRET": SECRET}, SHIPPED.replace("${PORT:-8080}", "${EDGE_SECRET}")),
    ({"EDGE_SECRET": SECRET}, SHIPPED.replace("${LOG_LEVEL:-info}", "${EDGE_SECRET}")),
    ({"EDGE_SECRET": SECRET}, SHIPPED.replace("paths: [/edge/message]", "paths: ['/edge/${EDGE_SECRET}//']")),
    ({"EDGE_SECRET": SECRET + "\n"}, SHIPPED.replace("${LOG_FORMAT:-json}", "${EDGE_SECRET}")),
    # ... even when the policy naming it is a duplicate the loader skips (found by the long run)
    (
        {"EDGE_SECRET": SECRET},
        SHIPPED.replace("${PORT:-8080}", "${EDGE_SECRET}").replace("  edge:\n", "  edge:\n  edge:\n", 1),
    ),
]


@pytest.mark.parametrize(("env", "text"), LEAKY, ids=[f"leak{i}" for i in range(len(LEAKY))])
def test_secrets_never_in_problems(env: dict[str, str], text: str) -> None:
    config, problems = load_config(text, env=env, strict=False)
    assert problems, "the case must produce at least one problem"
    for problem in problems:
        assert SECRET not in str(problem)
        assert OLD not in str(problem)
    assert config is None or (SECRET not in repr(config) and OLD not in repr(config))


def test_a_secret_variable_used_outside_a_bearer_list_is_an_error() -> None:
    """Found by tests/test_fuzz_config.py: 'header: ${EDGE_SECRET}' loaded, with the secret as
    the agent id header's name, in the config's repr and sent to the backend."""
    for field in ("${PORT:-8080}", "X-Edge-Agent-Id  #"):
        text = SHIPPED.replace(field, "${EDGE_SECRET}", 1)
        config, problems = load_config(text, env={"EDGE_SECRET": SECRET})
        assert config is None
        line = line_of(text, ": ${EDGE_SECRET}")
        where = "listen.port" if "PORT" in field else "auth.edge.agent_id.header"
        secret = "${EDGE_SECRET} is a secret (a bearer list names it); use it nowhere else"
        assert messages(problems) == [f"routes.yaml:{line}: error: {where}: {secret}"]


def test_a_secret_value_in_another_variable_is_redacted() -> None:
    config, problems = load_config(SHIPPED, env={"EDGE_SECRET": SECRET, "PORT": SECRET})
    assert config is None
    assert messages(problems) == [
        f"routes.yaml:{line_of(SHIPPED, 'port: ${PORT')}: error: listen.port: expected a whole number, got '<secret>'"
    ]


def test_secret_written_literally_is_a_warning() -> None:
    text = SHIPPED.replace("${EDGE_SECRET}", SECRET)
    config, problems = load_config(text, env={})
    assert config is not None
    assert messages(problems) == [
        f"routes.yaml:{SECRET_LINE}: warning: auth.edge.bearer: a secret is written in the file; "
        "use ${VAR} so it comes from the environment"
    ]
    assert config.auth["edge"].secret_digests == (digest_secret(SECRET),)


def test_secret_written_as_a_default_is_a_warning() -> None:
    text = SHIPPED.replace("${EDGE_SECRET}", "${EDGE_SECRET:-hunter2-0123456789}")
    config, problems = load_config(text, env={})
    assert config is not None
    assert config.auth["edge"].secret_digests == (digest_secret("hunter2-0123456789"),)
    assert [p.severity for p in problems] == ["warning"]
    assert "a secret is written in the file" in problems[0].message


def test_secret_with_forbidden_characters_is_an_error() -> None:
    config, problems = load_config(SHIPPED, env={"EDGE_SECRET": "has space"})
    assert config is None
    expected = (
        f"routes.yaml:{SECRET_LINE}: error: auth.edge.bearer: "
        "a secret has characters a Bearer token cannot carry (RFC 6750 section 2.1)"
    )
    assert expected in messages(problems)


def test_secret_with_forbidden_characters_is_not_called_empty() -> None:
    config, problems = load_config(SHIPPED, env={"EDGE_SECRET": "has space"})
    assert config is None
    assert messages(problems) == [
        f"routes.yaml:{SECRET_LINE}: error: auth.edge.bearer: "
        "a secret has characters a Bearer token cannot carry (RFC 6750 section 2.1)"
    ]


# --- every problem at once, each with its line ------------------------------------

MANY_MISTAKES = """\
listen:
  port: abc
  colour: blue
upstreams:
  backend:
    url: http://127.0.0.1:8000
    connect_timeout: soon
auth:
  edge:
    bearer: ['${S}']
routes:
  - name: first
    type: http
    paths: [/a]
    upstream: backend
    auth: edge
  - name: second
    type: http
    paths: [/b, /a]
    upstream: backend
  - name: third
    type: http
    paths: [/c]
    upstream: nowhere
    auth: nobody
  - name: fourth
    type: websocket
    paths: [/edge//ws]
    upstream: backend
"""


def test_every_problem_reported_at_once_with_its_line() -> None:
    config, problems = load_config(MANY_MISTAKES, file="conf/routes.yaml", env={"S": "s3cret-0123456789"})
    assert config is None
    assert sorted(messages(problems)) == sorted(
        [
            "conf/routes.yaml:3: error: listen: unknown key 'colour' "
            "(expected one of: client_ip_header, close_timeout, drain_timeout, header_timeout, host, "
            "keepalive_interval, port, stall_timeout, trusted_proxies)",
            "conf/routes.yaml:2: error: listen.port: expected a whole number, got 'abc'",
            "conf/routes.yaml:7: error: upstreams.backend.connect_timeout: "
            "expected a duration such as 10s, 500ms or 2m, got 'soon'",
            "conf/routes.yaml:17: error: routes[1] (second): path /a is already used by route 'first'",
            "conf/routes.yaml:24: error: routes[2] (third).upstream: no upstream named 'nowhere' (defined: backend)",
            "conf/routes.yaml:25: error: routes[2] (third).auth: no auth policy named 'nobody' (defined: edge)",
            "conf/routes.yaml:28: error: routes[3] (fourth).paths: "
            "'/edge//ws' is not a canonical path (empty segment ('//'))",
        ]
    )
    assert all(p.file == "conf/routes.yaml" and p.severity == "error" for p in problems)


# --- one mistake at a time ----------------------------------------------------------

BASE = """\
upstreams:
  b:
    url: http://127.0.0.1:1
auth:
  e:
    bearer: ['${S}']
routes:
  - name: r
    type: websocket
    paths: [/ws]
    upstream: b
    auth: e
"""
S = {"S": "s3cret-0123456789"}


def route(extra: str) -> str:
    """BASE plus a second route, given as the lines after '- '."""
    return BASE + "  - " + extra.strip().replace("\n", "\n    ") + "\n"


ONE_MISTAKE = [
    (
        "unknown-top-key",
        BASE + "extra: 1\n",
        "13: error: top level: unknown key 'extra' "
        "(expected one of: auth, health, limits, listen, log, metrics, routes, state, upstreams)",
    ),
    (
        "keys-not-expanded",
        BASE + "${S}: 1\n",
        "13: error: top level: unknown key '${S}' "
        "(expected one of: auth, health, limits, listen, log, metrics, routes, state, upstreams)",
    ),
    ("duplicate-top-key", BASE + "upstreams: {}\n", "13: error: top level: duplicate key 'upstreams'"),
    ("duplicate-nested-key", "listen:\n  port: 1\n  port: 2\n" + BASE, "3: error: listen: duplicate key 'port'"),
    ("port-type", "listen: {port: abc}\n" + BASE, "1: error: listen.port: expected a whole number, got 'abc'"),
    ("port-range", "listen: {port: 65536}\n" + BASE, "1: error: listen.port: 65536 is out of range (0 to 65535)"),
    ("listen-list", "listen: [1]\n" + BASE, "1: error: listen: expected a mapping (key: value), got a list"),
    (
        "duration-zero",
        "listen: {header_timeout: 0s}\n" + BASE,
        "1: error: listen.header_timeout: must be greater than zero",
    ),
    (
        "duration-unit",
        "listen: {header_timeout: 1h}\n" + BASE,
        "1: error: listen.header_timeout: expected a duration such as 10s, 500ms or 2m, got '1h'",
    ),
    (
        "duration-negative",
        "listen: {header_timeout: -1s}\n" + BASE,
        "1: error: listen.header_timeout: expected a duration such as 10s, 500ms or 2m, got '-1s'",
    ),
    ("log-format", "log: {format: xml}\n" + BASE, "1: error: log.format: expected json or text, got 'xml'"),
    (
        "malformed-${",
        "listen: {host: 'h${'}\n" + BASE,
        "1: error: listen.host: malformed '${...}' (use ${NAME} or ${NAME:-default}; $$ for '$')",
    ),
    (
        "malformed-${1X}",
        "listen: {host: '${1X}'}\n" + BASE,
        "1: error: listen.host: malformed '${...}' (use ${NAME} or ${NAME:-default}; $$ for '$')",
    ),
    (
        "malformed-${X:d}",
        "listen: {host: '${X:d}'}\n" + BASE,
        "1: error: listen.host: malformed '${...}' (use ${NAME} or ${NAME:-default}; $$ for '$')",
    ),
    (
        "malformed-${X",
        "listen: {host: '${X'}\n" + BASE,
        "1: error: listen.host: malformed '${...}' (use ${NAME} or ${NAME:-default}; $$ for '$')",
    ),
    (
        "malformed-${}",
        "listen: {host: '${}'}\n" + BASE,
        "1: error: listen.host: malformed '${...}' (use ${NAME} or ${NAME:-default}; $$ for '$')",
    ),
    (
        "bad-regex",
        BASE.replace("    bearer:", "    agent_id: {pattern: '[a-'}\n    bearer:"),
        "6: error: auth.e.agent_id.pattern: not a valid regular expression (unterminated character set at position 0)",
    ),
    # found by tests/test_fuzz_config.py: these crashed load_config (OverflowError, RecursionError)
    (
        "regex-repeat-too-large",
        BASE.replace("    bearer:", "    agent_id: {pattern: 'a{4294967296}'}\n    bearer:"),
        "6: error: auth.e.agent_id.pattern: not a valid regular expression (the repetition number is too large)",
    ),
    (
        "regex-nested-too-deeply",
        BASE.replace("    bearer:", "    agent_id: {pattern: '" + "(" * 2000 + ")" * 2000 + "'}\n    bearer:"),
        "6: error: auth.e.agent_id.pattern: not a valid regular expression (groups nested too deeply)",
    ),
    (
        "bad-header-name",
        BASE.replace("    bearer:", "    agent_id: {header: 'X Id'}\n    bearer:"),
        "6: error: auth.e.agent_id.header: 'X Id' is not a valid header name",
    ),
    (
        "forward-header-host",
        BASE.replace("    bearer:", "    agent_id: {forward_header: Host}\n    bearer:"),
        "6: error: auth.e.agent_id.forward_header: 'Host' is a header the sidecar or HTTP itself owns",
    ),
    (
        "header-x-forwarded",
        BASE.replace("    bearer:", "    agent_id: {header: X-Forwarded-User}\n    bearer:"),
        "6: error: auth.e.agent_id.header: 'X-Forwarded-User' is a header the sidecar or HTTP itself owns",
    ),
    (
        "agent-id-unknown-key",
        BASE.replace("    bearer:", "    agent_id: {headr: X-Id}\n    bearer:"),
        "6: error: auth.e.agent_id: unknown key 'headr': did you mean 'header'? "
        "(expected one of: forward_header, header, pattern, query, required)",
    ),
    (
        "bearer-missing",
        BASE.replace("    bearer: ['${S}']", "    agent_id: {}"),
        "6: error: auth.e: missing 'bearer' (the list of accepted secrets) or 'jwt' (signed tokens)",
    ),
    (
        "route-unknown-key",
        BASE.replace("    auth: e", "    auth: e\n    timeout: 1s"),
        "13: error: routes[0] (r): unknown key 'timeout' (expected one of: auth, compression, duplicate_agent, "
        "forward_authorization, max_message_size, max_sessions, name, origins, paths, prefix, query_token, "
        "retry, type, upstream, upstream_path)",
    ),
    (
        "dup-path",
        route("name: s\ntype: http\npaths: [/ws]\nupstream: b"),
        "13: error: routes[1] (s): path /ws is already used by route 'r'",
    ),
    (
        "dup-prefix",
        route("name: s\ntype: http\nprefix: /p\nupstream: b") + "  - {name: t, type: http, prefix: /p/, upstream: b}\n",
        "17: error: routes[2] (t): path /p/* is already used by route 's'",
    ),
    (
        "dup-name",
        route("name: r\ntype: http\npaths: [/x]\nupstream: b"),
        "13: error: routes[1] (r): duplicate route name 'r'",
    ),
    (
        "no-upstream",
        route("name: s\ntype: http\npaths: [/x]\nupstream: nope"),
        "16: error: routes[1] (s).upstream: no upstream named 'nope' (defined: b)",
    ),
    (
        "no-auth",
        route("name: s\ntype: http\npaths: [/x]\nupstream: b\nauth: nope"),
        "17: error: routes[1] (s).auth: no auth policy named 'nope' (defined: e)",
    ),
    ("upstream-missing", route("name: s\ntype: http\npaths: [/x]"), "13: error: routes[1] (s): missing 'upstream'"),
    (
        "name-upper",
        route("name: S\ntype: http\npaths: [/x]\nupstream: b"),
        "13: error: routes[1].name: required, lower-case letters, digits, '_' or '-' (got 'S')",
    ),
    (
        "name-missing",
        route("type: http\npaths: [/x]\nupstream: b"),
        "13: error: routes[1].name: required, lower-case letters, digits, '_' or '-' (got None)",
    ),
    (
        "type-bad",
        route("name: s\ntype: tcp\npaths: [/x]\nupstream: b"),
        "14: error: routes[1] (s).type: required, 'websocket' or 'http' (got 'tcp')",
    ),
    (
        "paths-and-prefix",
        route("name: s\ntype: http\npaths: [/x]\nprefix: /y\nupstream: b"),
        "13: error: routes[1] (s): give exactly one of 'paths' (exact) or 'prefix'",
    ),
    (
        "neither-paths-nor-prefix",
        route("name: s\ntype: http\nupstream: b"),
        "13: error: routes[1] (s): give exactly one of 'paths' (exact) or 'prefix'",
    ),
    (
        "path-double-slash",
        route("name: s\ntype: http\npaths: [/edge//ws]\nupstream: b"),
        "15: error: routes[1] (s).paths: '/edge//ws' is not a canonical path (empty segment ('//'))",
    ),
    (
        "path-dot",
        route("name: s\ntype: http\npaths: [/a/../b]\nupstream: b"),
        "15: error: routes[1] (s).paths: '/a/../b' is not a canonical path (dot segment)",
    ),
    (
        "path-relative",
        route("name: s\ntype: http\npaths: [edge]\nupstream: b"),
        "15: error: routes[1] (s).paths: 'edge' is not a canonical path (the path must start with '/')",
    ),
    (
        "path-escape",
        route("name: s\ntype: http\npaths: ['/%65dge']\nupstream: b"),
        "15: error: routes[1] (s).paths: write '/%65dge' without percent-escapes",
    ),
    (
        "path-escape-kept",
        route("name: s\ntype: http\npaths: ['/a%2A']\nupstream: b"),
        "15: error: routes[1] (s).paths: write '/a%2A' without percent-escapes",
    ),
    (
        "prefix-semicolon",
        route("name: s\ntype: http\nprefix: '/a;b'\nupstream: b"),
        "15: error: routes[1] (s).prefix: '/a;b' is not a canonical path (refused character ';')",
    ),
    (
        "upstream-path-on-prefix",
        route("name: s\ntype: http\nprefix: /p\nupstream: b\nupstream_path: /q"),
        "17: error: routes[1] (s).upstream_path: only routes with exact 'paths' can rewrite the path",
    ),
    (
        "upstream-path-bad",
        route("name: s\ntype: http\npaths: [/x]\nupstream: b\nupstream_path: /q//r"),
        "17: error: routes[1] (s).upstream_path: '/q//r' is not a canonical path (empty segment ('//'))",
    ),
    (
        "size-on-http",
        route("name: s\ntype: http\npaths: [/x]\nupstream: b\nmax_message_size: 1MiB"),
        "17: error: routes[1] (s).max_message_size: only WebSocket routes have messages",
    ),
    (
        "size-bad",
        route("name: s\ntype: websocket\npaths: [/x]\nupstream: b\nmax_message_size: lots"),
        "17: error: routes[1] (s).max_message_size: expected a size such as 4MiB, 65536 or 512KiB, got 'lots'",
    ),
    (
        "size-zero",
        route("name: s\ntype: websocket\npaths: [/x]\nupstream: b\nmax_message_size: 0"),
        "17: error: routes[1] (s).max_message_size: must be greater than zero",
    ),
    (
        "bool-bad",
        route("name: s\ntype: http\npaths: [/x]\nupstream: b\nforward_authorization: maybe"),
        "17: error: routes[1] (s).forward_authorization: expected true or false, got 'maybe'",
    ),
    (
        "keepalive-bad",
        "listen: {keepalive_interval: soon}\n" + BASE,
        "1: error: listen.keepalive_interval: expected a duration such as 25s or 500ms, or off, got 'soon'",
    ),
    (
        "keepalive-negative",
        "listen: {keepalive_interval: -5s}\n" + BASE,
        "1: error: listen.keepalive_interval: expected a duration such as 25s or 500ms, or off, got '-5s'",
    ),
    (
        "retry-zero-attempts",
        BASE + "    retry: {attempts: 0}\n",
        "13: error: routes[0] (r).retry.attempts: 0 is out of range (1 to 100)",
    ),
    (
        "retry-no-attempts",
        BASE + "    retry: {backoff: 100ms}\n",
        "13: error: routes[0] (r).retry: missing 'attempts' (tries in all, the first included)",
    ),
    (
        "retry-zero-backoff",
        BASE + "    retry: {attempts: 3, backoff: 0ms}\n",
        "13: error: routes[0] (r).retry.backoff: must be greater than zero",
    ),
    (
        "retry-unknown-key",
        BASE + "    retry: {attempts: 3, on: [503]}\n",
        "13: error: routes[0] (r).retry: unknown key 'on' (expected one of: attempts, backoff)",
    ),
    (
        "retry-scalar",
        BASE + "    retry: 3\n",
        "13: error: routes[0] (r).retry: expected a mapping (key: value), got a value",
    ),
    (
        "retry-http-route",
        route("name: s\ntype: http\npaths: [/x]\nupstream: b\nretry: {attempts: 3}"),
        "17: error: routes[1] (s).retry: only WebSocket routes retry (their upstream handshake)",
    ),
    (
        "origins-not-an-origin",
        route("name: s\ntype: websocket\npaths: [/x]\nupstream: b\norigins: [https://a.example, 'https://b.example/']"),
        "17: error: routes[1] (s).origins: 'https://b.example/' is not an origin; "
        "write scheme://host[:port], no path or '/' at the end",
    ),
    (
        "origins-null",
        route("name: s\ntype: websocket\npaths: [/x]\nupstream: b\norigins: ['null']"),
        "17: error: routes[1] (s).origins: 'null' is not an origin; "
        "write scheme://host[:port], no path or '/' at the end",
    ),
    (
        "origins-wildcard",
        route("name: s\ntype: websocket\npaths: [/x]\nupstream: b\norigins:\n  - 'https://*.example.com'"),
        "18: error: routes[1] (s).origins: 'https://*.example.com' is not an origin; "
        "write scheme://host[:port], no path or '/' at the end",
    ),
    (
        "origins-empty",
        route("name: s\ntype: websocket\npaths: [/x]\nupstream: b\norigins: []"),
        "17: error: routes[1] (s).origins: empty; list the allowed origins, or leave the key out to allow any",
    ),
    (
        "origins-on-http",
        route("name: s\ntype: http\npaths: [/x]\nupstream: b\norigins: [https://a.example]"),
        "17: error: routes[1] (s).origins: only WebSocket routes have this",
    ),
    (
        "max-sessions-zero",
        route("name: s\ntype: websocket\npaths: [/x]\nupstream: b\nmax_sessions: 0"),
        "17: error: routes[1] (s).max_sessions: 0 is out of range (1 to 10000000)",
    ),
    (
        "max-sessions-on-http",
        route("name: s\ntype: http\npaths: [/x]\nupstream: b\nmax_sessions: 5"),
        "17: error: routes[1] (s).max_sessions: only WebSocket routes have this",
    ),
    (
        "duplicate-agent-bad",
        route("name: s\ntype: websocket\npaths: [/x]\nupstream: b\nduplicate_agent: kick"),
        "17: error: routes[1] (s).duplicate_agent: expected replace, reject or allow, got 'kick'",
    ),
    (
        "compression-on-http",
        route("name: s\ntype: http\npaths: [/x]\nupstream: b\ncompression: true"),
        "17: error: routes[1] (s).compression: only WebSocket routes have this",
    ),
    (
        "compression-bad",
        route("name: s\ntype: websocket\npaths: [/x]\nupstream: b\ncompression: gzip"),
        "17: error: routes[1] (s).compression: expected true or false, got 'gzip'",
    ),
    (
        "query-token-without-auth",
        route("name: s\ntype: http\npaths: [/x]\nupstream: b\nquery_token: true"),
        "17: error: routes[1] (s).query_token: only routes with 'auth' take a token",
    ),
    (
        "limits-unknown-key",
        BASE + "limits: {sessions: 5}\n",
        "13: error: limits: unknown key 'sessions': did you mean 'max_sessions'? "
        "(expected one of: auth_failures, auth_window, max_sessions, tracked_clients)",
    ),
    (
        "limits-failures-zero",
        BASE + "limits: {auth_failures: 0}\n",
        "13: error: limits.auth_failures: 0 is out of range (1 to 1000000)",
    ),
    (
        "limits-window-bad",
        BASE + "limits:\n  auth_window: forever\n",
        "14: error: limits.auth_window: expected a duration such as 10s, 500ms or 2m, got 'forever'",
    ),
    (
        "limits-tracked-zero",
        BASE + "limits: {tracked_clients: 0}\n",
        "13: error: limits.tracked_clients: 0 is out of range (1 to 10000000)",
    ),
    (
        "limits-sessions-bad",
        BASE + "limits: {max_sessions: many}\n",
        "13: error: limits.max_sessions: expected a whole number, got 'many'",
    ),
    ("routes-missing", BASE.split("routes:")[0], "1: error: routes: missing (at least one route is needed)"),
    ("top-level-list", "- a\n- b\n", "1: error: top level: expected a mapping (key: value), got a list"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in ONE_MISTAKE], ids=[c[0] for c in ONE_MISTAKE])
def test_one_mistake(text: str, expected: str) -> None:
    config, problems = load_config(text, env=S)
    assert config is None
    errors = [str(p) for p in problems if p.severity == "error"]
    assert errors == [f"routes.yaml:{expected}"]


UPSTREAM_MISTAKES = [
    ("url-scheme", "ftp://x", "3: error: upstreams.b.url: must start with http:// or https://"),
    ("url-no-scheme", "127.0.0.1:1", "3: error: upstreams.b.url: must start with http:// or https://"),
    ("url-credentials", "http://u:p@x", "3: error: upstreams.b.url: must not carry credentials (user:password@)"),
    ("url-user-only", "https://u@x", "3: error: upstreams.b.url: must not carry credentials (user:password@)"),
    ("url-fragment", "http://x/#f", "3: error: upstreams.b.url: must not have a query string or fragment"),
    ("url-empty", "''", "3: error: upstreams.b.url: is empty"),
    (
        "url-malformed-${",
        "http://x/${",
        "3: error: upstreams.b.url: malformed '${...}' (use ${NAME} or ${NAME:-default}; $$ for '$')",
    ),
]


@pytest.mark.parametrize(("url", "expected"), [c[1:] for c in UPSTREAM_MISTAKES], ids=[c[0] for c in UPSTREAM_MISTAKES])
def test_upstream_mistake(url: str, expected: str) -> None:
    config, problems = load_config(BASE.replace("http://127.0.0.1:1", url), env=S)
    assert config is None
    errors = [str(p) for p in problems if p.severity == "error"]
    assert errors[0] == f"routes.yaml:{expected}"
    assert errors[1:] == []  # the route naming it is not reported again


def test_upstream_without_url() -> None:
    config, problems = load_config(BASE.replace("url: http://127.0.0.1:1", "read_timeout: 1s"), env=S)
    assert config is None
    errors = [str(p) for p in problems if p.severity == "error"]
    assert errors[0] == "routes.yaml:3: error: upstreams.b: missing 'url'"
    assert errors[1:] == []  # the route naming it is not reported again


# --- file-level problems ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "routes.yaml: error: the file is empty"),
        ("\n\n", "routes.yaml: error: the file is empty"),
        ("# only a comment\n", "routes.yaml: error: the file is empty"),
        # The mistake itself, with its column: the '[' never closed, not the end of the file.
        (
            "listen:\n  port: [1\n",
            "routes.yaml:2:9: error: YAML syntax: this '[' is never closed: "
            "expected ',' or ']', but got the end of the file (line 3, column 1)",
        ),
        (
            "listen:\n  port: 1\n bad: indent\n",
            "routes.yaml:3:2: error: YAML syntax: indented unlike the block it is in, from line 1, column 1: "
            "expected the end of the block, but found a key",
        ),
        (
            "a: b: c\n",
            "routes.yaml:1:5: error: YAML syntax: mapping values are not allowed here "
            "(a ': ' inside a value, which needs quotes; or a key indented deeper than the one above it)",
        ),
        (
            "routes: ['${S}]\n",
            "routes.yaml:1:10: error: YAML syntax: this quoted value is never closed: "
            "found the end of the file (line 2, column 1)",
        ),
        ("upstreams: {}\n", "routes.yaml:1: error: routes: missing (at least one route is needed)"),
        # A character YAML refuses: the line, not '"<unicode string>", position N' (found by
        # tests/test_fuzz_config.py: these were whole-file problems, line 0).
        (
            "\x1f",
            "routes.yaml:1: error: YAML syntax: unacceptable character U+001F: special characters are not allowed",
        ),
        (
            "listen:\n  port: 1\x07\n",
            "routes.yaml:2: error: YAML syntax: unacceptable character U+0007: special characters are not allowed",
        ),
        # Deeper than PyYAML's composer can recurse (found while writing tests/test_fuzz_config.py:
        # RecursionError escaped load_config).
        ("a: " + "[" * 2000 + "]" * 2000 + "\n", "routes.yaml:1: error: YAML syntax: nested more than 64 levels deep"),
        (
            "listen:\n" + "".join(" " * i + "- \n" for i in range(1, 200)),
            "routes.yaml:65: error: YAML syntax: nested more than 64 levels deep",
        ),
    ],
)
def test_file_level(text: str, expected: str) -> None:
    config, problems = load_config(text, env=S)
    assert config is None
    assert messages(problems) == [expected]


def test_no_upstreams_points_at_the_top_level() -> None:
    """Like a missing 'routes' (found by tests/test_fuzz_config.py: this was line 0, the one
    problem of a non-empty file without a line)."""
    config, problems = load_config("# comment\n\nlisten: {port: 1}\n")
    assert config is None
    assert messages(problems) == [
        "routes.yaml:3: error: upstreams: missing (at least one upstream is needed)",
        "routes.yaml:3: error: routes: missing (at least one route is needed)",
    ]


# --- interpolation ------------------------------------------------------------------


def agent_pattern(pattern_yaml: str, env: Mapping[str, str]) -> str:
    text = BASE.replace("    bearer:", f"    agent_id: {{pattern: {pattern_yaml}}}\n    bearer:")
    config = load_ok(text, env={**S, **env})
    rule = config.auth["e"].agent_id
    assert rule is not None
    return rule.pattern.pattern


@pytest.mark.parametrize(
    ("pattern_yaml", "env", "expected"),
    [
        ("'${P:-[a-z]+}'", {}, "[a-z]+"),  # unset: the default
        ("'${P:-[a-z]+}'", {"P": ""}, "[a-z]+"),  # set but empty: the default too
        ("'${P:-[a-z]+}'", {"P": "[0-9]+"}, "[0-9]+"),
        ("'${P:-}x'", {}, "x"),
        ("'${P}'", {"P": "[0-9]+"}, "[0-9]+"),
        ("'[a-z]+$$'", {}, "[a-z]+$"),  # $$ is a literal $
        ("'$${P}'", {"P": "nope"}, "${P}"),  # ... so $${P} is not a reference
        ("'$$$${P}'", {}, "$${P}"),
        ("'$P'", {"P": "nope"}, "$P"),  # only ${...} is expanded
        ("'${P}${Q}'", {"P": "a", "Q": "b"}, "ab"),
        ("'${P}'", {"P": "${Q}"}, "${Q}"),  # a value is not expanded again
    ],
)
def test_interpolation(pattern_yaml: str, env: dict[str, str], expected: str) -> None:
    assert agent_pattern(pattern_yaml, env) == expected


def test_unset_variable_in_any_field_names_it_and_its_line() -> None:
    text = "log: {level: '${LVL}'}\n" + BASE
    config, problems = load_config(text, env=S, strict=True)
    assert config is None
    assert messages(problems) == [
        "routes.yaml:1: error: log.level: environment variable LVL is referenced but not set",
        "routes.yaml:1: error: log.level: expected debug, info, warning or error, got ''",
    ]


# --- values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("10", 10.0), ("500ms", 0.5), ("2m", 120.0), ("1.5s", 1.5), ("3 s", 3.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert load_ok(f"listen: {{header_timeout: '{text}'}}\n" + BASE, S).header_timeout == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4MiB", 4194304),
        ("4 mib", 4194304),
        ("512KiB", 524288),
        ("65536", 65536),
        ("1MB", 1000000),
        ("2kb", 2000),
        ("1GiB", 1073741824),
        ("100b", 100),
    ],
)
def test_sizes(text: str, size: int) -> None:
    config = load_ok(BASE.replace("    auth: e", f"    auth: e\n    max_message_size: '{text}'"), S)
    assert config.routes[0].max_message_size == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("25s", 25.0), ("'500ms'", 0.5), ("1m", 60.0), ("off", 0.0), ("'off'", 0.0), ("0", 0.0), ("0s", 0.0)],
)
def test_keepalive_interval(text: str, seconds: float) -> None:
    assert load_ok(f"listen: {{keepalive_interval: {text}}}\n" + BASE, S).keepalive_interval == seconds


def test_keepalive_interval_is_on_by_default() -> None:
    assert load_ok(BASE, S).keepalive_interval == 25.0


@pytest.mark.parametrize(
    ("text", "retry"),
    [("{attempts: 3, backoff: 100ms}", Retry(3, 0.1)), ("{attempts: 5}", Retry(5, 0.2)), ("{attempts: 1}", Retry(1))],
)
def test_retry(text: str, retry: Retry) -> None:
    assert load_ok(BASE + f"    retry: {text}\n", S).routes[0].retry == retry


def test_default_max_message_size() -> None:
    assert load_ok(BASE, S).routes[0].max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("false", False), ("yes", True), ("no", False), ("on", True), ("off", False), ("True", True)],
)
def test_booleans(text: str, value: bool) -> None:
    config = load_ok(BASE.replace("    auth: e", f"    auth: e\n    forward_authorization: {text}"), S)
    assert config.routes[0].forward_authorization is value


def test_agent_id_rule_options() -> None:
    text = BASE.replace(
        "    bearer:", "    agent_id: {header: X-Id, query: '', required: false, pattern: 'edge_[0-9]+'}\n    bearer:"
    )
    rule = load_ok(text, S).auth["e"].agent_id
    assert rule is not None
    # forward_header follows header when not given; an empty query turns the query off
    assert (rule.header, rule.query, rule.required, rule.forward_header, rule.pattern.pattern) == (
        "X-Id",
        None,
        False,
        "X-Id",
        "edge_[0-9]+",
    )


def test_single_value_stands_for_a_list() -> None:
    text = BASE.replace("paths: [/ws]", "paths: /ws").replace("bearer: ['${S}']", "bearer: '${S}'")
    config = load_ok(text, S)
    assert config.routes[0].paths == ("/ws",)
    assert config.auth["e"].secret_digests == (digest_secret("s3cret-0123456789"),)


def test_prefix_gets_a_trailing_slash() -> None:
    text = BASE + "  - {name: api, type: http, prefix: /api, upstream: b}\n"
    text += "  - {name: v, type: http, prefix: /v/, upstream: b}\n"
    assert [r.prefix for r in load_ok(text, S).routes] == [None, "/api/", "/v/"]


def test_unused_auth_policy_is_a_warning() -> None:
    text = BASE.replace("auth:\n", "auth:\n  spare:\n    bearer: ['${S}']\n")
    config, problems = load_config(text, env=S)
    assert config is not None
    assert messages(problems) == ["routes.yaml:6: warning: auth.spare: not used by any route"]


def test_warnings_alone_do_not_stop_the_config() -> None:
    text = BASE.replace("'${S}'", "literal-token-0123456789")
    config, problems = load_config(text, env={})
    assert config is not None
    assert [p.severity for p in problems] == ["warning"]


# --- Problem --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (Problem("routes.yaml", 25, "boom"), "routes.yaml:25: error: boom"),
        (Problem("a/b.yaml", 3, "careful", "warning"), "a/b.yaml:3: warning: careful"),
        (Problem("routes.yaml", 0, "the file is empty"), "routes.yaml: error: the file is empty"),
    ],
)
def test_problem_str(problem: Problem, text: str) -> None:
    assert str(problem) == text


def test_file_name_is_used_in_every_problem() -> None:
    config, problems = load_config(SHIPPED, file="/etc/sidecar/routes.yaml", env={})
    assert config is None
    assert messages(problems) == [
        f"/etc/sidecar/routes.yaml:{SECRET_LINE}: error: auth.edge.bearer: "
        "environment variable EDGE_SECRET is referenced but not set"
    ]


def test_duplicate_path_is_reported_even_when_that_route_has_another_error() -> None:
    text = BASE + "  - {name: r2, type: http, paths: [/ws], upstream: nowhere}\n"
    config, problems = load_config(text, env=S)
    assert config is None
    found = messages(problems)
    assert any("routes[1] (r2).upstream: no upstream named 'nowhere'" in m for m in found), found
    assert any("routes[1] (r2): path /ws is already used by route 'r'" in m for m in found), found


def test_trusted_proxies_are_networks_and_bad_ones_are_errors() -> None:
    text = "listen:\n  trusted_proxies: [10.0.0.0/8, '::1', '${EXTRA:-}', '192.168.0.0/16, ::/0', not-an-ip]\n" + BASE
    config, problems = load_config(text, env=S)
    assert config is None
    assert messages(problems) == [
        "routes.yaml:2: error: listen.trusted_proxies: 'not-an-ip' is not an IP address or network (such as 10.0.0.0/8)"
    ]
    config, _ = load_config(text.replace(", not-an-ip", ""), env=S)
    assert config is not None
    assert [str(n) for n in config.trusted_proxies] == ["10.0.0.0/8", "::1/128", "192.168.0.0/16", "::/0"]


# --- health paths and the drain window ---------------------------------------------


def test_health_paths_and_drain_timeout() -> None:
    text = SHIPPED.replace("live: /healthz", "live: /-/live").replace("ready: /readyz", "ready: /-/ready")
    config = load_ok(text, {**ENV, "DRAIN_TIMEOUT": "2m"})
    assert (config.live_path, config.ready_path, config.drain_timeout) == ("/-/live", "/-/ready", 120.0)


def test_a_route_cannot_name_a_health_path() -> None:
    text = SHIPPED.replace("paths: [/edge/message]", "paths: [/edge/message, /readyz]")
    config, problems = load_config(text, env=ENV)
    assert config is None
    assert messages(problems) == [
        f"routes.yaml:{line_of(text, '/edge/message, /readyz')}: error: route 'edge-message': "
        "path /readyz is a health check path, answered by the sidecar itself; "
        "change the route or health.live / health.ready"
    ]


@pytest.mark.parametrize(
    ("health", "message"),
    [
        ("{live: /x, ready: /x}", "health: 'live' and 'ready' must be different paths"),
        ("{live: /a/../b}", "health.live: '/a/../b' is not a canonical path (dot segment)"),
        ("{ready: 5}", "health.ready: '5' is not a canonical path"),
        ("{alive: /x}", "health: unknown key 'alive': did you mean 'live'? (expected one of: live, ready)"),
    ],
)
def test_bad_health_section(health: str, message: str) -> None:
    start, end = SHIPPED.index("health:"), SHIPPED.index("log:")
    text = SHIPPED[:start] + f"health: {health}\n\n" + SHIPPED[end:]
    config, problems = load_config(text, env=ENV)
    assert config is None
    assert any(message in m for m in messages(problems)), messages(problems)
    assert all(p.line == line_of(text, "health:") for p in problems if p.severity == "error")


def test_admission_defaults() -> None:
    config = load_ok(BASE, S)
    assert (config.auth_failures, config.auth_window, config.tracked_clients, config.max_sessions) == (
        10,
        60.0,
        100_000,
        10_000,
    )
    route = config.routes[0]
    assert route.origins is None
    assert route.max_sessions is None
    assert route.duplicate_agent == "replace"
    assert route.compression is False
    assert route.query_token is False


def test_admission_keys() -> None:
    text = BASE.replace(
        "    auth: e",
        "    auth: e\n"
        "    origins: [HTTPS://App.Example.com:443, 'http://localhost:3000']\n"
        "    max_sessions: 500\n"
        "    duplicate_agent: reject\n"
        "    compression: true\n"
        "    query_token: true",
    )
    text += "limits: {auth_failures: 5, auth_window: 2m, tracked_clients: 1000, max_sessions: 2000}\n"
    config = load_ok(text, S)
    assert (config.auth_failures, config.auth_window, config.tracked_clients, config.max_sessions) == (
        5,
        120.0,
        1000,
        2000,
    )
    route = config.routes[0]
    assert route.origins == frozenset({"https://app.example.com", "http://localhost:3000"})  # RFC 6454 form
    assert route.max_sessions == 500
    assert route.duplicate_agent == "reject"
    assert route.compression is True
    assert route.query_token is True


def test_shipped_admission_settings_are_the_defaults() -> None:
    config = load_ok(SHIPPED)
    assert (config.auth_failures, config.auth_window, config.max_sessions) == (10, 60.0, 10_000)
    edge = config.routes[0]
    assert (edge.duplicate_agent, edge.origins, edge.max_sessions, edge.compression) == ("replace", None, None, False)


def test_client_ip_header() -> None:
    assert load_ok(SHIPPED).client_ip_header is None  # CLIENT_IP_HEADER unset: not read at all
    assert load_ok(SHIPPED, {**ENV, "CLIENT_IP_HEADER": "X-Real-IP"}).client_ip_header == "X-Real-IP"
    config, problems = load_config(SHIPPED, env={**ENV, "CLIENT_IP_HEADER": "X Real IP"})
    assert config is None
    assert messages(problems) == [
        f"routes.yaml:{line_of(SHIPPED, 'client_ip_header')}: error: "
        "listen.client_ip_header: 'X Real IP' is not a valid header name"
    ]


def test_an_upstream_no_route_uses_is_a_warning() -> None:
    text = SHIPPED.replace("upstreams:\n", "upstreams:\n  staged:\n    url: http://10.0.0.9:8000\n", 1)
    config, problems = load_config(text, env=ENV)
    assert config is not None
    assert messages(problems) == [
        f"routes.yaml:{line_of(text, 'http://10.0.0.9:8000')}: warning: upstreams.staged: not used by any route "
        "(and not probed by the readiness check)"
    ]
