"""The docs kept true mechanically: what README.md and docs/*.md claim about the code is
checked against the code, so a change to one without the other fails here.

- every relative link, and every anchor it names, resolves (GitHub's heading slugs and
  explicit ``<a id>``s);
- every metric family the sidecar registers has a row in docs/metrics.md, with its type and
  labels, and every row there is a family the sidecar registers;
- every reason in sidecar/reasons.py has a row in docs/reasons.md, with its status;
- every module under sidecar/ has a row in docs/layout.md, and every row names a module;
- every ``routes.yaml`` key the config reader knows is in docs/configuration.md;
- the README's test command is the one .ci/run runs, and the first screen (60 lines) holds
  both commands a newcomer needs: the demo and the tests;
- bench/run.sh and bench/ab.sh say where the shared harness they need lives, and bench/ratio.py
  divides by nginx in the same run.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from sidecar.config import jwt_policy, schema, state
from sidecar.config import routes as config_routes
from sidecar.metrics import Metrics
from sidecar.reasons import Reason

from .conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
FIRST_SCREEN = 60  # lines


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- links and anchors ---------------------------------------------------------------------

_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose(markdown: str) -> str:
    """``markdown`` without code blocks and code spans, where a ``](...)`` is not a link."""
    return _CODE.sub("", _FENCE.sub("", markdown))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped (``-`` and
    ``_`` kept), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link: its text
    text = text.replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The fragments a link into ``markdown`` can name: explicit ``<a id>``s and the
    headings' slugs (a repeated slug gets ``-1``, ``-2`` ... as on GitHub)."""
    ids = set(re.findall(r'<a id="([^"]+)"></a>', markdown))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", _FENCE.sub("", markdown), flags=re.MULTILINE):
        base = slug(heading)
        n = seen.get(base, 0)
        ids.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return ids


def links(page: Path) -> list[str]:
    return [target for target in _LINK.findall(prose(page.read_text())) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {rel(file) if file.is_relative_to(ROOT) else file}")
        elif fragment and fragment not in anchors(file.read_text()):
            broken.append(f"{target}: no heading or <a id> '{fragment}' in {rel(file)}")
    assert not broken, f"{rel(page)} has broken links:\n" + "\n".join(broken)


def test_the_link_checker_sees_links_and_slugs_as_github_does() -> None:
    assert slug("The drain must fit in `drainingSeconds`") == "the-drain-must-fit-in-drainingseconds"
    assert slug("Live reload (SIGHUP)") == "live-reload-sighup"
    assert slug("Develop: CI, the lock, benchmarks") == "develop-ci-the-lock-benchmarks"
    assert slug("The relay's guarantees") == "the-relays-guarantees"
    assert "readme" not in anchors("```\n# readme\n```\n")  # a comment in a code block is no heading
    assert links(README)  # the README does link somewhere: the checker reads it


@pytest.mark.parametrize(
    "page", [p for p in PAGES if p.parent == DOCS and p.stem not in ("relay", "benchmark")], ids=rel
)
def test_every_docs_page_has_a_short_contents_list(page: Path) -> None:
    head = "\n".join(page.read_text().splitlines()[:12])
    assert re.search(r"\]\(#[\w-]+\)", head), f"{rel(page)}: no contents list (links to its sections) near the top"


# --- metrics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: str  # as a scrape shows it: counters with _total, histograms by their base name
    type: str
    labels: tuple[str, ...] | None  # None: a custom collector's, not known until it has samples


def registered_families() -> dict[str, Family]:
    """Every family a fresh sidecar's registry exports, read inside a running loop (the
    task count is only collected there)."""

    async def collect() -> dict[str, Family]:
        registry = Metrics().registry
        # The labels each metric declares, known before it has a sample (private, but stable).
        labelled = {
            c._name: tuple(c._labelnames)
            for c in list(registry._collector_to_names)
            if isinstance(c, MetricWrapperBase)
        }
        families = {}
        for f in registry.collect():
            name = f.name + ("_total" if f.type == "counter" else "")
            labels = labelled.get(f.name)
            if labels is None and f.samples:
                labels = tuple(k for k in f.samples[0].labels if k != "le")
            families[name] = Family(name, f.type, labels)
        return families

    return asyncio.run(collect())


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """docs/metrics.md's table: name -> (type, labels)."""
    rows = {}
    for line in (DOCS / "metrics.md").read_text().splitlines():
        m = re.match(r"^\| `([a-z_:]+)` \| (\w+) \|([^|]*)\|", line)
        if m:
            labels = tuple(label.strip() for label in m.group(3).split(",") if label.strip())
            rows[m.group(1)] = (m.group(2), labels)
    return rows


def row_for(family: Family) -> str:
    labels = ", ".join(family.labels or ())
    return f"| `{family.name}` | {family.type} | {labels} | <what it counts> |"


def test_every_registered_metric_family_is_documented() -> None:
    docs = documented_metrics()
    missing = [f for name, f in registered_families().items() if name not in docs]
    assert not missing, "families the sidecar registers that docs/metrics.md does not list; add these rows to " + (
        "the table under '## Every metric family':\n" + "\n".join(row_for(f) for f in missing)
    )


def test_every_documented_metric_is_registered_with_that_type_and_those_labels() -> None:
    families = registered_families()
    wrong = []
    for name, (kind, labels) in documented_metrics().items():
        family = families.get(name)
        if family is None:
            wrong.append(f"`{name}`: the sidecar registers no such family; remove its row")
            continue
        if kind != family.type:
            wrong.append(f"`{name}`: documented as {kind}, registered as {family.type}")
        if family.labels is not None and labels != family.labels:
            wrong.append(
                f"`{name}`: documented labels {labels}, registered {family.labels}; the row: {row_for(family)}"
            )
    assert not wrong, "docs/metrics.md disagrees with sidecar/metrics.py:\n" + "\n".join(wrong)


# --- reasons and close codes ---------------------------------------------------------------


def test_every_reason_has_a_row_with_its_status_in_the_reasons_page() -> None:
    doc = (DOCS / "reasons.md").read_text()
    wrong = [
        f"| `{reason.value}` | {reason.status} | <when> | <extra> |"
        for reason in Reason
        if not re.search(rf"^\| `{reason.value}` \| {reason.status} \|", doc, re.MULTILINE)
    ]
    assert not wrong, "docs/reasons.md lacks (or has the wrong status for) these reasons:\n" + "\n".join(wrong)


def test_every_reason_has_a_troubleshooting_row() -> None:
    doc = (DOCS / "troubleshooting.md").read_text()
    missing = [r.value for r in Reason if f'<a id="reason-{r.value}"></a>' not in doc]
    assert not missing, f"docs/troubleshooting.md has no row anchored reason-<reason> for {missing}"


def test_no_table_says_1005_is_sent() -> None:
    # 1005 ("no status") may not be sent (RFC 6455 section 7.4.1): an empty close is passed on as 1000.
    for page in PAGES:
        for line in page.read_text().splitlines():
            if re.search(r"\b1005\b", line) and line.startswith("|"):
                assert re.search(r"1000|label|never|no code|empty", line), f"{rel(page)}: {line}"


# --- the layout ----------------------------------------------------------------------------


def module_names() -> set[str]:
    """How docs/layout.md names each module: ``sidecar/a/b.py``; a package's ``__init__``
    as ``sidecar/a/``, the top one as ``sidecar/__init__.py``."""
    names = set()
    for path in (ROOT / "sidecar").rglob("*.py"):
        name = rel(path)
        if path.name == "__init__.py" and path.parent != ROOT / "sidecar":
            name = rel(path.parent) + "/"
        names.add(name)
    return names


def test_every_module_has_a_row_in_the_layout_page() -> None:
    doc = (DOCS / "layout.md").read_text()
    named = set(re.findall(r"`(sidecar/[\w/]*(?:\.py|/))`", doc))
    missing = sorted(module_names() - named)
    assert not missing, "docs/layout.md has no row for these modules; add one each (| `module` | concern |):\n" + (
        "\n".join(missing)
    )


def test_every_module_the_layout_page_names_exists() -> None:
    doc = (DOCS / "layout.md").read_text()
    stale = sorted(
        name
        for name in re.findall(r"^\| `(sidecar/[\w/]*(?:\.py|/))`", doc, re.MULTILINE)
        if not (ROOT / name).exists()
    )
    assert not stale, f"docs/layout.md names modules that do not exist: {stale}"


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "keys"),
    [
        # The reader's own lists of the keys it knows.
        ("listen", schema._LISTEN_KEYS),
        ("state", state._KEYS),
        ("routes[]", config_routes._ROUTE_KEYS),
    ],
)
def test_every_config_key_is_in_the_configuration_page(section: str, keys: set[str]) -> None:
    doc = (DOCS / "configuration.md").read_text()
    missing = sorted(key for key in keys if f"`{section}.{key}`" not in doc)
    assert not missing, f"docs/configuration.md lacks rows for {section}: {missing}"


def test_every_top_level_section_is_in_the_configuration_page() -> None:
    doc = (DOCS / "configuration.md").read_text()
    assert not [s for s in schema._TOP if f"`{s}" not in doc]


def test_every_jwt_key_is_in_the_jwt_page() -> None:
    doc = (DOCS / "jwt.md").read_text()
    assert not [k for k in jwt_policy._KEYS if f"`{k}`" not in doc]


# --- the README's first screen and its commands --------------------------------------------


def sh_blocks(markdown: str) -> list[tuple[int, str]]:
    """(the line a ```sh block opens on, its text), in order."""
    return [
        (markdown[: m.start()].count("\n") + 1, m.group(1).strip())
        for m in re.finditer(r"^```sh\n(.*?)\n```", markdown, re.MULTILINE | re.DOTALL)
    ]


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text().rstrip().splitlines()[-1].strip()
    commands = [text for _, text in sh_blocks(README.read_text()) if "pytest" in text]
    assert commands and commands[0] == ci, f"the README's first pytest block is {commands[:1]}, .ci/run runs {ci!r}"


def test_the_first_screen_has_the_install_the_demo_and_the_test_commands() -> None:
    blocks = [(line, text) for line, text in sh_blocks(README.read_text()) if line <= FIRST_SCREEN]
    texts = [text for _, text in blocks]
    assert any("pip install" in t and "-c requirements.lock" in t for t in texts), "the install line"
    assert any(re.search(r"\bsidecar demo\b", t) for t in texts), "the demo command"
    ci = (ROOT / ".ci" / "run").read_text().rstrip().splitlines()[-1].strip()
    assert ci in texts, f"{ci!r}, as its own block"


def test_the_readme_describes_what_ci_runs() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    readme = README.read_text()
    for step in re.findall(
        r"^\.venv/bin/(ruff check .*|ruff format --check .*|mypy .*|sidecar check .*)$", script, re.MULTILINE
    ):
        assert step in readme, f".ci/run runs '{step}'; the README's CI section does not say so"


def test_the_readme_is_a_front_door_not_the_manual() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 400, f"README.md is {len(lines)} lines: move reference material into docs/"
    assert "## Contents" in lines


# --- bench/run.sh --------------------------------------------------------------------------


def test_bench_run_help_says_it_needs_the_shared_harness() -> None:
    done = subprocess.run(
        [ROOT / "bench" / "run.sh", "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "../shared/bench" in done.stdout and "BENCH_SHARED" in done.stdout
    assert "not part of this repository" in done.stdout


def test_bench_run_without_the_harness_says_where_it_looked(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "BENCH_SHARED": str(tmp_path)}
    done = subprocess.run([ROOT / "bench" / "run.sh"], capture_output=True, text=True, env=env, timeout=30, check=False)
    assert done.returncode == 2
    assert f"{tmp_path}/compare.sh" in done.stderr and "BENCH_SHARED" in done.stderr


def test_bench_fleet_help_prints_its_usage_and_starts_nothing(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "SIDECAR_LOG": str(tmp_path / "log")}
    done = subprocess.run(
        [ROOT / "bench" / "fleet.sh", "--help"], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "BENCH_SHARED" in done.stdout and "flock /tmp/bench.lock" in done.stdout
    assert not (tmp_path / "log").exists()  # no run began: nothing written, no Redis started
    odd = subprocess.run([ROOT / "bench" / "fleet.sh", "--rounds=3"], capture_output=True, text=True, timeout=30)
    assert odd.returncode == 2 and "unknown argument" in odd.stderr


def test_bench_fleet_without_the_harness_says_where_it_looked(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "BENCH_SHARED": str(tmp_path), "SIDECAR_LOG": str(tmp_path / "log")}
    done = subprocess.run(
        [ROOT / "bench" / "fleet.sh"], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    assert done.returncode == 2
    assert f"{tmp_path}/compare.sh" in done.stderr and "BENCH_SHARED" in done.stderr
    assert not (tmp_path / "log").exists()


# --- bench/ab.sh and bench/ratio.py (how docs/benchmark.md's table is made) -------------------


def test_bench_ab_without_the_harness_says_where_it_looked(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "BENCH_SHARED": str(tmp_path)}
    done = subprocess.run(
        [ROOT / "bench" / "ab.sh", "out.jsonl", "after=."],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert f"{tmp_path}/compare.sh" in done.stderr


def test_bench_ratio_divides_by_nginx_in_the_same_run_and_takes_the_median(tmp_path: Path) -> None:
    def run(nginx_rps: float, sidecar_rps: float) -> str:
        rows = [
            {"name": "direct", "http_rps": 100.0},
            {"name": "nginx", "http_rps": nginx_rps, "kb_per_idle_conn": 3.0},
            {"name": "after", "http_rps": sidecar_rps, "kb_per_idle_conn": 8.5},
        ]
        return "".join(json.dumps(r) + "\n" for r in rows)

    (tmp_path / "a.jsonl").write_text("harness chatter\n" + run(100, 50) + run(200, 60))
    (tmp_path / "b.jsonl").write_text(run(10, 9))
    done = subprocess.run(
        [sys.executable, ROOT / "bench" / "ratio.py", tmp_path / "a.jsonl", tmp_path / "b.jsonl"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    median = done.stdout.split("median\n", 1)[1]
    # 0.50, 0.30, 0.90 -> 0.50; memory is shown as it is, not over nginx's.
    assert "after" in median and "http 0.50" in median and "KB/idle 8.50" in median
    assert done.stdout.count("run ") == 3
