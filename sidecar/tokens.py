"""JSON Web Tokens (RFC 7519) as agents' credentials: verifying one, minting one.

Pure: no I/O. PyJWT parses and checks signatures (with ``cryptography`` for RS, PS, ES
and EdDSA); this module decides which key may verify which token, the part where JWT
verifiers go wrong (RFC 8725 section 2.1):

- The token names its algorithm, and it must be one the policy lists; ``none`` never is.
- An HMAC token (``HS*``) is checked against the policy's ``secrets`` only; an asymmetric
  one against the JWKS keys only, and only a key of the type and curve its algorithm
  needs (:meth:`sidecar.keys.Jwk.fits`). A public key is never used as an HMAC secret, so
  an HS token where only asymmetric keys are configured is refused (algorithm confusion).
- A ``kid`` names one key; an unknown one asks for the JWKS to be fetched again
  (``Failed.refresh``). A token without a ``kid`` is tried against every key that fits.
- ``exp`` is required (a token that never expires could never end its session), and so
  is the agent claim; ``nbf``, ``iat``, ``iss`` and ``aud`` are checked as RFC 7519
  section 4.1 says, with the policy's leeway. A token carrying an ``aud`` is refused by a
  policy without an ``audience`` (section 4.1.3: it was meant for someone else).

Every failure is ``invalid_token`` but an expired token (``token_expired``); ``why`` says
which check failed, for the log line only (:attr:`sidecar.reasons.Rejection.log_detail`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.exceptions import (
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)
from jwt.types import Options

from .config.model import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, JwtPolicy
from .keys import KeySet
from .reasons import Reason

MINT_ALGORITHM = "HS256"
_TTL_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_KNOWN = frozenset(HMAC_ALGORITHMS + ASYMMETRIC_ALGORITHMS)
_DATES = ("exp", "nbf", "iat")  # NumericDate claims (RFC 7519 section 2: a JSON number of seconds)


@dataclass(frozen=True)
class Verified:
    """A token that passed: the agent it names, and when it expires (``exp``, epoch seconds)."""

    agent: str
    expires_at: float


@dataclass(frozen=True)
class Failed:
    """A token that did not: the reason sent, ``why`` (logged only), and ``refresh``: its
    key may be one the JWKS gained since it was fetched."""

    reason: Reason
    why: str
    refresh: bool = False


def looks_like_jwt(token: str) -> bool:
    """The JWS compact serialisation: three base64url parts (RFC 7515 section 7.1)."""
    return token.count(".") == 2


def verify(token: str, policy: JwtPolicy, keys: KeySet) -> Verified | Failed:
    """Verify ``token`` with ``policy``'s secrets and ``keys`` (its JWKS, as last fetched)."""
    try:
        header = jwt.get_unverified_header(token)
    except PyJWTError:
        return _invalid("not a well-formed JWT")
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        return _invalid("no alg in its header")
    if alg.lower() == "none":
        return _invalid("alg none (an unsigned token)")
    if alg not in policy.algorithms:
        return _invalid(f"algorithm {alg if alg in _KNOWN else 'unknown'} is not one the policy accepts")
    if alg in HMAC_ALGORITHMS:
        if not policy.secrets:
            return _invalid(f"an HMAC token ({alg}) where only asymmetric keys are configured: algorithm confusion")
        return _decode(token, alg, policy.secrets, policy)
    return _asymmetric(token, alg, header.get("kid"), policy, keys)


def _asymmetric(token: str, alg: str, kid: object, policy: JwtPolicy, keys: KeySet) -> Verified | Failed:
    if kid is None:
        fitting = [key.key for key in keys.keys if key.fits(alg)]
        if not fitting:
            return Failed(Reason.INVALID_TOKEN, f"no key for {alg} and no kid", refresh=True)
        return _decode(token, alg, fitting, policy)
    if not isinstance(kid, str):
        return _invalid("its kid is not a string")
    key = keys.kid(kid)
    if key is None:
        # repr: the kid is the client's text; never a raw control character in a log line.
        return Failed(Reason.INVALID_TOKEN, f"unknown kid {kid[:64]!r}", refresh=True)
    if not key.fits(alg):
        return _invalid(f"key {kid!r} cannot verify {alg} (another key type, curve or alg)")
    return _decode(token, alg, [key.key], policy)


def _decode(token: str, alg: str, candidates: Sequence[Any], policy: JwtPolicy) -> Verified | Failed:
    """The signature against each candidate key in turn (current secret first), then the
    claims; a failure other than the signature's means the signature was good."""
    claim = policy.agent_claim
    options: Options = {"require": ["exp", claim], "enforce_minimum_key_length": True}
    for key in candidates:
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[alg],  # the policy's, checked above; never chosen by the token alone
                options=options,
                audience=policy.audience,
                issuer=policy.issuer,
                leeway=policy.leeway,
            )
        except InvalidSignatureError:
            continue
        except (ExpiredSignatureError, ImmatureSignatureError) as exc:
            # The signature was good; PyJWT reads "123" or true as a date, RFC 7519 does not.
            unverified = jwt.decode(token, options={"verify_signature": False})
            return _not_a_date(unverified) or _claims_failure(exc, policy)
        except PyJWTError as exc:
            return _claims_failure(exc, policy)
        not_a_date = _not_a_date(payload)
        if not_a_date is not None:
            return not_a_date
        agent = payload.get(claim)
        if not isinstance(agent, str) or not agent:
            return _invalid(f"its {claim!r} claim (the agent id) is not a string")
        return Verified(agent, float(payload["exp"]))
    return _invalid("bad signature" + (f" (tried {len(candidates)} keys)" if len(candidates) > 1 else ""))


def _not_a_date(payload: Mapping[str, Any]) -> Failed | None:
    """``exp``, ``nbf`` and ``iat`` must be numbers (not strings, not booleans) that a float
    holds: a NumericDate (RFC 7519 section 2). 1e400 or 10**400 would overflow the timer."""
    for claim in _DATES:
        value = payload.get(claim)
        if value is None and claim not in payload:
            continue
        try:
            ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(float(value))
        except OverflowError:
            ok = False
        if not ok:
            return _invalid(f"its {claim!r} claim is not a NumericDate (a number of seconds in range)")
    return None


def _claims_failure(exc: PyJWTError, policy: JwtPolicy) -> Failed:
    if isinstance(exc, ExpiredSignatureError):
        return Failed(Reason.TOKEN_EXPIRED, "expired")
    if isinstance(exc, ImmatureSignatureError):
        return _invalid("not yet valid (nbf or iat in the future)")
    if isinstance(exc, InvalidIssuerError):
        return _invalid("wrong issuer (iss)")
    if isinstance(exc, InvalidAudienceError):
        return _invalid("wrong audience (aud)" if policy.audience else "an aud claim, and the policy has no audience")
    if isinstance(exc, MissingRequiredClaimError):
        return _invalid(f"no {exc.claim!r} claim")
    if isinstance(exc, InvalidKeyError):
        return _invalid("a key too short or of the wrong kind for its algorithm")
    return _invalid(f"malformed ({type(exc).__name__})")


def _invalid(why: str) -> Failed:
    return Failed(Reason.INVALID_TOKEN, why)


# --- minting (sidecar token) -------------------------------------------------------------


def mint(policy: JwtPolicy, agent: str, *, ttl: float, now: float) -> str:
    """An HS256 token for ``agent``, signed with the policy's first (current) secret,
    valid from ``now`` for ``ttl`` seconds, with the policy's issuer and audience."""
    if not policy.secrets:
        raise ValueError("the policy has no jwt.secrets to sign with")
    claims: dict[str, object] = {policy.agent_claim: agent, "iat": int(now), "exp": int(now + ttl)}
    if policy.issuer:
        claims["iss"] = policy.issuer
    if policy.audience:
        claims["aud"] = policy.audience
    return jwt.encode(claims, policy.secrets[0], algorithm=MINT_ALGORITHM)


def parse_ttl(text: str) -> float:
    """A token's lifetime: ``90s``, ``30m``, ``24h``, ``30d`` (no unit: seconds), over 0."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text.strip())
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(text)
    return float(m.group(1)) * _TTL_UNITS[m.group(2) or "s"]


def summary(policy: JwtPolicy) -> list[str]:
    """What ``sidecar check`` says of a policy's tokens (beside its secrets' variables and
    their fingerprints, listed for every policy): how many HMAC keys, where its public keys
    come from, and the rules."""
    lines = []
    if policy.secrets:
        lines.append(f"{len(policy.secrets)} HMAC secret(s), the first signs ('sidecar token')")
    if policy.jwks_url:
        lines.append(f"JWKS: {policy.jwks_url} (fetched at start, then every 10 min and on an unknown kid)")
    rules = [f"algorithms {', '.join(policy.algorithms)}", f"agent claim {policy.agent_claim!r}"]
    rules += [f"iss {policy.issuer!r}"] if policy.issuer else []
    rules += [f"aud {policy.audience!r}"] if policy.audience else []
    rules.append(f"leeway {policy.leeway:g}s")
    rules.append("an open session closes at expiry" if policy.on_expiry == "close" else "expiry ignored once open")
    lines.append("; ".join(rules))
    return lines
