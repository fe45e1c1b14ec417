"""Fingerprints: a short string that identifies a secret without revealing it.

Two people (the edge machine's and the server's) compare fingerprints instead of
pasting the secret in a chat. The same secret has the same fingerprint on every
machine and in every version that says ``fp1:``. Pure: no I/O.

The derivation, precisely (version 1)::

    key = scrypt(password = the secret's bytes (UTF-8 for text, nothing stripped),
                 salt     = b"sidecar-fingerprint-v1"  (22 ASCII bytes),
                 N = 16384 (2**14), r = 8, p = 1, dkLen = 5)           # RFC 7914
    fingerprint = "fp1:" + lowercase(base32(key))                     # RFC 4648, 8 characters, no padding

Recomputed with other tools (the secret in ``$SECRET``; both put it in a process's
arguments, so run them on a machine of your own)::

    python3 -c 'import base64,hashlib,sys; print("fp1:" + base64.b32encode(hashlib.scrypt(
        sys.argv[1].encode(), salt=b"sidecar-fingerprint-v1", n=16384, r=8, p=1, dklen=5)).decode().lower())' "$SECRET"
    openssl kdf -keylen 5 -kdfopt pass:"$SECRET" -kdfopt salt:sidecar-fingerprint-v1 \\
        -kdfopt n:16384 -kdfopt r:8 -kdfopt p:1 SCRYPT     # prints the 5 bytes in hex: E1:93:BD:4A:E6

Why these choices:

- **A slow, memory-hard KDF, not a hash prefix.** Anyone who sees a fingerprint can test
  guesses against it offline, so each test must cost about as much as the fingerprint
  allows: scrypt with these parameters takes about 60 ms and 16 MiB here (measured:
  ``python3 -c 'import hashlib,timeit; print(timeit.timeit(lambda: hashlib.scrypt(b"x",
  salt=b"sidecar-fingerprint-v1", n=16384, r=8, p=1, dklen=5), number=20) / 20)'``),
  some hundred thousand times a SHA-256, and the 16 MiB each guess needs limits how many
  guesses a GPU can run at once.
  A weak secret stays weak (a dictionary word is found by trying the dictionary), but a
  fingerprint makes it no weaker than it already is: a secret that is long and random
  (``openssl rand -hex 32``) cannot be found this way at any cost.
- **A fixed salt.** The same secret must give the same fingerprint everywhere, so the
  salt cannot be random; it is fixed, versioned and specific to this use (domain
  separation), so no table computed for another purpose applies, and a table for this
  one costs a full scrypt per candidate.
- **40 bits, 8 characters.** Short enough to read aloud and compare at a glance. Two
  different secrets share a fingerprint with probability 2**-40 (about 1 in 10**12): among
  the handful of secrets one deployment has (current, previous, one per environment) a
  false match never happens in practice, and crafting a second secret with the same
  fingerprint would take about 2**40 scrypt runs (over 2,000 core-years). A longer
  fingerprint would not protect a weak secret any better; the KDF's cost does that.
- **The length beside it** (:func:`describe`) catches the commonest mismatch, a stray
  newline or space, before anyone compares the fingerprints themselves.
"""

from __future__ import annotations

import base64
import hashlib

PREFIX = "fp1:"
SALT = b"sidecar-fingerprint-v1"
# scrypt cost (RFC 7914): 128 * r * N bytes = 16 MiB of memory, about 60 ms here.
N = 2**14
R = 8
P = 1
KEY_BYTES = 5  # 40 bits: 8 base32 characters
_MAXMEM = 32 * 1024 * 1024  # above 128 * r * N; OpenSSL's default limit is exactly 32 MiB


def secret_bytes(secret: str | bytes) -> bytes:
    """The bytes a secret is fingerprinted as: text as UTF-8 (an environment value
    that is not UTF-8 keeps its original bytes, via Python's surrogateescape)."""
    return secret if isinstance(secret, bytes) else secret.encode("utf-8", "surrogateescape")


def fingerprint(secret: str | bytes) -> str:
    """``fp1:`` and 8 lowercase base32 characters (see the module docstring)."""
    key = hashlib.scrypt(secret_bytes(secret), salt=SALT, n=N, r=R, p=P, dklen=KEY_BYTES, maxmem=_MAXMEM)
    return PREFIX + base64.b32encode(key).decode("ascii").lower()


def describe(secret: str | bytes) -> str:
    """The fingerprint with the secret's length in bytes: ``fp1:4gj32sxg (6 bytes)`` for ``secret``."""
    return f"{fingerprint(secret)} ({len(secret_bytes(secret))} bytes)"


def without_line_end(data: bytes) -> bytes:
    """``data`` without one trailing newline (``\\n`` or ``\\r\\n``): what ``echo`` or an
    editor adds to a secret piped in. Anything else, more newlines included, is kept."""
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def whitespace_note(secret: bytes) -> str | None:
    """A warning when the secret starts or ends with whitespace (the length shows it,
    this says it): usually a copy-paste accident rather than part of the secret."""
    if secret != secret.strip():
        return "note: the secret starts or ends with whitespace (a space, a tab or another newline)"
    return None
