"""Relay-only micro benchmark: CPU per relayed message and memory per idle session.

Three processes on loopback: an echo backend (python `websockets`), the proxy being
measured, and this driver as the client. The proxy is either

* ``new``: tests/relaying.py's front door (the least a proxy does before relaying: the
  client's upgrade passed to the backend, its 101 passed back) and ``sidecar.relay.Relay``,
  on asyncio's loop or uvloop's; or
* ``pipe``: the same front door, then a blind byte pipe: the floor, nothing scanned; or
* ``old``: the sidecar as it is on main (``sidecar serve``, aiohttp on both legs and the
  message-level relay), on asyncio's loop.

The driver opens the sessions, then reads the proxy's CPU time (user+sys, /proc) around
a fixed number of echo round trips: each is two relayed messages. Memory: the proxy's
RSS before and after opening ``IDLE`` more sessions that then sit idle.

    .venv/bin/python bench/relay_micro.py            # every proxy, 64 B and 256 KiB
    .venv/bin/python bench/relay_micro.py new uvloop # one

Prints one JSON line per proxy and size. Loopback only; bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
AGENTS = iter(range(10**9))


def headers() -> dict[str, str]:
    """bench/routes.yaml's credentials; an agent id of its own per session (the old sidecar
    replaces a session whose agent id connects again)."""
    return {"Authorization": "Bearer bench-secret", "X-Edge-Agent-Id": f"edge_{next(AGENTS)}"}


SIZES = {"64B": (64, 50, 1000), "256KiB": (256 * 1024, 4, 400)}  # size, connections, round trips each
IDLE = int(os.environ.get("IDLE", "1000"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# --- the processes -------------------------------------------------------------------------


async def serve_backend(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", port, compression=None, max_size=None, ping_interval=None):
        print("ready", flush=True)
        await asyncio.Event().wait()


async def serve_new(port: int, upstream: int) -> None:
    from tests.relaying import Options, front

    options = Options(max_message_size=8 * 1024 * 1024, keepalive_interval=25.0)
    async with front(upstream, options, port=port):
        print("ready", flush=True)
        await asyncio.Event().wait()


class _Pipe(asyncio.Protocol):
    """The floor: bytes from one transport written to the other, nothing looked at."""

    def __init__(self, out: asyncio.Transport) -> None:
        self.out = out

    def data_received(self, data: bytes) -> None:
        self.out.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.close()


async def serve_pipe(port: int, upstream: int) -> None:
    """The same front door, then a blind pipe instead of the relay."""
    import tests.relaying as relaying

    async def blind(self: relaying.Front, client: asyncio.Transport, head: bytes, rest: bytes) -> None:
        loop = asyncio.get_running_loop()
        up, dial = await loop.create_connection(relaying._Head, "127.0.0.1", self.upstream_port)
        up.write(relaying._forwarded(head, False))
        answer, _ = await dial.head  # (this backend sends nothing first)
        client.write(answer + b"\r\n\r\n")
        client.set_protocol(_Pipe(up))
        up.set_protocol(_Pipe(client))
        client.resume_reading()
        up.resume_reading()

    relaying.Front._open = blind  # type: ignore[method-assign]
    await serve_new(port, upstream)


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(args, stdout=subprocess.PIPE, env={**os.environ, **(env or {})}, cwd=ROOT)
    return process


def wait_ready(process: subprocess.Popen[bytes], port: int) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


# --- the driver ------------------------------------------------------------------------------


async def measure(proxy: str, loop_name: str) -> list[dict[str, object]]:
    from websockets.asyncio.client import connect

    backend_port, port = free_port(), free_port()
    backend = start(sys.executable, __file__, "--backend", str(backend_port))
    wait_ready(backend, backend_port)
    if proxy == "old":
        sidecar = str(ROOT / ".venv/bin/sidecar")
        env = {"PORT": str(port), "UPSTREAM": f"127.0.0.1:{backend_port}"}
        server = start(sidecar, "serve", "--config", "bench/routes.yaml", env=env)
    else:
        server = start(sys.executable, __file__, "--proxy", loop_name, str(port), str(backend_port), proxy)
    wait_ready(server, port)
    url = f"ws://127.0.0.1:{port}/edge/ws"
    out: list[dict[str, object]] = []
    try:
        for name, (size, conns, trips) in SIZES.items():
            sessions = [
                await connect(url, additional_headers=headers(), compression=None, max_size=None, ping_interval=None)
                for _ in range(conns)
            ]
            message = os.urandom(size)

            async def pingpong(ws: object, n: int, message: bytes = message) -> None:
                for _ in range(n):
                    await ws.send(message)  # type: ignore[attr-defined]
                    await ws.recv()  # type: ignore[attr-defined]

            await asyncio.gather(*(pingpong(ws, 20) for ws in sessions))  # warm up
            cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
            await asyncio.gather(*(pingpong(ws, trips) for ws in sessions))
            cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
            for ws in sessions:
                await ws.close()
            relayed = 2 * conns * trips
            out.append(
                {
                    "proxy": proxy,
                    "loop": loop_name,
                    "size": name,
                    "messages": relayed,
                    "us_cpu_per_message": round((cpu1 - cpu0) / relayed * 1e6, 2),
                    "messages_per_s": round(relayed / (t1 - t0)),
                }
            )
        await asyncio.sleep(0.5)
        before = rss_kib(server.pid)
        idle = []
        for _ in range(IDLE):
            idle.append(
                await connect(url, additional_headers=headers(), compression=None, max_size=None, ping_interval=None)
            )
        await asyncio.sleep(1.0)
        after = rss_kib(server.pid)
        out.append({"proxy": proxy, "loop": loop_name, "idle_sessions": IDLE, "kib_per_idle": (after - before) / IDLE})
        for ws in idle:
            await ws.close()
    finally:
        for process in (server, backend):
            process.terminate()
            process.wait(10)
    return out


def main() -> None:
    if sys.argv[1:2] == ["--backend"]:
        asyncio.run(serve_backend(int(sys.argv[2])))
        return
    if sys.argv[1:2] == ["--proxy"]:
        loop_name, port, upstream = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        serve = serve_pipe if sys.argv[5:6] == ["pipe"] else serve_new
        if loop_name == "uvloop":
            import uvloop

            uvloop.run(serve(port, upstream))
        else:
            asyncio.run(serve(port, upstream))
        return
    every = [("old", "asyncio"), ("pipe", "asyncio"), ("new", "asyncio"), ("pipe", "uvloop"), ("new", "uvloop")]
    wanted = [tuple(sys.argv[1:3])] if len(sys.argv) > 2 else every
    import uvloop

    for proxy, loop_name in wanted:
        for line in uvloop.run(measure(proxy, loop_name)):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
