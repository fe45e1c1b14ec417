"""deploy/prometheus/rules.yml: checked and unit-tested by promtool (Debian's
``prometheus`` package), every alert tested firing and not firing, and each alert
telling an operator what happened and where the fix is."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from .promql import (
    ROOT,
    RULES,
    RULES_TEST,
    TARGET_LABELS,
    alerts,
    grouping_labels,
    label_names,
    metric_names,
    recorded,
    rule_list,
    rules,
    series_labels,
)
from .servers import binary


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=120, check=False)


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_list(rules()))} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Any) -> None:
    # The same tests against rules whose over-capacity threshold was raised: the firing
    # case must then fail, so a passing run above means the alerts were really evaluated.
    (tmp_path / "rules.yml").write_text(
        RULES.read_text().replace('reason="over_capacity"} > 0.01', 'reason="over_capacity"} > 1')
    )
    (tmp_path / "rules_test.yml").write_text(RULES_TEST.read_text())
    result = promtool("test", "rules", str(tmp_path / "rules_test.yml"))
    assert result.returncode != 0
    assert "alertname: SidecarOverCapacity" in result.stdout + result.stderr


def test_every_alert_has_a_unit_test_firing_and_one_not_firing() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    names = set(alerts(rules()))
    assert names - firing == set(), "alerts with no firing test"
    assert names - quiet == set(), "alerts with no not-firing test"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


# Anchors in docs/troubleshooting.md, by runbook: `reason-<code>` for a refusal's reason, `close-<code>` for
# a close code, and one row each for what has no code. docs/operations.md lists them.
RUNBOOK = re.compile(
    r"^docs/troubleshooting\.md#"
    r"(reason-\{\{ \$labels\.reason \}\}|reason-[a-z_]+|close-\{\{ \$labels\.code \}\}|[a-z0-9-]+)$"
)


@pytest.mark.parametrize("name", sorted(alerts(rules())))
def test_each_alert_says_what_happened_and_where_the_fix_is(name: str) -> None:
    alert = alerts(rules())[name]
    assert alert["labels"]["severity"] in ("warning", "critical")
    annotations = alert["annotations"]
    assert set(annotations) == {"summary", "description", "runbook"}
    assert RUNBOOK.match(annotations["runbook"]), annotations["runbook"]
    # Every label the text names is one the series the alert reads have.
    data = rules()
    known = set(TARGET_LABELS).union(*(series_labels(m, data) or () for m in metric_names(alert["expr"])))
    for label in re.findall(r"\$labels\.(\w+)", " ".join(annotations.values())):
        assert label in known, (name, label)


def test_docs_list_every_alert_with_its_runbook() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    for name, alert in alerts(rules()).items():
        anchor = alert["annotations"]["runbook"].removeprefix("docs/troubleshooting.md#")
        assert re.search(rf"^\| `{name}` \|.*`{re.escape(anchor)}`", doc, re.MULTILINE), name


@pytest.mark.parametrize("name", sorted(recorded(rules())))
def test_recording_rules_are_named_for_the_labels_they_keep(name: str) -> None:
    # level:metric:operations (Prometheus' convention); the level lists the labels kept,
    # `job` left implicit where `instance` is there.
    level, metric, operation = name.split(":")
    kept = grouping_labels(recorded(rules())[name])
    assert kept[0] == "job"
    if "instance" in kept:
        kept.remove("job")
    assert level == "_".join(kept), f"{name}: keeps {kept}"
    assert metric.startswith(("sidecar_", "process_"))
    assert re.fullmatch(r"rate5m|sum", operation)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (route) (rate(sidecar_x_total{job=~"$job", route!="a{b}"}[5m]))', {"sidecar_x_total"}),
        ("histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m])))", {"a_bucket"}),
        ("a / on (job) group_left b > 1e3 and c offset 1h", {"a", "b", "c"}),
        ("time() - process_start_time_seconds < 7200", {"process_start_time_seconds"}),
        ('label_replace(x, "dst", "$1", "src", "(.*)") or vector(0)', {"x"}),
        ("level:metric:rate5m unless max_over_time(up[2h]) >= bool 0", {"level:metric:rate5m", "up"}),
        ("sum(rate(m[5m] offset 10m)) without (instance)", {"m"}),
    ],
)
def test_metric_names_are_found_in_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_label_names_are_found_in_promql() -> None:
    expr = 'sum by (job, route) (a{reason=~"x|y", code!="1000"}) / on (job) group_left (route) b'
    assert label_names(expr) == {"job", "route", "reason", "code"}
