"""Secrets and config problems: no problem quotes a secret, and no other problem's text
changes because of what the secret is (sidecar/config/redaction.py). No I/O."""

from __future__ import annotations

import pytest

from sidecar.config import Problem, load_config

from .conftest import ROOT

SHIPPED = (ROOT / "routes.yaml").read_text()
LONG = "Zq7f0c2b9e4d1a8b6c3e5f7a9b1d3e5f7"  # a long random secret: it appears in no message

# A file and an environment with a problem in nearly every field that quotes its value, and
# words that short secrets could be: 'expected', 'info', 'e', '0'.
BROKEN = (
    SHIPPED.replace("type: http\n    paths: [/edge/message]", "type: hhtp\n    paths: [/edge/message]")
    .replace("duplicate_agent: replace", "duplicate_agent: sometimes")
    .replace("forward_header: X-Edge-Agent-Id", "forward_header: 'Bad Header'")
    .replace("upstream: backend\n    auth: edge\n    forward_authorization: true\n\n", "upstream: nowhere\n\n")
)
BROKEN_ENV = {
    "PORT": "eighty",
    "LOG_LEVEL": "verbose",
    "LOG_FORMAT": "xml",
    "TRUSTED_PROXIES": "10.0.0.0/8, not-an-ip",
    "CLIENT_IP_HEADER": "X Real IP",
    "DRAIN_TIMEOUT": "soon",
}


def problems_with(secret: str, text: str = BROKEN, **env: str) -> list[str]:
    _, problems = load_config(text, env={**BROKEN_ENV, "EDGE_SECRET": secret, **env}, strict=False)
    return [str(p) for p in problems if not _short_secret_warning(p)]


def _short_secret_warning(problem: Problem) -> bool:
    return "is shorter than 16 characters" in problem.message


def test_the_broken_file_quotes_many_values() -> None:
    shown = problems_with(LONG)
    for quoted in ("'eighty'", "'verbose'", "'xml'", "'not-an-ip'", "'X Real IP'", "'soon'", "'hhtp'", "'sometimes'"):
        assert any(quoted in line for line in shown), (quoted, shown)
    assert any("no upstream named 'nowhere'" in line for line in shown)
    assert any("expected debug, info, warning or error" in line for line in shown)


@pytest.mark.parametrize("secret", ["e", "info", "expected", "0", "a", "-", "edge", "json", "nowhere", "hhtp"])
def test_a_short_secret_leaves_every_other_problem_as_a_long_one_does(secret: str) -> None:
    """Found trying it: a one-letter secret garbled every message ('e<secret>pected'), and
    a secret equal to a word ('info') was revealed by where the mask landed. None of these
    problems quotes the secret: 'nowhere' and 'hhtp' are written in the file, not read
    from a secret, and masking them would say what the secret is."""
    assert problems_with(secret) == problems_with(LONG)


def test_a_short_secret_is_a_warning_of_its_own() -> None:
    _, problems = load_config(SHIPPED, env={"EDGE_SECRET": "hunter2"}, strict=False)
    line = next(n for n, text in enumerate(SHIPPED.splitlines(), 1) if "- ${EDGE_SECRET}" in text)
    assert [str(p) for p in problems] == [
        f"routes.yaml:{line}: warning: auth.edge.bearer: EDGE_SECRET is shorter than 16 characters, "
        "easy to guess; use a long random one (openssl rand -hex 32)"
    ]
    _, problems = load_config(SHIPPED, env={"EDGE_SECRET": "x" * 16}, strict=False)
    assert problems == []


def test_a_short_previous_secret_is_named() -> None:
    _, problems = load_config(SHIPPED, env={"EDGE_SECRET": LONG, "EDGE_SECRET_PREVIOUS": "old"}, strict=False)
    assert [p.message.split(" is ")[0] for p in problems] == ["auth.edge.bearer: EDGE_SECRET_PREVIOUS"]
    assert "old" not in str(problems).replace("openssl", "")


@pytest.mark.parametrize("secret", [LONG, "e", "info"])
def test_another_variable_that_holds_the_secret_is_masked_where_it_is_quoted(secret: str) -> None:
    # LOG_FORMAT is a copy of the secret (a shared variable referenced twice, say).
    lines = problems_with(secret, LOG_FORMAT=secret)
    assert [line.partition(": error: ")[2] for line in lines if "log.format" in line] == [
        "log.format: expected json or text, got '<secret>'"
    ]
    others = [line for line in lines if "log.format" not in line]
    assert others == [line for line in problems_with(LONG) if "log.format" not in line]


def test_a_long_secret_inside_another_value_is_masked() -> None:
    text = SHIPPED.replace("paths: [/edge/message]", "paths: ['/edge/${OTHER}//']")
    _, problems = load_config(text, env={"EDGE_SECRET": LONG, "OTHER": LONG}, strict=False)
    (problem,) = problems
    assert problem.message == (
        "routes[1] (edge-message).paths: '<secret>' is not a canonical path (empty segment ('//'))"
    )


def test_a_problem_about_a_secret_field_never_quotes_it() -> None:
    for secret in ("has space", "e!", "a" * 40 + " "):
        _, problems = load_config(SHIPPED, env={"EDGE_SECRET": secret}, strict=False)
        (problem,) = problems
        assert problem.message == (
            "auth.edge.bearer: a secret has characters a Bearer token cannot carry (RFC 6750 section 2.1)"
        )


def test_the_policy_knows_the_variables_its_bearer_list_names() -> None:
    config, _ = load_config(SHIPPED, env={"EDGE_SECRET": LONG})
    assert config is not None
    assert config.auth["edge"].secret_variables == ("EDGE_SECRET", "EDGE_SECRET_PREVIOUS")
    assert LONG not in repr(config)
