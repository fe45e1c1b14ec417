"""The ``jwt`` part of an auth policy (``auth.<name>.jwt``): JSON Web Tokens, a second
credential kind beside the shared ``bearer`` secrets.

Every key is read, every problem recorded with its line (``Reader``), as for the rest of
the file. The rules that keep verification sound are enforced here, before anything
serves: ``none`` is never an algorithm; an HMAC secret is at least as long as the hash
of every HMAC algorithm listed (RFC 7518 section 3.2: 32, 48, 64 bytes) and never one of
the policy's bearer secrets (every edge device holds those: any of them could sign a
token for any agent); a JWKS comes over https, or http to a loopback or private address
only; a policy with no key at all is an error. Which key verifies which token is
:mod:`sidecar.tokens`' business. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

from yaml.nodes import Node

from .model import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, MIN_JWT_SECRET_BYTES, JwtPolicy, OnExpiry
from .reader import Fields, Reader

_KEYS = {"secrets", "jwks_url", "algorithms", "issuer", "audience", "agent_claim", "leeway", "on_expiry"}
_ON_EXPIRY: dict[str, OnExpiry] = {"close": "close", "ignore": "ignore"}
# What a policy accepts when it does not list algorithms: what its key sources can verify.
_FROM_SECRETS = ("HS256",)
_FROM_JWKS = ("RS256", "ES256", "EdDSA")
_KNOWN = HMAC_ALGORITHMS + ASYMMETRIC_ALGORITHMS
# Registered claims that cannot name an agent (sub, "the subject", is the default and fits).
_REGISTERED = frozenset({"iss", "aud", "exp", "nbf", "iat", "jti"})


def private_address(host: str) -> bool:
    """Whether ``host`` (an address, as a string) is loopback or private (RFC 1918,
    RFC 4193 unique local: Railway's private network), where plain http is allowed."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_private


def jwt_policy(
    rd: Reader, node: Node, where: str, bearer_digests: tuple[bytes, ...]
) -> tuple[JwtPolicy | None, tuple[str, ...]]:
    """The policy's ``jwt`` mapping (``None`` if it is not a mapping: reported), and the
    variables its ``secrets`` name (listed with their fingerprints by ``sidecar check``)."""
    m = rd.mapping(node, where, _KEYS)
    if m is None:
        return None, ()
    secrets, incomplete, names, lengths = (
        _secrets(rd, m["secrets"], f"{where}.secrets") if "secrets" in m else ((), False, (), ())
    )
    if any(hashlib.sha256(key).digest() in bearer_digests for key in secrets):
        rd.error(
            m["secrets"],
            f"{where}.secrets: a secret is also one of the policy's bearer secrets: every device holding "
            "the shared secret could sign a token for any agent; give the JWT key its own value",
        )
    url, refused = _jwks_url(rd, m["jwks_url"], f"{where}.jwks_url") if "jwks_url" in m else (None, False)
    if not secrets and url is None and not incomplete and not refused:
        rd.error(node, f"{where}: no key is set (secrets empty and no jwks_url); no token could ever be verified")
    sources = (bool(secrets) or incomplete, url is not None)  # HMAC keys, a JWKS
    algorithms = _algorithms(rd, m, where, sources)
    _check_key_lengths(rd, lengths, f"{where}.secrets", algorithms)
    _warn_about_sources(rd, m.get("algorithms", node), where, algorithms, sources)
    fields = Fields(rd, m, where)
    claim = fields.string("agent_claim", JwtPolicy.agent_claim)
    if not claim:
        rd.error(m["agent_claim"], f"{where}.agent_claim: must name a claim (such as sub)")
        claim = JwtPolicy.agent_claim
    elif claim in _REGISTERED:
        rd.error(
            m["agent_claim"],
            f"{where}.agent_claim: {claim!r} is a registered claim (RFC 7519 section 4.1) with a meaning of its "
            "own, not an agent id; use sub, or a claim of your own",
        )
        claim = JwtPolicy.agent_claim
    policy = JwtPolicy(
        secrets=secrets,
        jwks_url=url,
        algorithms=algorithms,
        issuer=fields.string("issuer", None) or None,
        audience=fields.string("audience", None) or None,
        agent_claim=claim,
        leeway=fields.duration_or_off("leeway", JwtPolicy.leeway),
        on_expiry=_on_expiry(rd, m, where),
    )
    return policy, names


def _secrets(
    rd: Reader, node: Node, where: str
) -> tuple[tuple[bytes, ...], bool, tuple[str, ...], tuple[tuple[Node, int], ...]]:
    """The HMAC keys that are set, current first; whether some entry is unset or invalid
    (then an empty list is not reported again); the variables the list names; and each
    kept key's entry with its length (checked against the algorithms once they are read)."""
    keys: list[bytes] = []
    lengths: list[tuple[Node, int]] = []
    used: list[str] = []
    incomplete = False
    for item in rd.sequence(node, where) or []:
        expanded = rd.text(item, where)
        if expanded is None:
            incomplete = True
            continue
        incomplete = incomplete or bool(expanded.unset)
        used += expanded.used
        if expanded.value and (not expanded.used or expanded.defaulted):
            rd.warn(item, f"{where}: a secret is written in the file; use ${{VAR}} so it comes from the environment")
        if not expanded.value:
            continue  # an optional secret (${EDGE_JWT_SECRET_PREVIOUS:-}) that is not set
        key = expanded.value.encode("utf-8")
        if len(key) < MIN_JWT_SECRET_BYTES:
            # Never quote the value, nor its length: it is a secret.
            rd.error(
                item,
                f"{where}: a secret is shorter than {MIN_JWT_SECRET_BYTES} bytes, too short for HS256 "
                "(RFC 7518 section 3.2); generate one with 'openssl rand -base64 48'",
            )
            incomplete = True
            continue
        keys.append(key)
        lengths.append((item, len(key)))
    return tuple(dict.fromkeys(keys)), incomplete, tuple(dict.fromkeys(used)), tuple(lengths)


def _check_key_lengths(
    rd: Reader, lengths: tuple[tuple[Node, int], ...], where: str, algorithms: tuple[str, ...]
) -> None:
    """Each secret at least as long as the output of every HMAC algorithm listed (RFC 7518
    section 3.2: HS384 48 bytes, HS512 64); never quoting the value, nor its length."""
    hmac = [a for a in algorithms if a in HMAC_ALGORITHMS]
    if not hmac:
        return
    longest = max(hmac, key=lambda a: int(a[2:]))
    need = int(longest[2:]) // 8
    for item, length in lengths:
        if length < need:
            rd.error(
                item,
                f"{where}: a secret is shorter than {need} bytes, too short for {longest} (RFC 7518 section "
                "3.2); generate one with 'openssl rand -base64 48'",
            )


def _jwks_url(rd: Reader, node: Node, where: str) -> tuple[str | None, bool]:
    """The JWKS URL (``None`` when it is empty: an optional ``${VAR:-}``), and whether it
    was refused (reported)."""
    url = rd.string(node, where)
    if not url:
        return None, url is None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        rd.error(node, f"{where}: not a valid URL")
        return None, True
    problem = None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        problem = "must be an https:// URL with a host"
    elif parts.username or parts.password or parts.fragment:
        problem = "must not carry credentials (user:password@) or a fragment"
    elif parts.scheme == "http" and not _may_be_plain(parts.hostname):
        problem = (
            "http:// is allowed only to a loopback or private address (anyone on the path could swap "
            "the keys); use https://"
        )
    if problem:
        rd.error(node, f"{where}: {problem}")
        return None, True
    return url, False


def _may_be_plain(host: str) -> bool:
    """http to ``host``: an address must be loopback or private; a name is checked at each
    fetch, on every address it resolves to (``sidecar.jwks``)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True  # a name: resolved and checked when fetched
    return private_address(host)


def _algorithms(rd: Reader, m: Mapping[str, Node], where: str, sources: tuple[bool, bool]) -> tuple[str, ...]:
    if "algorithms" not in m:
        chosen = (_FROM_SECRETS if sources[0] else ()) + (_FROM_JWKS if sources[1] else ())
        return chosen or JwtPolicy.algorithms
    found: list[str] = []
    items = rd.sequence(m["algorithms"], f"{where}.algorithms")
    for item in items or []:
        name = rd.string(item, f"{where}.algorithms")
        if name is None:
            continue
        if name.strip().lower() == "none":
            rd.error(item, f"{where}.algorithms: 'none' (an unsigned token) is never accepted")
        elif name not in _KNOWN:
            rd.error(item, f"{where}.algorithms: unknown algorithm {name!r} (expected one of: {', '.join(_KNOWN)})")
        elif name not in found:
            found.append(name)
    if items == []:
        rd.error(m["algorithms"], f"{where}.algorithms: no algorithm is accepted")
    return tuple(found)  # empty only with an error reported


def _warn_about_sources(
    rd: Reader, at: Node, where: str, algorithms: tuple[str, ...], sources: tuple[bool, bool]
) -> None:
    """Algorithms with no key to verify them, and HMAC beside a JWKS (``sources``: whether
    HMAC secrets, and a JWKS, are set)."""
    hmac = [a for a in algorithms if a in HMAC_ALGORITHMS]
    asymmetric = [a for a in algorithms if a in ASYMMETRIC_ALGORITHMS]
    if hmac and sources[1]:
        rd.warn(
            at,
            f"{where}.algorithms: HMAC ({', '.join(hmac)}) beside a jwks_url: an HS token is only ever "
            "checked against the secrets, never a JWKS key, but whoever holds a secret can sign a token "
            "for any agent without the issuer; prefer one kind of key per policy",
        )
    if hmac and not sources[0]:
        rd.warn(at, f"{where}.algorithms: {', '.join(hmac)} listed but no secrets: such tokens are refused")
    if asymmetric and not sources[1]:
        rd.warn(at, f"{where}.algorithms: {', '.join(asymmetric)} listed but no jwks_url: such tokens are refused")


def _on_expiry(rd: Reader, m: Mapping[str, Node], where: str) -> OnExpiry:
    text = rd.string(m["on_expiry"], f"{where}.on_expiry") if "on_expiry" in m else None
    if text is None:
        return JwtPolicy.on_expiry
    if text.lower() not in _ON_EXPIRY:
        rd.error(m["on_expiry"], f"{where}.on_expiry: expected close or ignore, got {text!r}")
        return JwtPolicy.on_expiry
    return _ON_EXPIRY[text.lower()]
