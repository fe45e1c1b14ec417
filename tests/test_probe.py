"""``sidecar probe`` against real servers: every step's failure produced for real, and
clean passes through the real sidecar (shipped routes.yaml, the test backend) and
through python ``websockets`` over TLS. The CLI runs as a process (``python -m
sidecar``) or, for the sidecar's refusals, as ``cli.main`` in a thread; in every case
the token must not appear in what it prints."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve

from sidecar.cli import main

from .conftest import ROOT, SECRET, Sidecar, free_port
from .upstream import Backend

TOKEN = "probe-token-7d2f4c1a9e0b"  # a token no server here accepts, for the servers that are not a sidecar
SIDECAR = [sys.executable, "-m", "sidecar"]
STEP_LINE = re.compile(r"  (resolve|connect|tls|upgrade|ping|close) +(ok|FAIL) +\d+\.\d ms  .+")


def fingerprint_of(secret: str) -> str:
    """Computed here from the documented derivation, not with sidecar's code."""
    key = hashlib.scrypt(secret.encode(), salt=b"sidecar-fingerprint-v1", n=2**14, r=8, p=1, dklen=5)
    return "fp1:" + base64.b32encode(key).decode().lower()


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def json(self) -> dict[str, Any]:
        answer = json.loads(self.out)
        assert isinstance(answer, dict)
        return answer

    def summary(self) -> dict[str, Any]:
        """The JSON object without its steps; the steps as (name, ok, detail)."""
        return {k: v for k, v in self.json.items() if k != "steps"}

    def steps(self) -> list[tuple[str, bool, str]]:
        return [(s["name"], s["ok"], s["detail"]) for s in self.json["steps"]]


def clean_environment(**extra: str) -> dict[str, str]:
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "SSL_CERT", "PROBE_"))}
    return {**kept, **extra}


async def probe(*args: str, token: str | None = TOKEN, env: dict[str, str] | None = None) -> Run:
    """``sidecar probe ARGS --token-env PROBE_TOKEN`` as a process; the token is checked
    to be absent from everything it printed."""
    extra = ["--token-env", "PROBE_TOKEN"] if token is not None else []
    environment = clean_environment(**({"PROBE_TOKEN": token} if token is not None else {}), **(env or {}))
    process = await asyncio.create_subprocess_exec(
        *SIDECAR,
        "probe",
        *args,
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    run = Run(process.returncode, out.decode(), err.decode())
    for secret in (token, SECRET, TOKEN):
        if secret is not None:
            assert secret not in run.out + run.err
    return run


# --- before the handshake ---------------------------------------------------------------


async def test_a_name_that_does_not_resolve() -> None:
    run = await probe("wss://nonexistent.invalid/edge/ws?edge_agent_id=edge_1", "--json")
    assert run.code == 1, run.err
    assert run.summary() == {
        "ok": False,
        "failed_step": "resolve",
        "status": None,
        "reason": None,
        "close_code": None,
        "sidecar": False,
        "hint": run.json["hint"],
        "token_fingerprint": fingerprint_of(TOKEN),
    }
    [(name, ok, detail)] = run.steps()
    assert (name, ok) == ("resolve", False)
    assert detail.startswith("nonexistent.invalid: ")  # getaddrinfo's words, e.g. "Name or service not known"
    assert run.json["hint"].startswith("nonexistent.invalid does not resolve (")


async def test_a_closed_port_in_human_output() -> None:
    port = free_port()
    run = await probe(f"ws://127.0.0.1:{port}/edge/ws?edge_agent_id=edge_1&access_token={TOKEN}")
    assert run.code == 1
    lines = run.out.splitlines()
    assert lines[0] == (
        f"probe ws://127.0.0.1:{port}/edge/ws?edge_agent_id=…&access_token=… "
        f"(token: {len(TOKEN)} bytes, {fingerprint_of(TOKEN)})"
    )
    assert [STEP_LINE.fullmatch(line) is not None for line in lines[1:3]] == [True, True]
    assert lines[1].endswith("ms  127.0.0.1 -> 127.0.0.1")
    assert lines[2].split()[:2] == ["connect", "FAIL"]
    assert lines[2].endswith("ms  127.0.0.1: Connection refused")
    assert lines[3] == (
        f"FAIL at connect: nothing accepted a connection at 127.0.0.1 port {port}: is the service running, "
        "and is the port right? (wss:// means 443 and ws:// 80 unless the URL names a port.)"
    )
    assert len(lines) == 4


# --- TLS ---------------------------------------------------------------------------------


@dataclass
class TLSServer:
    port: int
    ca_file: Path


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


StartTLS = Callable[[str], Awaitable[TLSServer]]


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[StartTLS]:
    """A python ``websockets`` echo server (a strict RFC 6455 peer) behind TLS on
    127.0.0.1, presenting: ``good`` (a certificate for localhost), ``wrong-name`` (for
    other.example), ``self-signed`` (the CA's own certificate) or ``unknown-ca`` (from
    a CA nobody trusts). ``ca_file`` is the CA that issued the first two."""
    servers = []

    async def start(kind: str) -> TLSServer:
        ca = trustme.CA()
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if kind == "self-signed":
            key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
            ca.private_key_pem.write_to_path(str(key))
            ca.cert_pem.write_to_path(str(cert))
            context.load_cert_chain(cert, key)
        else:
            issuer = trustme.CA() if kind == "unknown-ca" else ca
            issuer.issue_cert("other.example" if kind == "wrong-name" else "localhost").configure_cert(context)
        server = await serve(_echo, "127.0.0.1", 0, ssl=context)
        servers.append(server)
        return TLSServer(server.sockets[0].getsockname()[1], ca_file)

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(("kind", "verdict"), [("self-signed", "self-signed"), ("unknown-ca", "issuer unknown here")])
async def test_an_untrusted_certificate(tls_server: StartTLS, kind: str, verdict: str) -> None:
    server = await tls_server(kind)
    run = await probe(f"wss://localhost:{server.port}/edge/ws", "--json")
    assert run.code == 1
    assert (run.json["failed_step"], run.json["status"], run.json["sidecar"]) == ("tls", None, False)
    assert [s[:2] for s in run.steps()] == [("resolve", True), ("connect", True), ("tls", False)]
    assert run.steps()[-1][2].startswith(f"untrusted certificate chain: {verdict} (")
    assert "--cacert FILE (or SSL_CERT_FILE)" in run.json["hint"]


async def test_a_certificate_for_another_name(tls_server: StartTLS) -> None:
    server = await tls_server("wrong-name")
    run = await probe(f"wss://localhost:{server.port}/edge/ws", "--json", "--cacert", str(server.ca_file))
    assert run.code == 1
    assert run.json["failed_step"] == "tls"
    assert run.steps()[-1][2].startswith("the certificate does not name this host (")
    assert run.json["hint"].startswith("the server's certificate is not for localhost:")


@pytest.mark.parametrize("trust", ["--cacert", "SSL_CERT_FILE"])
async def test_a_clean_pass_over_tls(tls_server: StartTLS, trust: str) -> None:
    server = await tls_server("good")
    args = ["--cacert", str(server.ca_file)] if trust == "--cacert" else []
    env = {"SSL_CERT_FILE": str(server.ca_file)} if trust == "SSL_CERT_FILE" else {}
    run = await probe(f"wss://localhost:{server.port}/edge/ws", "--json", *args, env=env)
    assert run.code == 0, run.out
    assert [s[:2] for s in run.steps()] == [
        (n, True) for n in ("resolve", "connect", "tls", "upgrade", "ping", "close")
    ]
    tls = run.steps()[2][2]
    assert tls.startswith("TLSv1.3; subject ")
    assert "; names DNS=localhost; issuer O=trustme" in tls
    assert re.search(r"; expires \d{4}-\d\d-\d\d \(in \d+ days\)$", tls)
    assert run.summary() == {
        "ok": True,
        "failed_step": None,
        "status": 101,
        "reason": None,
        "close_code": 1000,
        "sidecar": False,
        "hint": run.json["hint"],
        "token_fingerprint": fingerprint_of(TOKEN),
    }


async def test_wss_to_a_plain_port(sidecar: Sidecar) -> None:
    run = await probe(f"wss://127.0.0.1:{sidecar.port}/edge/ws", "--json", token=SECRET)
    assert run.code == 1
    assert run.json["failed_step"] == "tls"
    assert run.steps()[-1][2].startswith("TLS failed: ")
    assert "is this a TLS port? A plain one is ws://, not wss://." in run.json["hint"]


# --- the handshake, answered by something that is not a sidecar -----------------------------


@pytest.fixture
async def bare_app() -> AsyncIterator[int]:
    """An aiohttp server with no routes at all: 404 for everything."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await runner.cleanup()


async def test_a_404_from_a_server_that_is_not_a_sidecar(bare_app: int) -> None:
    run = await probe(f"ws://127.0.0.1:{bare_app}/edge/ws", "--json")
    assert run.code == 1
    assert run.summary() == {
        "ok": False,
        "failed_step": "upgrade",
        "status": 404,
        "reason": None,
        "close_code": None,
        "sidecar": False,
        "hint": run.json["hint"],
        "token_fingerprint": fingerprint_of(TOKEN),
    }
    assert run.steps()[-1] == ("upgrade", False, f"404 Not Found; Server: {run.steps()[-1][2].split('Server: ')[1]}")
    assert run.json["hint"].startswith("the server has nothing at /edge/ws")
    assert "The answer did not come from a sidecar (no X-Sidecar-Reason; Server: Python/" in run.json["hint"]


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/forbidden/ws", 403, "its own auth or an access rule"),
        ("/edge/wss", 200, "/edge/wss is a plain HTTP resource there"),
    ],
)
async def test_the_bare_backend(backend: Backend, path: str, status: int, says: str) -> None:
    run = await probe(f"ws://127.0.0.1:{backend.port}{path}", "--json")
    assert run.code == 1
    assert (run.json["failed_step"], run.json["status"], run.json["reason"], run.json["sidecar"]) == (
        "upgrade",
        status,
        None,
        False,
    )
    assert says in run.json["hint"]
    assert "did not come from a sidecar" in run.json["hint"]


# --- the real sidecar ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "token", "options", "status", "reason", "says"),
    [
        (
            "/edge/wss?edge_agent_id=edge_1",
            SECRET,
            [],
            404,
            "no_route",
            "no WebSocket route at /edge/wss; this server serves /edge/ws, /ws/edge.",
        ),
        ("/edge/ws?edge_agent_id=edge_1", None, [], 401, "missing_token", "none was sent"),
        (
            "/edge/ws?edge_agent_id=edge_1",
            TOKEN,
            [],
            401,
            "invalid_token",
            f"the token sent ({len(TOKEN)} bytes, {fingerprint_of(TOKEN)}) matches none of the sidecar's secrets",
        ),
        ("/edge/ws?edge_agent_id=edge_1", f"{SECRET} extra", [], 401, "malformed_token", "RFC 6750 section 2.1"),
        ("/edge/ws", SECRET, ["-H", "Upgrade:"], 426, "not_websocket", "dropped the Upgrade header"),
        ("/edge/ws", SECRET, [], 400, "missing_agent_id", "--agent-id ID sends X-Edge-Agent-Id"),
    ],
)
async def test_the_sidecar_refusing(
    sidecar: Sidecar,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    token: str | None,
    options: list[str],
    status: int,
    reason: str,
    says: str,
) -> None:
    argv = ["probe", sidecar.url(path), "--json", *options]
    if token is not None:
        monkeypatch.setenv("PROBE_TOKEN", token)
        argv += ["--token-env", "PROBE_TOKEN"]
    code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    run = Run(code, out, err)
    assert SECRET not in out + err and TOKEN not in out + err
    assert run.code == 1
    assert run.summary() == {
        "ok": False,
        "failed_step": "upgrade",
        "status": status,
        "reason": reason,
        "close_code": None,
        "sidecar": True,
        "hint": run.json["hint"],
        "token_fingerprint": fingerprint_of(token) if token else None,
    }
    assert run.steps()[-1][2].startswith(f"{status} ")
    assert run.steps()[-1][2].endswith(f"; X-Sidecar-Reason: {reason}; Server: sidecar")
    assert run.json["hint"].startswith(f"the sidecar refused it ({status} {reason}): ")
    assert says in run.json["hint"]


async def test_a_clean_pass_through_the_sidecar(sidecar: Sidecar, backend: Backend) -> None:
    run = await probe(sidecar.url("/ws/edge?edge_agent_id=edge_1"), "--agent-id", "edge_1", token=SECRET)
    assert run.code == 0, run.out
    lines = run.out.splitlines()
    assert lines[0] == (
        f"probe ws://127.0.0.1:{sidecar.port}/ws/edge?edge_agent_id=… "
        f"(token: {len(SECRET)} bytes, {fingerprint_of(SECRET)}; agent id edge_1)"
    )
    assert [STEP_LINE.fullmatch(line).group(1, 2) for line in lines[1:6]] == [  # type: ignore[union-attr]
        (name, "ok") for name in ("resolve", "connect", "upgrade", "ping", "close")
    ]
    assert lines[3].endswith("ms  101 Switching Protocols; Sec-WebSocket-Accept verified")
    assert lines[4].endswith("ms  pong with the same 30-byte payload")
    assert lines[5].endswith("ms  sent 1000; the server echoed 1000 'sidecar probe done'")
    assert lines[6].startswith("OK: every step passed")
    # It went all the way: the backend saw the handshake, the ping and the close.
    [seen] = [s for s in backend.seen if s.path == "/edge/ws"]
    assert seen.headers["x-edge-agent-id"] == ["edge_1"]
    assert [p[:14] for p in backend.pings] == [b"sidecar probe "]
    assert backend.closes == [(1000, "sidecar probe done")]


# --- after the 101 -------------------------------------------------------------------------


def accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


@dataclass
class RawServer:
    port: int
    received: bytearray


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[str], Awaitable[RawServer]]]:
    """A hand-written server on 127.0.0.1 that answers the handshake, then: ``drop``
    (ends TCP, no close frame), ``close`` (a close frame 1008 at once, then waits for
    the client's), ``bad-accept`` (a 101 with the wrong key), ``mute`` (answers
    nothing after its 101), ``hang-up`` (ends TCP before answering at all) or ``echo``
    (refuses, quoting the request in its body and its last header in ``Server``)."""
    servers: list[asyncio.Server] = []

    async def start(behaviour: str) -> RawServer:
        received = bytearray()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            if behaviour == "hang-up":
                writer.close()
                return
            if behaviour == "echo":  # a refusal that quotes the request, credentials and all
                body = json.dumps({"message": head.decode()}).encode()
                writer.write(
                    b"HTTP/1.1 400 Bad Request\r\nX-Sidecar-Reason: bad_request\r\nServer: " + head.split(b"\r\n")[-3]
                )
                writer.write(b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                writer.close()
                return
            key = re.search(rb"(?im)^sec-websocket-key: *(\S+)", head)
            assert key is not None
            answer = accept(b"x" if behaviour == "bad-accept" else key.group(1))
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + answer + b"\r\n\r\n"
            )
            if behaviour == "close":
                writer.write(b"\x88\x12\x03\xf0policy violation")
            await writer.drain()
            if behaviour in ("close", "mute"):
                received.extend(await reader.read())  # what the client sends, until it hangs up
            elif behaviour == "drop":
                # The client's ping read first: closed with nothing unread, the connection ends
                # with a FIN, which the probe reads as the end (not a reset, which the kernel
                # sends instead when unread bytes are left behind: a race otherwise).
                received.extend(await reader.read(2 + 4 + 125))
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return RawServer(server.sockets[0].getsockname()[1], received)

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_101_then_the_connection_dropped(raw_server: Callable[[str], Awaitable[RawServer]]) -> None:
    server = await raw_server("drop")
    run = await probe(f"ws://127.0.0.1:{server.port}/edge/ws", "--json")
    assert run.code == 1
    assert run.summary() == {
        "ok": False,
        "failed_step": "ping",
        "status": 101,
        "reason": None,
        "close_code": 1006,
        "sidecar": False,
        "hint": run.json["hint"],
        "token_fingerprint": fingerprint_of(TOKEN),
    }
    assert run.steps()[-2:] == [
        ("upgrade", True, "101 Switching Protocols; Sec-WebSocket-Accept verified"),
        ("ping", False, "no close frame (1006): the connection ended"),
    ]
    assert "then dropped the connection without a close frame: an agent sees this as 1006" in run.json["hint"]


async def test_a_101_then_a_close_frame(raw_server: Callable[[str], Awaitable[RawServer]]) -> None:
    server = await raw_server("close")
    run = await probe(f"ws://127.0.0.1:{server.port}/edge/ws", "--json")
    assert run.code == 1
    assert (run.json["failed_step"], run.json["status"], run.json["close_code"]) == ("ping", 101, 1008)
    assert run.steps()[-1] == ("ping", False, "closed by the server: 1008 'policy violation'")
    assert "closed it at once with 1008 'policy violation'" in run.json["hint"]
    # What the probe sent after the 101, read back here: a masked ping, then its answer
    # to the close frame, masked too, with the code (RFC 6455 sections 5.3 and 5.5.1).
    frames = bytes(server.received)
    ping_length = frames[1] & 0x7F
    assert (frames[0], frames[1] & 0x80) == (0x89, 0x80)
    close = frames[2 + 4 + ping_length :]
    assert (close[0], close[1]) == (0x88, 0x82)
    mask = close[2:6]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(close[6:8])) == b"\x03\xf0"


async def test_a_101_with_a_wrong_accept(raw_server: Callable[[str], Awaitable[RawServer]]) -> None:
    server = await raw_server("bad-accept")
    run = await probe(f"ws://127.0.0.1:{server.port}/edge/ws", "--json")
    assert run.code == 1
    assert (run.json["failed_step"], run.json["status"]) == ("upgrade", 101)
    assert run.steps()[-1] == ("upgrade", False, "101, but its Sec-WebSocket-Accept is not the one the key requires")


async def test_no_pong(raw_server: Callable[[str], Awaitable[RawServer]]) -> None:
    server = await raw_server("mute")
    run = await probe(f"ws://127.0.0.1:{server.port}/edge/ws", "--json", "--timeout", "2")
    assert run.code == 1
    assert (run.json["failed_step"], run.json["close_code"]) == ("ping", None)
    assert run.steps()[-1] == ("ping", False, "no answer within 2 s")
    assert "does not answer pings" in run.json["hint"]


async def test_a_server_that_hangs_up_on_the_handshake(raw_server: Callable[[str], Awaitable[RawServer]]) -> None:
    server = await raw_server("hang-up")
    run = await probe(f"ws://127.0.0.1:{server.port}/edge/ws", "--json")
    assert run.code == 1
    assert (run.json["failed_step"], run.json["status"]) == ("upgrade", None)
    assert run.steps()[-1] == ("upgrade", False, "the connection ended before an answer (nothing)")


@pytest.mark.parametrize("how", ["--token-env", "-H"])
async def test_a_server_that_quotes_the_token_back(raw_server: Callable[[str], Awaitable[RawServer]], how: str) -> None:
    server = await raw_server("echo")
    url = f"ws://127.0.0.1:{server.port}/edge/ws"
    if how == "-H":  # the credentials as a header of the user's own, the last one sent
        run = await probe(url, "--json", "-H", f"Authorization: Bearer {TOKEN}", token=None)
    else:
        run = await probe(url, "--json", "--agent-id", "edge_1", "-H", f"X-Copy: {TOKEN}")
    assert run.code == 1  # probe() asserted that TOKEN is nowhere in the output
    assert (run.json["status"], run.json["reason"], run.json["sidecar"]) == (400, "bad_request", True)
    assert run.steps()[-1][2].endswith("Server: (withheld: it contains the token)")
    assert run.json["hint"] == "the sidecar refused it (400 bad_request): (withheld: it contains the token)"


# --- usage -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["https://h/edge/ws"], {}, "starts with ws:// or wss://, not https://"),
        (["ws://h/", "--token-env", "UNSET_VAR"], {}, "--token-env UNSET_VAR: the variable is not set"),
        (["ws://h/", "--token-env", "EMPTY_VAR"], {"EMPTY_VAR": ""}, "--token-env EMPTY_VAR: the variable is empty"),
        (["ws://h/", "-H", "no colon"], {}, "-H takes 'Name: value'"),
        (["ws://h/", "-H", f"Authorization Bearer {TOKEN}"], {}, "this one has no ':'"),  # probe(): TOKEN unshown
        (["ws://h/", "--timeout", "0"], {}, "--timeout takes seconds"),
        (["ws://h/", "--token", "a", "--token-env", "X"], {}, "not allowed with argument"),
        (["ws://h/", "--timeout", "soon"], {}, "invalid float value"),
        (["wss://h/", "--cacert", "/nonexistent/ca.pem"], {}, "--cacert /nonexistent/ca.pem: cannot read"),
    ],
)
async def test_bad_usage_exits_2(args: list[str], env: dict[str, str], says: str) -> None:
    run = await probe(*args, token=None, env=env)
    assert (run.code, run.out) == (2, "")
    assert says in run.err


async def test_help_gives_the_command_the_readme_and_troubleshooting_give() -> None:
    """One command to type on the edge machine, the same in --help, the README and
    docs/troubleshooting.md: at the sidecar's domain (the backend's has no sidecar in front)."""
    run = await probe("--help", token=None)
    assert run.code == 0
    [command] = [line.strip() for line in run.out.splitlines() if line.strip().startswith("sidecar probe ")]
    assert command == 'sidecar probe "wss://<sidecar domain>/edge/ws?edge_agent_id=$AGENT" --token-env EDGE_SECRET'
    for doc in ("README.md", "docs/troubleshooting.md"):
        assert f"```sh\n{command}\n```" in (ROOT / doc).read_text(), doc


# --- credentials the user put in the URL or in -H headers ---------------------------------

QUERY_SECRET = "query-secret-5b1e9c77"
WORD_SECRET = "opensesame"  # neither long nor random-looking: a credential only by what precedes it
K8S_TOKEN = base64.urlsafe_b64encode(QUERY_SECRET.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "headers", "secret"),
    [
        (f"/edge/ws?edge_agent_id=edge_1&token={QUERY_SECRET}", [], QUERY_SECRET),
        (f"/edge/ws?access_token={QUERY_SECRET}", [], QUERY_SECRET),
        (f"/edge/ws?edge_agent_id=edge_1&ticket={QUERY_SECRET}", [], QUERY_SECRET),
        (f"/edge/ws?code={QUERY_SECRET}&state=s", [], QUERY_SECRET),  # OAuth's authorization code
        (f"/edge/ws?user=u&pw={QUERY_SECRET}", [], QUERY_SECRET),
        (f"/edge/ws?pwd={QUERY_SECRET}", [], QUERY_SECRET),
        (f"/edge/ws?edge_agent_id=edge_1&sig={TOKEN}", [], TOKEN),  # any value equal to the token
        (f"/edge/ws?{TOKEN}", [], TOKEN),  # a bare query: its name is the value
        ("/edge/ws", ["-H", f"Cookie: session={QUERY_SECRET}"], QUERY_SECRET),
        ("/edge/ws", ["-H", f"Proxy-Authorization: Basic {QUERY_SECRET}"], QUERY_SECRET),
        ("/edge/ws", ["-H", f"X-Api-Key: {QUERY_SECRET}"], QUERY_SECRET),
        # Browsers cannot set Authorization on a WebSocket: the token rides as a subprotocol.
        ("/edge/ws", ["-H", f"Sec-WebSocket-Protocol: x-token.{QUERY_SECRET}"], QUERY_SECRET),
        ("/edge/ws", ["-H", f"Sec-WebSocket-Protocol: graphql-ws, bearer, {WORD_SECRET}"], WORD_SECRET),
        (
            "/edge/ws",
            ["-H", f"Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.{K8S_TOKEN}, base64.binary.k8s.io"],
            K8S_TOKEN,
        ),
    ],
    ids=[
        "token",
        "access_token",
        "ticket",
        "code",
        "pw",
        "pwd",
        "equal-to-the-token",
        "bare",
        "cookie",
        "proxy-authorization",
        "api-key",
        "subprotocol-random-looking",
        "subprotocol-after-bearer",
        "subprotocol-kubernetes",
    ],
)
@pytest.mark.parametrize("output", ["human", "json"])
async def test_credentials_in_the_url_or_headers_are_never_shown(
    raw_server: Callable[[str], Awaitable[RawServer]], path: str, headers: list[str], secret: str, output: str
) -> None:
    server = await raw_server("echo")  # quotes the request back: its line, and its last header in Server
    json_flag = ["--json"] if output == "json" else []
    # Without --token-env when the secret is another: the request it quotes must carry no token.
    token = TOKEN if secret == TOKEN else None
    run = await probe(f"ws://127.0.0.1:{server.port}{path}", *json_flag, *headers, token=token)
    assert run.code == 1
    assert secret not in run.out + run.err
    assert "(withheld: it contains the token)" in run.out
    if output == "human":
        heading = run.out.splitlines()[0]
        assert heading.startswith(f"probe ws://127.0.0.1:{server.port}/edge/ws")
        query = path.partition("?")[2]
        shown = "&".join(p.split("=")[0] + "=…" if "=" in p else "…" for p in query.split("&")) if query else ""
        assert heading.split(" ")[1] == f"ws://127.0.0.1:{server.port}/edge/ws" + (f"?{shown}" if shown else "")


@pytest.mark.parametrize("output", ["human", "json"])
async def test_ordinary_subprotocol_names_are_shown(
    raw_server: Callable[[str], Awaitable[RawServer]], output: str
) -> None:
    """Only the subprotocols that carry a credential are withheld: a server quoting names
    like these back is shown as it is."""
    server = await raw_server("echo")
    offered = "graphql-transport-ws, ocpp1.6, v12.stomp"
    json_flag = ["--json"] if output == "json" else []
    url = f"ws://127.0.0.1:{server.port}/edge/ws"
    run = await probe(url, *json_flag, "-H", f"Sec-WebSocket-Protocol: {offered}", token=None)
    assert run.code == 1
    assert "withheld" not in run.out
    assert f"Server: Sec-WebSocket-Protocol: {offered}" in run.out


async def test_ordinary_query_parameters_are_shown_in_what_the_server_quotes(
    raw_server: Callable[[str], Awaitable[RawServer]],
) -> None:
    """Only credential parameters are withheld: a name that merely contains ``code``, or
    socket.io's ``t=`` cache-buster, leaves the server's text readable."""
    server = await raw_server("echo")
    query = "edge_agent_id=edge_1&country_code=us&EIO=4&t=N8hyd6w"
    run = await probe(f"ws://127.0.0.1:{server.port}/edge/ws?{query}", "--json", token=None)
    assert run.code == 1
    assert run.json["hint"].startswith(f"the sidecar refused it (400 bad_request): GET /edge/ws?{query} HTTP/1.1")


async def test_credentials_in_the_urls_userinfo_are_refused_unshown() -> None:
    run = await probe(f"ws://agent:{QUERY_SECRET}@127.0.0.1:1/edge/ws", "--json")
    assert (run.code, run.out) == (2, "")
    assert "credentials do not belong in the URL" in run.err
    assert QUERY_SECRET not in run.err
