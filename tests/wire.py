"""The tests' toolbox for what goes over the sockets: waiting for another component, WebSocket
sessions and refusals through python `websockets`.

Every test module takes these from here (and fixtures and configs from ``conftest``); no
test module imports from another. Timeouts here are upper bounds for a slow, shared
machine, never speed claims: speed is measured in the benchmarks.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .conftest import GOOD, Sidecar
from .upstream import Backend

# --- waiting -------------------------------------------------------------------------------


async def until(condition: Callable[[], object], timeout: float = 10) -> None:  # noqa: ASYNC109 - a bound is the point
    """Poll ``condition`` (awaited if it returns an awaitable) until it is true: for state
    another task, process or peer changes. ``timeout`` is a bound, not a speed claim."""
    async with asyncio.timeout(timeout):
        while True:
            holds = condition()
            if inspect.isawaitable(holds):
                holds = await holds
            if holds:
                return
            await asyncio.sleep(0.01)


# --- WebSocket sessions (python `websockets`, a strict RFC 6455 client) ---------------------


def ws_connect(
    sidecar: Sidecar, path: str = "/edge/ws", headers: Mapping[str, str] | None = None, **options: Any
) -> connect:
    """A session to ``path`` (awaitable, or an ``async with``), with ``GOOD`` headers unless
    ``headers`` are given; ``options`` go to ``websockets`` ``connect``."""
    return connect(sidecar.url(path), additional_headers=GOOD if headers is None else headers, **options)


async def closed_by_peer(
    ws: ClientConnection,
    *,
    timeout: float = 10,  # noqa: ASYNC109 - a bound on each wait, as for until()
    skip_messages: bool = True,
) -> tuple[int, str]:
    """Wait for the peer's close frame: the code and reason it carried. Messages that come
    first are passed over, unless ``skip_messages=False``: then the close must come next."""
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
            if not skip_messages:
                break
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason or ""


async def rejected(
    sidecar: Sidecar, path: str, headers: Mapping[str, str], **options: Any
) -> tuple[int, Headers, dict[str, Any]]:
    """A handshake the sidecar must refuse: the status, headers and JSON body (``{}`` if
    empty) of its answer. ``options`` go to ``websockets`` ``connect``."""
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(sidecar, path, headers, **options):
            pass
    response = info.value.response
    return response.status_code, response.headers, json.loads(response.body or b"{}")


async def flooded_non_reader(sidecar: Sidecar, backend: Backend) -> ClientConnection:
    """A client that asked the backend for 64 MiB and reads none of it."""
    ws = await ws_connect(sidecar, max_queue=1, max_size=2 * 1024 * 1024, ping_interval=None)
    await ws.send("flood 64 1048576")
    await until(lambda: backend.flood_sent > 0)
    return ws
