"""What the Grafana dashboard and the Prometheus rules read, for the tests that hold them
to what the sidecar exports: their PromQL, the metric and label names in it, and the
metrics contract (each exported series the deploy files may name, with its labels).

PromQL is not parsed here, only scanned: strings, ``{...}`` matchers, ``[...]`` ranges
and grouping clauses are taken out, and what is left that looks like a name and is not
a function, a keyword or a number is a metric name. The live Prometheus test
(tests/test_prometheus.py) is the check on this: it runs every expression for real.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "sidecar-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules_test.yml"

# The series the deploy files may name, with their labels (besides the job and instance a
# scrape adds): the sidecar's half of the contract docs/metrics.md states.
CONTRACT: dict[str, frozenset[str]] = {
    name: frozenset(labels)
    for name, labels in {
        "sidecar_ws_rejections_total": ("route", "reason"),
        "sidecar_http_rejections_total": ("route", "reason"),
        "sidecar_ws_connections_active": ("route",),
        "sidecar_ws_connections_total": ("route",),
        "sidecar_ws_messages_total": ("route", "direction"),
        "sidecar_ws_bytes_total": ("route", "direction"),
        "sidecar_ws_closes_total": ("route", "initiator", "code"),
        "sidecar_ws_cut_off_total": ("route", "peer", "cause"),
        "sidecar_ws_handshake_duration_seconds_bucket": ("route", "le"),
        "sidecar_ws_session_duration_seconds_bucket": ("route", "le"),
        "sidecar_http_requests_total": ("route", "status_class"),
        "sidecar_http_request_duration_seconds_bucket": ("route", "le"),
        "sidecar_config_reloads_total": ("result",),
        "sidecar_config_info": ("source", "sha256"),
        "sidecar_jwks_refreshes_total": ("result",),
        "sidecar_jwks_last_success_timestamp_seconds": ("policy",),
        "sidecar_ws_token_expiries_total": ("route",),
        "sidecar_asyncio_tasks": (),
        "sidecar_state_up": (),
        "sidecar_state_errors_total": ("op",),
        "sidecar_state_operation_duration_seconds_bucket": ("op", "le"),
        "sidecar_sessions_replaced_remote_total": (),
        "sidecar_replica_info": ("replica", "state"),
        "process_resident_memory_bytes": (),
        "process_cpu_seconds_total": (),
        "process_open_fds": (),
        "process_max_fds": (),
        "process_start_time_seconds": (),
    }.items()
}
# Series Prometheus makes itself for every target.
SYNTHETIC: dict[str, frozenset[str]] = {"up": frozenset()}
TARGET_LABELS = frozenset({"job", "instance"})

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}
    | {"inf", "nan", "atan2"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_NAME = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$")


def _without_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def metric_names(expr: str) -> set[str]:
    """Every metric name ``expr`` selects (functions, keywords, labels and numbers left out)."""
    text = _without_strings(expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _NAME.findall(text) if name.lower() not in _KEYWORDS}


def label_names(expr: str) -> set[str]:
    """Every label name ``expr`` matches on or groups by."""
    text = _without_strings(expr)
    found: set[str] = set()
    for block in _MATCHERS.findall(text):
        found.update(_MATCHER_LABEL.findall(block))
    for _, labels in _GROUPING.findall(text):
        found.update(label.strip() for label in labels.split(",") if label.strip())
    found.discard("__name__")
    return found


def grouping_labels(expr: str) -> list[str]:
    """The labels of the first ``by (...)`` clause, in order: what a recording rule's series keep."""
    match = re.search(r"\bby\s*\(([^()]*)\)", _without_strings(expr))
    assert match is not None, f"no 'by (...)' in {expr!r}"
    return [label.strip() for label in match.group(1).split(",") if label.strip()]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variables (``$job``, ``${job}``, ``[[job]]``, ``$__range`` ...) replaced."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values[name]

    return _GRAFANA_VARIABLE.sub(value, expr)


# --- the files --------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return data


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included, rows too."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class Query:
    where: str  # for messages: the panel, variable or rule
    expr: str
    label_of: str | None = None  # label_values(expr, label): the label asked for


def dashboard_queries(board: dict[str, Any]) -> list[Query]:
    out = [
        Query(f"panel {panel['title']!r} target {target['refId']}", target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text)
        assert match is not None, f"variable {variable['name']}: not label_values(...): {text!r}"
        out.append(Query(f"variable {variable['name']!r}", match.group(1), label_of=match.group(2)))
    return out


def rule_list(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in data["groups"] for rule in group["rules"]]


def recorded(data: dict[str, Any]) -> dict[str, str]:
    """Recording rule name -> its expression."""
    return {rule["record"]: rule["expr"] for rule in rule_list(data) if "record" in rule}


def alerts(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rule_list(data) if "alert" in rule}


def rule_queries(data: dict[str, Any]) -> list[Query]:
    return [Query(f"rule {rule.get('record') or rule.get('alert')}", rule["expr"]) for rule in rule_list(data)]


def series_labels(name: str, data: dict[str, Any]) -> frozenset[str] | None:
    """The labels series ``name`` has in Prometheus (``job`` and ``instance`` included for a
    scraped one; a recorded one keeps its ``by`` labels), or None for an unknown name."""
    if name in CONTRACT:
        return CONTRACT[name] | TARGET_LABELS
    if name in SYNTHETIC:
        return SYNTHETIC[name] | TARGET_LABELS
    records = recorded(data)
    if name in records:
        return frozenset(grouping_labels(records[name]))
    return None
