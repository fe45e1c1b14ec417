"""``sidecar demo`` as a new user runs it: a real process, and the commands it prints run
through a real shell exactly as printed (curl, websocat, the Python client)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from sidecar.demo import sessions_within

from .conftest import ROOT, SECRET, SIDECAR, process_env, taken_port
from .upstream import Backend
from .wire import closed_by_peer

LAST_LINE = "# Ctrl-C stops the demo."
# websocat comes with the test dependencies, into the same bin directory as this python:
# a new terminal does not have it on its PATH, so neither do the shells below.
BIN = str(Path(sys.executable).parent)


def ports() -> dict[str, str]:
    """PORT and METRICS_PORT: two distinct free ports below the ephemeral range. A port
    the kernel handed out for port 0 and took back would be handed out again, here to the
    demo's own echo backend (port 0), before the sidecar binds it."""
    while True:
        chosen = random.sample(range(20000, 32000), 2)
        with socket.socket() as one, socket.socket() as two:
            try:
                one.bind(("0.0.0.0", chosen[0]))
                two.bind(("0.0.0.0", chosen[1]))
            except OSError:
                continue
        return {"PORT": str(chosen[0]), "METRICS_PORT": str(chosen[1])}


def clean_env(**extra: str) -> dict[str, str]:
    """A new terminal: no sidecar settings but ``extra``, and not the venv's bin on the PATH
    (curl is the system's; websocat and the venv's Python only by their full paths)."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != BIN)
    return process_env(PATH=path, VIRTUAL_ENV="", **extra)


@dataclass
class Demo:
    process: asyncio.subprocess.Process
    blocks: dict[str, str]  # the comment line that introduces a command -> the command
    printed: str

    def command(self, starts: str) -> str:
        return next(cmd for title, cmd in self.blocks.items() if title.startswith(starts))

    async def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.process.send_signal(sig)
        code = await asyncio.wait_for(self.process.wait(), 30)
        assert self.process.stderr is not None
        return code, (await self.process.stderr.read()).decode()


async def start_demo(env: dict[str, str], cwd: Path = ROOT, **options: Any) -> Demo:
    process = await asyncio.create_subprocess_exec(
        *SIDECAR, "demo", cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, **options
    )
    assert process.stdout is not None
    lines: list[str] = []
    while not lines or lines[-1] != LAST_LINE:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        if not line:
            assert process.stderr is not None
            raise AssertionError(f"the demo ended early: {lines} {await process.stderr.read()!r}")
        lines.append(line.decode().rstrip("\n"))
    printed = "\n".join(lines)
    blocks = {}
    for block in printed.split("\n\n"):
        title, _, command = block.partition("\n")
        blocks[title] = command
    return Demo(process, blocks, printed)


async def shell(command: str, env: dict[str, str], stdin: bytes = b"") -> str:
    """Run ``command`` through a shell, as if pasted; its stdout."""
    proc = await asyncio.create_subprocess_shell(
        command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode == 0, (command, out, err)
    return out.decode()


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    d = await start_demo(clean_env(**ports()))
    yield d
    if d.process.returncode is None:
        d.process.kill()
        await d.process.wait()


def token_of(demo: Demo) -> str:
    marked = next(line for line in demo.printed.splitlines() if line.startswith("# DEMO TOKEN"))
    return marked.rsplit(" ", 1)[1]


async def test_printed_curl_commands_answer_200_and_a_reason(demo: Demo) -> None:
    env = clean_env()
    answer = await shell(demo.command("# POST /edge/message"), env)
    assert answer.startswith("HTTP/1.1 200 OK")
    body = json.loads(answer.split("\r\n\r\n", 1)[1])
    assert body["echo"] == "POST /edge/message" and body["body_bytes"] == len('{"text":"hi"}')
    assert body["received"]["X-Edge-Agent-Id"] == "demo_1"
    assert body["received"]["X-Forwarded-For"] == "127.0.0.1"
    assert body["received"]["Authorization"] == "present"

    refused = await shell(demo.command("# a refusal"), env)
    assert refused.startswith("HTTP/1.1 401 Unauthorized")
    assert "X-Sidecar-Reason: invalid_token" in refused

    code, logged = await demo.stop()
    assert code == 0
    assert "reason=invalid_token" in logged
    assert token_of(demo) not in logged


async def test_printed_python_client_and_websocat_get_their_messages_back(demo: Demo) -> None:
    env = clean_env()
    out = (await shell(demo.command("# a Python client"), env)).splitlines()
    assert out[0].startswith("greeting: ")
    greeting = json.loads(out[0].removeprefix("greeting: "))
    assert greeting["received"]["X-Edge-Agent-Id"] == "demo_1"
    assert greeting["received"]["X-Forwarded-Proto"] == "http"
    assert out[1:] == ["text echo: hello", "binary echo: b'\\x00\\x01binary'"]

    # websocat reads lines from stdin: type two, then end the input
    typed = await shell(demo.command("# WebSocket with websocat"), env, stdin=b"hello\nwhoami\n")
    lines = typed.splitlines()
    assert json.loads(lines[0])["received"]["X-Edge-Agent-Id"] == "demo_1"
    assert lines[1] == "hello"
    assert json.loads(lines[2]) == {"received": json.loads(lines[0])["received"]}

    scraped = await shell(demo.command("# metrics"), env)
    assert 'sidecar_ws_connections_total{route="edge"} 2.0' in scraped.splitlines()
    assert 'sidecar_ws_messages_total{direction="upstream",route="edge"} 4.0' in scraped.splitlines()
    assert (await demo.stop())[0] == 0


async def test_the_printed_probe_passes_every_step_and_shows_no_token(demo: Demo) -> None:
    out = await shell(demo.command("# the probe"), clean_env())  # exit 0: every step passed
    lines = out.splitlines()
    url = demo.command("# WebSocket with websocat").split("'")[1]  # the same URL websocat is given
    assert lines[0].startswith(f"probe {url.split('?')[0]}?edge_agent_id=… (token: 32 bytes, fp1:")
    assert [line.split()[:2] for line in lines[1:6]] == [
        [step, "ok"] for step in ("resolve", "connect", "upgrade", "ping", "close")
    ]
    assert lines[6].startswith("OK: every step passed")
    assert token_of(demo) not in out
    assert (await demo.stop())[0] == 0


async def test_with_the_users_secret_the_commands_read_it_from_the_shell() -> None:
    d = await start_demo(clean_env(EDGE_SECRET=SECRET, **ports()))
    try:
        assert SECRET not in d.printed and "DEMO TOKEN" not in d.printed
        shell_env = clean_env(EDGE_SECRET=SECRET)  # the user exported it in their shell
        out = (await shell(d.command("# a Python client"), shell_env)).splitlines()
        assert out[1:] == ["text echo: hello", "binary echo: b'\\x00\\x01binary'"]
        typed = await shell(d.command("# WebSocket with websocat"), shell_env, stdin=b"hi\n")
        assert typed.splitlines()[1] == "hi"
        answer = await shell(d.command("# POST /edge/message"), shell_env)
        assert answer.startswith("HTTP/1.1 200 OK")
        probed = await shell(d.command("# the probe"), shell_env)
        assert probed.splitlines()[-1].startswith("OK: every step passed")
    finally:
        code, logged = await d.stop()
    assert code == 0 and SECRET not in logged


async def test_with_the_users_secret_and_backend_no_value_printed_and_no_echo_backend() -> None:
    backend = await Backend().start()
    env = clean_env(EDGE_SECRET=SECRET, UPSTREAM_URL=backend.url, **ports())
    try:
        d = await start_demo(env)
        assert SECRET not in d.printed and "DEMO TOKEN" not in d.printed
        assert f"# upstream: {backend.url} (UPSTREAM_URL)" in d.printed
        assert "$EDGE_SECRET" in d.command("# POST /edge/message")
        answer = await shell(d.command("# POST /edge/message"), env)
        assert answer.startswith("HTTP/1.1 200 OK")
        assert [s.path for s in backend.seen] == ["/edge/message"]  # the user's backend, not an echo
        # a backend that does not greet: the client sends first and prints the answer
        assert await shell(d.command("# a Python client"), env) == "received: hello\n"
        assert await shell(d.command("# WebSocket with websocat"), env, stdin=b"hi\n") == "hi\n"
        assert [s.path for s in backend.seen][1:] == ["/edge/ws", "/edge/ws"]
        code, logged = await d.stop(signal.SIGINT)  # Ctrl-C
        assert code == 0 and SECRET not in logged
    finally:
        await backend.stop()


async def test_outside_the_repository_the_installed_routes_yaml_is_used(tmp_path: Path) -> None:
    d = await start_demo(clean_env(**ports()), cwd=tmp_path)
    try:
        installed = Path(d.printed.splitlines()[0].rsplit(" ", 1)[1])
        assert installed.name == "routes.yaml" and installed.parent.name == "sidecar"
        shipped = await asyncio.to_thread((ROOT / "routes.yaml").read_bytes)
        assert await asyncio.to_thread(installed.read_bytes) == shipped
        answer = await shell(d.command("# POST /edge/message"), clean_env())
        assert answer.startswith("HTTP/1.1 200 OK")
    finally:
        assert (await d.stop())[0] == 0


def test_a_taken_port_is_one_line_and_exit_1() -> None:
    with taken_port() as port:
        result = subprocess.run(
            [*SIDECAR, "demo"],
            env=clean_env(PORT=str(port), METRICS_PORT=ports()["METRICS_PORT"]),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"not starting: cannot listen on 127.0.0.1:{port}")
    assert result.stdout == ""


async def test_stopping_closes_an_open_session_with_a_close_frame_and_exits_0(demo: Demo) -> None:
    url = demo.command("# WebSocket with websocat").split("'")[1]
    headers = {"Authorization": f"Bearer {token_of(demo)}"}
    async with connect(url, additional_headers=headers) as ws:
        assert "received" in json.loads(await ws.recv())
        demo.process.send_signal(signal.SIGTERM)
        closed = await closed_by_peer(ws, timeout=30, skip_messages=False)
        assert closed == (1012, "service restart: reconnect")  # never 1006
    assert await asyncio.wait_for(demo.process.wait(), 30) == 0


async def test_the_demo_listens_on_loopback_only(demo: Demo) -> None:
    code, logged = await demo.stop()
    assert code == 0
    started = next(line for line in logged.splitlines() if "sidecar.started" in line)
    # a made-up token and a catch-all route are for this machine, not the network
    assert "listen=127.0.0.1:" in started
    assert "metrics=127.0.0.1:" in started


def open_files(limit: int) -> None:
    """In the child, before the demo starts: this host's open-files limit, soft and hard."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


async def test_on_a_host_allowing_20000_open_files_the_demo_sizes_its_cap_and_does_not_warn() -> None:
    # limits.max_sessions: 10000 needs 20256 (two a session, and a spare): one warning, once.
    d = await start_demo(clean_env(**ports()), preexec_fn=lambda: open_files(20_000))
    try:
        assert "# sessions: at most 9872 at once (two open files each; this host allows 20000 files)" in d.printed
        typed = await shell(d.command("# WebSocket with websocat"), clean_env(), stdin=b"hi\n")
        assert typed.splitlines()[1] == "hi"
    finally:
        code, logged = await d.stop()
    assert code == 0
    assert "open_files_low" not in logged
    assert "open_files_limit=20000" in next(line for line in logged.splitlines() if "sidecar.started" in line)


@pytest.mark.parametrize(
    ("open_files", "cap"),
    [
        (20_000, 9872),  # (20000 - 256) // 2
        (20_256, 10_000),  # exactly enough: the config's
        (1 << 20, 10_000),  # plenty: the config's
        (resource.RLIM_INFINITY, 10_000),
        (1024, 384),  # a laptop's default soft limit, were it not raised
        (100, 1),  # never none at all
    ],
)
def test_the_demos_session_cap_fits_the_hosts_open_files_limit(open_files: int, cap: int) -> None:
    assert sessions_within(10_000, open_files) == cap


async def test_the_websocat_command_names_websocat_by_its_full_path(demo: Demo) -> None:
    command = demo.command("# WebSocket with websocat")
    assert command.startswith(os.path.join(BIN, "websocat") + " ")
    assert (await demo.stop())[0] == 0
