"""A TCP proxy in front of a real Redis, for the network faults a fleet meets: latency on
every byte (a slow link, Redis still answering within state.timeout), and a pub/sub
connection that goes silent without being closed (a NAT or load balancer that forgot it:
no FIN, no RST, Redis still counting the subscriber).

Nothing here speaks Redis: bytes are forwarded as they come, and only the client's first
bytes are looked at (``SUBSCRIBE``) to tell a subscription from a command connection.
Bytes still on their way when either side closes are dropped, as a network drops them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .conftest import free_port


@dataclass(eq=False)
class _Pipe:
    subscriber: bool = False  # its client sent SUBSCRIBE
    frozen: bool = False  # forwards nothing any more, either way, and closes nothing
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass(eq=False)
class Proxy:
    """127.0.0.1:``port`` forwards to ``target_port``; see :func:`proxy`."""

    target_port: int
    port: int = field(default_factory=free_port)
    delay: float = 0.0  # seconds each chunk waits, each way
    pipes: list[_Pipe] = field(default_factory=list)
    seen: dict[bytes, asyncio.Event] = field(default_factory=dict)  # marker -> set once a client sent it
    handlers: set[asyncio.Task[object]] = field(default_factory=set)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def watch(self, marker: bytes) -> asyncio.Event:
        """An event set once a client's bytes contain ``marker`` (from now on)."""
        self.seen[marker] = event = asyncio.Event()
        return event

    def freeze_subscribers(self) -> int:
        """Every subscription connection open now goes silent for good; how many there were."""
        frozen = [pipe for pipe in self.pipes if pipe.subscriber and not pipe.frozen]
        for pipe in frozen:
            pipe.frozen = True
        return len(frozen)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pipe = _Pipe()
        self.pipes.append(pipe)
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        task.add_done_callback(self.handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        pipe.tasks = [
            asyncio.ensure_future(self._pump(pipe, reader, up_writer, client=True)),
            asyncio.ensure_future(self._pump(pipe, up_reader, writer, client=False)),
        ]
        try:
            await asyncio.wait(pipe.tasks, return_when=asyncio.FIRST_COMPLETED)
            if pipe.frozen:  # silent, but open: neither side learns anything, until the proxy stops
                await self.stopping.wait()
        finally:
            for pump in pipe.tasks:
                pump.cancel()
            await asyncio.gather(*pipe.tasks, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()

    async def _pump(
        self, pipe: _Pipe, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, client: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not pipe.frozen:
                    writer.write(data)

        delivering = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(65536):
                if client:
                    pipe.subscriber = pipe.subscriber or b"SUBSCRIBE" in data.upper()
                    for marker, event in self.seen.items():
                        if marker in data:
                            event.set()
                if not pipe.frozen:
                    queue.put_nowait((loop.time() + self.delay, data))
        except OSError:
            pass
        finally:
            delivering.cancel()  # what was still on its way is lost
            with contextlib.suppress(asyncio.CancelledError):
                await delivering


@contextlib.asynccontextmanager
async def proxy(target_port: int, *, delay: float = 0.0) -> AsyncIterator[Proxy]:
    """A proxy to 127.0.0.1:``target_port``, listening while the block runs."""
    fault = Proxy(target_port, delay=delay)
    server = await asyncio.start_server(fault._serve, "127.0.0.1", fault.port)
    try:
        yield fault
    finally:
        server.close()
        fault.stopping.set()
        for pipe in fault.pipes:
            for task in pipe.tasks:
                task.cancel()
        await asyncio.gather(*fault.handlers)  # each ends on its own once its pumps are cancelled
        await server.wait_closed()
