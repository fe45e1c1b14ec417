"""A JSON Web Key Set (RFC 7517 section 5) as the sidecar uses it: the public keys an
issuer signs agents' tokens with, by ``kid``.

Pure: a fetched document in, a :class:`KeySet` out (fetching and caching are
:mod:`sidecar.jwks`'). A JWKS is read as hostile input: it is bounded in size and key
count, and only public signature keys of the kinds the sidecar verifies are kept. A
symmetric key (``kty: oct``) is refused: anyone who can read the set could sign with it.
A private key (``d``) is refused: it was published by mistake, so anyone may hold it.
Why a key was left out is said without quoting the key (PyJWT's own messages would).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jwt import PyJWK
from jwt.exceptions import PyJWTError

MAX_DOCUMENT_BYTES = 256 * 1024  # a set of a few dozen keys is a few KiB
MAX_KEYS = 64
MIN_RSA_BITS = 2048  # RFC 7518 section 3.3

# An algorithm -> the key type (and curve) that verifies it (RFC 7518 section 3.1, RFC 8037).
_FAMILY: dict[str, tuple[str, frozenset[str] | None]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
_CURVES = {"EC": frozenset({"P-256", "P-384", "P-521"}), "OKP": frozenset({"Ed25519", "Ed448"})}


@dataclass(frozen=True)
class Jwk:
    """One public verification key: ``key`` is the ``cryptography`` key object."""

    kid: str | None
    kty: str
    curve: str | None
    alg: str | None  # the key's own ``alg``, when the set names one
    key: Any = field(repr=False, compare=False)

    def fits(self, alg: str) -> bool:
        """Whether this key may verify a token signed with ``alg``: the right key type and
        curve, and the key's own ``alg`` when it names one (RFC 7517 section 4.4)."""
        family = _FAMILY.get(alg)
        if family is None or self.kty != family[0] or (family[1] is not None and self.curve not in family[1]):
            return False
        return self.alg is None or self.alg == alg


@dataclass(frozen=True)
class KeySet:
    """The keys of one JWKS, by ``kid`` (the first of a ``kid`` that repeats)."""

    keys: tuple[Jwk, ...] = ()
    _by_kid: Mapping[str, Jwk] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, keys: list[Jwk]) -> KeySet:
        by_kid: dict[str, Jwk] = {}
        for key in keys:
            if key.kid is not None:
                by_kid.setdefault(key.kid, key)
        return cls(tuple(keys), by_kid)

    def __len__(self) -> int:
        return len(self.keys)

    def kid(self, kid: str) -> Jwk | None:
        return self._by_kid.get(kid)

    @property
    def kids(self) -> list[str]:
        return list(self._by_kid)


EMPTY = KeySet()


def parse_jwks(document: bytes) -> tuple[KeySet, list[str]]:
    """The usable keys of a JWKS document, and why each other entry was left out.
    ``ValueError`` if the document is not a JWKS at all, or has no usable key."""
    if len(document) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"the document is over {MAX_DOCUMENT_BYTES // 1024} KiB")
    try:
        data = json.loads(document)
    except (ValueError, RecursionError):
        raise ValueError("the document is not JSON") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the document has no 'keys' list (RFC 7517 section 5)")
    keys: list[Jwk] = []
    skipped: list[str] = []
    for index, entry in enumerate(entries[:MAX_KEYS]):
        key, why = _key(entry)
        if key is None:
            skipped.append(f"key {index}: {why}")
        else:
            keys.append(key)
    if len(entries) > MAX_KEYS:
        skipped.append(f"{len(entries) - MAX_KEYS} keys past the first {MAX_KEYS}: ignored")
    if not keys:
        raise ValueError("no usable key in the set" + (f" ({'; '.join(skipped)})" if skipped else ""))
    return KeySet.of(keys), skipped


def _key(entry: object) -> tuple[Jwk | None, str]:
    """One entry as a key, or ``None`` and why not (never quoting the entry)."""
    if not isinstance(entry, dict):
        return None, "not an object"
    kty, kid, alg, use = entry.get("kty"), entry.get("kid"), entry.get("alg"), entry.get("use")
    if kid is not None and not isinstance(kid, str):
        return None, "its kid is not a string"
    if kty == "oct":
        return None, "a symmetric key (kty oct) in a public set: refused"
    if kty not in ("RSA", "EC", "OKP"):
        return None, "an unsupported key type"
    if "d" in entry or "p" in entry:
        return None, "a private key, published: refused (rotate it away at the issuer)"
    if use is not None and use != "sig":
        return None, "not a signature key (use is not sig)"
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None, "its key_ops do not include verify"
    if alg is not None and alg not in _FAMILY:
        return None, "its alg is not an asymmetric signature algorithm the sidecar accepts"
    curve = entry.get("crv")
    if kty in _CURVES and curve not in _CURVES[kty]:
        return None, "an unsupported curve"
    try:
        key = PyJWK(entry, algorithm=alg or _default_algorithm(kty, curve)).key
    except (PyJWTError, ValueError, TypeError, KeyError):
        return None, "not a valid key of its type"
    if kty == "RSA" and key.key_size < MIN_RSA_BITS:
        return None, f"an RSA key under {MIN_RSA_BITS} bits"
    return Jwk(kid, kty, curve if isinstance(curve, str) else None, alg, key), ""


def _default_algorithm(kty: str, curve: object) -> str:
    """An algorithm PyJWK can build a key of this type with (the key's use is decided
    per token by :meth:`Jwk.fits`)."""
    if kty == "RSA":
        return "RS256"
    if kty == "OKP":
        return "EdDSA"
    return {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}[str(curve)]
