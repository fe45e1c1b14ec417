"""sidecar.tokens and sidecar.keys, without sockets: which key verifies which token, every
way a token fails and what the log is told, JWKS documents read as hostile input, minting."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sidecar.config.model import JwtPolicy
from sidecar.keys import MAX_DOCUMENT_BYTES, MAX_KEYS, KeySet, parse_jwks
from sidecar.reasons import Reason
from sidecar.tokens import Failed, Verified, looks_like_jwt, mint, parse_ttl, summary, verify

from .issuer import (
    AUDIENCE,
    ISSUER,
    JWT_SECRET,
    JWT_SECRET_PREVIOUS,
    Signer,
    claims,
    confused,
    ec_signer,
    ed_signer,
    hs256,
    hs256_raw,
    rsa_signer,
    signed,
    tampered,
    unsigned,
)

POLICY = JwtPolicy(
    secrets=(JWT_SECRET.encode(), JWT_SECRET_PREVIOUS.encode()),
    jwks_url="https://issuer.test/jwks",
    algorithms=("HS256", "RS256", "ES256", "EdDSA"),
    issuer=ISSUER,
    audience=AUDIENCE,
)
ASYMMETRIC_ONLY = replace(POLICY, secrets=(), algorithms=("RS256", "ES256", "HS256"))


def key_set(*signers: Signer) -> KeySet:
    keys, skipped = parse_jwks(json.dumps({"keys": [s.jwk for s in signers]}).encode())
    assert skipped == []
    return keys


KEYS = key_set(rsa_signer(), ec_signer(), ed_signer())


@pytest.mark.parametrize(
    "token",
    [
        lambda: hs256(claims("edge_1")),
        lambda: hs256(claims("edge_1"), key=JWT_SECRET_PREVIOUS),
        lambda: signed(rsa_signer(), claims("edge_1")),
        lambda: signed(ec_signer(), claims("edge_1")),
        lambda: signed(ed_signer(), claims("edge_1")),
        lambda: signed(ec_signer(), claims("edge_1"), kid=None),
        lambda: signed(rsa_signer(), claims("edge_1", aud=["other", AUDIENCE])),
    ],
    ids=["hs256", "hs256-previous", "rs256", "es256", "eddsa", "no-kid", "aud-list"],
)
def test_a_valid_token_names_its_agent_and_expiry(token: Any) -> None:
    payload = claims("edge_1")
    outcome = verify(token(), POLICY, KEYS)
    assert outcome == Verified("edge_1", float(payload["exp"]))


@pytest.mark.parametrize(
    ("token", "policy", "reason", "why", "refresh"),
    [
        (lambda: hs256(claims(ttl=-60)), POLICY, Reason.TOKEN_EXPIRED, "expired", False),
        (lambda: hs256(claims(nbf=int(time.time()) + 600)), POLICY, Reason.INVALID_TOKEN, "not yet valid", False),
        (lambda: hs256(claims(iat=int(time.time()) + 600)), POLICY, Reason.INVALID_TOKEN, "not yet valid", False),
        (lambda: hs256(claims(iss="https://evil.test")), POLICY, Reason.INVALID_TOKEN, "wrong issuer (iss)", False),
        (lambda: hs256(claims(aud="nope")), POLICY, Reason.INVALID_TOKEN, "wrong audience (aud)", False),
        (
            lambda: hs256(claims()),
            replace(POLICY, audience=None),
            Reason.INVALID_TOKEN,
            "an aud claim, and the policy has no audience",
            False,
        ),
        (lambda: hs256({"sub": "a", "iat": 1}), POLICY, Reason.INVALID_TOKEN, "no 'exp' claim", False),
        (lambda: hs256(claims(agent=None)), POLICY, Reason.INVALID_TOKEN, "no 'sub' claim", False),
        (lambda: hs256(claims(sub=42)), POLICY, Reason.INVALID_TOKEN, "malformed", False),
        (lambda: hs256(key="x" * 40), POLICY, Reason.INVALID_TOKEN, "bad signature (tried 2 keys)", False),
        (lambda: tampered(hs256()), POLICY, Reason.INVALID_TOKEN, "bad signature", False),
        (lambda: tampered(signed(ec_signer())), POLICY, Reason.INVALID_TOKEN, "bad signature", False),
        (lambda: unsigned(), POLICY, Reason.INVALID_TOKEN, "alg none (an unsigned token)", False),
        (lambda: unsigned(alg="None"), POLICY, Reason.INVALID_TOKEN, "alg none (an unsigned token)", False),
        (
            lambda: jwt.encode(claims(), JWT_SECRET, algorithm="HS512"),
            POLICY,
            Reason.INVALID_TOKEN,
            "algorithm HS512 is not one the policy accepts",
            False,
        ),
        (
            lambda: unsigned(alg="XX999"),
            POLICY,
            Reason.INVALID_TOKEN,
            "algorithm unknown is not one the policy accepts",
            False,
        ),
        (lambda: confused(rsa_signer()), POLICY, Reason.INVALID_TOKEN, "bad signature (tried 2 keys)", False),
        (
            lambda: confused(rsa_signer()),
            ASYMMETRIC_ONLY,
            Reason.INVALID_TOKEN,
            "an HMAC token (HS256) where only asymmetric keys are configured: algorithm confusion",
            False,
        ),
        (lambda: signed(ec_signer("ec-new")), POLICY, Reason.INVALID_TOKEN, "unknown kid 'ec-new'", True),
        (lambda: signed(ec_signer(), kid="a\nb"), POLICY, Reason.INVALID_TOKEN, "unknown kid 'a\\nb'", True),
        (
            lambda: signed(ec_signer(), kid="rsa-1"),  # an EC signature naming the RSA key
            POLICY,
            Reason.INVALID_TOKEN,
            "key 'rsa-1' cannot verify ES256 (another key type, curve or alg)",
            False,
        ),
        (lambda: "a.b.c", POLICY, Reason.INVALID_TOKEN, "not a well-formed JWT", False),
    ],
    ids=[
        "expired",
        "nbf",
        "iat-future",
        "issuer",
        "audience",
        "aud-unexpected",
        "no-exp",
        "no-sub",
        "sub-not-string",
        "other-secret",
        "tampered-hs",
        "tampered-es",
        "alg-none",
        "alg-None",
        "alg-not-listed",
        "alg-unknown",
        "confusion-against-secrets",
        "confusion-asymmetric-only",
        "unknown-kid",
        "kid-control-characters",
        "kid-of-another-type",
        "garbage",
    ],
)
def test_every_failure_says_why_for_the_log(
    token: Any, policy: JwtPolicy, reason: Reason, why: str, refresh: bool
) -> None:
    outcome = verify(token(), policy, KEYS)
    assert isinstance(outcome, Failed)
    assert (outcome.reason, outcome.refresh) == (reason, refresh)
    assert outcome.why.startswith(why), outcome.why


def test_no_kid_and_no_key_that_fits_asks_for_a_refresh() -> None:
    outcome = verify(signed(ec_signer(), kid=None), POLICY, key_set(rsa_signer()))
    assert outcome == Failed(Reason.INVALID_TOKEN, "no key for ES256 and no kid", refresh=True)


def test_an_hs_token_is_never_checked_against_a_jwks_key() -> None:
    """A JWKS that (wrongly) published the HMAC secret as a key still cannot verify HS256:
    symmetric keys never come from a JWKS, and HS tokens only meet the secrets."""
    with pytest.raises(ValueError, match="no usable key"):
        parse_jwks(json.dumps({"keys": [{"kty": "oct", "k": "eA", "kid": "hs"}]}).encode())
    outcome = verify(hs256(kid="rsa-1"), replace(POLICY, secrets=()), KEYS)
    assert isinstance(outcome, Failed) and "algorithm confusion" in outcome.why


def test_the_leeway_admits_a_token_just_expired() -> None:
    token = hs256(claims(ttl=-10))
    assert isinstance(verify(token, POLICY, KEYS), Verified)  # 30 s of leeway
    assert verify(token, replace(POLICY, leeway=0.0), KEYS) == Failed(Reason.TOKEN_EXPIRED, "expired")


def test_another_agent_claim() -> None:
    policy = replace(POLICY, agent_claim="agent")
    assert verify(hs256({**claims(agent=None), "agent": "edge_9"}), policy, KEYS) == Verified(
        "edge_9", pytest.approx(time.time() + 300, abs=5)
    )
    assert verify(hs256(claims("edge_9")), policy, KEYS) == Failed(Reason.INVALID_TOKEN, "no 'agent' claim")


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    "value",
    ["1" + "0" * 400, "-1" + "0" * 400, "1e400", '"1700000000"', '"99999999999"', "true", "false", "[1]", "null"],
    ids=["huge-int", "huge-negative", "huge-float", "string-past", "string-future", "true", "false", "list", "null"],
)
def test_a_date_claim_that_is_not_a_numeric_date_is_invalid_token(claim: str, value: str) -> None:
    now = int(time.time())
    dates = {"exp": str(now + 300), "nbf": str(now - 10), "iat": str(now - 10), claim: value}
    payload = '{"sub":"edge_1","iss":"%s","aud":"%s",%s}' % (  # noqa: UP031 - JSON by hand
        ISSUER,
        AUDIENCE,
        ",".join(f'"{k}":{v}' for k, v in dates.items()),
    )
    outcome = verify(hs256_raw(payload), POLICY, KEYS)
    assert isinstance(outcome, Failed), outcome
    assert outcome.reason is Reason.INVALID_TOKEN, outcome


def test_a_date_in_float_range_is_a_date() -> None:
    outcome = verify(hs256(claims(exp=1e308)), POLICY, KEYS)
    assert outcome == Verified("edge_1", 1e308)


@pytest.mark.parametrize(
    ("token", "shaped"), [("a.b.c", True), ("abc", False), ("a.b", False), ("a.b.c.d", False), ("..", True)]
)
def test_looks_like_jwt(token: str, shaped: bool) -> None:
    assert looks_like_jwt(token) is shaped


# --- JWKS documents ----------------------------------------------------------------------


def test_a_jwks_keeps_its_public_signature_keys_by_kid() -> None:
    keys = key_set(rsa_signer(), ec_signer(), ed_signer())
    assert keys.kids == ["rsa-1", "ec-1", "ed-1"]
    assert [(k.kty, k.curve, k.alg) for k in keys.keys] == [
        ("RSA", None, "RS256"),
        ("EC", "P-256", "ES256"),
        ("OKP", "Ed25519", "EdDSA"),
    ]
    rsa_key = keys.kid("rsa-1")
    assert rsa_key is not None and rsa_key.fits("RS256") and not rsa_key.fits("ES256") and not rsa_key.fits("PS256")


def _jwk(signer: Signer, **change: Any) -> dict[str, Any]:
    data = {**signer.jwk, **change}
    return {k: v for k, v in data.items() if v is not None}


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ({"kty": "oct", "k": "c2VjcmV0", "kid": "s"}, "a symmetric key (kty oct) in a public set: refused"),
        (
            {**_jwk(ec_signer()), "d": "AAAA"},
            "a private key, published: refused (rotate it away at the issuer)",
        ),
        (_jwk(ec_signer(), use="enc"), "not a signature key (use is not sig)"),
        (_jwk(ec_signer(), key_ops=["encrypt"]), "its key_ops do not include verify"),
        (_jwk(ec_signer(), alg="HS256"), "its alg is not an asymmetric signature algorithm the sidecar accepts"),
        (_jwk(ec_signer(), alg="none"), "its alg is not an asymmetric signature algorithm the sidecar accepts"),
        (_jwk(ec_signer(), crv="secp256k1"), "an unsupported curve"),
        (_jwk(ec_signer(), x="AAAA"), "not a valid key of its type"),
        (_jwk(ec_signer(), kid=7), "its kid is not a string"),
        ({"kty": "XYZ"}, "an unsupported key type"),
        ("a string", "not an object"),
    ],
    ids=["oct", "private", "use-enc", "key-ops", "alg-hs", "alg-none", "curve", "bad-point", "kid-int", "kty", "str"],
)
def test_a_jwks_entry_that_is_not_a_public_signature_key_is_left_out(entry: object, why: str) -> None:
    keys, skipped = parse_jwks(json.dumps({"keys": [entry, ec_signer().jwk]}).encode())
    assert keys.kids == ["ec-1"]
    assert skipped == [f"key 0: {why}"]
    assert "AAAA" not in " ".join(skipped)  # never quoting the entry


def test_a_short_rsa_key_is_left_out() -> None:
    small = Signer("small", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    _, skipped = parse_jwks(json.dumps({"keys": [small.jwk, ec_signer().jwk]}).encode())
    assert skipped == ["key 0: an RSA key under 2048 bits"]


def test_a_key_of_another_curve_never_fits_es256() -> None:
    p384 = Signer("p384", "ES384", ec.generate_private_key(ec.SECP384R1()))
    keys = key_set(p384)
    key = keys.kid("p384")
    assert key is not None and key.fits("ES384") and not key.fits("ES256")


@pytest.mark.parametrize(
    ("document", "error"),
    [
        (b"not json", "not JSON"),
        (b"[]", "no 'keys' list"),
        (b'{"keys": {}}', "no 'keys' list"),
        (b'{"keys": []}', "no usable key in the set"),
        (b"[" * 100_000, "not JSON"),
        (b" " * (MAX_DOCUMENT_BYTES + 1), "over 256 KiB"),
    ],
    ids=["text", "list", "keys-object", "empty", "deep", "large"],
)
def test_a_document_that_is_not_a_jwks_is_refused_whole(document: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_jwks(document)


def test_a_jwks_is_read_up_to_its_key_limit() -> None:
    keys, skipped = parse_jwks(json.dumps({"keys": [ec_signer().jwk] * (MAX_KEYS + 5)}).encode())
    assert len(keys) == MAX_KEYS
    assert skipped == [f"5 keys past the first {MAX_KEYS}: ignored"]


def test_a_repeated_kid_keeps_the_first_key() -> None:
    first, second = ec_signer(), ec_signer("other")
    keys, _ = parse_jwks(json.dumps({"keys": [first.jwk, {**second.jwk, "kid": "ec-1"}]}).encode())
    assert verify(signed(first), POLICY, keys) == Verified("edge_1", pytest.approx(time.time() + 300, abs=5))


# --- minting and describing --------------------------------------------------------------


def test_mint_signs_hs256_with_the_first_secret_and_the_policys_claims() -> None:
    token = mint(POLICY, "edge_4", ttl=3600, now=1_700_000_000)
    payload = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience=AUDIENCE, options={"verify_exp": False})
    assert payload == {"sub": "edge_4", "iat": 1_700_000_000, "exp": 1_700_003_600, "iss": ISSUER, "aud": AUDIENCE}
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    fresh = mint(POLICY, "edge_4", ttl=60, now=time.time())
    assert verify(fresh, POLICY, KEYS) == Verified("edge_4", pytest.approx(time.time() + 60, abs=5))
    with pytest.raises(ValueError, match=r"no jwt\.secrets"):
        mint(ASYMMETRIC_ONLY, "edge_4", ttl=60, now=0)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("24h", 86400), ("30d", 2_592_000), ("45", 45), ("1.5h", 5400)]
)
def test_parse_ttl(text: str, seconds: float) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "soon", "-1h", "1w", "1 h x"])
def test_parse_ttl_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)


def test_summary_says_what_the_policy_takes_never_a_key() -> None:
    lines = summary(POLICY)
    assert lines[:2] == [
        "2 HMAC secret(s), the first signs ('sidecar token')",
        "JWKS: https://issuer.test/jwks (fetched at start, then every 10 min and on an unknown kid)",
    ]
    assert JWT_SECRET not in " ".join(lines)
    assert lines[-1].endswith("leeway 30s; an open session closes at expiry")
