"""Hold N idle authenticated WebSocket sessions through a real sidecar under abuse,
then show every session survived, nothing leaked, and what a session costs.

    .venv/bin/python bench/load.py                                # 5,000 sessions held 180 s
    .venv/bin/python bench/load.py --sessions 1000 --duration 30  # SESSIONS=, DURATION= work too

All over real sockets on loopback:

1. Starts the echo backend (``python -m tests.upstream PORT``) and ``sidecar serve
   --config bench/load.yaml`` (EDGE_SECRET, PORT, METRICS_PORT: fresh values). The
   sidecar is started with a soft RLIMIT_NOFILE of 1024, too low for N sessions: it
   has to raise its own (``open_files_limit`` in its ``sidecar.started`` line).
2. Measures the sidecar at baseline: open fds (/proc/PID/fd), RSS (/proc/PID/status
   VmRSS) and asyncio tasks (``sidecar_asyncio_tasks`` on /metrics), with
   ``process_open_fds`` and ``process_resident_memory_bytes`` beside them.
3. Warm-up round: opens N sessions from 127.0.0.1 (bounded concurrency; the first
   time, so RSS growth / N is the memory a session costs), holds them --warmup
   seconds under abuse, checks and closes them. Main round: the same, held
   DURATION seconds. During each hold, abusers on other loopback addresses (so a
   per-address limit on failed auth cannot lock the legitimate clients out) keep up
   slow request heads (slowloris), bad tokens, oversized messages and garbage heads
   and frames; what each received is counted.
4. After each hold: every session must still be open and echo a message. After each
   close: fds and tasks must come back to the baseline exactly. CPython keeps memory
   it has freed for reuse, so RSS stays near its high-water mark; a leak shows as
   growth from the end of the warm-up to the end of the main round, which must stay
   within a tolerance (default 5% of what N sessions took, at least 8 MiB).

Exit status 0 when all that holds, every abuser got an answer expected of it, the
sidecar logged no error, no token (the secret, or a wrong one sent) is in its log,
and it exited 0 on SIGTERM; 1 otherwise; 2 when it could not be set up. The output
is human-readable lines, the last one a JSON summary. The figures depend on the
machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "bench" / "load.yaml"
MAX_MESSAGE = 64 * 1024  # bench/load.yaml's max_message_size
HEADER_TIMEOUT = 10.0  # bench/load.yaml's listen.header_timeout

LEGIT = "127.0.0.1"
SLOWLORIS = "127.0.0.2"
BAD_TOKENS = [f"127.0.0.{i}" for i in range(3, 11)]  # brute force from 8 addresses
OVERSIZED = "127.0.0.11"
GARBAGE = "127.0.0.12"

# What each abuser may be answered; anything else is a finding.
EXPECTED = {
    "slowloris": {"cut off", "stopped"},
    "bad_token": {
        "401 invalid_token",
        "401 missing_token",
        "401 malformed_token",
        "429 rate_limited",
    },
    "oversized": {"close 1009"},
    "garbage_head": {"400 bad_request"},
    "garbage_frame": {"close 1002"},
}


def log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


# ---------------------------------------------------------------- processes


class SetupError(Exception):
    """The backend or the sidecar did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_own_fd_limit() -> tuple[int, int]:
    """This process holds N client sockets: soft RLIMIT_NOFILE up to the hard limit.
    Returns the original (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, hard


@dataclass
class Processes:
    backend: subprocess.Popen[bytes]
    sidecar: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    sidecar_log: Path
    started: dict[str, Any]

    def stop(self) -> int | None:
        """SIGTERM both; the sidecar's exit status (None if it had to be killed)."""
        status: int | None = None
        for process in (self.sidecar, self.backend):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                code = None
            if process is self.sidecar:
                status = code
        return status


async def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    async with asyncio.timeout(30):
        while True:
            if process.poll() is not None:
                raise SetupError(f"{what} exited with status {process.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            return


def started_line(path: Path) -> dict[str, Any] | None:
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "sidecar.started":
                return dict(record)
    return None


def launch(
    command: list[str], log_path: Path, env: dict[str, str], soft_limit: int | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` in the repository, its stderr to ``log_path``; ``soft_limit``:
    the soft RLIMIT_NOFILE it starts with."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def limit() -> None:
        if soft_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft_limit, hard))

    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log_file, preexec_fn=limit
        )


async def start_processes(secret: str, sidecar_soft: int, workdir: Path, log_level: str) -> Processes:
    backend_port, port, metrics_port = free_port(), free_port(), free_port()
    command = [sys.executable, "-m", "tests.upstream", str(backend_port)]
    backend = launch(command, workdir / "backend.log", dict(os.environ))
    await wait_for_port(backend_port, backend, "the backend")
    env = {
        **os.environ,
        "EDGE_SECRET": secret,
        "UPSTREAM_URL": f"http://127.0.0.1:{backend_port}",
        "PORT": str(port),
        "METRICS_PORT": str(metrics_port),
        "LOG_LEVEL": log_level,
    }
    sidecar_log = workdir / "sidecar.log"
    # Started with a soft limit too low for N sessions (as a shell or service manager
    # would start it): the sidecar has to raise its own.
    command = [sys.executable, "-m", "sidecar", "serve", "--config", str(CONFIG)]
    sidecar = launch(command, sidecar_log, env, soft_limit=sidecar_soft)
    processes = Processes(backend, sidecar, port, metrics_port, sidecar_log, {})
    try:
        await wait_for_port(port, sidecar, "the sidecar")
        await wait_for_port(metrics_port, sidecar, "the sidecar's metrics listener")
        async with asyncio.timeout(30):
            while (started := started_line(sidecar_log)) is None:  # noqa: ASYNC110 - another process writes it
                await asyncio.sleep(0.1)
        processes.started = started
    except BaseException:
        processes.stop()
        raise
    return processes


# ---------------------------------------------------------------- measuring


@dataclass
class Snapshot:
    fds: int  # /proc/PID/fd
    rss_kb: int  # /proc/PID/status VmRSS
    tasks: int  # sidecar_asyncio_tasks
    metric_fds: int  # process_open_fds (includes the scrape's own connection)
    metric_rss_kb: int  # process_resident_memory_bytes / 1024
    sessions: int  # sidecar_ws_connections_active


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def scrape(port: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as s,
        s.get(f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=30)) as r,
    ):
        text = await r.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, 0.0)
            samples[sample.name] += sample.value  # summed over labels (routes)
    return samples


async def snapshot(p: Processes) -> Snapshot:
    pid = p.sidecar.pid
    fds, rss = proc_fds(pid), proc_rss_kb(pid)
    m = await scrape(p.metrics_port)
    return Snapshot(
        fds=fds,
        rss_kb=rss,
        tasks=int(m["sidecar_asyncio_tasks"]),
        metric_fds=int(m["process_open_fds"]),
        metric_rss_kb=int(m["process_resident_memory_bytes"] // 1024),
        sessions=int(m.get("sidecar_ws_connections_active", 0)),
    )


async def settle(p: Processes, target: Snapshot | None, bound: float) -> tuple[Snapshot, float]:
    """Snapshot until fds and tasks are at ``target``'s (with no target: unchanged
    between two snapshots half a second apart), at most ``bound`` seconds. Returns
    the last snapshot and the time it took."""
    started = time.monotonic()
    last = await snapshot(p)
    if target is not None and (last.fds, last.tasks) == (target.fds, target.tasks):
        return last, 0.0
    while time.monotonic() - started < bound:
        await asyncio.sleep(0.5)
        now = await snapshot(p)
        goal = target if target is not None else last
        if (now.fds, now.tasks) == (goal.fds, goal.tasks):
            return now, time.monotonic() - started
        last = now
    return last, time.monotonic() - started


def describe(name: str, s: Snapshot) -> str:
    return (
        f"{name:<22} fds {s.fds:>6} (process_open_fds {s.metric_fds})  "
        f"RSS {s.rss_kb / 1024:8.1f} MiB (process_resident_memory_bytes {s.metric_rss_kb / 1024:.1f})  "
        f"tasks {s.tasks:>6}  sessions {s.sessions}"
    )


# ---------------------------------------------------------------- legitimate sessions


@dataclass(eq=False)
class Legit:
    index: int
    ws: aiohttp.ClientWebSocketResponse
    watch: asyncio.Future[aiohttp.WSMessage]  # the pending receive(): done early = the session died


def agent_headers(secret: str, agent_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}", "X-Edge-Agent-Id": agent_id}


async def open_sessions(
    client: aiohttp.ClientSession, url: str, secret: str, n: int, concurrency: int
) -> tuple[list[Legit], Counter[str]]:
    gate = asyncio.Semaphore(concurrency)
    failures: Counter[str] = Counter()
    opened: list[Legit] = []

    async def one(i: int) -> None:
        async with gate:
            try:
                ws = await client.ws_connect(
                    url,
                    headers=agent_headers(secret, f"load_{i}"),
                    heartbeat=None,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10),
                )
            except aiohttp.WSServerHandshakeError as exc:
                reason = exc.headers.get("X-Sidecar-Reason", "-") if exc.headers else "-"
                failures[f"{exc.status} {reason}"] += 1
                return
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures[type(exc).__name__] += 1
                return
            opened.append(Legit(i, ws, asyncio.ensure_future(ws.receive())))

    await asyncio.gather(*(one(i) for i in range(n)))
    return opened, failures


def how_it_ended(msg: aiohttp.WSMessage) -> str:
    if msg.type is aiohttp.WSMsgType.CLOSE:
        return f"close {msg.data} {msg.extra or ''}".strip()
    return msg.type.name.lower()


async def check_session(s: Legit) -> str | None:
    """None if the session is alive and echoes; else what happened to it."""
    if s.watch.done():
        return "closed during the hold: " + how_it_ended(s.watch.result())
    payload = f"alive {s.index}"
    try:
        await s.ws.send_str(payload)
        msg = await asyncio.wait_for(asyncio.shield(s.watch), 30)
    except (ConnectionError, TimeoutError) as exc:
        return f"no echo: {type(exc).__name__}"
    if msg.type is not aiohttp.WSMsgType.TEXT or msg.data != payload:
        return "no echo: " + how_it_ended(msg)
    return None


async def close_session(s: Legit) -> str:
    await s.ws.close(code=1000, message=b"done")
    return f"close {s.ws.close_code}"


async def bounded(items: list[Legit], work: Callable[[Legit], Awaitable[Any]], concurrency: int) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(item: Legit) -> Any:
        async with gate:
            return await work(item)

    return list(await asyncio.gather(*(one(item) for item in items)))


# ---------------------------------------------------------------- abusers


@dataclass
class Abuse:
    host_port: tuple[str, int]
    url: str
    secret: str
    rates: dict[str, float]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    cut_off_after: list[float] = field(default_factory=list)  # slowloris: seconds to being cut off
    tokens: set[str] = field(default_factory=set)  # the wrong secrets sent: none may be logged

    def count(self, kind: str, outcome: str) -> None:
        self.outcomes.setdefault(kind, Counter())[outcome] += 1

    def unexpected(self) -> dict[str, dict[str, int]]:
        return {
            kind: {o: n for o, n in counts.items() if o not in EXPECTED[kind]}
            for kind, counts in self.outcomes.items()
            if any(o not in EXPECTED[kind] for o in counts)
        }

    async def open(self, addr: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = self.host_port
        return await asyncio.open_connection(host, port, local_addr=(addr, 0))

    async def pace(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def run(self, kind: str, attempt: Callable[[], Awaitable[str]], workers: int, rate: float) -> None:
        """``workers`` loops of ``attempt``, together about ``rate`` attempts a second."""

        async def loop() -> None:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    outcome = await attempt()
                except Exception as exc:  # counted, and judged against EXPECTED
                    outcome = f"error {type(exc).__name__}"
                self.count(kind, outcome)
                await self.pace(workers / rate - (time.monotonic() - started))

        await asyncio.gather(*(loop() for _ in range(workers)))

    def handshake(self, authorization: str | None, agent_id: str) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET /edge/ws?edge_agent_id={agent_id} HTTP/1.1",
            f"Host: {self.host_port[0]}:{self.host_port[1]}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if authorization is not None:
            lines.append(f"Authorization: {authorization}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def slowloris(self) -> str:
        """A request head sent a byte at a time, never finished: it must be cut off."""
        reader, writer = await self.open(SLOWLORIS)
        started = time.monotonic()
        try:
            for byte in self.handshake(f"Bearer {secrets.token_hex(8)}", "slow"):
                if self.stop.is_set():
                    return "stopped"
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    answer = await asyncio.wait_for(reader.read(1024), 0.5)
                except TimeoutError:
                    continue  # nothing back: the next byte
                except ConnectionError:
                    answer = b""
                if answer:
                    return "answered " + answer.split(b"\r\n", 1)[0].decode(errors="replace")
                self.cut_off_after.append(time.monotonic() - started)
                return "cut off"
            return "head completed"  # too short a head for the deadline: a bug in this script
        finally:
            writer.transport.abort()

    async def refused(self, addr: str, request: bytes) -> str:
        """Send ``request``; the status and X-Sidecar-Reason of the answer."""
        reader, writer = await self.open(addr)
        try:
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except asyncio.IncompleteReadError as exc:
            return "closed without an answer" if not exc.partial else "truncated answer"
        finally:
            writer.transport.abort()
        lines = head.decode("latin-1").split("\r\n")
        reason = next(
            (line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("x-sidecar-reason:")), "-"
        )
        return f"{lines[0].split(' ')[1]} {reason}"

    async def bad_token(self) -> str:
        """Brute force: wrong secrets, mostly; some missing or malformed."""
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        authorization = random.choice([f"Bearer {token}"] * 6 + [None, "Basic dXNlcjpwYXNz", "Bearer  two-spaces"])
        return await self.refused(random.choice(BAD_TOKENS), self.handshake(authorization, "brute"))

    async def oversized(self) -> str:
        """A session that sends one message over max_message_size: close 1009 expected.
        Half the time as one frame, half as fragments (each under the limit)."""
        agent = f"big_{secrets.token_hex(4)}"
        async with connect(
            self.url,
            additional_headers=agent_headers(self.secret, agent),
            local_addr=(OVERSIZED, 0),
            max_size=None,
            ping_interval=None,
            compression=None,
            open_timeout=30,
        ) as ws:
            try:
                if random.random() < 0.5:
                    await ws.send(b"x" * (MAX_MESSAGE + 1))
                else:
                    await ws.send([b"y" * 16384] * (MAX_MESSAGE // 16384 + 1))
                await asyncio.wait_for(ws.recv(), 30)
            except ConnectionClosed as exc:
                return f"close {exc.rcvd.code}" if exc.rcvd else "closed without a close frame"
            return "echoed"

    async def garbage_head(self) -> str:
        """Random bytes, or a TLS ClientHello's first bytes, where a request head belongs."""
        if random.random() < 0.5:
            junk = os.urandom(random.randint(16, 512))
        else:
            junk = bytes.fromhex("160301020001000200fc0303") + os.urandom(64)
        return await self.refused(GARBAGE, junk + b"\r\n\r\n")

    async def garbage_frame(self) -> str:
        """An authenticated session that sends a frame with a reserved opcode (0x3,
        RFC 6455 section 5.2): 1002 expected."""
        reader, writer = await self.open(GARBAGE)
        try:
            writer.write(self.handshake(f"Bearer {self.secret}", f"junk_{secrets.token_hex(4)}"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            if not head.startswith(b"HTTP/1.1 101"):
                return "refused " + head.split(b"\r\n", 1)[0].decode(errors="replace")
            writer.write(bytes([0x83, 0x80 | 4]) + os.urandom(4) + b"junk")
            frame = await asyncio.wait_for(reader.readexactly(4), 30)
        except asyncio.IncompleteReadError:
            return "closed without a close frame"
        finally:
            writer.transport.abort()
        if frame[0] != 0x88:
            return f"frame opcode {frame[0] & 0x0F}"
        return f"close {int.from_bytes(frame[2:4], 'big')}"

    async def all(self) -> None:
        rates = self.rates
        await asyncio.gather(
            self.run(
                "slowloris", self.slowloris, workers=int(rates["slowloris"]), rate=rates["slowloris"] / HEADER_TIMEOUT
            ),
            self.run("bad_token", self.bad_token, workers=4, rate=rates["bad_token"]),
            self.run("oversized", self.oversized, workers=2, rate=rates["oversized"]),
            self.run("garbage_head", self.garbage_head, workers=2, rate=rates["garbage"] / 2),
            self.run("garbage_frame", self.garbage_frame, workers=2, rate=rates["garbage"] / 2),
        )


# ---------------------------------------------------------------- the run


def sidecar_log_findings(path: Path) -> Counter[str]:
    """The sidecar's view: its log lines by level, event and reason (or close code).
    A line that is not JSON (a traceback) counts as an error."""
    found: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            found["error unparsed line"] += 1
            continue
        detail = record.get("reason", record.get("code", ""))
        found[f"{record.get('level')} {record.get('event')} {detail}".strip()] += 1
    return found


def tokens_logged(path: Path, tokens: set[str]) -> int:
    """How many of ``tokens`` (the secret, the wrong ones sent) appear in the log."""
    return len(tokens.intersection(re.findall(r"[A-Za-z0-9_-]{20,}", path.read_text(errors="replace"))))


async def hold(p: Processes, legit: list[Legit], abuse: Abuse, duration: float) -> None:
    """Keep the sessions open ``duration`` seconds under abuse; a progress line every 15 s."""
    abuse.stop.clear()
    abusers = asyncio.ensure_future(abuse.all())
    started = time.monotonic()
    try:
        while (left := duration - (time.monotonic() - started)) > 0:
            await asyncio.sleep(min(15.0, left))
            if abusers.done():
                abusers.result()  # an abuser's bug: stop here, loudly
            s = await snapshot(p)
            dead = sum(x.watch.done() for x in legit)
            tally = {kind: sum(c.values()) for kind, c in abuse.outcomes.items()}
            log(
                f"  {time.monotonic() - started:4.0f} s: sessions closed {dead}; sidecar fds {s.fds}, "
                f"RSS {s.rss_kb / 1024:.1f} MiB, tasks {s.tasks}; abuse so far {tally}"
            )
    finally:
        abuse.stop.set()
        await asyncio.wait_for(abusers, 60)


@dataclass
class Round:
    """One round: N sessions opened, held under abuse, checked, closed."""

    opened: int
    open_failures: Counter[str]
    opening_s: float
    at_n: Snapshot
    after_abuse: Snapshot
    dead: Counter[str]
    closes: Counter[str]
    after: Snapshot
    settle_s: float


async def one_round(
    name: str, p: Processes, args: argparse.Namespace, secret: str, hold_s: float, abuse: Abuse, base: Snapshot
) -> Round:
    url = f"ws://127.0.0.1:{p.port}/edge/ws"
    connector = aiohttp.TCPConnector(limit=0, local_addr=(LEGIT, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as client:
        started = time.monotonic()
        legit, failures = await open_sessions(client, url, secret, args.sessions, args.concurrency)
        opening = time.monotonic() - started
        at_n, _ = await settle(p, None, 10)
        log(f"{name}: opened {len(legit)} of {args.sessions} in {opening:.1f} s; failures {dict(failures)}")
        log(describe(f"{name}: {len(legit)} open", at_n))

        await hold(p, legit, abuse, hold_s)
        after_abuse, took = await settle(p, at_n, 30)
        log(describe(f"{name}: abuse over", after_abuse) + f"  (settled in {took:.1f} s)")

        verdicts = await bounded(legit, check_session, args.concurrency)
        dead = Counter(v for v in verdicts if v is not None)
        alive = [s for s, v in zip(legit, verdicts, strict=True) if v is None]
        log(f"{name}: {len(alive)} of {len(legit)} survived and echoed; died: {dict(dead)}")
        closes = Counter(await bounded(alive, close_session, args.concurrency))
        log(f"{name}: closed by the clients, the sidecar answered: {dict(closes)}")
    after, settle_s = await settle(p, base, args.settle_timeout)
    log(describe(f"{name}: all closed", after) + f"  (settled in {settle_s:.1f} s)")
    return Round(len(legit), failures, opening, at_n, after_abuse, dead, closes, after, settle_s)


def judge(args: argparse.Namespace, cold: Snapshot, warm: Round, main: Round, tolerance_kb: int) -> list[str]:
    problems = []
    for name, r in (("warm-up", warm), ("main", main)):
        if r.opened < args.sessions:
            problems.append(f"{name}: only {r.opened} of {args.sessions} sessions opened: {dict(r.open_failures)}")
        if r.dead:
            problems.append(f"{name}: {sum(r.dead.values())} sessions died: {dict(r.dead)}")
        if (r.after.fds, r.after.tasks) != (cold.fds, cold.tasks):
            problems.append(
                f"{name}: fds/tasks not back to baseline: {r.after.fds}/{r.after.tasks} vs {cold.fds}/{cold.tasks}"
            )
    grown = main.after.rss_kb - warm.after.rss_kb
    if grown > tolerance_kb:
        problems.append(f"RSS grew {grown} KiB over the warm baseline (tolerance {tolerance_kb} KiB)")
    return problems


def report(
    args: argparse.Namespace, p: Processes, cold: Snapshot, warm: Round, main: Round, abuse: Abuse, tolerance_kb: int
) -> dict[str, Any]:
    n = max(warm.opened, 1)
    return {
        "sessions": args.sessions,
        "opened": main.opened,
        "survived": main.opened - sum(main.dead.values()),
        "died": dict(main.dead) | {f"warm-up {k}": v for k, v in warm.dead.items()},
        "hold_s": args.duration,
        "open_rate_per_s": round(main.opened / main.opening_s, 1),
        "open_files_limit": p.started.get("open_files_limit"),
        "baseline": asdict(cold),
        "at_n_first": asdict(warm.at_n),
        "warm_baseline": asdict(warm.after),
        "at_n": asdict(main.at_n),
        "after_abuse": asdict(main.after_abuse),
        "after_close": asdict(main.after),
        "settle_s": round(main.settle_s, 1),
        # What N sessions cost a fresh sidecar (the first time they are opened).
        "rss_per_session_kb": round((warm.at_n.rss_kb - cold.rss_kb) / n, 2),
        "fds_per_session": round((main.at_n.fds - cold.fds) / max(main.opened, 1), 3),
        "tasks_per_session": round((main.at_n.tasks - cold.tasks) / max(main.opened, 1), 3),
        "fds_back": main.after.fds == cold.fds,
        "tasks_back": main.after.tasks == cold.tasks,
        "rss_over_cold_baseline_kb": main.after.rss_kb - cold.rss_kb,
        "rss_over_warm_baseline_kb": main.after.rss_kb - warm.after.rss_kb,
        "rss_tolerance_kb": tolerance_kb,
        "client_closes": dict(main.closes),
        "abuse": {kind: dict(c) for kind, c in sorted(abuse.outcomes.items())},
        "abuse_unexpected": abuse.unexpected(),
        "slowloris_cut_off_s": [round(min(abuse.cut_off_after), 2), round(max(abuse.cut_off_after), 2)]
        if abuse.cut_off_after
        else None,
    }


async def run(args: argparse.Namespace) -> int:
    original_soft, hard = raise_own_fd_limit()
    secret = "load-" + secrets.token_urlsafe(24)
    workdir = Path(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    rates = {"slowloris": args.slowloris, "bad_token": args.bad_tokens, "oversized": args.oversized}
    rates["garbage"] = args.garbage
    log(f"load.py: {args.sessions} sessions held {args.duration:.0f} s; RLIMIT_NOFILE {original_soft} -> {hard}")
    sidecar_soft = min(args.sidecar_soft_limit, hard)
    p = await start_processes(secret, sidecar_soft, workdir, args.log_level)
    log(
        f"sidecar pid {p.sidecar.pid} on :{p.port}, metrics on :{p.metrics_port}, logs in {workdir}; "
        f"started at soft limit {sidecar_soft}, it logged open_files_limit={p.started.get('open_files_limit')}"
    )
    abuse = Abuse(("127.0.0.1", p.port), f"ws://127.0.0.1:{p.port}/edge/ws", secret, rates)
    try:
        cold, _ = await settle(p, None, 10)
        log(describe("baseline", cold))
        warm = await one_round("warm-up", p, args, secret, args.warmup, abuse, cold)
        main = await one_round("main", p, args, secret, args.duration, abuse, cold)
    finally:
        status = p.stop()
        log_findings = sidecar_log_findings(p.sidecar_log)
        leaked = tokens_logged(p.sidecar_log, abuse.tokens | {secret})

    tolerance_kb = args.rss_tolerance_kb
    if tolerance_kb is None:  # 5% of what N sessions took, and at least 8 MiB
        tolerance_kb = max(8192, (warm.at_n.rss_kb - cold.rss_kb) // 20)
    figures = report(args, p, cold, warm, main, abuse, tolerance_kb)
    figures["sidecar_log"] = dict(log_findings)
    figures["sidecar_exit_status"] = status
    figures["tokens_in_log"] = leaked
    log(
        f"per session: {figures['rss_per_session_kb']} KiB RSS, {figures['fds_per_session']} fds, "
        f"{figures['tasks_per_session']} tasks"
    )
    log(
        f"after close: fds back to baseline {figures['fds_back']}, tasks back {figures['tasks_back']}; RSS "
        f"{figures['rss_over_cold_baseline_kb']} KiB over the cold baseline, "
        f"{figures['rss_over_warm_baseline_kb']} KiB over the warm one (tolerance {tolerance_kb} KiB)"
    )
    for kind, counts in figures["abuse"].items():
        log(f"abuse {kind:<14} {counts}")
    log(f"slowloris cut off after (min, max) s: {figures['slowloris_cut_off_s']}")
    log(f"sidecar log lines: {dict(log_findings)}")
    log(f"sidecar exit status after SIGTERM: {status}; tokens in its log: {leaked} of {len(abuse.tokens) + 1} sent")

    problems = judge(args, cold, warm, main, tolerance_kb)
    if abuse.unexpected():
        problems.append(f"abusers got unexpected answers: {abuse.unexpected()}")
    if any(k.startswith(("error", "critical")) for k in log_findings):
        problems.append("the sidecar logged errors (see sidecar_log)")
    if status != 0:
        problems.append(f"the sidecar exited with {status} after SIGTERM")
    if leaked:
        problems.append(f"{leaked} tokens (the secret or wrong ones sent) appear in the sidecar's log")
    figures["problems"] = problems
    log("PASS" if not problems else "FAIL: " + "; ".join(problems))
    print(json.dumps(figures, sort_keys=True))
    return 0 if not problems else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=int(os.environ.get("SESSIONS", 5000)))
    parser.add_argument("--duration", type=float, default=float(os.environ.get("DURATION", 180)), help="hold, seconds")
    parser.add_argument("--concurrency", type=int, default=200, help="sessions opened (and checked) at once")
    parser.add_argument("--settle-timeout", type=float, default=60, help="longest wait for the sidecar to settle")
    parser.add_argument("--warmup", type=float, default=10, help="the warm-up round's hold, seconds")
    parser.add_argument(
        "--rss-tolerance-kb",
        type=int,
        default=None,
        help="RSS growth allowed from the warm baseline to the end (default: 5%% of the N-session growth, >= 8 MiB)",
    )
    parser.add_argument("--slowloris", type=float, default=20, help="slow heads open at once")
    parser.add_argument("--bad-tokens", type=float, default=50, help="bad-token handshakes a second")
    parser.add_argument("--oversized", type=float, default=4, help="oversized messages a second")
    parser.add_argument("--garbage", type=float, default=10, help="garbage heads and frames a second")
    parser.add_argument(
        "--sidecar-soft-limit",
        type=int,
        default=1024,
        help="the soft RLIMIT_NOFILE the sidecar is started with (it must raise its own)",
    )
    parser.add_argument("--log-level", default="info", help="the sidecar's LOG_LEVEL")
    parser.add_argument("--workdir", default="/tmp/sidecar-load", help="where the backend's and sidecar's logs go")
    args = parser.parse_args()
    try:
        return asyncio.run(run(args))
    except (SetupError, TimeoutError) as exc:
        print(f"load.py: could not set up: {exc or type(exc).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
