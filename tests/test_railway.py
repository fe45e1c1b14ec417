"""On Railway (its service variables set), Railway's defaults are the sidecar's: the edge
(RFC 6598, 100.64.0.0/10) is trusted and names the client in X-Real-IP; an explicit setting
still wins; a drain longer than the platform allows is a warning."""

from __future__ import annotations

import ipaddress

import pytest
from websockets.exceptions import InvalidStatus

from sidecar.config import model

from .conftest import GOOD, SECRET, StartSidecar, config_for, edge_yaml
from .upstream import Backend
from .wire import rejected, ws_connect

ON_RAILWAY = {"RAILWAY_SERVICE_ID": "5b7c81b3-1578-4eb8-8498-44f4f517b263"}
ATTACKER = "203.0.113.66"
AGENT_IP = "198.51.100.7"


@pytest.mark.xfail(strict=True, reason="issue 12: reproduces the lock-out; the fix follows")
async def test_on_railway_ten_wrong_tokens_from_one_client_do_not_lock_out_the_agents(
    backend: Backend, start_sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Railway's edge connects from 100.64.0.0/10; no socket here can come from there (it
    # would take root to add such an address), so loopback stands in for the edge.
    monkeypatch.setattr(model, "RAILWAY_EDGE", ipaddress.ip_network("127.0.0.0/8"), raising=False)
    sidecar = await start_sidecar(config_for(backend.url, edge_yaml(), **ON_RAILWAY))
    wrong = {**GOOD, "Authorization": "Bearer wrong-token", "X-Real-IP": ATTACKER}
    for _ in range(10):
        status, headers, _ = await rejected(sidecar, "/edge/ws", wrong)
        assert (status, headers["X-Sidecar-Reason"]) == (401, "invalid_token")
    # The agents behind the same edge get in ...
    async with ws_connect(sidecar, headers={**GOOD, "X-Real-IP": AGENT_IP}) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
    # ... and the one client that failed ten times is the one held back.
    status, headers, _ = await rejected(sidecar, "/edge/ws", {**wrong, "Authorization": f"Bearer {SECRET}"})
    assert (status, headers["X-Sidecar-Reason"]) == (429, "rate_limited")


async def test_off_railway_clients_behind_one_untrusted_address_share_its_budget(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    """Without the Railway variables (and no trusted_proxies) the peer is the client,
    whatever X-Real-IP says: a header from anyone names nobody."""
    sidecar = await start_sidecar(config_for(backend.url, edge_yaml()))
    wrong = {**GOOD, "Authorization": "Bearer wrong-token", "X-Real-IP": ATTACKER}
    for _ in range(10):
        await rejected(sidecar, "/edge/ws", wrong)
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(sidecar, headers={**GOOD, "X-Real-IP": AGENT_IP}):
            pass
    assert refused.value.response.status_code == 429
