"""Properties of config loading (hypothesis): no input crashes it, every problem has a line,
no secret from the environment is ever quoted. No sockets.

Profiles: see tests/conftest.py (HYPOTHESIS_PROFILE=long for a long run).
"""

from __future__ import annotations

import re
import string

import yaml
from hypothesis import event, example, given
from hypothesis import strategies as st

from sidecar.config import Config, Problem, load_config
from sidecar.config.redaction import LONG_SECRET

from .conftest import ROOT

SHIPPED = (ROOT / "routes.yaml").read_text()
B64CHARS = string.ascii_letters + string.digits + "-._~+/"

# --- strategies ---------------------------------------------------------------------

# Secrets: distinctive (so that finding one in a message means it leaked, not that the
# file happened to contain it), mostly valid Bearer tokens, sometimes not.
secrets = st.builds(
    lambda body, tail: "zQ" + body + tail,
    st.text(B64CHARS, min_size=10, max_size=30),
    st.sampled_from(["", "", "", "==", " x", "\n", "!", "\u00e9", "${X}", "$$"]),
)


@st.composite
def environments(draw: st.DrawFn) -> dict[str, str]:
    env = {"EDGE_SECRET": draw(secrets)}
    if draw(st.booleans()):
        env["EDGE_SECRET_PREVIOUS"] = draw(secrets)
    for name in draw(st.lists(st.sampled_from(["UPSTREAM_URL", "PORT", "LOG_LEVEL", "TRUSTED_PROXIES", "X"]))):
        env[name] = draw(st.one_of(scalar_texts, secrets))
    return env


KEYS = [
    "listen", "metrics", "log", "upstreams", "auth", "routes", "host", "port", "header_timeout", "close_timeout",
    "stall_timeout", "trusted_proxies", "level", "format", "url", "connect_timeout", "read_timeout", "bearer",
    "agent_id", "header", "query", "pattern", "required", "forward_header", "name", "type", "paths", "prefix",
    "upstream", "upstream_path", "forward_authorization", "max_message_size", "backend", "edge", "<<",
]  # fmt: skip
SCALARS = [
    "${EDGE_SECRET}", "${EDGE_SECRET_PREVIOUS:-}", "${EDGE_SECRET:-x}", "${UNSET}", "${X:-d}", "$$", "${", "${1}",
    "/edge/ws", "/", "/a/", "//x", "/%2e", "http://127.0.0.1:1", "https://h/base", "ftp://x", "http://[::1",
    "10s", "500ms", "2m", "0s", "-1", "4MiB", "1e9", "99999999999999999999", "websocket", "http", "edge",
    "backend", "X-Edge-Agent-Id", "Host", "10.0.0.0/8", "not-an-ip", "true", "no", "json", "debug",
    "[A-Za-z]+", "(", "a{4294967296}", "\u00e9", "",
]  # fmt: skip
scalar_texts = st.one_of(st.sampled_from(SCALARS), st.text(max_size=12))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), scalar_texts)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
documents = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6), max_leaves=40
)


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    """A YAML document built from dicts, lists and scalars, biased toward routes.yaml's keys."""
    top = draw(st.one_of(st.dictionaries(st.sampled_from(KEYS[:6]), documents, max_size=6), documents))
    return yaml.safe_dump(top, default_flow_style=draw(st.sampled_from([None, True, False])), allow_unicode=True)


@st.composite
def shipped_mutants(draw: st.DrawFn) -> str:
    """The shipped routes.yaml with a few lines deleted, duplicated, re-indented or given
    another line's value, a random value or a random key."""
    lines = SHIPPED.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "swap", "value", "key", "indent", "truncate"]))
        line = lines[at]
        key, colon, _ = line.partition(":")
        if action == "delete":
            del lines[at]
        elif action == "duplicate":
            lines.insert(at, line)
        elif action == "swap" and colon:
            other = draw(st.sampled_from([x for x in lines if ":" in x]))
            lines[at] = key + ":" + other.partition(":")[2]
        elif action == "value" and colon:
            lines[at] = key + ": " + draw(scalar_texts)
        elif action == "key":
            indent = " " * draw(st.sampled_from([0, 2, 4, 6, 8]))
            lines.insert(at, f"{indent}{draw(keys)}: {draw(scalar_texts)}")
        elif action == "indent":
            lines[at] = " " * draw(st.integers(0, 3)) + line
        elif action == "truncate":
            lines[at] = line[: draw(st.integers(0, len(line)))]
        if not lines:
            break
    return "\n".join(lines) + draw(st.sampled_from(["\n", ""]))


YAMLISH = string.ascii_letters[:6] + string.digits[:3] + "{}[]:,-#&*!|>'\"%@` \n\t$/.\\?<=\x00\x85\u2028\ufeff\udc80"
texts = st.one_of(st.text(st.characters(exclude_categories=())), st.text(YAMLISH))
any_config = st.one_of(texts, yaml_texts(), shipped_mutants())


# --- the properties --------------------------------------------------------------------


def yaml_lines(text: str) -> int:
    """Lines as PyYAML counts them (its marks break at \\r\\n, \\r, \\n, NEL, LS and PS)."""
    return len(re.split(r"\r\n|[\r\n\x85\u2028\u2029]", text))


def bearer_variables(text: str) -> set[str]:
    """The variables the file uses as secrets: those named in an ``auth.<name>.bearer`` entry
    (the first of duplicate keys, as the loader reads them). A variable the file never uses
    as a secret is not known to hold one."""
    try:
        root = yaml.compose(text)
    except (yaml.YAMLError, RecursionError):
        return set()

    def get(node: yaml.Node | None, key: str) -> yaml.Node | None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == key:
                    return v  # type: ignore[no-any-return]
        return None

    names: set[str] = set()
    auth = get(root, "auth")
    for _, policy in auth.value if isinstance(auth, yaml.MappingNode) else []:
        bearer = get(policy, "bearer")
        items = bearer.value if isinstance(bearer, yaml.SequenceNode) else [bearer]
        for item in items:
            if isinstance(item, yaml.ScalarNode):
                refs = re.finditer(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*))", str(item.value))  # '$$' is a '$'
                names.update(m.group(1) for m in refs if m.group(1))
    return names


def check(text: str, env: dict[str, str], strict: bool) -> tuple[Config | None, list[Problem]]:
    config, problems = load_config(text, env=env, strict=strict)  # never raises
    errors = [p for p in problems if p.severity == "error"]
    event("loaded" if config else f"refused, {min(len(errors), 3)}+ errors")
    if config is None:
        assert errors, "refused without an error"
    else:
        assert not errors, "a config despite errors"
    for problem in problems:
        assert problem.file == "routes.yaml"
        assert problem.severity in ("error", "warning")
        if problem.message == "the file is empty":  # the one problem no line can carry
            assert problem.line == 0 and yaml.compose(text) is None
        else:
            assert 1 <= problem.line <= yaml_lines(text), problem
        for name, secret in env.items():  # the secrets drawn (all 'zQ...'), wherever they went
            quoted = secret in problem.message or repr(secret)[1:-1] in problem.message
            # A secret shorter than redaction.LONG_SECRET is masked where it is a variable's whole
            # value, not inside a longer one (there it cannot be told from a coincidence, and
            # masking would say where it is: tests/test_redaction.py); it is a warning of its own.
            whole = repr(secret) in problem.message or f"'{secret}'" in problem.message
            if secret.startswith("zQ") and secret not in text and quoted and (len(secret) >= LONG_SECRET or whole):
                # A leak if the file uses the variable as a secret (checked only now: composing is slow).
                assert name not in bearer_variables(text), problem
    if config is not None:
        shown = repr(config)
        assert not [s for s in env.values() if s.startswith("zQ") and s in shown]
    return config, problems


@given(any_config, environments(), st.booleans())
@example("\x00", {"EDGE_SECRET": "zQ0123456789"}, True)  # YAML refuses the character: at line 1
@example("a: 1\nb: \x07\n", {"EDGE_SECRET": "zQ0123456789"}, True)  # ... at line 2
@example("listen: {port: 1}\n", {"EDGE_SECRET": "zQ0123456789"}, True)  # no upstreams: at line 1
@example(SHIPPED.replace("${PORT:-8080}", "${EDGE_SECRET}"), {"EDGE_SECRET": "zQ0123456789abc"}, True)
@example(SHIPPED.replace("${UPSTREAM_URL:-", "${EDGE_SECRET:-"), {"EDGE_SECRET": "zQ0123:45"}, True)
@example(SHIPPED.replace("X-Edge-Agent-Id  #", "${EDGE_SECRET}  #"), {"EDGE_SECRET": "zQ0123456789abc"}, False)
@example(  # the policy naming the secret is a duplicate key, skipped by the loader
    SHIPPED.replace("${PORT:-8080}", "${EDGE_SECRET}").replace("  edge:\n", "  edge:\n  edge:\n", 1),
    {"EDGE_SECRET": "zQ0123456789abc"},
    False,
)
@example(SHIPPED.replace("'[A-Za-z0-9_.-]{1,128}'", "'a{4294967296}'"), {"EDGE_SECRET": "zQ0123456789"}, True)
@example(SHIPPED.replace("'[A-Za-z0-9_.-]{1,128}'", "'" + "(" * 2000 + ")" * 2000 + "'"), {}, False)
@example("a: " + "[" * 2000 + "]" * 2000 + "\n", {}, True)  # deeper than PyYAML's recursion
def test_load_config_never_crashes_and_every_problem_has_a_line(text: str, env: dict[str, str], strict: bool) -> None:
    check(text, env, strict)


@given(shipped_mutants(), environments(), st.booleans())
def test_shipped_mutants_keep_secrets_out_of_problems(text: str, env: dict[str, str], strict: bool) -> None:
    check(text, env, strict)
