"""WebSocket handshakes per second through a real sidecar, by credential: the shared-secret
bearer, an HS256 JWT and an ES256 JWT (its key from a JWKS), side by side in one run.

    .venv/bin/python bench/handshakes.py                    # 5 rounds of 3 s per credential, 20 at once
    .venv/bin/python bench/handshakes.py --rounds 3 --seconds 5 --concurrency 50

Run it under the benchmark lock, so no other benchmark shares the machine meanwhile:
``flock /tmp/bench.lock .venv/bin/python bench/handshakes.py``.

All over real sockets on loopback: the echo backend (``python -m tests.upstream PORT``),
``sidecar serve --config bench/handshakes.yaml`` (one policy taking all three credentials),
a JWKS served from this process (fetched once, at the sidecar's start), and clients written
on raw sockets so that the client costs little and the same for every credential. Each
handshake is what the shared harness's is: connect, upgrade with the credential, one
message echoed, close (1000 both ways). Every connection is another agent: the bearer
sends the shared secret and ``X-Edge-Agent-Id: edge_<n>``; a JWT names ``edge_<n>`` in its
``sub`` and the request states no id (each agent its own token, minted up front).

Rounds alternate the credentials (bearer, hs256, es256, bearer, ...) so that drift on a
shared machine hits them alike; each credential's figure is its median round. Beside
handshakes/s: the sidecar's own CPU per handshake (utime + stime from /proc/PID/stat, as
the shared harness measures it), steadier than throughput when other processes compete;
and the verification alone, in this process (microseconds per token: the bearer's digest
comparison, ``sidecar.tokens.verify`` for each kind of JWT). The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # sidecar, for the in-process verification figures

from sidecar.config.model import JwtPolicy  # noqa: E402
from sidecar.keys import parse_jwks  # noqa: E402
from sidecar.tokens import verify  # noqa: E402

CONFIG = ROOT / "bench" / "handshakes.yaml"
ISSUER = "https://issuer.bench"
KINDS = ("bearer", "hs256", "es256")
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's: the server needs any valid key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid``, in clock ticks (proc(5))."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (RFC 6455 section 5.2), FIN set, masked (section 5.3)."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


async def read_frame(reader: asyncio.StreamReader) -> int:
    """One (short, unmasked) server frame; its opcode."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    await reader.readexactly(length)
    return first & 0x0F


async def handshake(port: int, credential: bytes) -> bool:
    """Connect, upgrade with ``credential`` (header lines), one echo, close: True if all went as it should."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET /edge/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n" + credential + b"\r\n"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 "):
            return False
        writer.write(masked(0x1, b"hi"))
        if await read_frame(reader) != 0x1:
            return False
        writer.write(masked(0x8, struct.pack("!H", 1000)))
        return await read_frame(reader) == 0x8
    finally:
        writer.close()


class Credentials:
    """Per agent, the header lines each kind of credential sends; tokens minted up front."""

    def __init__(self, agents: int, secret: str, jwt_secret: str, signer: ec.EllipticCurvePrivateKey) -> None:
        exp = int(time.time()) + 24 * 3600
        self.lines: dict[str, list[bytes]] = {kind: [] for kind in KINDS}
        for n in range(agents):
            agent = f"edge_{n}"
            claims = {"sub": agent, "iss": ISSUER, "iat": int(time.time()), "exp": exp}
            hs = jwt.encode(claims, jwt_secret, algorithm="HS256")
            es = jwt.encode(claims, signer, algorithm="ES256", headers={"kid": "bench-es"})
            self.lines["bearer"].append(f"Authorization: Bearer {secret}\r\nX-Edge-Agent-Id: {agent}\r\n".encode())
            self.lines["hs256"].append(f"Authorization: Bearer {hs}\r\n".encode())
            self.lines["es256"].append(f"Authorization: Bearer {es}\r\n".encode())


async def measure(port: int, lines: list[bytes], seconds: float, concurrency: int) -> tuple[int, int, float]:
    """Handshakes done and failed in ``seconds`` with ``concurrency`` clients, and the time taken."""
    done = failed = 0
    turn = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, failed, turn
        while time.monotonic() < deadline:
            credential = lines[turn % len(lines)]
            turn += 1
            try:
                ok = await asyncio.wait_for(handshake(port, credential), 10)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                ok = False
            done, failed = (done + 1, failed) if ok else (done, failed + 1)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, failed, time.monotonic() - started


def per_verification(check: Callable[[], object], n: int = 2000) -> float:
    """Microseconds per call of ``check`` (the best of three runs of ``n``)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            check()
        best = min(best, time.perf_counter() - started)
    return round(best / n * 1e6, 1)


def verification_costs(secret: str, jwt_secret: str, creds: Credentials, jwks: bytes) -> dict[str, float]:
    """The sidecar's own verification of each kind of credential, in this process."""
    keys, _ = parse_jwks(jwks)
    policy = JwtPolicy(secrets=(jwt_secret.encode(),), algorithms=("HS256", "ES256"), issuer=ISSUER)
    digests = [hashlib.sha256(secret.encode()).digest()]
    token = {kind: creds.lines[kind][0].split(b"Bearer ")[1].split(b"\r\n")[0].decode() for kind in KINDS}

    def bearer() -> bool:
        digest = hashlib.sha256(token["bearer"].encode()).digest()
        return any([hmac.compare_digest(digest, d) for d in digests])

    return {
        "bearer": per_verification(bearer),
        "hs256": per_verification(lambda: verify(token["hs256"], policy, keys)),
        "es256": per_verification(lambda: verify(token["es256"], policy, keys)),
    }


async def serve_jwks(document: bytes) -> web.AppRunner:
    async def keys(_: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    app = web.Application()
    app.router.add_get("/jwks", keys)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    return runner


def launch(command: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``command`` in the repository with this environment plus ``env``, its stderr to ``log_path``."""
    with open(log_path, "wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=out)


async def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    async with asyncio.timeout(30):
        while True:
            if process.poll() is not None:
                raise SystemExit(f"handshakes.py: {what} exited with status {process.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            return


async def run(args: argparse.Namespace) -> int:
    secret, jwt_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(48)
    signer = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.get_algorithm_by_name("ES256").to_jwk(signer.public_key()))
    document = json.dumps({"keys": [{**jwk, "kid": "bench-es", "alg": "ES256", "use": "sig"}]}).encode()
    creds = Credentials(args.agents, secret, jwt_secret, signer)
    costs = verification_costs(secret, jwt_secret, creds, document)

    jwks_runner = await serve_jwks(document)
    jwks_site = web.TCPSite(jwks_runner, "127.0.0.1", 0)
    await jwks_site.start()
    jwks_port = jwks_site.port
    backend_port, port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="sidecar-handshakes-"))
    backend = launch([sys.executable, "-m", "tests.upstream", str(backend_port)], workdir / "backend.log", {})
    env = {
        "PORT": str(port),
        "UPSTREAM_URL": f"http://127.0.0.1:{backend_port}",
        "BENCH_SECRET": secret,
        "BENCH_JWT_SECRET": jwt_secret,
        "JWKS_URL": f"http://127.0.0.1:{jwks_port}/jwks",
    }
    sidecar = launch([sys.executable, "-m", "sidecar", "serve", "--config", str(CONFIG)], workdir / "sidecar.log", env)
    try:
        await wait_for_port(backend_port, backend, "the backend")
        await wait_for_port(port, sidecar, "the sidecar")
        for kind in KINDS:  # each credential works before anything is measured
            if not await handshake(port, creds.lines[kind][0]):
                raise SystemExit(f"handshakes.py: a {kind} handshake failed; see {workdir / 'sidecar.log'}")
        await measure(port, creds.lines["bearer"], 1.0, args.concurrency)  # warm-up
        rounds: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
        failures = dict.fromkeys(KINDS, 0)
        hz = os.sysconf("SC_CLK_TCK")
        for r in range(args.rounds):
            for kind in KINDS:
                ticks = cpu_ticks(sidecar.pid)
                done, failed, elapsed = await measure(port, creds.lines[kind], args.seconds, args.concurrency)
                cpu_us = (cpu_ticks(sidecar.pid) - ticks) / hz * 1e6 / max(done, 1)
                rounds[kind].append((done / elapsed, cpu_us))
                failures[kind] += failed
                print(f"round {r + 1} {kind:<6} {done / elapsed:8.0f} handshakes/s  {cpu_us:6.0f} us sidecar CPU each")
    finally:
        for process in (sidecar, backend):
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
        await jwks_runner.cleanup()
    summary = {}
    base = statistics.median(rate for rate, _ in rounds["bearer"])
    for kind in KINDS:
        rate = statistics.median(r for r, _ in rounds[kind])
        cpu = statistics.median(c for _, c in rounds[kind])
        summary[kind] = {
            "handshakes_per_s": round(rate),
            "vs_bearer": round(rate / base, 3),
            "sidecar_cpu_us_per_handshake": round(cpu),
            "verify_us": costs[kind],
            "failed": failures[kind],
        }
    print()
    print(f"{'credential':<11}{'handshakes/s':>13}{'vs bearer':>11}{'sidecar CPU/hs':>16}{'verify alone':>14}")
    for kind, row in summary.items():
        print(
            f"{kind:<11}{row['handshakes_per_s']:>13}{row['vs_bearer']:>11.3f}"
            f"{row['sidecar_cpu_us_per_handshake']:>13} us{row['verify_us']:>11} us"
        )
    params = {"rounds": args.rounds, "seconds": args.seconds, "concurrency": args.concurrency, "agents": args.agents}
    print(json.dumps({"bench": "handshakes", **params, "results": summary}))
    return 1 if any(failures.values()) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each measures every credential (5)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per credential per round (3)")
    parser.add_argument("--concurrency", type=int, default=20, help="clients at once, as the harness's HS_CONC (20)")
    parser.add_argument("--agents", type=int, default=2000, help="agents, each with its own token (2000)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
