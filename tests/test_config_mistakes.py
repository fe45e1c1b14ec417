"""Deploy mistakes the config catches before anything listens: an upstream that falls back
to the shipped loopback default on Railway, a URL whose port a reference left empty, the
metrics listener on the public port. No I/O (the processes are in tests/test_cli_says.py)."""

from __future__ import annotations

import pytest

from sidecar.config import load_config
from sidecar.config.environment import railway_marker, variables_of

from .conftest import ROOT

SHIPPED = (ROOT / "routes.yaml").read_text()
SECRET = {"EDGE_SECRET": "a-long-enough-secret-0123456789"}
URL_LINE = next(n for n, line in enumerate(SHIPPED.splitlines(), 1) if "url: ${UPSTREAM_URL" in line)
METRICS_LINE = next(n for n, line in enumerate(SHIPPED.splitlines(), 1) if "port: ${METRICS_PORT" in line)


def problems(strict: bool = True, **env: str) -> tuple[bool, list[str]]:
    config, found = load_config(SHIPPED, env={**SECRET, **env}, strict=strict)
    return config is not None, [str(p) for p in found]


# --- the loopback default on Railway ----------------------------------------------------

FALLS_BACK = (
    "upstreams.backend.url: UPSTREAM_URL is not set (or empty), so the url falls back to the default written "
    "in the file, 127.0.0.1:8000; on Railway ({marker} is set) that address is the sidecar's own container, "
    "never the backend: set UPSTREAM_URL to the backend's private URL (such as http://backend.railway.internal:8000)"
)


@pytest.mark.parametrize(
    ("env", "marker"),
    [
        ({"RAILWAY_ENVIRONMENT_ID": "0b7c"}, "RAILWAY_ENVIRONMENT_ID"),
        ({"RAILWAY_SERVICE_NAME": "sidecar", "RAILWAY_PROJECT_ID": "9f"}, "RAILWAY_PROJECT_ID"),
        ({"RAILWAY_ENVIRONMENT_ID": "0b7c", "UPSTREAM_URL": ""}, "RAILWAY_ENVIRONMENT_ID"),  # set, but empty
    ],
)
def test_the_loopback_default_on_railway_stops_serve_and_warns_check(env: dict[str, str], marker: str) -> None:
    assert problems(True, **env) == (False, [f"routes.yaml:{URL_LINE}: error: {FALLS_BACK.format(marker=marker)}"])
    assert problems(False, **env) == (True, [f"routes.yaml:{URL_LINE}: warning: {FALLS_BACK.format(marker=marker)}"])


@pytest.mark.parametrize(
    "env",
    [
        {},  # not on Railway: the default is what a laptop wants
        {"RAILWAY_TOKEN": "t", "RAILWAY_API_TOKEN": "t"},  # the railway CLI's credentials, set anywhere
        {"RAILWAY_ENVIRONMENT_ID": "0b7c", "UPSTREAM_URL": "http://127.0.0.1:8000"},  # said on purpose
        {"RAILWAY_ENVIRONMENT_ID": "0b7c", "UPSTREAM_URL": "http://backend.railway.internal:8000"},
    ],
)
def test_the_default_is_fine_off_railway_or_when_set_on_purpose(env: dict[str, str]) -> None:
    assert problems(True, **env) == (True, [])


def test_a_default_that_is_not_loopback_is_fine_on_railway() -> None:
    text = SHIPPED.replace(
        "${UPSTREAM_URL:-http://127.0.0.1:8000}", "${UPSTREAM_URL:-http://backend.railway.internal:8000}"
    )
    config, found = load_config(text, env={**SECRET, "RAILWAY_ENVIRONMENT_ID": "0b7c"})
    assert (config is not None, found) == (True, [])


def test_railway_marker() -> None:
    assert railway_marker({}) is None
    assert railway_marker({"RAILWAY_ENVIRONMENT_ID": ""}) is None
    assert railway_marker({"RAILWAY_REPLICA_ID": "r", "RAILWAY_ENVIRONMENT_ID": "e"}) == "RAILWAY_ENVIRONMENT_ID"
    assert railway_marker({"RAILWAY_TOKEN": "t"}) is None


# --- an empty port ----------------------------------------------------------------------

EMPTY_PORT = (
    "upstreams.backend.url: has an empty port (nothing after the ':', as an unresolved reference such as "
    "${{backend.PORT}} leaves it); write the port, or leave out the ':' for the scheme's default"
)


@pytest.mark.parametrize("url", ["http://backend.railway.internal:", "https://[fd12::1]:", "http://b:/base"])
@pytest.mark.parametrize("strict", [True, False])
def test_an_empty_port_is_an_error(url: str, strict: bool) -> None:
    assert problems(strict, UPSTREAM_URL=url) == (False, [f"routes.yaml:{URL_LINE}: error: {EMPTY_PORT}"])


@pytest.mark.parametrize("url", ["http://backend.railway.internal", "http://[fd12::1]", "http://b:8000/base"])
def test_no_port_or_a_port_is_fine(url: str) -> None:
    assert problems(True, UPSTREAM_URL=url) == (True, [])


# --- the metrics port -------------------------------------------------------------------


@pytest.mark.parametrize("strict", [True, False])
def test_port_equal_to_metrics_port_is_an_error(strict: bool) -> None:
    assert problems(strict, PORT="9100") == (
        False,
        [
            f"routes.yaml:{METRICS_LINE}: error: metrics.port: 9100 is listen.port too; "
            "give metrics a port of their own, or 0 to turn them off"
        ],
    )
    assert problems(strict, PORT="8000", METRICS_PORT="8000")[0] is False


@pytest.mark.parametrize(
    ("env", "text"),
    [
        ({"PORT": "9100", "METRICS_PORT": "0"}, SHIPPED),  # metrics off
        ({"PORT": "0", "METRICS_PORT": "0"}, SHIPPED),  # a free port, metrics off
        (
            {"PORT": "9100"},
            SHIPPED.replace("metrics:\n", "metrics:\n  host: 127.0.0.1\n").replace(
                "listen:\n", "listen:\n  host: 127.0.0.2\n"
            ),
        ),  # two addresses
    ],
)
def test_ports_that_do_not_clash(env: dict[str, str], text: str) -> None:
    config, found = load_config(text, env={**SECRET, **env})
    assert (config is not None, found) == (True, [])


# --- what serve --help lists ------------------------------------------------------------


def test_the_variables_of_the_shipped_file() -> None:
    found = {(r.name, r.where, r.default, r.secret) for r in variables_of(SHIPPED)}
    assert ("PORT", "listen.port", "8080", False) in found
    assert ("UPSTREAM_URL", "upstreams.backend.url", "http://127.0.0.1:8000", False) in found
    assert ("EDGE_SECRET", "auth.edge.bearer", None, True) in found
    assert ("EDGE_SECRET_PREVIOUS", "auth.edge.bearer", "", True) in found
    # The header comment's '${VAR}' is not a variable: only values count.
    assert "VAR" not in {name for name, *_ in found}
