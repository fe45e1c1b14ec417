"""The WebSocket sessions of one process: admission, agent ids, the drain.

A session's life is an explicit state machine (:class:`State`), and the reason the
sidecar ends one from outside is recorded when it happens (:class:`EndCause`), not
decoded later from a close frame. Admission is one async context manager,
:meth:`Registry.admit`: it checks the caps and the route's duplicate-agent policy,
and its exit is the only code that ever frees a session's place.

Who holds which agent id is behind :class:`Agents`: this process's table here; a
table shared by every replica can implement the same interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .config import Route
from .limits import OVER_CAPACITY_RETRY_AFTER, SessionCounts
from .logs import event
from .reasons import Reason, Refused, Rejection

# Retry-After while draining: by then the new replica is taking connections.
DRAIN_RETRY_AFTER = 1


def closing_bound(close_timeout: float) -> float:
    """How long a session takes to end at most once asked to: the close frame, then
    the reply, each within ``close_timeout``, and a second to spare."""
    return 2 * close_timeout + 1


class State(enum.Enum):
    CONNECTING = "connecting"  # being admitted, or admitted and in the upstream handshake
    OPEN = "open"  # relaying
    CLOSING = "closing"  # ending: asked to from outside, or a side closed
    CLOSED = "closed"  # its place is free

    # Members are singletons compared by identity: hashed by identity too, in C, rather than
    # by Enum's __hash__ (a Python call) on every transition a session takes.
    __hash__ = object.__hash__


# The transitions a session may take (h11-style: the state machine as data).
_NEXT: dict[State, frozenset[State]] = {
    State.CONNECTING: frozenset({State.OPEN, State.CLOSING, State.CLOSED}),
    State.OPEN: frozenset({State.CLOSING, State.CLOSED}),
    State.CLOSING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


class EndCause(enum.Enum):
    """Why the sidecar ends a session itself: the close frame the client is sent, or,
    before the session opened, the refusal it gets instead."""

    # 1012 "Service Restart" (IANA close code registry, RFC 6455 section 11.7): a
    # redeploy; the agent reconnects (the upstream leg is sent 1001 "going away").
    DRAINING = (1012, "service restart: reconnect")
    # 4000-4999 is the application range (RFC 6455 section 7.4.2); 4409 echoes HTTP 409.
    REPLACED = (4409, "replaced by a newer session for this agent id")
    # The client's connection dropped during the upstream handshake: nobody to answer.
    CLIENT_GONE = (1001, "client went away")
    # The session's signed token expired (its exp plus the policy's leeway): 4401 echoes
    # HTTP 401; the client reconnects with a fresh token. Still connecting: 401 token_expired.
    EXPIRED = (4401, "token expired")
    # An operator ended it (DELETE /sessions/{agent_id} on the metrics port); 4403 echoes HTTP 403.
    OPERATOR = (4403, "closed by operator")

    @property
    def code(self) -> int:
        return self.value[0]

    @property
    def reason(self) -> str:
        return self.value[1]

    def refusal(self, agent_id: str | None) -> Rejection | None:
        """What a session ended before it opened is answered (``None``: nobody to answer)."""
        if self is EndCause.DRAINING:
            return Rejection(Reason.DRAINING, agent_id=agent_id, retry_after=DRAIN_RETRY_AFTER)
        if self is EndCause.REPLACED:
            return Rejection(Reason.DUPLICATE_AGENT, detail=self.reason, agent_id=agent_id)
        if self is EndCause.EXPIRED:
            return Rejection(Reason.TOKEN_EXPIRED, agent_id=agent_id)
        return None


@dataclass(eq=False)
class Session:
    """One WebSocket session, from admission to the release of its place."""

    route: Route
    agent_id: str | None
    client: str | None = None
    state: State = State.CONNECTING
    cause: EndCause | None = None  # set when the sidecar ends it from outside
    opened_at: float = field(default_factory=time.time)  # wall clock, for listings
    started: float = field(default_factory=time.monotonic)  # when admitted, for the drain's order
    # Resolved with the cause when the sidecar ends the session; the relay waits on it.
    stopped: asyncio.Future[EndCause] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    # When its signed token expires (exp plus leeway, epoch seconds), if the policy closes
    # sessions then: the registry ends it at that moment (EXPIRED).
    expires_at: float | None = None
    _done: asyncio.Event | None = field(default=None, repr=False)

    @property
    def done(self) -> asyncio.Event:
        """Set once CLOSED. Made when first asked for: an Event holds a deque of waiters
        (600 bytes), and most sessions are never waited for."""
        if self._done is None:
            self._done = asyncio.Event()
            if self.state is State.CLOSED:
                self._done.set()
        return self._done

    def end(self, cause: EndCause) -> None:
        """End the session from outside; the first cause is the one recorded."""
        if self.cause is not None or self.state is State.CLOSED:
            return
        self.cause = cause
        self.stopped.set_result(cause)
        if self.state is State.OPEN:
            self.move(State.CLOSING)

    def refuse_if_ended(self) -> None:
        """Before the session opens: raise the refusal for the cause it was ended with."""
        if self.cause is None:
            return
        rejection = self.cause.refusal(self.agent_id)
        if rejection is None:
            raise ConnectionResetError(self.cause.reason)
        raise Refused(rejection)

    def move(self, to: State) -> None:
        if to not in _NEXT[self.state]:
            raise RuntimeError(f"a session cannot go from {self.state.value} to {to.value}")
        self.state = to
        if to is State.CLOSED and self._done is not None:
            self._done.set()


class Agents(Protocol):
    """Who holds which agent id, per route. Each method is what the registry needs of a
    table, whether it is this process's (:class:`LocalAgents`) or the fleet's."""

    def __len__(self) -> int:
        """How many agent ids this process's sessions hold."""

    async def claim(self, session: Session) -> bool:
        """Record ``session`` as its agent id's holder, unless another holds it (False)."""

    async def replace(self, session: Session, *, within: float) -> None:
        """End the holder's session (:attr:`EndCause.REPLACED`) and make ``session`` the
        holder; return once the old one has ended, or after ``within`` seconds."""

    async def release(self, session: Session) -> None:
        """``session`` no longer holds its agent id (if it still did)."""

    async def release_all(self, sessions: list[Session]) -> None:
        """:meth:`release` for each of ``sessions`` at once (the drain, before their 1012)."""


class LocalAgents:
    """This process's table of agent ids, keyed by (route name, agent id)."""

    def __init__(self) -> None:
        self._holders: dict[tuple[str, str], Session] = {}

    @staticmethod
    def _key(session: Session) -> tuple[str, str]:
        assert session.agent_id is not None
        return session.route.name, session.agent_id

    def __len__(self) -> int:
        return len(self._holders)

    async def claim(self, session: Session) -> bool:
        return self._holders.setdefault(self._key(session), session) is session

    async def replace(self, session: Session, *, within: float) -> None:
        key = self._key(session)
        old = self._holders.get(key)
        self._holders[key] = session
        if old is None or old is session:
            return
        event(logging.INFO, "ws.replacing", route=session.route.name, agent_id=session.agent_id)
        # The backend sees the old session end before the new one begins.
        old.end(EndCause.REPLACED)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(old.done.wait(), within)

    async def release(self, session: Session) -> None:
        key = self._key(session)
        if self._holders.get(key) is session:
            del self._holders[key]

    async def release_all(self, sessions: list[Session]) -> None:
        for session in sessions:
            if session.agent_id is not None:
                await self.release(session)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class WallClock:
    """The wall clock token expiries are read on (``exp`` is epoch seconds): the time now,
    and a callback at a wall-clock time, on the loop's timer. A test injects its own."""

    def now(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[Session], None], session: Session) -> Cancellable:
        loop = asyncio.get_running_loop()
        return loop.call_at(loop.time() + (when - self.now()), callback, session)


class Registry:
    """Every session of this process that holds a place: being admitted, open or closing."""

    def __init__(self, agents: Agents | None = None, clock: WallClock | None = None) -> None:
        self.agents: Agents = agents if agents is not None else LocalAgents()  # an empty table is falsy
        self.clock = clock or WallClock()  # when tokens expire
        self.draining = False  # set when the drain begins: no session opens any more
        self._counts = SessionCounts()
        self._live: set[Session] = set()
        # Told of each open session ended at its token's expiry (the runtime counts them).
        self.expired: Callable[[Session], None] = _nothing

    def __len__(self) -> int:
        return len(self._live)

    def sessions(self, state: State | None = None) -> list[Session]:
        """The sessions holding a place (in ``state`` only, if given), oldest first."""
        chosen = [s for s in self._live if state is None or s.state is state]
        return sorted(chosen, key=lambda s: s.started)

    def admit(self, session: Session, *, max_sessions: int, close_timeout: float) -> Admission:
        """Hold a place for ``session`` (refused: 503 over_capacity), then apply its route's
        duplicate-agent policy (refused: 409 duplicate_agent). Counted from here, the
        upstream handshake included, so a burst cannot overshoot a cap. Leaving the block
        frees the place and moves the session to CLOSED, whatever happened in it."""
        return Admission(self, session, max_sessions, close_timeout)

    def _expiry(self, session: Session) -> Cancellable | None:
        """One timer per session with an expiry, from admission to release: nothing per
        message. It ends the session (:attr:`EndCause.EXPIRED`): 4401 if it is open, 401
        token_expired if it is still in its upstream handshake."""
        if session.expires_at is None:
            return None
        return self.clock.call_at(session.expires_at, self._expire, session)

    def _expire(self, session: Session) -> None:
        if session.cause is not None or session.state is State.CLOSED:
            return
        was_open = session.state is State.OPEN
        session.end(EndCause.EXPIRED)
        event(logging.INFO, "ws.token_expired", route=session.route.name, agent_id=session.agent_id, open=was_open)
        if was_open:
            self.expired(session)

    def opened(self, session: Session) -> None:
        """The session's relay has begun. One opened during a drain is ended at once."""
        session.move(State.OPEN)
        if self.draining:
            session.end(EndCause.DRAINING)

    async def drain(self, window: float, hurry: asyncio.Event, *, close_timeout: float) -> None:
        """Stopping: sessions still in their handshake are refused at once (503 draining);
        open ones are closed, the oldest first, evenly spread over ``window`` (0: all at
        once); ``hurry`` closes the rest at once. Each session gives up its agent id before
        it is sent 1012, so that an agent reconnecting at once through another replica is
        not refused as a duplicate of itself. Returns when all have ended, or after the
        closing bound."""
        self.draining = True
        for connecting in self.sessions(State.CONNECTING):
            connecting.end(EndCause.DRAINING)
        sessions = self.sessions(State.OPEN)
        if sessions:
            event(logging.INFO, "ws.closing_all", sessions=len(sessions), over_s=window)
        loop = asyncio.get_running_loop()
        started = loop.time()
        done = 0
        while done < len(sessions):
            delay = started + window * done / len(sessions) - loop.time()
            if delay > 0 and not hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(hurry.wait(), delay)
            # Every session due by now (all that are left, once hurried), released together.
            elapsed = loop.time() - started
            due = len(sessions) if hurry.is_set() or window <= 0 else int(elapsed * len(sessions) / window) + 1
            batch = sessions[done : max(done + 1, min(due, len(sessions)))]
            await self.agents.release_all([s for s in batch if s.agent_id is not None])
            for session in batch:
                session.end(EndCause.DRAINING)
            done += len(batch)
        ending = [s for s in self._live if s.state is not State.CONNECTING]
        if ending:
            waits = [asyncio.ensure_future(s.done.wait()) for s in ending]
            _, pending = await asyncio.wait(waits, timeout=closing_bound(close_timeout))
            for wait in pending:
                wait.cancel()


class Admission:
    """:meth:`Registry.admit`'s context manager: a class rather than an async generator,
    which costs a session a generator, its finaliser hooks and contextlib's wrapper."""

    __slots__ = ("_claimed", "_close_timeout", "_expiry", "_max_sessions", "_registry", "_session")

    def __init__(self, registry: Registry, session: Session, max_sessions: int, close_timeout: float) -> None:
        self._registry = registry
        self._session = session
        self._max_sessions = max_sessions
        self._close_timeout = close_timeout
        self._expiry: Cancellable | None = None
        self._claimed = False

    async def __aenter__(self) -> Session:
        registry, session = self._registry, self._session
        route = session.route
        if not registry._counts.acquire(route.name, route.max_sessions, self._max_sessions):
            session.move(State.CLOSED)
            full = Rejection(Reason.OVER_CAPACITY, agent_id=session.agent_id, retry_after=OVER_CAPACITY_RETRY_AFTER)
            raise Refused(full)
        registry._live.add(session)
        self._expiry = registry._expiry(session)
        try:
            if session.agent_id is not None and route.duplicate_agent != "allow":
                self._claimed = True
                if not await registry.agents.claim(session):
                    if route.duplicate_agent == "reject":
                        raise Refused(Rejection(Reason.DUPLICATE_AGENT, agent_id=session.agent_id))
                    within = route.upstream.connect_timeout + 2 * closing_bound(self._close_timeout)
                    await registry.agents.replace(session, within=within)
            session.refuse_if_ended()  # ended while it waited: the drain, or a newer session
        except BaseException:
            await self._release()
            raise
        return session

    async def __aexit__(self, *exc_info: object) -> None:
        await self._release()

    async def _release(self) -> None:
        """Free the place, whatever happened: the only code that does."""
        registry, session = self._registry, self._session
        if self._expiry is not None:
            self._expiry.cancel()
        registry._live.discard(session)
        registry._counts.release(session.route.name)
        if self._claimed:
            await registry.agents.release(session)
        session.move(State.CLOSED)


def _nothing(session: Session) -> None:
    """The default :attr:`Registry.expired`: nobody to tell."""
