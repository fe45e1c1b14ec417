"""What one WebSocket session costs the sidecar, counted rather than timed: a real sidecar
serving ``bench/routes.yaml`` in this process, the echo backend (``python -m tests.upstream``)
and the clients in processes of their own, so that what is counted here is the sidecar's alone.

Each session is the shared harness's: connect, upgrade with the Bearer token and an agent id
of its own, one message echoed, close (1000 both ways).

    .venv/bin/python bench/sessioncost.py                    # CPU us per session (getrusage), 5 runs, median
    .venv/bin/python bench/sessioncost.py --profile          # Python function calls per session, and the top
    # instructions per session, steady on a shared machine (valgrind's callgrind, this process only):
    for n in 200 1200; do valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \\
        .venv/bin/python bench/sessioncost.py --sessions $n --runs 1 2>&1 | grep Collected; done   # (b - a) / 1000

The function calls per session (cProfile) and the instructions (callgrind) hardly move with
the load on the machine; the CPU figure does, so run it under ``flock /tmp/bench.lock``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the clients (a process of their own) ------------------------------------------------


async def _frame(reader: asyncio.StreamReader) -> int:
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    await reader.readexactly(length)
    return first & 0x0F


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


async def _session(port: int, n: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET /edge/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n"
            b"Authorization: Bearer bench-secret\r\nX-Edge-Agent-Id: edge_%d\r\n\r\n" % n
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head[:80]
        writer.write(_masked(0x1, b"hello"))
        assert await _frame(reader) == 0x1
        writer.write(_masked(0x8, struct.pack("!H", 1000)))
        assert await _frame(reader) == 0x8
        await reader.read()  # the sidecar closes first
    finally:
        writer.close()


async def load(port: int, sessions: int, concurrency: int) -> None:
    turn = iter(range(sessions))

    async def worker() -> None:
        for n in turn:
            await _session(port, n)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# --- the sidecar (this process) -----------------------------------------------------------


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _clients(port: int, sessions: int, concurrency: int) -> None:
    command = [sys.executable, __file__, "--load", str(port), str(sessions), str(concurrency)]
    process = await asyncio.create_subprocess_exec(*command, cwd=ROOT)
    if await process.wait() != 0:
        raise SystemExit("sessioncost.py: the clients failed")


async def _wait_for_port(port: int) -> None:
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise SystemExit(f"sessioncost.py: nothing listens on {port}")


async def measure(args: argparse.Namespace, backend_port: int) -> None:
    from sidecar.config.files import read_config
    from sidecar.server import start

    os.environ.update(PORT="0", UPSTREAM=f"127.0.0.1:{backend_port}")
    config, problems = read_config(str(ROOT / "bench" / "routes.yaml"), strict=False)
    assert config is not None, problems
    running = await start(config, port=0)
    await _wait_for_port(backend_port)
    await _clients(running.port, args.warm, args.concurrency)
    cpu: list[float] = []
    for _ in range(args.runs):
        profiler = cProfile.Profile() if args.profile else None
        before, started = _cpu(), time.monotonic()
        if profiler is not None:
            profiler.enable()
        await _clients(running.port, args.sessions, args.concurrency)
        if profiler is not None:
            profiler.disable()
        spent, elapsed = _cpu() - before, time.monotonic() - started
        cpu.append(spent / args.sessions * 1e6)
        line = f"{args.sessions} sessions in {elapsed:.2f} s: {cpu[-1]:.0f} us of the sidecar's CPU each"
        if profiler is not None:
            stats = pstats.Stats(profiler)
            line += f", {stats.total_calls / args.sessions:.1f} Python function calls each"  # type: ignore[attr-defined]
        print(line, flush=True)
        if profiler is not None and args.top:
            stats.sort_stats(args.sort).print_stats(args.top)
        if profiler is not None and args.callers:
            stats.print_callers(args.callers)
        if profiler is not None and args.dump:
            stats.dump_stats(args.dump)
    print(f"median of {args.runs}: {statistics.median(cpu):.0f} us of CPU per session")
    await running.close()


def main() -> None:
    if sys.argv[1:2] == ["--load"]:
        port, sessions, concurrency = map(int, sys.argv[2:5])
        asyncio.run(load(port, sessions, concurrency))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000, help="sessions per run (2000)")
    parser.add_argument("--runs", type=int, default=5, help="runs; the CPU figure is their median (5)")
    parser.add_argument("--warm", type=int, default=200, help="sessions before the first run (200)")
    parser.add_argument("--concurrency", type=int, default=20, help="clients at once, as the harness's (20)")
    parser.add_argument("--profile", action="store_true", help="count function calls with cProfile")
    parser.add_argument("--top", type=int, default=0, help="with --profile: print this many entries")
    parser.add_argument("--sort", default="tottime", help="with --top: pstats' sort key (tottime)")
    parser.add_argument("--dump", help="with --profile: write the last run's stats to this file")
    parser.add_argument("--callers", help="with --profile: who calls the functions matching this pattern")
    args = parser.parse_args()
    import uvloop

    backend_port = free_port()
    backend = subprocess.Popen(
        [sys.executable, "-m", "tests.upstream", str(backend_port)], cwd=ROOT, stdout=subprocess.DEVNULL
    )
    try:
        uvloop.run(measure(args, backend_port))
    finally:
        backend.terminate()
        backend.wait()


if __name__ == "__main__":
    main()
