"""The ``state`` section (where the fleet's shared state lives), the replica id, and the
fleet's key layout: pure tables, no Redis. A Redis URL's password appears in no problem,
no repr and no 'sidecar check' output."""

from __future__ import annotations

import subprocess

import pytest

from sidecar.config import Config, StateConfig, load_config
from sidecar.config.model import display_url
from sidecar.fleet.layout import Holder, Names, decode, encode, lease_holder, lease_value
from sidecar.replica import replica_id

from .conftest import ROOT, SIDECAR, process_env

SHIPPED = (ROOT / "routes.yaml").read_text()
ENV = {"EDGE_SECRET": "abc-0123456789abcdef"}  # 16 characters at least: no warning
PASSWORD = "s3cr%2Ft-pass"  # percent-encoded '/' in it: both spellings are secrets
PREFIX_RULE = "state.key_prefix: 1 to 64 printable characters without spaces, such as 'sidecar:'"
KEYS = "key_prefix, lease_ttl, redis, timeout"
URL = f"redis://default:{PASSWORD}@redis.railway.internal:6379"


def load(state: str, **env: str) -> tuple[Config | None, list[str]]:
    config, problems = load_config(_with_state(state), env={**ENV, **env})
    return config, [str(p) for p in problems]


def _with_state(state: str) -> str:
    start = SHIPPED.index("state:")
    end = SHIPPED.index("\n\n", start)
    return SHIPPED[:start] + state + SHIPPED[end:]


def test_the_shipped_file_is_in_process_unless_redis_url_is_set() -> None:
    config, problems = load_config(SHIPPED, env=ENV)
    assert config is not None and problems == []
    assert config.state == StateConfig() == StateConfig("", "sidecar:", 30.0, 0.25)
    config, problems = load_config(SHIPPED, env={**ENV, "REDIS_URL": URL})
    assert config is not None and problems == []
    assert (config.state.redis, config.state.key_prefix, config.state.lease_ttl, config.state.timeout) == (
        URL,
        "sidecar:",
        30.0,
        0.25,
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379",
        "redis://127.0.0.1:6379/0",
        "redis://:pw@127.0.0.1/3",
        "rediss://default:pw@redis.example.com:6380",
        "unix:///run/redis/redis.sock",
        "unix:///run/redis/redis.sock?db=2&password=pw",
        "redis://h?ssl_cert_reqs=none&db=1",
        "redis://[::1]:6379",
    ],
)
def test_redis_urls_accepted(url: str) -> None:
    config, problems = load('state: {redis: "${REDIS_URL}"}', REDIS_URL=url)
    assert problems == []
    assert config is not None and config.state.redis == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://:pw@host", "must start with redis://, rediss:// or unix://"),
        ("redis://:pw@host:99999", "is not a valid URL"),
        ("redis://:pw@/0", "has no host"),
        ("redis://:pw@host/cache", "the path is the database number (such as /0), nothing else"),
        ("unix://", "a unix:// URL names the socket's path"),
        ("redis://:pw@host#frag", "must not have a fragment"),
        ("redis://:pw@host?timeout=1", "unknown query parameter 'timeout'"),
        ("redis://:pw@host?db=x", "the db parameter is a database number"),
    ],
)
def test_bad_redis_urls_are_errors_that_never_quote_the_url(url: str, message: str) -> None:
    config, problems = load('state: {redis: "${REDIS_URL}"}', REDIS_URL=url)
    assert config is None
    (problem,) = problems
    assert problem.startswith("routes.yaml:") and "error: state.redis: " + message in problem
    assert "pw" not in problem


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("state: {lease_ttl: 500ms}", "state.lease_ttl: must be at least 1s"),
        ("state: {lease_ttl: 3s, timeout: 2s}", "state.timeout: must be at most a third of state.lease_ttl"),
        (
            "state: {key_prefix: 'a b'}",
            "state.key_prefix: 1 to 64 printable characters without spaces, such as 'sidecar:'",
        ),
        (
            "state: {key_prefix: ''}",
            "state.key_prefix: 1 to 64 printable characters without spaces, such as 'sidecar:'",
        ),
        ("state: {timeout: fast}", "state.timeout: expected a duration such as 10s, 500ms or 2m, got 'fast'"),
        (
            "state: {redis_url: x}",
            "state: unknown key 'redis_url': did you mean 'redis'? (expected one of: " + KEYS + ")",
        ),
        ("state: redis://h", "state: expected a mapping (key: value), got a value"),
    ],
)
def test_bad_state_settings(state: str, message: str) -> None:
    config, problems = load(state)
    assert config is None
    assert [p.split(": error: ", 1)[1] for p in problems] == [message]


def test_state_settings() -> None:
    config, problems = load("state: {redis: 'redis://h', key_prefix: 'edge:', lease_ttl: 10s, timeout: 100ms}")
    assert problems == []
    assert config is not None and config.state == StateConfig("redis://h", "edge:", 10.0, 0.1)


def test_a_password_written_in_the_file_is_a_warning_and_never_quoted() -> None:
    config, problems = load(f"state: {{redis: '{URL}'}}")
    assert config is not None
    (problem,) = problems
    assert "warning: state.redis: a password is written in the file; use ${REDIS_URL}" in problem
    assert PASSWORD not in problem


@pytest.mark.parametrize(
    "text",
    [
        # REDIS_URL quoted by another field's problem: redacted, as a bearer secret is.
        SHIPPED.replace("${PORT:-8080}", "${REDIS_URL}"),
        SHIPPED.replace("${LOG_LEVEL:-info}", "${REDIS_URL}"),
        SHIPPED.replace("${LOG_LEVEL:-info}", "/${REDIS_URL}/"),
    ],
)
def test_the_redis_password_is_in_no_problem(text: str) -> None:
    for url in (URL, URL + "/x", URL.replace("redis://", "http://")):
        _, problems = load_config(text, env={**ENV, "REDIS_URL": url})
        assert problems
        for problem in problems:
            assert PASSWORD not in str(problem) and "s3cr/t-pass" not in str(problem)


def test_the_redis_url_is_in_no_repr() -> None:
    config, _ = load_config(SHIPPED, env={**ENV, "REDIS_URL": URL})
    assert config is not None
    assert PASSWORD not in repr(config) and PASSWORD not in repr(config.state)
    assert config.state.display == "redis://default:<secret>@redis.railway.internal:6379"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://default:pw@h:6379/0", "redis://default:<secret>@h:6379/0"),
        ("redis://:p@ss@h", "redis://:<secret>@h"),
        ("rediss://user@h", "rediss://user@h"),
        ("unix:///run/r.sock?db=1&password=pw", "unix:///run/r.sock?db=1&password=<secret>"),
        ("", ""),
    ],
)
def test_display_url(url: str, shown: str) -> None:
    assert display_url(url) == shown


def test_check_names_the_state_without_its_password() -> None:
    env = process_env(EDGE_SECRET="abc", REDIS_URL=URL)
    result = subprocess.run(
        [*SIDECAR, "check", "routes.yaml"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "  state shared by the fleet in redis://default:<secret>@redis.railway.internal:6379 "
        "(keys sidecar:*, leases 30s)"
    )
    bad = process_env(EDGE_SECRET="abc", REDIS_URL=URL.replace("redis://", "memcached://"))
    result = subprocess.run(
        [*SIDECAR, "check", "routes.yaml"], capture_output=True, text=True, env=bad, cwd=ROOT, timeout=60
    )
    assert result.returncode == 2
    assert "error: state.redis: must start with redis://, rediss:// or unix://" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("env", "hostname", "pid", "expected"),
    [
        (
            {"RAILWAY_REPLICA_ID": "6a1f3c2e-0b5d-4f8e-9a7c-1d2e3f4a5b6c"},
            "h",
            7,
            "6a1f3c2e-0b5d-4f8e-9a7c-1d2e3f4a5b6c",
        ),
        ({}, "web-1", 4242, "web-1:4242"),
        ({"RAILWAY_REPLICA_ID": ""}, "web-1", 7, "web-1:7"),
        ({"RAILWAY_REPLICA_ID": " a b\n"}, "h", 7, "ab"),  # a label value and a channel name: no spaces
        ({"RAILWAY_REPLICA_ID": "x" * 500}, "h", 7, "x" * 128),
    ],
)
def test_replica_id(env: dict[str, str], hostname: str, pid: int, expected: str) -> None:
    assert replica_id(env, hostname, pid) == expected


def test_key_names_are_prefixed_and_never_collide() -> None:
    names = Names("sidecar:")
    assert names.lease("edge", "edge_1") == "sidecar:lease:edge:edge_1"
    # route 'a:b' with agent 'c' and route 'a' with agent 'b:c' are different leases
    assert names.lease("a:b", "c") != names.lease("a", "b:c")
    assert names.fails("2001:db8::/64") == "sidecar:fails:2001%3Adb8%3A%3A%2F64"
    assert names.blocked("10.0.0.1") == "sidecar:blocked:10.0.0.1"
    assert (names.fleet, names.replica("web-1:42")) == ("sidecar:fleet", "sidecar:replica:web-1%3A42")
    assert names.replica("web-1:42", "9f") == "sidecar:replica:web-1%3A42:9f"  # one process's own
    assert Names("other:").lease("edge", "edge_1") == "other:lease:edge:edge_1"


def test_lease_values_and_messages() -> None:
    value = lease_value("b", "0123", 7)
    assert value == '{"replica":"b","process":"0123","session":7}'
    assert lease_holder(value) == Holder("b", "0123")
    assert lease_holder('{"replica":"b","session":"x"}') == Holder("b", None)  # written by an older version
    assert lease_holder("not json") is None and lease_holder('["b"]') is None
    assert decode(encode("block", key="k", ms=5)) == {"op": "block", "key": "k", "ms": 5}
    assert decode(b"nope") is None and decode('{"no": "op"}') is None
