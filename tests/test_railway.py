"""On Railway (its service variables set), Railway's defaults are the sidecar's: the edge
(RFC 6598, 100.64.0.0/10) is trusted and names the client in X-Real-IP; an explicit setting
still wins; a drain longer than the platform allows is a warning."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import signal
import subprocess

import pytest
from multidict import CIMultiDict
from websockets.exceptions import InvalidStatus

from sidecar.admission import authenticate
from sidecar.clients import ClientRules, settings
from sidecar.config import load_config, model
from sidecar.context import Context
from sidecar.metrics import Metrics
from sidecar.reasons import Refused
from sidecar.routing import Router
from sidecar.runtime import Runtime

from .conftest import GOOD, ROOT, SECRET, SIDECAR, StartSidecar, config_for, edge_yaml, free_port, process_env, spawned
from .upstream import Backend
from .wire import log_fields, rejected, ws_connect

ON_RAILWAY = {"RAILWAY_ENVIRONMENT_ID": "b5ce7ab5-96f1-4fa3-929b-fc883f89cbd1"}
ATTACKER = "203.0.113.66"
AGENT_IP = "198.51.100.7"
SHIPPED = (ROOT / "routes.yaml").read_text()


async def test_on_railway_ten_wrong_tokens_from_one_client_do_not_lock_out_the_agents(
    backend: Backend, start_sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Railway's edge connects from 100.64.0.0/10; no socket here can come from there (it
    # would take root to add such an address), so loopback stands in for the edge.
    monkeypatch.setattr(model, "RAILWAY_EDGE", ipaddress.ip_network("127.0.0.0/8"), raising=False)
    sidecar = await start_sidecar(config_for(backend.url, edge_yaml(), **ON_RAILWAY))
    wrong = {**GOOD, "Authorization": "Bearer wrong-token", "X-Real-IP": ATTACKER}
    for _ in range(10):
        status, headers, _ = await rejected(sidecar, "/edge/ws", wrong)
        assert (status, headers["X-Sidecar-Reason"]) == (401, "invalid_token")
    # The agents behind the same edge get in ...
    async with ws_connect(sidecar, headers={**GOOD, "X-Real-IP": AGENT_IP}) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
    # ... and the one client that failed ten times is the one held back.
    status, headers, _ = await rejected(sidecar, "/edge/ws", {**wrong, "Authorization": f"Bearer {SECRET}"})
    assert (status, headers["X-Sidecar-Reason"]) == (429, "rate_limited")


async def test_off_railway_clients_behind_one_untrusted_address_share_its_budget(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    """Without the Railway variables (and no trusted_proxies) the peer is the client,
    whatever X-Real-IP says: a header from anyone names nobody."""
    sidecar = await start_sidecar(config_for(backend.url, edge_yaml()))
    wrong = {**GOOD, "Authorization": "Bearer wrong-token", "X-Real-IP": ATTACKER}
    for _ in range(10):
        await rejected(sidecar, "/edge/ws", wrong)
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(sidecar, headers={**GOOD, "X-Real-IP": AGENT_IP}):
            pass
    assert refused.value.response.status_code == 429


# --- the values in force, and why (a table: no sockets) -------------------------------------

RAILWAYS = "Railway's default: RAILWAY_ENVIRONMENT_ID is set"


@pytest.mark.parametrize(
    ("env", "trusted", "header"),
    [
        # Not on Railway: nobody is trusted.
        ({}, ("none", "default"), ("none", "default")),
        # On Railway: its edge, and the header it names the client in.
        (ON_RAILWAY, ("100.64.0.0/10", RAILWAYS), ("X-Real-IP", RAILWAYS)),
        (  # any other Railway variable, where that one is missing
            {"RAILWAY_SERVICE_ID": "s"},
            ("100.64.0.0/10", "Railway's default: RAILWAY_SERVICE_ID is set"),
            ("X-Real-IP", "Railway's default: RAILWAY_SERVICE_ID is set"),
        ),
        ({"RAILWAY_ENVIRONMENT_ID": ""}, ("none", "default"), ("none", "default")),  # set but empty: not Railway
        ({"RAILWAY_TOKEN": "t"}, ("none", "default"), ("none", "default")),  # the CLI's credential, anywhere
        # An explicit setting wins, key by key ...
        (
            {**ON_RAILWAY, "TRUSTED_PROXIES": "10.0.0.0/8"},
            ("10.0.0.0/8", "set in the config file"),
            ("X-Real-IP", RAILWAYS),
        ),
        (
            {**ON_RAILWAY, "CLIENT_IP_HEADER": "X-Client-IP"},
            ("100.64.0.0/10", RAILWAYS),
            ("X-Client-IP", "set in the config file"),
        ),
        # ... 'none' included: Railway's defaults turned off.
        (
            {**ON_RAILWAY, "TRUSTED_PROXIES": "none", "CLIENT_IP_HEADER": "none"},
            ("none", "set in the config file"),
            ("none", "set in the config file"),
        ),
        ({"TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8"}, ("10.0.0.0/8, fd00::/8", "set in the config file"), None),
    ],
)
def test_the_values_in_force_and_why(
    env: dict[str, str], trusted: tuple[str, str], header: tuple[str, str] | None
) -> None:
    config = config_for("http://127.0.0.1:1", **env)  # the shipped routes.yaml
    in_force = settings(config)
    assert in_force["trusted_proxies"] == trusted
    assert in_force["client_ip_header"] == (header or ("none", "default"))
    rules = ClientRules.of(config)
    edge_peer = rules.identify("100.64.0.3", CIMultiDict({"X-Real-IP": AGENT_IP}))
    # From the edge, the client X-Real-IP names, where that is the header; else the edge itself.
    named = AGENT_IP if in_force["client_ip_header"][0] == "X-Real-IP" else "100.64.0.3"
    assert edge_peer == ((named, True) if trusted[0] == "100.64.0.0/10" else ("100.64.0.3", False))


def test_check_shows_the_values_in_force_and_why() -> None:
    result = check({**ON_RAILWAY, "CLIENT_IP_HEADER": "X-Client-IP"})
    assert result.returncode == 0, result.stderr
    assert "  listen.trusted_proxies: 100.64.0.0/10 (Railway's default: RAILWAY_ENVIRONMENT_ID is set)" in result.stdout
    assert "  listen.client_ip_header: X-Client-IP (set in the config file)" in result.stdout.splitlines()
    off = check({})
    assert "  listen.trusted_proxies: none (default)" in off.stdout.splitlines()


# --- the drain must fit in Railway's draining time ------------------------------------------

DRAIN_LINE = next(n for n, line in enumerate(SHIPPED.splitlines(), 1) if "drain_timeout:" in line)


@pytest.mark.parametrize(
    ("env", "warning"),
    [
        ({"RAILWAY_DEPLOYMENT_DRAINING_SECONDS": "30"}, None),  # railway.json's: 10 s + 5 s fit
        ({"RAILWAY_DEPLOYMENT_DRAINING_SECONDS": "15"}, None),  # exactly
        ({}, None),  # not set: nothing to compare with
        (
            {"RAILWAY_DEPLOYMENT_DRAINING_SECONDS": "12"},
            f"routes.yaml:{DRAIN_LINE}: warning: listen.drain_timeout (10s) + listen.close_timeout (5s) is more "
            "than RAILWAY_DEPLOYMENT_DRAINING_SECONDS (12s): Railway would kill this replica before its last "
            "sessions are closed (their agents see 1006); raise RAILWAY_DEPLOYMENT_DRAINING_SECONDS "
            "(drainingSeconds in railway.json) to at least 15, or lower listen.drain_timeout (DRAIN_TIMEOUT) to 7s",
        ),
        (
            {"RAILWAY_DEPLOYMENT_DRAINING_SECONDS": "30", "DRAIN_TIMEOUT": "28s"},
            f"routes.yaml:{DRAIN_LINE}: warning: listen.drain_timeout (28s) + listen.close_timeout (5s) is more "
            "than RAILWAY_DEPLOYMENT_DRAINING_SECONDS (30s): Railway would kill this replica before its last "
            "sessions are closed (their agents see 1006); raise RAILWAY_DEPLOYMENT_DRAINING_SECONDS "
            "(drainingSeconds in railway.json) to at least 33, or lower listen.drain_timeout (DRAIN_TIMEOUT) to 25s",
        ),
        (
            {"RAILWAY_DEPLOYMENT_DRAINING_SECONDS": "0"},  # Railway's own default
            f"routes.yaml:{DRAIN_LINE}: warning: listen.drain_timeout (10s) + listen.close_timeout (5s) is more "
            "than RAILWAY_DEPLOYMENT_DRAINING_SECONDS (0s): Railway would kill this replica before its last "
            "sessions are closed (their agents see 1006); raise RAILWAY_DEPLOYMENT_DRAINING_SECONDS "
            "(drainingSeconds in railway.json) to at least 15",
        ),
        (
            {"RAILWAY_DEPLOYMENT_DRAINING_SECONDS": "soon"},
            f"routes.yaml:{DRAIN_LINE}: warning: RAILWAY_DEPLOYMENT_DRAINING_SECONDS: "
            "expected a number of seconds, got 'soon'",
        ),
    ],
)
def test_a_drain_longer_than_railway_allows_is_a_warning_naming_the_number_to_raise(
    env: dict[str, str], warning: str | None
) -> None:
    config, problems = load_config(SHIPPED, env={"EDGE_SECRET": SECRET, "UPSTREAM_URL": "http://backend:8000", **env})
    assert config is not None  # a warning: it still starts
    assert [str(p) for p in problems] == ([warning] if warning else [])


async def test_serve_warns_of_the_drain_and_logs_the_values_in_force_as_it_starts(backend: Backend) -> None:
    env = process_env(
        EDGE_SECRET=SECRET,
        UPSTREAM_URL=backend.url,
        PORT=str(free_port()),
        METRICS_PORT="0",
        RAILWAY_DEPLOYMENT_DRAINING_SECONDS="12",
        **ON_RAILWAY,
    )
    command = [*SIDECAR, "serve", "--config", "routes.yaml"]
    async with spawned(*command, cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE) as process:
        assert process.stderr is not None
        lines: list[str] = []
        while not lines or '"sidecar.started"' not in lines[-1]:
            line = await asyncio.wait_for(process.stderr.readline(), 30)
            assert line, lines
            lines.append(line.decode())
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    assert lines[0].startswith(f"routes.yaml:{DRAIN_LINE}: warning: listen.drain_timeout (10s) + ")
    assert "raise RAILWAY_DEPLOYMENT_DRAINING_SECONDS (drainingSeconds in railway.json) to at least 15" in lines[0]
    clients = json.loads(lines[1])
    assert clients["event"] == "sidecar.started"
    assert (clients["trusted_proxies"], clients["trusted_proxies_from"]) == ("100.64.0.0/10", RAILWAYS)
    assert (clients["client_ip_header"], clients["client_ip_header_from"]) == ("X-Real-IP", RAILWAYS)


def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SIDECAR, "check", "routes.yaml"], capture_output=True, text=True, env=process_env(**env), cwd=ROOT, timeout=60
    )


@pytest.mark.parametrize(("peer", "warned"), [("10.1.2.3", True), ("100.64.0.3", False), ("93.184.216.34", False)])
def test_on_railway_failures_from_a_proxy_outside_the_edges_range_still_warn(
    peer: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Were Railway's edge to connect from elsewhere than 100.64.0.0/10, its agents would
    share one budget again: the once-per-process hint still names the peer to trust."""
    caplog.set_level(logging.WARNING, logger="sidecar")
    config = config_for("http://127.0.0.1:1", edge_yaml(), **ON_RAILWAY)
    rt = Runtime(config=config, router=Router(config.routes), metrics=Metrics())
    headers = CIMultiDict({"Authorization": "Bearer wrong", "X-Real-IP": AGENT_IP})
    client, trusted = rt.clients.identify(peer, headers)
    ctx = Context("GET", "/edge/ws", (1, 1), headers, peer, client, trusted, True, 0.0)
    with pytest.raises(Refused):
        authenticate(ctx, rt, config.routes[0])
    assert [f["peer"] for f in log_fields(caplog, "auth.failures_keyed_on_proxy")] == ([peer] if warned else [])
