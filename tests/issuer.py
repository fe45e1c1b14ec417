"""A token issuer for the tests: keys made fresh on every run (nothing that looks like a
secret is checked in), tokens signed with PyJWT, and a JWKS served by a real aiohttp app
on 127.0.0.1 and a port of its own, which can gain keys and go down mid-test.

Tokens that PyJWT refuses to make (``alg: none``, an HS256 token signed with a public key:
the algorithm confusion attack) are put together by hand here, byte for byte as an
attacker would send them.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

# HMAC keys for this run only (RFC 7518 section 3.2: at least 32 bytes for HS256).
JWT_SECRET = secrets.token_urlsafe(48)
JWT_SECRET_PREVIOUS = secrets.token_urlsafe(48)
ISSUER = "https://issuer.test"
AUDIENCE = "sidecar-test"


@dataclass(frozen=True)
class Signer:
    """An asymmetric key pair: ``alg`` signs, ``jwk`` is its public half as a JWKS lists it."""

    kid: str
    alg: str
    private: Any = field(repr=False)

    @property
    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        data: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**data, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


@functools.cache
def rsa_signer(kid: str = "rsa-1") -> Signer:
    return Signer(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@functools.cache
def ec_signer(kid: str = "ec-1") -> Signer:
    return Signer(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


@functools.cache
def ed_signer(kid: str = "ed-1") -> Signer:
    return Signer(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())


def claims(agent: str | None = "edge_1", ttl: float = 300, **extra: Any) -> dict[str, Any]:
    """What the sidecar in the tests expects: sub, iss, aud, iat and exp ``ttl`` from now."""
    now = int(time.time())
    out: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + int(ttl)}
    if agent is not None:
        out["sub"] = agent
    return {**out, **extra}


def hs256(payload: dict[str, Any] | None = None, key: str = JWT_SECRET, **headers: Any) -> str:
    return jwt.encode(payload or claims(), key, algorithm="HS256", headers=headers or None)


def signed(signer: Signer, payload: dict[str, Any] | None = None, **headers: Any) -> str:
    """A token ``signer`` signs, naming its kid unless ``kid=None`` is given."""
    header = {"kid": signer.kid, **headers}
    header = {k: v for k, v in header.items() if v is not None}
    return jwt.encode(payload or claims(), signer.private, algorithm=signer.alg, headers=header)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())


def hs256_raw(payload: str, key: str = JWT_SECRET) -> str:
    """An HS256 token over ``payload`` as written (JSON PyJWT's encoder would not write)."""
    head = _b64(b'{"alg":"HS256","typ":"JWT"}')
    body = _b64(payload.encode())
    return f"{head}.{body}." + _b64(hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())


def unsigned(payload: dict[str, Any] | None = None, alg: str = "none") -> str:
    """``alg: none`` (RFC 7519 section 6): no signature at all."""
    return _segments({"alg": alg, "typ": "JWT"}, payload or claims()) + "."


def confused(signer: Signer, payload: dict[str, Any] | None = None) -> str:
    """The algorithm confusion attack: HS256, keyed with the issuer's *public* key (which
    anyone can fetch from the JWKS), naming that key's kid."""
    head = _segments({"alg": "HS256", "typ": "JWT", "kid": signer.kid}, payload or claims())
    signature = hmac.new(signer.public_pem(), head.encode(), hashlib.sha256).digest()
    return head + "." + _b64(signature)


def tampered(token: str) -> str:
    """``token`` with its payload changed (another agent) and its signature kept."""
    head, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["sub"] = "edge_someone_else"
    return f"{head}.{_b64(json.dumps(data).encode())}.{signature}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Jwks:
    """The issuer's JWKS endpoint: ``GET /jwks`` lists ``keys``; ``fetches`` counts the
    requests; ``stop()`` takes it down (the port then refuses connections)."""

    def __init__(self, *signers: Signer) -> None:
        self.keys: list[dict[str, Any]] = [s.jwk for s in signers]
        self.fetches = 0
        self.document: bytes | None = None  # served instead of the keys, when set
        self.hold: asyncio.Event | None = None  # when set: every answer waits for it
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"

    def add(self, signer: Signer) -> None:
        self.keys.append(signer.jwk)

    async def serve(self, _: web.Request) -> web.Response:
        self.fetches += 1
        if self.hold is not None:
            await self.hold.wait()
        body = self.document if self.document is not None else json.dumps({"keys": self.keys}).encode()
        return web.Response(body=body, content_type="application/json")

    async def start(self) -> Jwks:
        app = web.Application()
        app.router.add_get("/jwks", self.serve)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site.port
        return self

    async def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()  # a held answer goes out, so the server can stop
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
