"""``/readyz`` and the ``sidecar.not_ready`` log say which upstream address failed and why,
in words (a name that does not resolve included), and never carry a secret's fingerprint.
Real sockets: the real app on port 0, and upstreams that refuse or do not resolve."""

from __future__ import annotations

import json
import socket

import aiohttp
import pytest

from .conftest import SECRET, StartSidecar, config_for, free_port
from .test_layout import PACKAGE, import_graph
from .wire import log_fields

NOWHERE = "nonexistent.invalid"  # RFC 6761 section 6.4: never resolves


def resolver_words(host: str) -> str:
    """What getaddrinfo itself says of ``host``, asked here, independently of the sidecar."""
    with pytest.raises(socket.gaierror) as failure:
        socket.getaddrinfo(host, 8000, type=socket.SOCK_STREAM)
    return str(failure.value.strerror)


async def readyz(port: int) -> tuple[int, str, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as response:
        text = await response.text()
        return response.status, text, json.loads(text)


async def test_an_upstream_name_that_does_not_resolve_is_said_in_words(
    start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    words = resolver_words(NOWHERE)  # "Name or service not known" with glibc
    assert "Unknown error" not in words
    sidecar = await start_sidecar(config_for(f"http://{NOWHERE}:8000"))
    status, text, body = await readyz(sidecar.port)
    assert status == 503
    assert body["upstreams"] == {"backend": f"{NOWHERE}:8000: {words}"}
    assert "Unknown error" not in text
    (logged,) = log_fields(caplog, "sidecar.not_ready")
    assert logged["upstreams"] == {"backend": f"{NOWHERE}:8000: {words}"}


async def test_a_refused_upstream_names_its_address(
    start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    sidecar = await start_sidecar(config_for(f"http://127.0.0.1:{port}/base"))
    status, text, body = await readyz(sidecar.port)
    assert (status, body["upstreams"]) == (503, {"backend": f"127.0.0.1:{port}: Connection refused"})
    (logged,) = log_fields(caplog, "sidecar.not_ready")
    assert logged["upstreams"] == body["upstreams"]
    # The secret's fingerprint is for the log and 'sidecar check', never for a client.
    assert "fp1:" not in text and SECRET not in text


async def test_an_ipv6_upstream_is_named_in_brackets(start_sidecar: StartSidecar) -> None:
    port = free_port()
    sidecar = await start_sidecar(config_for(f"http://[::1]:{port}"))
    status, _, body = await readyz(sidecar.port)
    assert status == 503
    assert str(body["upstreams"]).startswith(f"{{'backend': '[::1]:{port}: ")


def test_nothing_that_answers_a_client_can_compute_a_fingerprint() -> None:
    """A fingerprint is a slow KDF on purpose: computed per request it would hand anyone
    sending requests a CPU lever. The server is given them once, at start (cli), and no
    module it runs on can reach sidecar.fingerprint."""
    graph = import_graph(PACKAGE)
    for start in ("sidecar.server", "sidecar.app", "sidecar.health"):
        reached, todo = set(), [start]
        while todo:
            for module in graph[todo.pop()] - reached:
                reached.add(module)
                todo.append(module)
        assert "sidecar.fingerprint" not in reached, start
    assert {m for m, imported in graph.items() if "sidecar.fingerprint" in imported} == {
        "sidecar.cli",
        "sidecar.minting",  # sidecar token: the signing key's fingerprint, on stderr
        "sidecar.probe",
        "sidecar.startup",
    }
