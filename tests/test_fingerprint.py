"""Fingerprints: known vectors computed here from the documented derivation (hashlib
directly, and OpenSSL's scrypt where it has one), and ``sidecar fingerprint`` as a
process, reading stdin or an environment variable, never printing the secret."""

from __future__ import annotations

import base64
import hashlib
import os
import pty
import shutil
import subprocess
import sys

import pytest

from sidecar.fingerprint import describe, fingerprint, whitespace_note, without_line_end

from .conftest import ROOT

REPORTED = "b3c7ddc616a155d9190252454fd82d1be3c9840dc5a0937defb78d948af70d81"  # the report's, pasted in the clear


def scrypt_fp(secret: bytes) -> str:
    """The module docstring's derivation, written out again."""
    key = hashlib.scrypt(secret, salt=b"sidecar-fingerprint-v1", n=16384, r=8, p=1, dklen=5)
    return "fp1:" + base64.b32encode(key).decode("ascii").lower()


@pytest.mark.parametrize(
    "secret",
    ["secret", REPORTED, "a", "p\u00e4ssw\u00f6rd", "with space", "line\nbreak", "x" * 1000, "\U0001f511"],
)
def test_known_vectors(secret: str) -> None:
    assert fingerprint(secret) == scrypt_fp(secret.encode("utf-8"))
    assert fingerprint(secret.encode("utf-8")) == fingerprint(secret)
    assert describe(secret) == f"{scrypt_fp(secret.encode())} ({len(secret.encode())} bytes)"


def test_fingerprints_are_stable_across_versions() -> None:
    # Pinned: a change here breaks every fingerprint anyone has written down. 'secret'
    # was checked with `openssl kdf -keylen 5 -kdfopt pass:secret -kdfopt salt:sidecar-fingerprint-v1
    # -kdfopt n:16384 -kdfopt r:8 -kdfopt p:1 SCRYPT` (E1:93:BD:4A:E6, base32 4GJ32SXG).
    assert fingerprint("secret") == "fp1:4gj32sxg"
    assert fingerprint(REPORTED) == "fp1:lvy2olog"


def test_an_environment_value_that_is_not_utf8_keeps_its_bytes() -> None:
    value = b"\xffsecret".decode("utf-8", "surrogateescape")  # what os.environ holds for those bytes
    assert fingerprint(value) == scrypt_fp(b"\xffsecret")


def test_openssl_computes_the_same() -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is missing (Debian package openssl)")
        pytest.skip("openssl is not installed (Debian package openssl)")
    options = ["pass:secret", "salt:sidecar-fingerprint-v1", "n:16384", "r:8", "p:1"]
    result = subprocess.run(
        [openssl, "kdf", "-keylen", "5", *(arg for o in options for arg in ("-kdfopt", o)), "SCRYPT"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0 and os.environ.get("CI") != "true":
        pytest.skip(f"this openssl has no 'kdf ... SCRYPT' (OpenSSL 3 has): {result.stderr.strip()}")
    key = bytes.fromhex(result.stdout.strip().replace(":", ""))
    assert "fp1:" + base64.b32encode(key).decode().lower() == fingerprint("secret")


@pytest.mark.parametrize(
    ("data", "secret"),
    [
        (b"abc\n", b"abc"),
        (b"abc\r\n", b"abc"),
        (b"abc", b"abc"),
        (b"abc\n\n", b"abc\n"),  # one newline only
        (b"abc\r", b"abc\r"),
        (b"abc \n", b"abc "),
        (b"\n", b""),
        (b"", b""),
    ],
)
def test_without_line_end(data: bytes, secret: bytes) -> None:
    assert without_line_end(data) == secret


@pytest.mark.parametrize(("secret", "noted"), [(b"abc", False), (b"abc ", True), (b" abc", True), (b"abc\n", True)])
def test_whitespace_note(secret: bytes, noted: bool) -> None:
    assert (whitespace_note(secret) is not None) == noted


# --- the command -------------------------------------------------------------------------

SECRET = "fingerprint-test-secret-31f0"


def run(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "fingerprint", *args],
        input=stdin,
        capture_output=True,
        env={**clean, **(env or {})},
        cwd=ROOT,
        timeout=60,
    )
    assert SECRET.encode() not in result.stdout + result.stderr
    return result


@pytest.mark.parametrize("line_end", [b"", b"\n", b"\r\n"])
def test_stdin(line_end: bytes) -> None:
    result = run(stdin=SECRET.encode() + line_end)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout.decode() == f"{scrypt_fp(SECRET.encode())} ({len(SECRET)} bytes)\n"


def test_stdin_keeps_a_second_newline_and_says_so() -> None:
    result = run(stdin=SECRET.encode() + b"\n\n")
    assert result.returncode == 0
    with_newline = SECRET.encode() + b"\n"
    assert result.stdout.decode() == f"{scrypt_fp(with_newline)} ({len(with_newline)} bytes)\n"
    assert b"note: the secret starts or ends with whitespace" in result.stderr


def test_env() -> None:
    result = run("--env", "EDGE_SECRET", env={"EDGE_SECRET": SECRET})
    assert (result.returncode, result.stdout.decode()) == (0, f"{scrypt_fp(SECRET.encode())} ({len(SECRET)} bytes)\n")


@pytest.mark.parametrize(
    ("args", "stdin", "env", "says"),
    [
        ([], b"", {}, "no secret on stdin"),
        ([], b"\n", {}, "no secret on stdin"),
        (["--env", "EDGE_SECRET"], b"", {}, "EDGE_SECRET is not set"),
        (["--env", "EDGE_SECRET"], SECRET.encode(), {"EDGE_SECRET": ""}, "EDGE_SECRET is empty"),
    ],
)
def test_nothing_to_fingerprint_is_bad_usage(args: list[str], stdin: bytes, env: dict[str, str], says: str) -> None:
    result = run(*args, stdin=stdin, env=env)
    assert (result.returncode, result.stdout) == (2, b"")
    assert says in result.stderr.decode()


def test_a_terminal_is_asked_without_echo() -> None:
    """On a terminal the secret is typed at a prompt that does not echo it (getpass)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, on the pty
        os.execve(sys.executable, [sys.executable, "-m", "sidecar", "fingerprint"], dict(os.environ))
    seen = b""
    while b"(not shown): " not in seen:
        seen += os.read(fd, 1024)
    os.write(fd, SECRET.encode() + b"\n")
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # EIO: the child has exited and the pty is closed
            break
        if not chunk:
            break
        seen += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert SECRET.encode() not in seen
    assert f"{scrypt_fp(SECRET.encode())} ({len(SECRET)} bytes)".encode() in seen
