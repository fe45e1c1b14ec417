"""A real backend for the integration tests: aiohttp on 127.0.0.1, port 0.

WebSocket ``/edge/ws`` echoes every message with its type, and obeys a few text
commands so tests can make the *backend* act: ``close <code> <reason>`` closes with
that code, ``vanish`` drops the TCP connection without a close frame, ``mute`` stops
reading (so it answers nothing, pings included, while its TCP connection stays up),
``send <n>`` sends an n-byte binary message. Every handshake and request is
recorded, and so are the pings and pongs it receives.
"""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web


@dataclass
class Seen:
    method: str
    path: str
    raw_path: str
    query_string: str
    headers: dict[str, list[str]]
    body: bytes = b""


@dataclass
class Backend:
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    closes: list[tuple[int | None, str]] = field(default_factory=list)
    ws_open: int = 0
    flood_sent: int = 0
    hangs_abandoned: int = 0
    pong_wait: asyncio.Future[bytes] | None = None
    pings: list[bytes] = field(default_factory=list)  # payloads of the pings received (each answered)
    pongs: list[bytes] = field(default_factory=list)
    muted: list[asyncio.Transport] = field(default_factory=list)
    waking: int = 2  # /waking/ws answers this many handshakes with 503 before it opens
    tasks: set[asyncio.Future[None]] = field(default_factory=set)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, request: web.Request, body: bytes = b"") -> None:
        headers: dict[str, list[str]] = {}
        for k, v in request.headers.items():
            headers.setdefault(k.lower(), []).append(v)
        self.seen.append(
            Seen(request.method, request.path, request.raw_path, request.rel_url.raw_query_string, headers, body)
        )

    async def ws(self, request: web.Request) -> web.StreamResponse:
        self.record(request)
        # autoping off: pongs are watched for (the ping command), pings answered below
        ws = web.WebSocketResponse(
            protocols=("chat.v2", "chat.v1"), max_msg_size=64 * 1024 * 1024, autoclose=False, autoping=False
        )
        await ws.prepare(request)
        self.ws_open += 1
        try:
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.CLOSE:
                    self.closes.append((msg.data, msg.extra or ""))
                    if "reply" in request.query:  # answer a close with another code and reason
                        await ws.close(code=int(request.query["reply"]), message=b"backend says bye")
                    else:
                        await ws.close(code=msg.data or 1000, message=(msg.extra or "").encode())
                    break
                if msg.type is WSMsgType.PING:
                    self.pings.append(bytes(msg.data))
                    await ws.pong(msg.data)
                elif msg.type is WSMsgType.PONG:
                    self.pongs.append(bytes(msg.data))
                    if self.pong_wait is not None and not self.pong_wait.done():
                        self.pong_wait.set_result(msg.data)
                elif msg.type is WSMsgType.TEXT:
                    over = await self.command(ws, request, msg.data)
                    if over:
                        break
                    if over is None:
                        await ws.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
                elif msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR, WSMsgType.CLOSING):
                    self.closes.append((None, "vanished"))
                    break
        finally:
            self.ws_open -= 1
        return ws

    async def late(self, request: web.Request) -> web.StreamResponse:
        """A WebSocket endpoint that takes half a second to answer the handshake."""
        self.record(request)
        await asyncio.sleep(0.5)
        return await self.ws(request)

    async def wake(self, request: web.Request) -> web.StreamResponse:
        """A backend still starting behind its platform's proxy: 503, then the echo."""
        if self.waking > 0:
            self.waking -= 1
            self.record(request)
            raise web.HTTPServiceUnavailable(text="starting")
        return await self.ws(request)

    async def command(self, ws: web.WebSocketResponse, request: web.Request, text: str) -> bool | None:
        """Acts on a command message: True when the session is over, None if not a command."""
        cmd = text.split(" ", 2)
        if cmd[0] == "close":
            await ws.close(code=int(cmd[1]), message=(cmd[2] if len(cmd) > 2 else "").encode())
            self.closes.append((int(cmd[1]), "sent by backend"))
            return True
        if cmd[0] == "vanish":
            assert request.transport is not None
            request.transport.abort()
            return True
        if cmd[0] == "mute":  # alive but deaf: reads nothing more, so answers nothing
            # (not asyncio.Transport under uvloop: its transports are classes of their own)
            assert request.transport is not None
            request.transport.pause_reading()
            self.muted.append(request.transport)
            return False
        if cmd[0] == "ping":  # ping the client; report (as a message) whether its pong came back
            self.pong_wait = asyncio.get_running_loop().create_future()
            await ws.ping(cmd[1].encode())
            self.tasks.add(asyncio.ensure_future(self.report_pong(ws, self.pong_wait)))
            return False
        if cmd[0] == "send":
            await ws.send_bytes(b"x" * int(cmd[1]))
        elif cmd[0] == "flood":  # flood <count> <size>: counts what the socket accepted
            for _ in range(int(cmd[1])):
                await ws.send_bytes(b"f" * int(cmd[2]))
                self.flood_sent += 1
        else:
            return None
        return False

    async def report_pong(self, ws: web.WebSocketResponse, pong: asyncio.Future[bytes]) -> None:
        try:
            payload = await asyncio.wait_for(pong, 1.0)
            await ws.send_str(f"pong {payload.decode()}")
        except TimeoutError:
            await ws.send_str("no pong")

    async def echo(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.record(request, body)
        return web.json_response({"method": request.method, "path": request.raw_path, "received": len(body)})

    async def cookies(self, request: web.Request) -> web.StreamResponse:
        self.record(request)
        response = web.Response(text="two cookies")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        response.headers["Connection"] = "X-Private"
        response.headers["X-Private"] = "hop-by-hop"
        return response

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        self.record(request)
        raise web.HTTPFound("/elsewhere")

    async def gzipped(self, request: web.Request) -> web.StreamResponse:
        self.record(request)
        return web.Response(body=gzip.compress(b"hello " * 100), headers={"Content-Encoding": "gzip"})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Sends one chunk, then waits until the test releases it: proves streaming."""
        self.record(request)
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first;")
        await self.release.wait()
        await response.write(b"second")
        await response.write_eof()
        return response

    async def broken(self, request: web.Request) -> web.StreamResponse:
        """Promises 1000 bytes, sends 5, then drops the connection."""
        self.record(request)
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"start")
        assert request.transport is not None
        request.transport.abort()
        return response

    async def upload(self, request: web.Request) -> web.StreamResponse:
        """Reports the first chunk as soon as it arrives: proves request streaming."""
        self.record(request)
        first = await request.content.readany()
        self.first_chunk.set_result(first)
        rest = await request.read()
        return web.json_response({"received": len(first) + len(rest)})

    async def forbidden(self, request: web.Request) -> web.StreamResponse:
        self.record(request)
        raise web.HTTPForbidden(text="backend says no")

    async def hang(self, request: web.Request) -> web.StreamResponse:
        self.record(request)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.hangs_abandoned += 1  # the sidecar hung up on us
            raise
        raise AssertionError("unreachable")

    async def start(self) -> Backend:
        self.release = asyncio.Event()
        self.first_chunk: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        app = web.Application()
        app.router.add_get("/edge/ws", self.ws)
        app.router.add_get("/slow/ws", self.hang)
        app.router.add_get("/late/ws", self.late)
        app.router.add_get("/waking/ws", self.wake)
        app.router.add_get("/hang", self.hang)
        app.router.add_get("/forbidden/ws", self.forbidden)
        app.router.add_route("*", "/edge/message", self.echo)
        app.router.add_get("/cookies", self.cookies)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/gzip", self.gzipped)
        app.router.add_get("/stream", self.stream)
        app.router.add_get("/broken", self.broken)
        app.router.add_post("/upload", self.upload)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        # handler_cancellation: a hanging handler ends when the sidecar hangs up.
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site.port
        return self

    async def stop(self) -> None:
        for transport in self.muted:  # so a muted handler sees its connection gone
            if not transport.is_closing():
                transport.resume_reading()
        if self.runner is not None:
            await self.runner.cleanup()


async def _serve_forever(port: int) -> None:
    backend = Backend(port=port)
    await backend.start()
    print(
        f"test backend: WebSocket echo on ws://127.0.0.1:{backend.port}/edge/ws, HTTP echo on every other path",
        flush=True,  # a test waits for this line on a pipe
    )
    await asyncio.Event().wait()


if __name__ == "__main__":  # python -m tests.upstream [PORT]: a backend to try the sidecar against
    import sys

    asyncio.run(_serve_forever(int(sys.argv[1]) if len(sys.argv) > 1 else 8000))
