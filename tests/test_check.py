"""``sidecar check``'s messages for the two mistakes made most by hand: a misspelt key (named
with its route, and the nearest known key suggested) and a YAML syntax error (the line and
column of the mistake itself, not where the parser gave up). A table: no sockets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.config import load_config

ENV = {"S": "s3cret-0123456789"}
ROUTES = """\
upstreams: {b: {url: "http://127.0.0.1:1"}}
auth: {e: {bearer: ['${S}']}}
routes:
  - name: edge
    type: websocket
    paths: [/ws]
    upstream: b
    auth: e
"""


def first(text: str) -> str:
    """The first error (problems come in file order: a warning may come before it)."""
    config, problems = load_config(text, env=ENV)
    assert config is None
    return str(next(p for p in problems if p.severity == "error"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The route is named, and the key it most likely meant suggested.
        (
            ROUTES + "    max_mesage_size: 1MiB\n",
            "routes.yaml:9: error: routes[0] (edge): unknown key 'max_mesage_size': did you mean 'max_message_size'?",
        ),
        (
            ROUTES + "    Paths: [/x]\n",
            "routes.yaml:9: error: routes[0] (edge): unknown key 'Paths': did you mean 'paths'?",
        ),
        (
            ROUTES + "    upstream_url: http://x\n",
            "routes.yaml:9: error: routes[0] (edge): unknown key 'upstream_url': did you mean 'upstream'?",
        ),
        # A key begun and not finished.
        (
            "listen: {drain: 5s}\n" + ROUTES,
            "routes.yaml:1: error: listen: unknown key 'drain': did you mean 'drain_timeout'?",
        ),
        (
            "listen: {keepalive: 5s}\n" + ROUTES,
            "routes.yaml:1: error: listen: unknown key 'keepalive': did you mean 'keepalive_interval'?",
        ),
        ("metrics: {prot: 9100}\n" + ROUTES, "routes.yaml:1: error: metrics: unknown key 'prot': did you mean 'port'?"),
        ("lisen: {port: 1}\n" + ROUTES, "routes.yaml:1: error: top level: unknown key 'lisen': did you mean 'listen'?"),
        # Nothing near: no guess, only the list.
        (
            ROUTES + "    colour: red\n",
            "routes.yaml:9: error: routes[0] (edge): unknown key 'colour' (expected one of: ",
        ),
        # A route whose name is not valid is named by its place only.
        (
            ROUTES.replace("name: edge", "name: Edge!") + "    colour: red\n",
            "routes.yaml:9: error: routes[0]: unknown key 'colour' (expected one of: ",
        ),
    ],
)
def test_an_unknown_key_names_its_route_and_the_nearest_known_key(text: str, expected: str) -> None:
    config, problems = load_config(text, env=ENV)
    assert config is None
    assert any(str(p).startswith(expected) for p in problems), [str(p) for p in problems]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # An unclosed flow list: where it opens (line 5, column 12), not the next key or the end.
        (
            ROUTES.replace("paths: [/ws]", "paths: [/ws, /edge"),
            "routes.yaml:6:12: error: YAML syntax: this '[' is never closed: expected ',' or ']', but got ':' "
            "(line 7, column 13)",
        ),
        (
            ROUTES.replace("auth: {e: {bearer: ['${S}']}}", "auth: {e: {bearer: ['${S}']}"),
            "routes.yaml:2:7: error: YAML syntax: this '{' is never closed: expected ',' or '}', but got ",
        ),
        # An unclosed quote: where it opens.
        (
            ROUTES.replace("auth: e\n", "auth: 'e\n"),
            "routes.yaml:8:11: error: YAML syntax: this quoted value is never closed: found the end of the file",
        ),
        # A line indented unlike its block: that line, at its first character.
        (
            ROUTES.replace("    upstream: b", "     upstream: b"),
            "routes.yaml:7:6: error: YAML syntax: indented unlike the block it is in, from line 4, column 5: "
            "expected the end of the block, but found a key",
        ),
        (
            ROUTES.replace("    upstream: b", "  upstream: b"),
            "routes.yaml:7:3: error: YAML syntax: indented unlike the block it is in, from line 4, column 3: "
            "expected the end of the block, but found a key",
        ),
        # A tab: where it is.
        (
            ROUTES.replace("    auth: e", "\tauth: e"),
            "routes.yaml:8:1: error: YAML syntax: found character '\\t' that ",
        ),
        # ': ' inside a value: at the second colon.
        (
            ROUTES.replace("type: websocket", "type: websocket: yes"),
            "routes.yaml:5:20: error: YAML syntax: mapping values are not allowed here (a ': ' inside a value",
        ),
    ],
)
def test_a_yaml_syntax_error_gives_the_line_and_column_of_the_mistake(text: str, expected: str) -> None:
    assert first(text).startswith(expected)


@pytest.mark.parametrize(
    ("written", "size", "warning"),
    [
        ("4MiB", 4 * 1024**2, None),
        ("512KiB", 512 * 1024, None),
        ("65536", 65536, None),
        ("1gib", 1024**3, None),  # units are case-insensitive
        # KB, MB and GB count in 1000s: accepted, and a warning saying so.
        (
            "4MB",
            4_000_000,
            "4MB is 4,000,000 bytes (MB counts in 1000s); if 4MiB (4,194,304 bytes) is meant, write that",
        ),
        (
            "512kb",
            512_000,
            "512kb is 512,000 bytes (kb counts in 1000s); if 512KiB (524,288 bytes) is meant, write that",
        ),
        (
            "${SIZE}",
            4_000_000,
            "4MB is 4,000,000 bytes (MB counts in 1000s); if 4MiB (4,194,304 bytes) is meant, write that",
        ),
    ],
)
def test_sizes_in_kb_or_mb_are_a_warning_that_says_what_they_mean(written: str, size: int, warning: str | None) -> None:
    config, problems = load_config(ROUTES + f"    max_message_size: {written}\n", env={**ENV, "SIZE": "4MB"})
    assert config is not None and config.routes[0].max_message_size == size
    expected = [f"routes.yaml:9: warning: routes[0] (edge).max_message_size: {warning}"] if warning else []
    assert [str(p) for p in problems] == expected


def test_problems_are_listed_in_file_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # routes before upstreams and auth, each with a mistake: read in another order (upstreams,
    # then auth, then routes), listed as the file has them.
    text = (
        "routes:\n"
        "  - {name: r, type: websocket, paths: [/x], upstream: b, auth: e, max_sesions: 3}\n"
        "auth:\n"
        "  e:\n"
        "    bearer: [sekrit-in-the-file-0123456789]\n"
        "    colour: blue\n"
        "upstreams:\n"
        "  b: {url: 'http://127.0.0.1:1', conect_timeout: 1s}\n"
        "listen: {prot: 8080}\n"
    )
    _, problems = load_config(text, env={}, strict=False)
    lines = [p.line for p in problems]
    assert len(problems) >= 4, [str(p) for p in problems]
    assert lines == sorted(lines), [str(p) for p in problems]
    assert {2, 6, 8, 9} <= set(lines), [str(p) for p in problems]
    # ... and so does 'sidecar check' print them.
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    printed = [int(line.split(":")[1]) for line in err if re.match(rf"{re.escape(str(path))}:\d+:", line)]
    assert printed == lines
