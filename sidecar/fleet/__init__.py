"""The fleet's shared state (``state.redis``): agent leases, the failed-auth budget and
session control, shared by every replica through Redis (redis-py's asyncio client).

Without ``state.redis`` none of this runs: the session registry keeps its
:class:`~sidecar.sessions.LocalAgents` and the runtime its
:class:`~sidecar.limits.FailureTable`, as one replica needs. With it, one
:class:`Fleet` per process, made of:

- ``link``: the connection, the bound on every operation (``state.timeout``), up and
  down (fail-open), reconnection with backoff;
- ``leases``: :class:`FleetAgents`, the registry's agent table, and their renewal;
- ``budget``: the fleet-wide failed-auth count behind this process's table;
- ``control``: pub/sub between replicas, and the questions the admin endpoints put to all;
- ``layout``: key and channel names, the Lua scripts, the messages; ``batch``: round
  trips shared by the handshakes of one turn of the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable

from .. import roster
from ..config import StateConfig
from ..limits import FailureTable
from ..logs import logger
from ..metrics import Metrics
from ..sessions import Registry
from .budget import FleetBudget
from .control import Answers, Control
from .layout import Names
from .leases import FleetAgents
from .link import Link, Unavailable

__all__ = ["Answers", "Fleet", "FleetAgents", "Unavailable"]


class Fleet:
    """One replica's part in the fleet: started with the server, closed after the drain."""

    def __init__(self, settings: StateConfig, metrics: Metrics, replica: str) -> None:
        self.replica = replica
        self.settings = settings
        self.link = Link(settings, metrics)
        self.names = Names(settings.key_prefix)
        self.process = secrets.token_hex(8)  # this process, among any that share its replica id
        self.agents = FleetAgents(self.link, self.names, replica, self.process, settings.lease_ttl, metrics)
        self.control = Control(self.link, self.names, replica, self.process)
        self._budget: FleetBudget | None = None
        self._renew_now = asyncio.Event()
        self._renewing: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        """Redis answers: decisions are the fleet's (else each replica's own)."""
        return self.link.up

    async def start(self, registry: Registry, failures: FailureTable, capacity: Callable[[], int]) -> None:
        """Take over ``registry``'s agent table and ``failures``' counting, and connect
        (within ``state.timeout``; if Redis does not answer, the replica starts degraded)."""
        registry.agents = self.agents
        self._budget = budget = FleetBudget(self.link, self.names, failures, capacity)
        failures.on_failure = budget.failed
        self.control.on("replace", lambda m: self.agents.replaced_elsewhere(str(m["key"]), str(m["value"])))
        self.control.on("block", budget.blocked)
        self.control.answer("list", lambda m: roster.entries(registry, self.replica, m.get("agent_id")))
        self.control.answer("end", lambda m: roster.end_open(registry, str(m["agent_id"])))
        self.link.when_up(self._renew_now.set)  # back after an outage: re-assert the leases at once
        await self.link.start()
        self.control.start()
        if self.link.up:  # listening before serving: no message for this replica is missed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.timeout):
                    await self.control.listening.wait()
        self._renewing = asyncio.ensure_future(self._renew_forever())

    async def sessions(self, agent_id: str | None) -> Answers:
        """Every replica's sessions (``agent_id``'s only, if given): one list per replica
        that answered. :exc:`Unavailable` if Redis does not answer."""
        return await self.control.ask("list", agent_id=agent_id)

    async def end(self, agent_id: str) -> Answers:
        """End ``agent_id``'s open sessions on every replica (4403): a count per replica."""
        return await self.control.ask("end", agent_id=agent_id)

    async def close(self) -> None:
        """After the drain, in this order: stop what starts work (the renewal, the
        messages from other replicas), flush what this process owes Redis (releases queued
        or in flight, those that failed, failed-auth counts on their way), then close the
        client. Each flush is bounded by ``state.timeout``; nothing is left running."""
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
        await self.control.close()
        await self.agents.close()
        if self._budget is not None:
            await self._budget.close()
        await self.link.close()

    async def _renew_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.agents.renew_every):
                    await self._renew_now.wait()
            self._renew_now.clear()
            try:
                await self.agents.renew()
            except Exception:  # a bug must not stop the renewal: every lease would expire
                logger.exception("state.renew_failed")
