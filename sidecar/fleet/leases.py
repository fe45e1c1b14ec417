"""Agent leases: the :class:`~sidecar.sessions.Agents` table the whole fleet shares.

Each session that holds an agent id (its route's ``duplicate_agent`` is ``reject`` or
``replace``) holds a lease on it in Redis (:mod:`.layout`): claimed atomically at
admission, renewed every ``lease_ttl / 3`` while the session lives, deleted
compare-and-delete when it ends, so a lease outlives a replica that died by at most
``lease_ttl``. This process's own table (:class:`~sidecar.sessions.LocalAgents`) stands
in front: a duplicate within the process is found without a round trip, and it is what
decides while Redis does not answer (fail-open).

``replace`` across replicas: the holder's replica is told over pub/sub (``replace`` on
its channel) and ends its session with 4409; its release frees the lease, which the new
session claims, within the same bound as in one process. Pub/sub can lose a message, so
a renewal that finds another session's value in a lease ends its own session too; and
nobody listening on the holder's channel means its process is gone: the lease is taken
at once. A lease value names its holder process (:func:`~.layout.lease_value`: a nonce
per process, a serial per session), and each process listens on a channel of its own: a
process that shares its replica id with another (a restart, a deploy) never takes, renews
or deletes that one's leases as if they were its own.

When Redis comes back (empty, after a restart), the renewal writes each missing lease
again (:data:`~.layout.RENEW`): no session is dropped, and duplicates are caught again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from ..logs import event
from ..metrics import Metrics
from ..sessions import EndCause, LocalAgents, Session
from .batch import Batch
from .layout import RELEASE, RENEW, SYNC, TAKE, Names, encode, lease_holder, lease_value
from .link import Link, Unavailable

RENEW_CHUNK = 500  # leases per renewal call: one call stays short for Redis
FIRST_POLL, MAX_POLL = 0.02, 0.25  # waiting for a replaced session's lease to be freed
RETELL = 1.0  # seconds between two replace messages to a holder that still holds the lease


Request = tuple[str, str, str]  # ('c' claim or 'r' release, the lease's key, this session's value)


def _op_of(requests: Sequence[Request]) -> str:
    """The op a batch is counted under: claim if it claims anything, else release."""
    return "claim" if any(op == "c" for op, _, _ in requests) else "release"


class Held(enum.Enum):
    UNKNOWN = "unknown"  # not confirmed by Redis (it did not answer): renewed, released
    HELD = "held"  # Redis says this session holds it
    REFUSED = "refused"  # another session holds it: never renewed nor deleted by this one


@dataclass(eq=False)
class Lease:
    key: str
    value: str
    state: Held = Held.UNKNOWN
    holder: str = ""  # the value holding the lease, when it was not this one


class FleetAgents:
    """The fleet's agent table, as seen from this replica."""

    def __init__(
        self, link: Link, names: Names, replica: str, process: str, lease_ttl: float, metrics: Metrics
    ) -> None:
        self.local = LocalAgents()
        self._link = link
        self._names = names
        self._replica = replica
        self._process = process  # this process's nonce: its lease values are its own
        self._serial = itertools.count(1)  # each session's number in this process
        self._ttl_ms = int(lease_ttl * 1000)
        self.renew_every = lease_ttl / 3
        self._metrics = metrics
        self._leases: dict[Session, Lease] = {}
        self._sessions: dict[str, Session] = {}  # lease value -> its session
        self._orphans: dict[tuple[str, str], float] = {}  # (key, value) not yet deleted -> since when
        self._tasks: set[asyncio.Task[None]] = set()
        # Claims and releases share one channel to Redis: one script call per batch.
        self._sync: Batch[Request, str] = Batch(link, _op_of, self._send)
        self._script = {
            name: link.redis.register_script(text)
            for name, text in (("sync", SYNC), ("take", TAKE), ("renew", RENEW), ("release", RELEASE))
        }

    def __len__(self) -> int:
        return len(self.local)

    # --- Agents ----------------------------------------------------------------------------

    async def claim(self, session: Session) -> bool:
        if not await self.local.claim(session):
            return False  # a session of this process holds it: replace() deals with it
        lease = self._hold(session)
        try:
            # The claim as a whole (the batch in flight ahead of it, its own, and the take
            # of a stale value) is what the handshake waits for: bounded by state.timeout.
            async with asyncio.timeout(self._link.timeout):
                return await self._claim(lease)
        except TimeoutError:
            self._link.timed_out("claim")
            lease.state, lease.holder = Held.UNKNOWN, ""
            return True  # this replica's table decided; the renewal asserts the lease later

    async def _claim(self, lease: Lease) -> bool:
        try:
            holder = await self._sync(("c", lease.key, lease.value))
        except Unavailable:
            return True  # this replica's table decided; the renewal asserts the lease later
        if not holder:
            lease.state = Held.HELD
            return True
        lease.state, lease.holder = Held.REFUSED, holder
        return self._stale(holder) and await self._take(lease, expected=holder)

    async def replace(self, session: Session, *, within: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        # A holder in this process first, exactly as without a fleet.
        await self.local.replace(session, within=within)
        lease = self._leases.get(session) or self._hold(session)
        told: dict[str, float] = {}  # holder -> when it was last told
        pause = FIRST_POLL
        while session.cause is None:  # else ended while waiting (the drain): admit() refuses it
            if not lease.holder:
                try:
                    async with asyncio.timeout(self._link.timeout):  # the batch ahead of it included
                        lease.holder = await self._sync(("c", lease.key, lease.value))
                except TimeoutError:
                    self._link.timed_out("replace")
                    lease.state = Held.UNKNOWN
                    return
                except Unavailable:
                    lease.state = Held.UNKNOWN
                    return
                if not lease.holder:
                    lease.state = Held.HELD
                    return
                lease.state = Held.REFUSED
            last = told.get(lease.holder)
            if last is None or loop.time() - last >= RETELL:
                # Pub/sub delivers at most once: told again every RETELL seconds while the
                # lease is held, until it is gone or the bound is reached.
                told[lease.holder] = loop.time()
                heard = await self._tell(session, lease.holder, again=last is not None)
                if not heard and last is None and await self._take(lease, expected=lease.holder):
                    return  # nobody listens for the holder: its process is gone
            remaining = deadline - loop.time()
            if remaining <= 0:
                # The bound is reached: this session takes the lease; the old session's
                # replica finds another value at its next renewal and ends it.
                await self._take(lease, expected="")
                return
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, MAX_POLL)
            lease.holder = ""

    async def release(self, session: Session) -> None:
        """Not waited for: the release leaves with the next batch (a newer claim of the
        same lease that meets this value first takes it over as stale)."""
        await self.local.release(session)
        lease = self._drop(session)
        if lease is None or lease.state is Held.REFUSED:
            return
        try:
            released = self._sync.submit(("r", lease.key, lease.value))
        except Unavailable:
            self._orphan(lease.key, lease.value)
            return
        released.add_done_callback(lambda done: self._released(done, lease))

    async def release_all(self, sessions: list[Session]) -> None:
        await self.local.release_all(sessions)
        leases = [lease for lease in map(self._drop, sessions) if lease is not None and lease.state is not Held.REFUSED]
        if leases:
            pairs = [(lease.key, lease.value) for lease in leases]
            try:
                await self._link.call("release", lambda redis: self._release_all(redis, pairs))
            except Unavailable:
                for key, value in pairs:
                    self._orphan(key, value)

    async def close(self) -> None:
        """Flush what this process still owes Redis (the renewal and the messages are
        stopped by now): the releases queued or in flight land, then those that failed are
        tried once more; each call bounded by ``state.timeout``. Nothing is left running."""
        if self._tasks:
            await asyncio.wait([*self._tasks])  # releases of orphans a message asked for
        await self._sync.close()
        await self.release_orphans()

    # --- what other replicas say, and the renewal -----------------------------------------

    def replaced_elsewhere(self, key: str, value: str) -> None:
        """A ``replace`` message: the session holding ``value`` ends (4409); its release
        frees the lease for the newer session."""
        session = self._sessions.get(value)
        if session is None:  # ended meanwhile, or its release did not reach Redis: free it now
            if self._stale(value):  # only ever a value of this process's: never another's lease
                self._orphan(key, value)
            self._spawn(self.release_orphans())
            return
        self._replaced(session, why="told")

    async def renew(self) -> None:
        """Renew every lease this replica holds; write again the ones Redis lost; end the
        sessions whose lease another holds; delete what failed to be released."""
        self._forget_expired_orphans()
        leases = [(s, lease) for s, lease in self._leases.items() if lease.state is not Held.REFUSED]
        for start in range(0, len(leases), RENEW_CHUNK):
            chunk = leases[start : start + RENEW_CHUNK]
            try:
                lost_at = await self._renew_chunk([lease for _, lease in chunk])
            except Unavailable:
                return
            for index, (session, lease) in enumerate(chunk):
                if index in lost_at:
                    lease.state = Held.REFUSED
                    self._replaced(session, why="lease")
                elif lease.state is Held.UNKNOWN:
                    lease.state = Held.HELD
        await self.release_orphans()

    async def release_orphans(self) -> None:
        """Delete (compare-and-delete) the leases whose release did not reach Redis; those
        older than a lease have expired by themselves."""
        self._forget_expired_orphans()
        pairs = list(self._orphans)
        if not pairs:
            return
        with contextlib.suppress(Unavailable):
            await self._link.call("release", lambda redis: self._release_all(redis, pairs))
            for pair in pairs:
                self._orphans.pop(pair, None)

    # --- inside ----------------------------------------------------------------------------

    def _forget_expired_orphans(self) -> None:
        """Leases whose release failed longer ago than a lease lasts have expired in Redis:
        forgotten, so a long outage cannot make the list grow without bound."""
        oldest = asyncio.get_running_loop().time() - self._ttl_ms / 1000
        self._orphans = {pair: since for pair, since in self._orphans.items() if since > oldest}

    def _hold(self, session: Session) -> Lease:
        assert session.agent_id is not None
        key = self._names.lease(session.route.name, session.agent_id)
        lease = Lease(key, lease_value(self._replica, self._process, next(self._serial)))
        self._leases[session] = lease
        self._sessions[lease.value] = session
        return lease

    def _drop(self, session: Session) -> Lease | None:
        lease = self._leases.pop(session, None)
        if lease is not None:
            self._sessions.pop(lease.value, None)
        return lease

    def _stale(self, holder: str) -> bool:
        """A value this process wrote that no session of it holds any more (a release
        that failed): nobody to wait for. Another process's value, even one with this
        replica id (a restart, a deploy), is never stale: its holder is told or expires."""
        named = lease_holder(holder)
        return named is not None and named.process == self._process and holder not in self._sessions

    async def _tell(self, session: Session, holder: str, *, again: bool = False) -> bool:
        """Tell the holder's process, on its own channel, to end its session; False if nobody will."""
        named = lease_holder(holder)
        if named is None or self._stale(holder):
            return False
        if not again:
            event(
                logging.INFO, "ws.replacing", route=session.route.name, agent_id=session.agent_id, holder=named.replica
            )
        message = encode("replace", key=self._leases[session].key, value=holder)
        channel = self._names.replica(named.replica, named.process)
        try:
            listeners = await self._link.call("replace", lambda redis: redis.publish(channel, message))
        except Unavailable:
            return True  # not known: wait, bounded
        return int(listeners) > 0

    async def _take(self, lease: Lease, *, expected: str) -> bool:
        """Take the lease if ``expected`` (or, with '', anyone) still holds it."""
        try:
            holder = await self._link.call(
                "replace",
                lambda redis: self._script["take"]([lease.key], [expected, lease.value, self._ttl_ms], client=redis),
            )
        except Unavailable:
            lease.state = Held.UNKNOWN
            return True  # fail-open
        if holder:
            lease.holder = str(holder)
            return False
        lease.state, lease.holder = Held.HELD, ""
        return True

    def _replaced(self, session: Session, *, why: str) -> None:
        if session.cause is not None:
            return
        session.end(EndCause.REPLACED)
        self._metrics.replaced_remote.inc()
        event(logging.INFO, "ws.replaced_remote", route=session.route.name, agent_id=session.agent_id, found_by=why)

    async def _renew_chunk(self, leases: list[Lease]) -> set[int]:
        """Renew ``leases`` in one call; the 0-based indexes of those another session holds."""
        keys = [lease.key for lease in leases]
        args: list[str | int] = [*(lease.value for lease in leases), self._ttl_ms]
        lost = await self._link.call("renew", lambda redis: self._script["renew"](keys, args, client=redis))
        return {int(i) - 1 for i in lost}

    async def _send(self, redis: Redis, requests: Sequence[Request]) -> list[str]:
        keys = [key for _, key, _ in requests]
        args: list[str | int] = [part for op, _, value in requests for part in (op, value)]
        answers = await self._script["sync"](keys, [*args, self._ttl_ms], client=redis)
        return [str(answer) for answer in answers]

    def _released(self, done: asyncio.Future[str], lease: Lease) -> None:
        if done.cancelled() or done.exception() is not None:
            self._orphan(lease.key, lease.value)

    def _orphan(self, key: str, value: str) -> None:
        """A release that did not reach Redis: retried by the renewal, while it matters."""
        self._orphans[(key, value)] = asyncio.get_running_loop().time()

    async def _release_all(self, redis: Redis, pairs: Sequence[tuple[str, str]]) -> list[int]:
        keys = [key for key, _ in pairs]
        await self._script["release"](keys, [value for _, value in pairs], client=redis)
        return [1] * len(pairs)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
