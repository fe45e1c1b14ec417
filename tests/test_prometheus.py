"""A real Prometheus server (Debian's ``prometheus``) with deploy/prometheus/rules.yml
loaded scrapes a real sidecar in front of a real backend, while the test drives traffic
and refusals. Through Prometheus' HTTP query API: the rejection counter with its labels,
every recorded series, every metric the dashboard and the rules name with the expected
labels, and every dashboard query returning data."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .conftest import ROOT, SECRET, Sidecar, StartSidecar, config_for, free_port
from .fleet import redis_server
from .promql import (
    RULES,
    TARGET_LABELS,
    dashboard,
    dashboard_queries,
    metric_names,
    recorded,
    rule_queries,
    rules,
    series_labels,
    substitute,
)
from .servers import binary
from .upstream import Backend

JOB = "sidecar"
GOOD = {"Authorization": f"Bearer {SECRET}", "X-Edge-Agent-Id": "edge_1"}
WRONG = {**GOOD, "Authorization": "Bearer not-the-secret"}
VARIABLES = {"job": JOB, "instance": ".*", "__range": "5m", "__rate_interval": "1m", "__interval": "1s"}


class Prometheus:
    """``prometheus`` on 127.0.0.1 and a port of its choosing, scraping ``target`` every
    second with the rules loaded; its own config and data directory under ``workdir``."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.workdir = workdir
        self.target = target
        self.url = ""
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [self.target]}]}],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = self.workdir / "prometheus.log"
        with log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                binary("prometheus"),
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                "--web.listen-address=127.0.0.1:0",  # it logs the port it got
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
        async with asyncio.timeout(30):
            while not (found := re.search(r'msg="Listening on" address=([\d.]+:\d+)', log.read_text())):
                assert self.process.returncode is None, f"prometheus exited:\n{log.read_text()}"
                await asyncio.sleep(0.05)
            self.url = f"http://{found.group(1)}"
            while await self._status("/-/ready") != 200:  # noqa: ASYNC110 - Prometheus is another process
                await asyncio.sleep(0.05)

    async def _status(self, path: str) -> int:
        try:
            async with aiohttp.ClientSession() as http, http.get(self.url + path) as response:
                return response.status
        except aiohttp.ClientConnectionError:
            return 0

    async def api(self, path: str, **params: str) -> Any:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/api/v1/{path}", params=params) as response:
            body = await response.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self.api("query", query=expr))["result"]
        return result

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@contextlib.asynccontextmanager
async def prometheus(workdir: Path, target: str) -> AsyncIterator[Prometheus]:
    server = Prometheus(workdir, target)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


def config_text(dead_upstream: str) -> str:
    """The shipped routes.yaml, with: no catch-all (so a plain request can miss every route),
    fast keep-alive pings (so a mute backend is cut off in a test's time), and routes to a
    backend that is not there (502 upstream_unavailable on both kinds of route), and a JWKS
    there too (its policy's last-success gauge at 0: never fetched)."""
    data = yaml.safe_load((ROOT / "routes.yaml").read_text())
    data["auth"]["edge"]["jwt"] = {"jwks_url": f"{dead_upstream}/jwks"}
    data["listen"]["keepalive_interval"] = "200ms"
    data["upstreams"]["dead"] = {"url": dead_upstream}
    data["routes"] = [route for route in data["routes"] if route.get("prefix") != "/"]
    data["routes"] += [
        {"name": "dead-ws", "type": "websocket", "paths": ["/dead/ws"], "upstream": "dead"},
        {"name": "dead", "type": "http", "paths": ["/dead"], "upstream": "dead"},
    ]
    return str(yaml.safe_dump(data))


async def refused_upgrade(sidecar: Sidecar, path: str, headers: dict[str, str]) -> tuple[int, str | None]:
    with pytest.raises(InvalidStatus) as info:
        async with connect(sidecar.url(path), additional_headers=headers):
            pass
    response = info.value.response
    return response.status_code, response.headers.get("X-Sidecar-Reason")


async def plain(sidecar: Sidecar, method: str, path: str, headers: dict[str, str]) -> tuple[int, str | None]:
    async with aiohttp.ClientSession() as http, http.request(method, sidecar.url(path, "http"), headers=headers) as r:
        await r.read()
        return r.status, r.headers.get("X-Sidecar-Reason")


async def session_ended_by_backend(sidecar: Sidecar, command: str) -> int | None:
    """A session whose backend is told ``command``; the close code the client got."""
    async with connect(sidecar.url("/edge/ws"), additional_headers=GOOD, ping_interval=None) as ws:
        await ws.send(command)
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        return ws.close_code


async def drive(sidecar: Sidecar) -> None:
    """Sessions that end in each way, and refusals, each checked as the client sees it."""
    async with connect(sidecar.url("/edge/ws"), additional_headers=GOOD) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
    assert await refused_upgrade(sidecar, "/nowhere", GOOD) == (404, "no_route")
    assert await refused_upgrade(sidecar, "/dead/ws", GOOD) == (502, "upstream_unavailable")
    assert await plain(sidecar, "GET", "/nowhere", {}) == (404, "no_route")
    assert await plain(sidecar, "POST", "/edge/message", GOOD) == (200, None)
    assert await plain(sidecar, "POST", "/edge/message", WRONG) == (401, "invalid_token")
    assert await plain(sidecar, "GET", "/dead", {}) == (502, "upstream_unavailable")
    assert await session_ended_by_backend(sidecar, "vanish") == 1011  # closes{upstream, 1006}
    assert await session_ended_by_backend(sidecar, "mute") == 1011  # cut off: upstream, dead
    assert sidecar.running.reload(lambda: (None, [])) is False  # a reload that fails


def label_keys(series: dict[str, Any]) -> frozenset[str]:
    return frozenset(series["metric"]) - {"__name__"}


async def problems(server: Prometheus) -> list[str]:
    """What Prometheus does not show yet (or shows wrong); [] when all is there."""
    found: list[str] = []
    data = rules()

    # The wrong tokens the test sent, with their labels, and the recording rule's rate.
    invalid = await server.query(f'sidecar_ws_rejections_total{{job="{JOB}", route="edge", reason="invalid_token"}}')
    if [(label_keys(s), s["value"][1]) for s in invalid] != [(TARGET_LABELS | {"route", "reason"}, "2")]:
        found.append(f"sidecar_ws_rejections_total for invalid_token: {invalid}")
    rate = 'instance_route_reason:sidecar_ws_rejections:rate5m{route="edge", reason="invalid_token"} > 0'
    if not await server.query(rate):
        found.append(f"no {rate}")

    # Every series the dashboard and the rules read, with the labels they are meant to have.
    queries = dashboard_queries(dashboard()) + rule_queries(data)
    read = {name for query in queries for name in metric_names(query.expr)}
    for name in sorted(read):
        expected = series_labels(name, data)
        assert expected is not None, f"{name}: neither exported, recorded nor made by Prometheus"
        series = await server.query(f'{name}{{job="{JOB}"}}')
        if not series:
            found.append(f"no series {name}")
        wrong = {label_keys(s) for s in series} - {expected}
        if wrong:
            found.append(f"{name}: labels {sorted(map(sorted, wrong))}, expected {sorted(expected)}")
    # ... and every recorded series, whoever reads it.
    for name in sorted(set(recorded(data)) - read):
        if not await server.query(f'{name}{{job="{JOB}"}}'):
            found.append(f"no series {name}")

    # Every dashboard query returns something, the variables' ones included.
    for query in dashboard_queries(dashboard()):
        expr = substitute(query.expr, VARIABLES)
        if query.label_of is not None:
            values = await server.api(f"label/{query.label_of}/values", **{"match[]": expr})
            if not values:
                found.append(f"{query.where}: no {query.label_of} values")
        elif not await server.query(expr):
            found.append(f"{query.where}: no data for {expr}")
    return found


async def until(server: Prometheus, expr: str) -> None:
    """Wait (at most 30 s) until ``expr`` has a result in Prometheus."""
    async with asyncio.timeout(30):
        while not await server.query(expr):  # noqa: ASYNC110 - Prometheus is another process
            await asyncio.sleep(0.1)


async def test_prometheus_scrapes_the_sidecar_and_has_every_series_the_dashboard_and_rules_read(
    backend: Backend, start_sidecar: StartSidecar, tmp_path: Path
) -> None:
    binary("prometheus")  # skip (or, in CI, fail) before starting anything
    (tmp_path / "redis").mkdir()
    async with redis_server(tmp_path / "redis") as redis:  # the fleet's state: its panels have data too
        dead = f"http://127.0.0.1:{free_port()}"
        config = config_for(backend.url, config_text(dead), REDIS_URL=redis.url)
        sidecar = await start_sidecar(config, metrics_port=0)
        async with prometheus(tmp_path, f"127.0.0.1:{sidecar.running.metrics_port}") as server:
            await until(server, f'up{{job="{JOB}"}} == 1')  # scraped once before the traffic
            # A counter's series starts at its first increment, and a rate needs an earlier sample:
            # the first wrong token makes the series, the second (once scraped) its rate.
            assert await refused_upgrade(sidecar, "/edge/ws", WRONG) == (401, "invalid_token")
            await until(server, f'sidecar_ws_rejections_total{{job="{JOB}", reason="invalid_token"}} == 1')
            assert await refused_upgrade(sidecar, "/edge/ws", WRONG) == (401, "invalid_token")
            await drive(sidecar)
            missing: list[str] = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):  # scrapes and rule evaluations run every second
                    while missing := await problems(server):  # noqa: ASYNC110 - Prometheus is another process
                        await asyncio.sleep(0.5)
            assert missing == []
