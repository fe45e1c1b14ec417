"""deploy/grafana/sidecar-dashboard.json: importable as Grafana 10/11 expects it, and
every metric and label it and the Prometheus rules name is one a real sidecar exports
(a scrape of one), or a series the rules record."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .conftest import SECRET, StartSidecar, config_for
from .promql import (
    CONTRACT,
    SYNTHETIC,
    TARGET_LABELS,
    Query,
    dashboard,
    dashboard_queries,
    label_names,
    metric_names,
    panels,
    recorded,
    rule_queries,
    rules,
    series_labels,
    substitute,
)
from .servers import binary
from .upstream import Backend

ROWS = [
    "Traffic",
    "Rejections by reason",
    "Sessions and closes by code",
    "Upstream health",
    "Handshake latency",
    "Shared state (Redis)",
    "The process",
]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What Grafana puts in for its variables, for checking the queries outside Grafana.
VARIABLES = {"job": "sidecar", "instance": ".*", "__range": "1h", "__rate_interval": "1m", "__interval": "15s"}


# --- what Grafana reads ------------------------------------------------------------


def test_the_dashboard_is_a_grafana_10_or_11_dashboard() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] == "sidecar-overview" and board["title"]
    assert board["id"] is None  # so an import creates it rather than overwriting another
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, panel["title"]


def test_the_variables_are_a_prometheus_data_source_a_job_and_its_instances() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance"]
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    for name in ("job", "instance"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"] == DATASOURCE
        assert variable["multi"] and variable["includeAll"]
        assert variable["query"]["query"] == variable["definition"]
    assert '"$job"' in variables["instance"]["definition"]  # the instances of the chosen jobs


def test_the_rows_are_collapsed_with_their_panels_inside() -> None:
    top = dashboard()["panels"]
    rows = [panel for panel in top if panel["type"] == "row"]
    assert [row["title"] for row in rows] == ROWS
    for row in rows:
        assert row["collapsed"] is True and row["panels"], row["title"]
    # Grafana keeps a collapsed row's panels inside it: after the first row, only rows.
    first_row = top.index(rows[0])
    assert all(panel["type"] == "row" for panel in top[first_row:])


def test_every_panel_and_target_reads_the_chosen_data_source_for_the_chosen_instances() -> None:
    for panel in panels(dashboard()):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            # Every selector is narrowed to the variables (vector(0) and time() select nothing).
            for name in metric_names(target["expr"]):
                assert target["expr"].count(f'{name}{{job=~"$job", instance=~"$instance"') >= 1, (
                    panel["title"],
                    name,
                )


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool has no query checker; a rule file made of the queries is checked by the same parser.
    queries = dashboard_queries(dashboard())
    checks = [{"record": f"dashboard:query:{n}", "expr": substitute(q.expr, VARIABLES)} for n, q in enumerate(queries)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": checks}]}))
    result = subprocess.run(
        [binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- what the sidecar exports ------------------------------------------------------


async def exported(port: int) -> dict[str, set[frozenset[str]]]:
    """A scrape of the metrics listener: each series name the sidecar can export (from the
    ``# TYPE`` lines, so also families with no series yet) -> the label sets seen."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    names: dict[str, set[frozenset[str]]] = {}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())  # the family's names exist, series or not
        for sample in family.samples:
            names.setdefault(sample.name, set()).add(frozenset(sample.labels))
    return names


def unexported(queries: list[Query], exported: dict[str, set[frozenset[str]]], data: dict[str, Any]) -> list[str]:
    """Each name a query reads that is neither exported (and in the contract), nor recorded
    by the rules, nor made by Prometheus."""
    problems = []
    records = recorded(data)
    for query in queries:
        for name in sorted(metric_names(query.expr)):
            if name in records or name in SYNTHETIC:
                continue
            if name not in exported:
                problems.append(f"{query.where}: {name} is not exported by the sidecar")
            elif name not in CONTRACT:
                problems.append(f"{query.where}: {name} is not in tests/promql.py's CONTRACT")
    return problems


def unknown_labels(queries: list[Query], data: dict[str, Any]) -> list[str]:
    """Each label a query matches or groups on that none of the series it reads has."""
    problems = []
    for query in queries:
        names = metric_names(query.expr)
        known = set(TARGET_LABELS).union(*(series_labels(name, data) or () for name in names))
        used = label_names(query.expr) | ({query.label_of} if query.label_of else set())
        problems += [f"{query.where}: no label {label!r} on {sorted(names)}" for label in sorted(used - known)]
    return problems


@pytest.fixture
async def scrape(backend: Backend, start_sidecar: StartSidecar) -> dict[str, set[frozenset[str]]]:
    """A real sidecar's metrics after a session and a refusal."""
    sidecar = await start_sidecar(config_for(backend.url), metrics_port=0)
    headers = {"Authorization": f"Bearer {SECRET}", "X-Edge-Agent-Id": "edge_1"}
    async with connect(sidecar.url("/edge/ws"), additional_headers=headers) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
    with pytest.raises(InvalidStatus):
        async with connect(sidecar.url("/edge/ws"), additional_headers={**headers, "Authorization": "Bearer no"}):
            pass
    assert sidecar.running.metrics_port is not None
    return await exported(sidecar.running.metrics_port)


async def test_every_metric_the_dashboard_and_rules_read_is_exported(scrape: dict[str, set[frozenset[str]]]) -> None:
    data = rules()
    assert unexported(dashboard_queries(dashboard()) + rule_queries(data), scrape, data) == []


async def test_a_dashboard_naming_a_metric_the_sidecar_lacks_fails(scrape: dict[str, set[frozenset[str]]]) -> None:
    board = dashboard()
    board["panels"][0]["targets"][0]["expr"] = 'sum(sidecar_ws_sessions_open{job=~"$job"})'
    problems = unexported(dashboard_queries(board), scrape, rules())
    assert problems == ["panel 'Open sessions' target A: sidecar_ws_sessions_open is not exported by the sidecar"]


async def test_the_contract_labels_are_those_exported(scrape: dict[str, set[frozenset[str]]]) -> None:
    for name, labels in CONTRACT.items():
        assert name in scrape, name
        # Label sets of the series there are now (families with none yet: tests/test_prometheus.py).
        assert scrape[name] <= {labels}, name


def test_every_label_the_dashboard_and_rules_use_is_on_what_they_read() -> None:
    data = rules()
    assert unknown_labels(dashboard_queries(dashboard()) + rule_queries(data), data) == []


def test_a_label_the_series_lack_is_found() -> None:
    query = Query("panel", 'sum by (status) (sidecar_http_requests_total{job=~"$job"})')
    assert unknown_labels([query], rules()) == ["panel: no label 'status' on ['sidecar_http_requests_total']"]


def test_every_recorded_series_the_dashboard_reads_is_recorded() -> None:
    records = recorded(rules())
    read = {name for q in dashboard_queries(dashboard()) for name in metric_names(q.expr) if ":" in name}
    assert read <= set(records)
    # And every recording rule is read by the dashboard or an alert: none is dead weight.
    read_by_rules = {name for q in rule_queries(rules()) for name in metric_names(q.expr)}
    assert set(records) <= read | read_by_rules
