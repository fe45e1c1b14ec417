"""The ``jwt`` part of an auth policy in routes.yaml: every problem at its file:line, the
defaults, the secrets kept out of every message and repr; and the agent id pattern's
bound and its backtracking warning. No I/O."""

from __future__ import annotations

import pickle

import pytest

from sidecar.auth import Admission, resolve_agent_id
from sidecar.config import AgentIdRule, Config, load_config
from sidecar.config.model import JwtPolicy
from sidecar.config.patterns import max_length, nested_quantifier
from sidecar.reasons import Reason

from .issuer import JWT_SECRET, JWT_SECRET_PREVIOUS

ENV = {"JWT_SECRET": JWT_SECRET, "EDGE_SECRET": "shared-secret-0123456789", "JWKS_URL": "https://issuer.test/jwks"}


def policy_yaml(jwt: str, *, bearer: bool = False, agent_id: str = "{}") -> str:
    """Line 4 is the ``jwt:`` key; ``jwt`` is its mapping's lines (6-space indent)."""
    return (
        'upstreams: {b: {url: "http://127.0.0.1:1"}}\n'
        "auth:\n"
        "  e:\n"
        "    jwt:\n" + jwt + ('    bearer: ["${EDGE_SECRET}"]\n' if bearer else "") + f"    agent_id: {agent_id}\n"
        "routes:\n"
        "  - {name: r, type: websocket, paths: [/x], upstream: b, auth: e}\n"
    )


def load(text: str, env: dict[str, str] | None = None, strict: bool = True) -> tuple[Config | None, list[str]]:
    config, problems = load_config(text, env=ENV if env is None else env, strict=strict)
    return config, [str(p) for p in problems]


def jwt_of(config: Config | None) -> JwtPolicy:
    assert config is not None
    policy = config.auth["e"].jwt
    assert policy is not None
    return policy


def test_the_issues_example_loads_with_its_defaults() -> None:
    config, problems = load(
        policy_yaml(
            '      secrets: ["${JWT_SECRET}", "${JWT_SECRET_PREVIOUS:-}"]\n'
            "      jwks_url: ${JWKS_URL:-}\n"
            "      algorithms: [HS256, RS256, ES256, EdDSA]\n"
            "      issuer: https://issuer.test\n"
            "      audience: sidecar\n"
            "      agent_claim: sub\n"
            "      leeway: 30s\n"
            "      on_expiry: close\n",
            bearer=True,
        ),
        {**ENV, "JWT_SECRET_PREVIOUS": JWT_SECRET_PREVIOUS},
    )
    # Mixing HMAC with a JWKS is allowed, and said.
    assert problems == [
        "routes.yaml:7: warning: auth.e.jwt.algorithms: HMAC (HS256) beside a jwks_url: an HS token is only "
        "ever checked against the secrets, never a JWKS key, but whoever holds a secret can sign a token for any "
        "agent without the issuer; prefer one kind of key per policy"
    ]
    policy = jwt_of(config)
    assert policy == JwtPolicy(
        secrets=(JWT_SECRET.encode(), JWT_SECRET_PREVIOUS.encode()),
        jwks_url="https://issuer.test/jwks",
        algorithms=("HS256", "RS256", "ES256", "EdDSA"),
        issuer="https://issuer.test",
        audience="sidecar",
        agent_claim="sub",
        leeway=30.0,
        on_expiry="close",
    )


@pytest.mark.parametrize(
    ("jwt", "algorithms"),
    [
        ('      secrets: ["${JWT_SECRET}"]\n', ("HS256",)),
        ("      jwks_url: ${JWKS_URL}\n", ("RS256", "ES256", "EdDSA")),
    ],
    ids=["secrets", "jwks"],
)
def test_without_algorithms_a_policy_accepts_what_its_keys_verify(jwt: str, algorithms: tuple[str, ...]) -> None:
    config, problems = load(policy_yaml(jwt))
    assert problems == []
    policy = jwt_of(config)
    assert (policy.algorithms, policy.leeway, policy.on_expiry, policy.agent_claim) == (
        algorithms,
        30.0,
        "close",
        "sub",
    )


def test_bearer_is_optional_beside_jwt_but_one_of_them_is_needed() -> None:
    config, problems = load(policy_yaml('      secrets: ["${JWT_SECRET}"]\n'))
    assert config is not None and config.auth["e"].secret_digests == ()
    _, problems = load(policy_yaml("").replace("    jwt:\n", ""))
    assert "routes.yaml:4: error: auth.e: missing 'bearer' (the list of accepted secrets) or 'jwt' (signed tokens)" in (
        problems
    )


MISTAKES = [
    ("empty", "      jwks_url: ${NOPE:-}\n", "5: error: auth.e.jwt: no key is set (secrets empty and no jwks_url)"),
    (
        "short-secret",
        "      secrets: ['${SHORT}']\n",
        "5: error: auth.e.jwt.secrets: a secret is shorter than 32 bytes",
    ),
    (
        "alg-none",
        "      secrets: ['${JWT_SECRET}']\n      algorithms: [none]\n",
        "6: error: auth.e.jwt.algorithms: 'none'",
    ),
    (
        "alg-unknown",
        "      secrets: ['${JWT_SECRET}']\n      algorithms: [HS256, XS1]\n",
        "6: error: auth.e.jwt.algorithms: unknown algorithm 'XS1'",
    ),
    (
        "http-public",
        "      jwks_url: http://93.184.216.34/jwks\n",
        "5: error: auth.e.jwt.jwks_url: http:// is allowed only to a loopback or private address",
    ),
    ("ftp", "      jwks_url: ftp://issuer.test/jwks\n", "5: error: auth.e.jwt.jwks_url: must be an https:// URL"),
    (
        "credentials",
        "      jwks_url: https://u:p@issuer.test/jwks\n",
        "5: error: auth.e.jwt.jwks_url: must not carry credentials",
    ),
    ("bad-port", "      jwks_url: https://issuer.test:99999/\n", "5: error: auth.e.jwt.jwks_url: not a valid URL"),
    (
        "on-expiry",
        "      secrets: ['${JWT_SECRET}']\n      on_expiry: later\n",
        "6: error: auth.e.jwt.on_expiry: expected close or ignore, got 'later'",
    ),
    (
        "leeway",
        "      secrets: ['${JWT_SECRET}']\n      leeway: soon\n",
        "6: error: auth.e.jwt.leeway: expected a duration such as 25s or 500ms, or off, got 'soon'",
    ),
    (
        "claim",
        "      secrets: ['${JWT_SECRET}']\n      agent_claim: ''\n",
        "6: error: auth.e.jwt.agent_claim: must name",
    ),
    ("unknown-key", "      secrets: ['${JWT_SECRET}']\n      kid: x\n", "6: error: auth.e.jwt: unknown key 'kid'"),
    *(
        (
            f"claim-{claim}",
            f"      secrets: ['${{JWT_SECRET}}']\n      agent_claim: {claim}\n",
            f"6: error: auth.e.jwt.agent_claim: {claim!r} is a registered claim (RFC 7519 section 4.1)",
        )
        for claim in ("iss", "aud", "exp", "nbf", "iat", "jti")
    ),
]


@pytest.mark.parametrize(("jwt", "expected"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_each_mistake_is_an_error_at_its_line(jwt: str, expected: str) -> None:
    config, problems = load(policy_yaml(jwt), {**ENV, "SHORT": "x" * 31})
    errors = [p for p in problems if ": error: " in p]
    assert config is None
    assert len(errors) == 1 and errors[0].startswith(f"routes.yaml:{expected}"), errors


@pytest.mark.parametrize(
    ("algorithms", "length", "need"),
    [("HS384", 47, 48), ("HS512", 63, 64), ("HS256, HS512", 48, 64)],
    ids=["hs384", "hs512", "the-longest-listed"],
)
def test_a_secret_shorter_than_its_algorithms_hash_is_an_error(algorithms: str, length: int, need: int) -> None:
    secret = "k" * length
    config, problems = load(
        policy_yaml(f"      secrets: ['${{JWT_SECRET}}']\n      algorithms: [{algorithms}]\n"),
        {**ENV, "JWT_SECRET": secret},
    )
    assert config is None
    longest = algorithms.split(", ")[-1]
    assert problems == [
        f"routes.yaml:5: error: auth.e.jwt.secrets: a secret is shorter than {need} bytes, too short for "
        f"{longest} (RFC 7518 section 3.2); generate one with 'openssl rand -base64 48'"
    ]
    assert not any(secret in p for p in problems)
    # Long enough for every algorithm listed: no problem.
    config, problems = load(
        policy_yaml(f"      secrets: ['${{JWT_SECRET}}']\n      algorithms: [{algorithms}]\n"),
        {**ENV, "JWT_SECRET": "k" * need},
    )
    assert config is not None and problems == []


def test_a_jwt_secret_that_is_also_a_bearer_secret_is_an_error() -> None:
    env = {**ENV, "EDGE_SECRET": JWT_SECRET}
    config, problems = load(policy_yaml('      secrets: ["${JWT_SECRET}"]\n', bearer=True), env)
    assert config is None
    assert (
        "routes.yaml:5: error: auth.e.jwt.secrets: a secret is also one of the policy's bearer secrets: every "
        "device holding the shared secret could sign a token for any agent; give the JWT key its own value"
    ) in problems


@pytest.mark.parametrize(
    ("jwt", "warning"),
    [
        (
            "      jwks_url: ${JWKS_URL}\n      algorithms: [RS256, HS256]\n",
            "6: warning: auth.e.jwt.algorithms: HS256 listed but no secrets: such tokens are refused",
        ),
        (
            "      secrets: ['${JWT_SECRET}']\n      algorithms: [HS256, ES256]\n",
            "6: warning: auth.e.jwt.algorithms: ES256 listed but no jwks_url: such tokens are refused",
        ),
        ("      secrets: [sekrit-written-in-the-file-0123456789]\n", "5: warning: auth.e.jwt.secrets: a secret is"),
    ],
    ids=["hs-without-secrets", "es-without-jwks", "literal-secret"],
)
def test_warnings(jwt: str, warning: str) -> None:
    config, problems = load(policy_yaml(jwt))
    assert config is not None
    assert any(p.startswith(f"routes.yaml:{warning}") for p in problems), problems


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/jwks", "http://10.0.0.7/jwks", "http://[fd12::1]/jwks"])
def test_plain_http_to_a_loopback_or_private_address_is_allowed(url: str) -> None:
    config, problems = load(policy_yaml(f"      jwks_url: {url}\n"))
    assert problems == [] and jwt_of(config).jwks_url == url


def test_a_plain_http_name_is_allowed_and_checked_when_fetched() -> None:
    config, _ = load(policy_yaml("      jwks_url: http://issuer.railway.internal/jwks\n"))
    assert jwt_of(config).jwks_url == "http://issuer.railway.internal/jwks"


# --- secrets stay secret -----------------------------------------------------------------


def test_jwt_secrets_are_redacted_from_every_problem_and_absent_from_repr() -> None:
    text = policy_yaml('      secrets: ["${JWT_SECRET}"]\n', agent_id="{header: '${JWT_SECRET}'}")
    _, problems = load(text)
    assert problems and not [p for p in problems if JWT_SECRET in p]
    assert "is a secret" in " ".join(problems)  # a jwt secret's variable used elsewhere is refused
    config, _ = load(policy_yaml('      secrets: ["${JWT_SECRET}"]\n'))
    assert config is not None
    for view in (repr(config), str(config), repr(config.auth["e"]), repr(jwt_of(config))):
        assert JWT_SECRET not in view
    assert jwt_of(config).secrets == (JWT_SECRET.encode(),)  # held only as verification needs it
    assert JWT_SECRET.encode() in pickle.dumps(config)  # (a config is never pickled or written out)


def test_a_short_secret_is_never_quoted() -> None:
    short = "tiny-secret-value"
    _, problems = load(policy_yaml("      secrets: ['${SHORT}']\n"), {**ENV, "SHORT": short})
    assert [p for p in problems if "shorter than 32 bytes" in p]
    assert not [p for p in problems if short in p]


# --- the agent id pattern ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "longest", "bounded"),
    [
        ("[A-Za-z0-9_.-]{1,128}", 128, True),
        (r"edge_\d{1,20}", 25, True),
        ("[a-z]+", 256, False),
        (".*", 256, False),
        ("x{1,100000}", 8190, True),
    ],
)
def test_the_longest_id_a_pattern_matches(pattern: str, longest: int, bounded: bool) -> None:
    assert max_length(pattern) == (longest, bounded)


@pytest.mark.parametrize(
    ("pattern", "nested"),
    [
        ("(a+)+", True),
        (r"(\w+\s?)*", True),
        ("(a{1,3})+", True),
        ("(x|(a+))+", True),
        ("(?:a|b+)*", True),
        ("(?=(a+)+)b", True),
        ("[A-Za-z0-9_.-]{1,128}", False),
        ("(ab)+", False),
        ("(a|b)+", False),
        ("(a++)+", False),  # possessive: never backtracks
        ("(?>a+)+", False),  # atomic
        ("a+b+c+", False),
    ],
)
def test_nested_quantifiers_are_found(pattern: str, nested: bool) -> None:
    assert nested_quantifier(pattern) is nested


def test_check_warns_of_an_unbounded_or_backtracking_pattern_and_bounds_the_input() -> None:
    config, problems = load(policy_yaml('      secrets: ["${JWT_SECRET}"]\n', agent_id=r"{pattern: '(\w+\.?)+'}"))
    assert config is not None
    assert problems == [
        "routes.yaml:6: warning: auth.e.agent_id.pattern: matches ids of any length; ids over 256 characters are "
        "refused (bound it: {1,128})",
        "routes.yaml:6: warning: auth.e.agent_id.pattern: a repeated group contains a repeat (such as (a+)+): "
        "backtracking on an id that almost matches can take exponential time (input is cut at 256 characters); "
        "write it without nesting",
    ]
    rule = config.auth["e"].agent_id
    assert rule is not None and rule.max_length == 256


def test_the_default_pattern_bounds_ids_at_128() -> None:
    config, problems = load(policy_yaml('      secrets: ["${JWT_SECRET}"]\n', agent_id="{pattern: 'edge_[0-9]{1,6}'}"))
    assert problems == []
    assert config is not None and config.auth["e"].agent_id is not None
    assert config.auth["e"].agent_id.max_length == 11


class Recording:
    """A stand-in for a compiled pattern that records the length of what it is run on."""

    pattern = "[a-z]+"

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def fullmatch(self, value: str) -> bool:
        self.lengths.append(len(value))
        return True


def test_an_id_longer_than_the_pattern_allows_never_reaches_the_pattern() -> None:
    """An operator's pattern runs on attacker input: never on more than the id's own maximum."""
    pattern = Recording()
    rule = AgentIdRule(pattern=pattern, max_length=128)  # type: ignore[arg-type]
    assert resolve_agent_id(["a" * 8000], [], rule) == Admission(None, Reason.INVALID_AGENT_ID)
    assert resolve_agent_id([], ["b" * 129], rule) == Admission(None, Reason.INVALID_AGENT_ID)
    assert resolve_agent_id(["c" * 128], [], rule) == Admission("c" * 128)
    assert pattern.lengths == [128]
