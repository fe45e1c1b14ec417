"""Every alert's runbook link in deploy/prometheus/rules.yml lands on an anchor of
docs/troubleshooting.md:
one a reason (``reason-<reason>``) for every reason the alert can name, one a close code it
matches (``close-<code>``), and the fixed ones. A link that resolves nowhere fails here."""

from __future__ import annotations

import re

import pytest
import yaml

from sidecar.reasons import Reason

from .conftest import ROOT

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RUNBOOKS = ROOT / "docs" / "troubleshooting.md"
_TEMPLATE = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")


def alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def label_values(label: str, expr: str) -> list[str]:
    """The values an alert's ``$labels.<label>`` can take: those its expression matches
    (``label="a"`` or ``label=~"a|b"``), else, for ``reason``, every reason."""
    matched = re.findall(rf'\b{label}\s*=~?\s*"([^"]*)"', expr)
    if matched:
        return sorted({value for alternatives in matched for value in alternatives.split("|")})
    assert label == "reason", f"a runbook naming $labels.{label} must match its values in the expression"
    return [reason.value for reason in Reason]


def runbook_targets() -> list[tuple[str, str]]:
    """(alert, the runbook link with its labels filled in), for every value they can take."""
    targets = []
    for alert in alerts():
        annotations = alert.get("annotations")
        assert isinstance(annotations, dict) and "runbook" in annotations, f"{alert['alert']} has no runbook"
        link, expr = str(annotations["runbook"]), str(alert["expr"])
        labels = _TEMPLATE.findall(link)
        assert len(labels) <= 1, link
        values = label_values(labels[0], expr) if labels else [""]
        targets += [(str(alert["alert"]), _TEMPLATE.sub(value, link)) for value in values]
    return targets


def anchors(markdown: str) -> set[str]:
    """The fragments a link into ``markdown`` can name on GitHub: explicit ``<a id>``s and
    the headings' slugs."""
    ids = set(re.findall(r'<a id="([^"]+)"></a>', markdown))
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE):
        ids.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return ids


def test_the_rules_have_runbooks_to_check() -> None:
    targets = runbook_targets()
    assert len(targets) >= len(Reason) + 5  # every reason, two close codes, three fixed ones
    assert ("SidecarAbnormalCloses", "docs/troubleshooting.md#close-1006") in targets


@pytest.mark.parametrize(("alert", "link"), runbook_targets())
def test_every_runbook_link_resolves_to_an_anchor_in_the_troubleshooting_page(alert: str, link: str) -> None:
    path, _, fragment = link.partition("#")
    assert (ROOT / path) == RUNBOOKS, f"{alert}: {link} is not a docs/troubleshooting.md link"
    assert fragment in anchors(RUNBOOKS.read_text()), f"{alert}: {link} has no anchor in docs/troubleshooting.md"


def test_runbook_anchors_are_unique() -> None:
    ids = re.findall(r'<a id="([^"]+)"></a>', RUNBOOKS.read_text())
    assert len(ids) == len(set(ids))
