"""Fixtures and config helpers shared by the tests: the backend, a started sidecar, a config
for it (``config_for``, ``edge_yaml``), the test credentials (``SECRET``, ``GOOD``), ports,
and ``sidecar`` processes (``process_env``, ``spawned``). What goes over the sockets (raw
requests, frames, waiting, refusals, scrapes, log lines) is in ``tests/wire.py``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from sidecar.config import Config, load_config
from sidecar.logs import SUMMARY
from sidecar.metrics import Metrics
from sidecar.server import Running, start

from .upstream import Backend

ROOT = Path(__file__).resolve().parent.parent
SIDECAR = [sys.executable, "-m", "sidecar"]  # the command line, on this test run's Python
SECRET = "test-secret-0123456789abcdef"
OLD_SECRET = "old-secret-fedcba9876543210"
AGENT = "edge_13238407486"  # an agent id as real agents send it
GOOD = {"Authorization": f"Bearer {SECRET}", "X-Edge-Agent-Id": AGENT}  # what a configured agent sends

# Property-based tests (tests/test_fuzz_*.py). "fast", the default, keeps the whole fuzz suite to a
# few seconds: a fixed seed (the same examples every run, so CI cannot turn red by luck) and no
# per-example deadline (two shared CPUs make timings noise). HYPOTHESIS_PROFILE=long explores:
#   HYPOTHESIS_PROFILE=long .venv/bin/pytest -q tests/test_fuzz_*.py
settings.register_profile(
    "fast", max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

# Event loops. The sidecar runs on uvloop where it is installed (Linux, the image) and on
# asyncio's loop elsewhere, so async tests run on uvloop by default, and the modules in
# BOTH_LOOPS (the data plane end to end) and tests marked `both_loops` on asyncio's loop as
# well (uvloop's transports are not asyncio's classes, and what works on one may not on the
# other): twice, but not the whole suite twice. SIDECAR_TEST_LOOPS=asyncio,uvloop runs every
# async test on each loop named.
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
if sys.platform != "win32":
    import uvloop

    LOOPS["uvloop"] = uvloop.new_event_loop
BOTH_LOOPS = {"test_http", "test_websocket", "test_keepalive", "test_compression", "test_fuzz_http"}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    chosen = [name.strip() for name in os.environ.get("SIDECAR_TEST_LOOPS", "").split(",") if name.strip()]
    if not chosen:
        module = item.nodeid.partition("::")[0].rpartition("/")[2].removesuffix(".py")
        both = module in BOTH_LOOPS or item.get_closest_marker("both_loops") is not None
        chosen = sorted(LOOPS) if both else ["uvloop" if "uvloop" in LOOPS else "asyncio"]
    return {name: LOOPS[name] for name in chosen if name in LOOPS}


def config_for(upstream_url: str, text: str | None = None, **env: str) -> Config:
    """The shipped routes.yaml (or ``text``), with the test environment."""
    text = text if text is not None else (ROOT / "routes.yaml").read_text()
    environment = {"EDGE_SECRET": SECRET, "UPSTREAM_URL": upstream_url, **env}
    config, problems = load_config(text, env=environment)
    assert config is not None, problems
    return config


def edge_yaml(*, listen: str = "", upstream: str = "", auth: str = "", route: str = "") -> str:
    """A one-route config (/edge/ws to the backend, behind the edge secret), plus the extras
    given: each is spliced into its flow mapping, e.g. ``route=", max_message_size: 1KiB"``."""
    return (
        f"listen: {{{listen}}}\n"
        f'upstreams: {{backend: {{url: "${{UPSTREAM_URL}}"{upstream}}}}}\n'
        f'auth: {{edge: {{bearer: ["${{EDGE_SECRET}}"]{auth}}}}}\n'
        "routes:\n"
        f"  - {{name: edge, type: websocket, paths: [/edge/ws], upstream: backend, auth: edge{route}}}\n"
    )


@pytest.fixture(autouse=True)
def _fresh_log_summary() -> None:
    """Each test's bursts of per-session lines are its own (``sidecar.logs.SUMMARY``)."""
    SUMMARY.reset()


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = await Backend().start()
    yield b
    await b.stop()


class Sidecar:
    def __init__(self, running: Running, metrics: Metrics) -> None:
        self.running = running
        self.metrics = metrics

    @property
    def port(self) -> int:
        return self.running.port

    def url(self, path: str, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


StartSidecar = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def start_sidecar() -> AsyncIterator[StartSidecar]:
    started: list[Running] = []

    async def _start(config: Config, *, metrics_port: int | None = None) -> Sidecar:
        """``metrics_port=0``: a metrics listener on a free port; ``None``: none (no fixed port)."""
        if metrics_port is None:
            config = dataclasses.replace(config, metrics_port=0)
        metrics = Metrics()
        running = await start(config, metrics=metrics, port=0, metrics_port=metrics_port)
        started.append(running)
        return Sidecar(running, metrics)

    yield _start
    for running in started:
        await running.close()


@pytest.fixture
async def sidecar(backend: Backend, start_sidecar: StartSidecar) -> Sidecar:
    return await start_sidecar(config_for(backend.url))


# What the sidecar reads from its environment (and the test run's own shell might have set).
_SETTINGS = (
    *("EDGE_", "UPSTREAM_", "PORT", "METRICS_", "AIOHTTP_NO_EXTENSIONS", "SIDECAR_ALLOW_PURE_PYTHON", "RAILWAY_"),
    *("REDIS_URL", "ADMIN_TOKEN"),
)


def process_env(**settings: str) -> dict[str, str]:
    """The environment for a ``sidecar`` process: this one's without the sidecar's own
    settings, plus ``settings``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith(_SETTINGS)}, **settings}


@contextlib.asynccontextmanager
async def spawned(*command: str, **options: Any) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process (``asyncio.create_subprocess_exec``), killed on the way out if the
    test has not ended it."""
    process = await asyncio.create_subprocess_exec(*command, **options)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A port that something else listens on while the block runs."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port free on every IPv4 and IPv6 address (the sidecar listens on both), and never
    one this run handed out already: two calls in a row (a listen and a metrics port) could
    otherwise get the same port back from the kernel, both being free until bound."""
    while True:
        with socket.socket() as v4, socket.socket(socket.AF_INET6) as v6:
            v4.bind(("0.0.0.0", 0))
            port = int(v4.getsockname()[1])
            if port in _GIVEN:
                continue
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                v6.bind(("::", port))
            except OSError:
                continue  # taken on IPv6: try another
            _GIVEN.add(port)
            return port
