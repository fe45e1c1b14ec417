"""Upstreams behind TLS (``https://`` in ``upstreams``): plain HTTP on pooled connections and the
WebSocket upgrade, each verified against the trust store (here a test CA, through SSL_CERT_FILE
as an operator would give one), and refused when the certificate is not trusted. Real sockets:
the test backend behind TLS, the real sidecar, aiohttp and python `websockets` as clients."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from .conftest import SECRET, StartSidecar, config_for, edge_yaml
from .upstream import Backend
from .wire import echoes, rejected, ws_connect


@pytest.fixture
async def tls_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Backend, str]]:
    """The test backend behind TLS on 127.0.0.1 with a certificate from a test CA the process
    trusts (SSL_CERT_FILE): the backend and its https URL."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    backend = await Backend().start()
    assert backend.runner is not None
    site = web.TCPSite(backend.runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    yield backend, f"https://127.0.0.1:{site.port}"
    await backend.stop()


async def test_plain_http_and_a_session_reach_a_tls_upstream(
    tls_backend: tuple[Backend, str], start_sidecar: StartSidecar
) -> None:
    backend, url = tls_backend
    sidecar = await start_sidecar(config_for(url))
    async with aiohttp.ClientSession() as http:
        for n in range(3):  # the second and third on the kept-alive TLS connection
            async with http.post(sidecar.url(f"/anything?n={n}", "http"), data=b"over tls") as response:
                assert response.status == 200
                assert (await response.json())["received"] == 8
    async with ws_connect(sidecar) as ws:
        await echoes(ws, "over tls")
    assert [s.path for s in backend.seen] == ["/anything"] * 3 + ["/edge/ws"]


async def test_an_untrusted_upstream_certificate_is_refused(
    tls_backend: tuple[Backend, str], start_sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    backend, url = tls_backend
    stranger = tmp_path / "stranger.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    monkeypatch.setenv("SSL_CERT_FILE", str(stranger))  # the backend's CA is not trusted now
    sidecar = await start_sidecar(config_for(url, edge_yaml()))
    status, headers, body = await rejected(sidecar, "/edge/ws", {"Authorization": f"Bearer {SECRET}"})
    assert (status, headers["X-Sidecar-Reason"]) == (502, "upstream_unavailable")
    assert body["detail"] == "ClientConnectorCertificateError"
    assert backend.seen == []
