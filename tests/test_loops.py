"""Which event loop ``sidecar serve`` runs on (sidecar.server.run): uvloop where it is installed,
asyncio's own where it is not or where SIDECAR_LOOP=asyncio asks for it."""

from __future__ import annotations

import asyncio
import importlib.util

from sidecar.server import LOOP_ENV, run


async def on_uvloop() -> int:
    return int(type(asyncio.get_running_loop()).__module__.startswith("uvloop"))


def test_serve_runs_on_uvloop_where_installed_and_on_asyncio_when_asked() -> None:
    installed = importlib.util.find_spec("uvloop") is not None
    assert run(on_uvloop(), {}) == int(installed)
    assert run(on_uvloop(), {LOOP_ENV: "asyncio"}) == 0
