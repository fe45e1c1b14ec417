"""The plain HTTP request path's own cost, without sockets: the real listener, dispatcher and
proxy, fed the harness's request and its backend's response through stand-in transports.
What is left is Python's work per request (no syscalls, no event loop wake-ups).

    .venv/bin/python bench/requestpath.py               # CPU microseconds per request
    .venv/bin/python bench/requestpath.py --profile     # and cProfile's top entries
    # instructions per request, steady on a shared machine (valgrind's callgrind):
    for n in 0 2000; do WARM=300 valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \\
        .venv/bin/python bench/requestpath.py $n 2>&1 | grep Collected; done   # (b - a) / 2000
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from sidecar.app import Dispatcher
from sidecar.config.files import read_config
from sidecar.listener import Listener
from sidecar.metrics import Metrics
from sidecar.pool import Connection
from sidecar.requests import Front
from sidecar.routing import Router
from sidecar.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
REQUEST = (
    b"POST /edge/message HTTP/1.1\r\nHost: 127.0.0.1:19200\r\nAuthorization: Bearer bench-secret\r\n"
    b"X-Edge-Agent-Id: edge_1\r\nContent-Type: application/json\r\nContent-Length: 44\r\n\r\n"
    b'{"chat":"hello","text":"benchmark message"}.'
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nDate: Mon, 01 Dec 2025 06:00:00 GMT\r\n"
    b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 62\r\n\r\n" + b"x" * 62
)


class StandIn:
    """A transport that keeps what is written."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.written: list[bytes] = []
        self.peer = peer
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name in ("peername", "sockname") else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return 0


async def measure(requests: int, profile: bool) -> None:
    os.environ.update(PORT="1", UPSTREAM="127.0.0.1:2")
    config, problems = read_config(str(ROOT / "bench" / "routes.yaml"), strict=False)
    assert config is not None, problems
    rt = Runtime(config=config, router=Router(config.routes), metrics=Metrics())
    dispatcher = Dispatcher(rt)
    front = Front(rt, dispatcher, dispatcher.refuse_head, rt.wheel.call_later, Listener)
    client, upstream = StandIn(("127.0.0.1", 5555)), StandIn(("127.0.0.1", 2))
    listener = front()
    listener.connection_made(client)  # type: ignore[arg-type]
    connection = Connection(rt.pool, rt.pool.target(config.routes[1].upstream))
    connection.connection_made(upstream)  # type: ignore[arg-type]
    rt.pool.give(connection)

    def one() -> None:
        listener.data_received(REQUEST)
        connection.data_received(RESPONSE)

    for _ in range(int(os.environ.get("WARM", "2000"))):
        one()
    assert client.written[-1].startswith(b"HTTP/1.1 200 "), client.written[-1][:80]
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    started = time.process_time()
    for _ in range(requests):
        one()
    spent = time.process_time() - started
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    if requests:
        print(f"{spent / requests * 1e6:.1f} us of CPU per request (no sockets)")


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if not a.startswith("-")]
    uvloop.run(measure(int(arguments[0]) if arguments else 20_000, "--profile" in sys.argv))
