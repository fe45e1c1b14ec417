"""``GET /healthz`` and ``GET /readyz``: answered by the sidecar itself, before routing.

- live (``/healthz``): 200 while the process serves requests, draining included.
- ready (``/readyz``): 200 when every upstream accepts a TCP connection; 503 with a
  reason (``upstream_unavailable``, or ``draining`` from the moment a drain
  starts) otherwise, naming each unreachable upstream's ``host:port`` and why, in
  words. Railway's health check uses it to decide when a new replica may take traffic.
  With ``state.redis`` the body also says ``"state": "ok"``, or ``"degraded"`` while
  Redis does not answer: still 200, as the replica serves on with its own tables (a
  fleet whose Redis is down must not be taken out of service).

Upstream probes are TCP connects, cached for :data:`PROBE_TTL` seconds and shared
by concurrent checks, so a health checker polling hard cannot turn the sidecar
into a connection flood against its backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from yarl import URL

from .config import Upstream
from .context import Context
from .logs import event
from .reasons import Reason, Rejection
from .render import Answer, json_answer
from .runtime import Runtime

PROBE_TTL = 1.0  # seconds a probe result is reused
PROBE_TIMEOUT = 2.0  # at most; an upstream's connect_timeout if shorter

_NO_CACHE = ("Cache-Control", "no-store")
_ALLOW = ("Allow", "GET, HEAD")  # RFC 9110 section 15.5.6: a 405 says what is allowed


class Readiness:
    """Upstream reachability, probed on demand and cached briefly."""

    def __init__(self) -> None:
        # One entry per upstream URL: (when started, the probe).
        self._probes: dict[str, tuple[float, asyncio.Future[str | None]]] = {}
        self.ready: bool | None = None  # the last answer, to log changes only

    async def upstreams(self, upstreams: list[Upstream]) -> dict[str, str | None]:
        """Each upstream's name -> ``None`` if reachable, else why not."""
        # Shielded: a health checker that hangs up cancels its own wait, not the probe
        # that concurrent checks share.
        results = await asyncio.gather(*(asyncio.shield(self._probe(u)) for u in upstreams))
        return {u.name: r for u, r in zip(upstreams, results, strict=True)}

    def _probe(self, upstream: Upstream) -> asyncio.Future[str | None]:
        loop = asyncio.get_running_loop()
        cached = self._probes.get(upstream.url)
        fresh = cached is not None and not cached[1].cancelled() and loop.time() - cached[0] < PROBE_TTL
        if cached is not None and (not cached[1].done() or fresh):
            return cached[1]
        probe = asyncio.ensure_future(_connect(upstream))
        self._probes[upstream.url] = (loop.time(), probe)
        return probe


async def _connect(upstream: Upstream) -> str | None:
    """``None`` if ``upstream`` accepts a TCP connection, else its ``host:port`` and why not."""
    url = URL(upstream.url)
    address = f"{url.host_subcomponent}:{url.port}"  # an IPv6 address in brackets
    try:
        async with asyncio.timeout(min(PROBE_TIMEOUT, upstream.connect_timeout)):
            _, writer = await asyncio.open_connection(url.host, url.port)
    except TimeoutError:
        return f"{address}: connect timed out"
    except OSError as exc:
        return f"{address}: {_words(exc)}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


def _words(exc: OSError) -> str:
    """Why a connect failed, in words."""
    if isinstance(exc, socket.gaierror):
        # getaddrinfo's errno is an EAI_* code, not an errno: os.strerror(-2) says
        # "Unknown error -2" where gai_strerror says "Name or service not known".
        return exc.strerror or str(exc)
    if exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__  # several addresses failed differently: asyncio lists them


def is_health_path(rt: Runtime, path: str) -> bool:
    return path in (rt.config.live_path, rt.config.ready_path)


async def check(ctx: Context, rt: Runtime, readiness: Readiness) -> Answer:
    """The answer to a health check at ``ctx.raw_path`` (one of the health paths)."""
    if ctx.method not in ("GET", "HEAD"):
        return json_answer(405, {"error": "method_not_allowed", "allow": _ALLOW[1]}, (_NO_CACHE, _ALLOW))
    if ctx.raw_path == rt.config.live_path:
        return json_answer(200, {"status": "ok", "draining": rt.stopping}, (_NO_CACHE,))
    body: dict[str, object] = {"config_sha256": rt.config.digest[:12]}
    if rt.fleet is not None:
        body["state"] = "ok" if rt.fleet.up else "degraded"
    reason: Reason | None = None
    if rt.stopping:
        reason = Reason.DRAINING
    else:
        # The upstreams routes use: one defined but not routed yet must not hold up a deploy.
        upstreams = list({r.upstream.url: r.upstream for r in rt.config.routes}.values())
        failures = {name: why for name, why in (await readiness.upstreams(upstreams)).items() if why}
        body["upstreams"] = {u.name: failures.get(u.name, "ok") for u in upstreams}
        if failures:
            reason = Reason.UPSTREAM_UNAVAILABLE
        if jwks := rt.keys.state(rt.config):
            body["jwks"] = jwks  # said, never failed on: the last good keys still verify
    ready = reason is None
    if readiness.ready is not ready:
        readiness.ready = ready
        event(logging.INFO if ready else logging.WARNING, "sidecar.ready" if ready else "sidecar.not_ready", **body)
    if reason is None:
        return json_answer(200, {"status": "ready", **body}, (_NO_CACHE,))
    # 503 whatever the reason: to a health checker "not ready" is one answer.
    body = {"status": "not_ready", "error": reason.value, "message": reason.message, **body}
    return json_answer(503, body, (_NO_CACHE, *Rejection(reason).headers()))
