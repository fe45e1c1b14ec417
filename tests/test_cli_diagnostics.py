"""What ``sidecar check`` and ``sidecar serve`` say about what they run with, as a user
sees it: real processes, their output read as printed. A secret's fingerprint is the
same in ``probe``, ``check``, ``fingerprint`` and the start-up log; a deploy mistake
(the loopback default on Railway, an empty port, a port taken) is said in one line
naming what to fix; ``serve --help`` lists the environment it reads."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from sidecar import cli
from sidecar.extensions import ALLOW_ENV

from .conftest import ROOT, SECRET, SIDECAR, process_env, spawned, taken_port
from .upstream import Backend

SHIPPED = (ROOT / "routes.yaml").read_text()
FINGERPRINT = re.compile(r"fp1:[a-z2-7]{8}")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SIDECAR, *args], capture_output=True, text=True, env=process_env(**(env or {})), cwd=ROOT, timeout=60
    )


def scrypt_fingerprint(secret: str) -> str:
    """The documented derivation, computed here rather than with sidecar's code."""
    key = hashlib.scrypt(secret.encode(), salt=b"sidecar-fingerprint-v1", n=2**14, r=8, p=1, dklen=5)
    return "fp1:" + base64.b32encode(key).decode().lower()


def line_of(needle: str) -> int:
    return next(n for n, line in enumerate(SHIPPED.splitlines(), 1) if needle in line)


# --- fingerprints, the same everywhere ----------------------------------------------------


async def test_the_same_secret_has_the_same_fingerprint_in_probe_check_fingerprint_and_the_log(
    backend: Backend,
) -> None:
    env = {"EDGE_SECRET": SECRET, "UPSTREAM_URL": backend.url, "PORT": "0", "METRICS_PORT": "0"}
    printed = run("fingerprint", "--env", "EDGE_SECRET", env=env).stdout
    checked = run("check", "routes.yaml", env=env).stdout
    async with spawned(*SIDECAR, "serve", cwd=ROOT, env=process_env(**env), stderr=asyncio.subprocess.PIPE) as server:
        assert server.stderr is not None
        started = json.loads(await asyncio.wait_for(server.stderr.readline(), 30))
        assert started["event"] == "sidecar.started"
        port = started["listen"].rpartition(":")[2]
        url = f"ws://127.0.0.1:{port}/edge/ws?edge_agent_id=edge_1"
        async with spawned(
            *SIDECAR, "probe", url, "--token-env", "EDGE_SECRET", "--json",
            cwd=ROOT, env=process_env(**env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        ) as probe:  # fmt: skip
            probed, probe_err = await asyncio.wait_for(probe.communicate(), 60)
    report = json.loads(probed)
    assert report["ok"] is True, report

    expected = scrypt_fingerprint(SECRET)
    assert printed == f"{expected} ({len(SECRET)} bytes)\n"
    assert f"  auth edge      EDGE_SECRET              set, {expected} ({len(SECRET)} bytes)\n" in checked
    assert started["secret_fingerprints"] == {
        "edge": {"EDGE_SECRET": f"set, {expected} ({len(SECRET)} bytes)", "EDGE_SECRET_PREVIOUS": "unset"}
    }
    assert report["token_fingerprint"] == expected
    for text in (printed, checked, json.dumps(started), probed.decode(), probe_err.decode()):
        assert SECRET not in text
        assert set(FINGERPRINT.findall(text)) <= {expected}


def test_check_lists_each_policy_variable_as_set_or_unset() -> None:
    old = "old-secret-fedcba9876543210"
    result = run("check", "routes.yaml", env={"EDGE_SECRET_PREVIOUS": old})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[4:6] == [
        "  auth edge      EDGE_SECRET              unset",
        f"  auth edge      EDGE_SECRET_PREVIOUS     set, {scrypt_fingerprint(old)} ({len(old)} bytes)",
    ]
    result = run("check", "routes.yaml", env={"EDGE_SECRET": SECRET, "EDGE_SECRET_PREVIOUS": ""})
    assert result.stdout.splitlines()[5] == "  auth edge      EDGE_SECRET_PREVIOUS     empty"
    assert old not in result.stdout + result.stderr


# --- check --config -----------------------------------------------------------------------


def test_check_takes_config_as_serve_does(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text(SHIPPED.replace("/edge/message", "/edge/msg"))
    env = {"EDGE_SECRET": SECRET}
    flag, positional = run("check", "--config", str(mine), env=env), run("check", str(mine), env=env)
    assert (flag.returncode, flag.stdout, flag.stderr) == (positional.returncode, positional.stdout, positional.stderr)
    assert flag.stdout.startswith(f"{mine}: valid, 3 route(s)\n") and "/edge/msg" in flag.stdout
    assert run("check", env=env).stdout.startswith("routes.yaml: valid, 3 route(s)\n")  # as serve's default
    both = run("check", "routes.yaml", "--config", str(mine), env=env)
    assert both.returncode == 2
    assert f"two routes files given (routes.yaml and --config {mine}): give one" in both.stderr


# --- serve --help -------------------------------------------------------------------------


def test_serve_help_lists_every_variable_the_shipped_file_and_the_process_read() -> None:
    result = run("serve", "--help")
    assert result.returncode == 0
    listed = result.stdout.partition("\nenvironment")[2]
    rows = [line for line in listed.splitlines()[1:] if line.startswith("  ") and line[2] != " "]  # not wrapped
    names = {row.split()[0].partition("=")[0] for row in rows}
    values = "\n".join(re.sub(r"(^|\s)#.*", "", line) for line in SHIPPED.splitlines())  # comments are not values
    in_file = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", values))
    assert in_file >= {"PORT", "UPSTREAM_URL", "EDGE_SECRET", "EDGE_SECRET_PREVIOUS", "METRICS_PORT"}
    assert names == in_file | {ALLOW_ENV, "AIOHTTP_NO_EXTENSIONS", "RAILWAY_ENVIRONMENT_ID"}
    assert "  PORT                        listen.port (default 8080)\n" in listed
    assert "  UPSTREAM_URL                upstreams.backend.url (default http://127.0.0.1:8000)\n" in listed
    assert "  EDGE_SECRET                 auth.edge.bearer (a secret, required)\n" in listed


def test_serve_help_is_read_from_the_shipped_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable added to the shipped file is listed without touching the help text."""
    shipped = tmp_path / "routes.yaml"
    shipped.write_text(SHIPPED.replace("level: ${LOG_LEVEL:-info}", "level: ${SIDECAR_LOG_LEVEL:-warning}"))
    monkeypatch.setattr(cli, "SHIPPED_CONFIG", shipped)
    text = cli.serve_environment()
    assert "  SIDECAR_LOG_LEVEL           log.level (default warning)" in text
    assert "\n  LOG_LEVEL " not in text


# --- deploy mistakes --------------------------------------------------------------------


def test_serve_refuses_the_loopback_default_on_railway_and_check_warns() -> None:
    env = {"EDGE_SECRET": SECRET, "RAILWAY_ENVIRONMENT_ID": "0b7c2d1e", "PORT": "0", "METRICS_PORT": "0"}
    said = (
        f"routes.yaml:{line_of('url: ${UPSTREAM_URL')}: {{}}: upstreams.backend.url: UPSTREAM_URL is not set "
        "(or empty), so the url falls back to the default written in the file, 127.0.0.1:8000; on Railway "
        "(RAILWAY_ENVIRONMENT_ID is set) that address is the sidecar's own container, never the backend: "
        "set UPSTREAM_URL to the backend's private URL (such as http://backend.railway.internal:8000)"
    )
    served = run("serve", "--config", "routes.yaml", env=env)
    assert served.returncode == 2
    assert served.stderr.splitlines() == [
        said.format("error"),
        "routes.yaml: not starting: the config has errors (see above)",
    ]
    checked = run("check", "routes.yaml", env=env)
    assert (checked.returncode, checked.stderr.splitlines()) == (0, [said.format("warning")])


@pytest.mark.parametrize("command", ["check", "serve"])
def test_an_empty_port_is_an_error_in_check_and_serve(command: str) -> None:
    env = {"EDGE_SECRET": SECRET, "UPSTREAM_URL": "http://backend.railway.internal:", "PORT": "0"}
    result = run(command, "--config", "routes.yaml", env=env)
    assert result.returncode == 2
    assert (
        f"routes.yaml:{line_of('url: ${UPSTREAM_URL')}: error: upstreams.backend.url: has an empty port "
        "(nothing after the ':', as an unresolved reference such as ${{backend.PORT}} leaves it); "
        "write the port, or leave out the ':' for the scheme's default\n"
    ) in result.stderr


def test_check_refuses_port_equal_to_metrics_port() -> None:
    result = run("check", "routes.yaml", env={"EDGE_SECRET": SECRET, "PORT": "9100"})
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        f"routes.yaml:{line_of('port: ${METRICS_PORT')}: error: metrics.port: 9100 is listen.port too; "
        "give metrics a port of their own, or 0 to turn them off"
    )
    assert run("check", "routes.yaml", env={"EDGE_SECRET": SECRET, "PORT": "9100", "METRICS_PORT": "0"}).returncode == 0


def _this_process() -> str:
    return f"pid {os.getpid()} ({Path(f'/proc/{os.getpid()}/comm').read_text().strip()})"


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="what holds a port is found in Linux's /proc")
@pytest.mark.parametrize(("setting", "what"), [("PORT", "listen.port"), ("METRICS_PORT", "metrics.port")])
def test_a_port_in_use_is_named_with_what_holds_it(setting: str, what: str) -> None:
    ports = {"PORT": "0", "METRICS_PORT": "0"}
    with taken_port() as port:  # held by this test process
        env = {"EDGE_SECRET": SECRET, **ports, setting: str(port)}
        result = run("serve", "--config", "routes.yaml", env=env)
    assert result.returncode == 1
    assert result.stderr == (
        f"not starting: cannot listen on *:{port} ({what}): Address already in use; held by {_this_process()}\n"
    )


def test_with_metrics_off_a_port_in_use_does_not_mention_metrics() -> None:
    with taken_port() as port:
        result = run(
            "serve", "--config", "routes.yaml", env={"EDGE_SECRET": SECRET, "PORT": str(port), "METRICS_PORT": "0"}
        )
    assert result.returncode == 1
    assert "metrics" not in result.stderr
    assert result.stderr.startswith(f"not starting: cannot listen on *:{port} (listen.port): Address already in use")


def test_a_one_letter_secret_leaves_check_messages_readable() -> None:
    result = run("check", "routes.yaml", env={"EDGE_SECRET": "e", "LOG_LEVEL": "verbose"})
    assert result.returncode == 2
    assert result.stderr.splitlines()[:2] == [
        f"routes.yaml:{line_of('level: ${LOG_LEVEL')}: error: log.level: expected debug, info, warning or error, "
        "got 'verbose'",
        f"routes.yaml:{line_of('- ${EDGE_SECRET}')}: warning: auth.edge.bearer: EDGE_SECRET is shorter than "
        "16 characters, easy to guess; use a long random one (openssl rand -hex 32)",
    ]
