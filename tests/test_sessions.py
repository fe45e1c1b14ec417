"""sidecar.sessions: the session registry's rules, without sockets: the state machine,
admission (caps, the duplicate-agent policy), the one release, the drain."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from contextlib import AbstractAsyncContextManager
from dataclasses import replace

import pytest

from sidecar.config import Route, Upstream
from sidecar.reasons import Reason, Refused
from sidecar.sessions import EndCause, LocalAgents, Registry, Session, State, closing_bound

ROUTE = Route("edge", True, Upstream("backend", "http://127.0.0.1:1", connect_timeout=1.0), paths=("/edge/ws",))


def admit(registry: Registry, session: Session, max_sessions: int = 100) -> AbstractAsyncContextManager[Session]:
    return registry.admit(session, max_sessions=max_sessions, close_timeout=0.1)


@pytest.mark.parametrize(
    ("start", "to", "allowed"),
    [
        (State.CONNECTING, State.OPEN, True),
        (State.CONNECTING, State.CLOSING, True),
        (State.CONNECTING, State.CLOSED, True),
        (State.OPEN, State.CLOSING, True),
        (State.OPEN, State.CLOSED, True),
        (State.OPEN, State.CONNECTING, False),
        (State.CLOSING, State.CLOSED, True),
        (State.CLOSING, State.OPEN, False),
        (State.CLOSED, State.OPEN, False),
        (State.CLOSED, State.CLOSING, False),
    ],
)
async def test_transitions(start: State, to: State, allowed: bool) -> None:
    session = Session(ROUTE, None, state=start)
    if allowed:
        session.move(to)
        assert session.state is to
    else:
        with pytest.raises(RuntimeError, match=f"from {start.value} to {to.value}"):
            session.move(to)


@pytest.mark.parametrize(
    ("cause", "status", "reason", "retry_after"),
    [
        (EndCause.DRAINING, 503, Reason.DRAINING, 1),
        (EndCause.REPLACED, 409, Reason.DUPLICATE_AGENT, None),
        (EndCause.EXPIRED, 401, Reason.TOKEN_EXPIRED, None),
    ],
)
async def test_a_session_ended_before_it_opens_is_refused(
    cause: EndCause, status: int, reason: Reason, retry_after: int | None
) -> None:
    session = Session(ROUTE, "a1")
    session.end(cause)
    with pytest.raises(Refused) as refused:
        session.refuse_if_ended()
    assert (refused.value.rejection.reason, reason.status, refused.value.rejection.retry_after) == (
        reason,
        status,
        retry_after,
    )
    assert refused.value.rejection.agent_id == "a1"


async def test_the_first_cause_is_the_one_recorded() -> None:
    session = Session(ROUTE, None)
    session.move(State.OPEN)
    session.end(EndCause.REPLACED)
    session.end(EndCause.DRAINING)
    assert (session.cause, session.stopped.result(), session.state) == (
        EndCause.REPLACED,
        EndCause.REPLACED,
        State.CLOSING,
    )


async def test_caps_and_exactly_one_release_whatever_the_exit() -> None:
    registry = Registry()
    capped = replace(ROUTE, max_sessions=2)
    first, second, third = (Session(capped, None) for _ in range(3))
    async with admit(registry, first):
        async with admit(registry, second):
            assert len(registry) == 2
            with pytest.raises(Refused) as refused:
                async with admit(registry, third):
                    pass
            assert (refused.value.rejection.reason, refused.value.rejection.retry_after) == (Reason.OVER_CAPACITY, 5)
            assert third.state is State.CLOSED
        with pytest.raises(ValueError, match="boom"):
            async with admit(registry, Session(capped, None)):
                raise ValueError("boom")
        assert len(registry) == 1
    assert len(registry) == 0
    assert first.state is second.state is State.CLOSED
    assert first.done.is_set()
    with pytest.raises(Refused):  # the global cap as well
        async with admit(registry, Session(ROUTE, None), max_sessions=0):
            pass


async def test_reject_refuses_a_second_session_for_the_agent() -> None:
    registry = Registry()
    route = replace(ROUTE, duplicate_agent="reject")
    async with admit(registry, Session(route, "a1")):
        with pytest.raises(Refused) as refused:
            async with admit(registry, Session(route, "a1")):
                pass
        assert refused.value.rejection.reason is Reason.DUPLICATE_AGENT
        async with admit(registry, Session(route, "a2")):
            assert len(registry.agents) == 2
    assert len(registry.agents) == 0


async def test_allow_lets_both_in() -> None:
    registry = Registry()
    route = replace(ROUTE, duplicate_agent="allow")
    async with admit(registry, Session(route, "a1")), admit(registry, Session(route, "a1")):
        assert len(registry) == 2
        assert len(registry.agents) == 0


async def test_replace_ends_the_old_session_and_waits_for_it() -> None:
    registry = Registry()
    old = Session(ROUTE, "a1")
    order: list[str] = []

    async def old_session() -> None:
        async with admit(registry, old):
            registry.opened(old)
            await old.stopped
            order.append("old closed")

    running = asyncio.ensure_future(old_session())
    await asyncio.sleep(0)
    new = Session(ROUTE, "a1")
    async with admit(registry, new):
        order.append("new admitted")
        assert old.cause is EndCause.REPLACED
        assert old.state is State.CLOSED
        assert len(registry.agents) == 1
    await asyncio.wait_for(running, 10)
    assert order == ["old closed", "new admitted"]


async def test_a_session_cancelled_while_admitted_gives_its_place_and_agent_id_back() -> None:
    """Cancelled inside admission (waiting for the older session of its agent to end):
    the place and the agent id are freed there and then, and the session is CLOSED."""
    registry = Registry()
    old = Session(ROUTE, "a1")
    async with admit(registry, old):
        registry.opened(old)  # never ends by itself: the newer session waits for it
        new = Session(ROUTE, "a1")

        async def newer() -> None:
            async with admit(registry, new):
                raise AssertionError("admitted while the older session holds on")

        waiting = asyncio.ensure_future(newer())
        assert await asyncio.wait_for(old.stopped, 10) is EndCause.REPLACED  # the newer one waits in admission
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiting, 10)
        assert new.state is State.CLOSED
        assert len(registry) == 1 and new not in registry.sessions()
        assert len(registry.agents) == 0  # its claim released; the old one's had been replaced
    assert len(registry) == 0


async def test_drain_refuses_the_connecting_and_ends_the_open() -> None:
    registry = Registry()
    connecting, open_ = Session(ROUTE, None), Session(ROUTE, None)
    ended: list[EndCause] = []
    refusals: list[Reason] = []

    async def run(session: Session, opens: bool) -> None:
        try:
            async with admit(registry, session):
                if opens:
                    registry.opened(session)
                ended.append(await session.stopped)
                if not opens:
                    session.refuse_if_ended()
        except Refused as refused:
            refusals.append(refused.rejection.reason)

    tasks = [asyncio.ensure_future(run(connecting, False)), asyncio.ensure_future(run(open_, True))]
    await asyncio.sleep(0)
    assert [s.state for s in registry.sessions()] == [State.CONNECTING, State.OPEN]
    await registry.drain(0, asyncio.Event(), close_timeout=0.1)
    await asyncio.gather(*tasks)
    assert ended == [EndCause.DRAINING, EndCause.DRAINING]
    assert refusals == [Reason.DRAINING]  # the one still connecting: 503 draining
    assert len(registry) == 0
    late = Session(ROUTE, None)  # a session opening after the drain began is ended at once
    async with admit(registry, late):
        registry.opened(late)
        assert late.cause is EndCause.DRAINING


async def test_an_open_session_is_ended_at_its_tokens_expiry_and_counted() -> None:
    registry = Registry()
    expired: list[Session] = []
    registry.expired = expired.append
    session = Session(ROUTE, "a1", expires_at=time.time())  # due now
    async with admit(registry, session):
        registry.opened(session)
        assert await asyncio.wait_for(session.stopped, 10) is EndCause.EXPIRED
        assert (session.state, EndCause.EXPIRED.code, EndCause.EXPIRED.reason) == (
            State.CLOSING,
            4401,
            "token expired",
        )
    assert expired == [session]


async def test_a_session_whose_token_expires_before_it_opens_is_refused_401() -> None:
    registry = Registry()
    expired: list[Session] = []
    registry.expired = expired.append
    session = Session(ROUTE, "a1", expires_at=time.time())
    with pytest.raises(Refused) as refused:
        async with admit(registry, session):
            await asyncio.wait_for(session.stopped, 10)  # as the upstream handshake does
            session.refuse_if_ended()
    rejection = refused.value.rejection
    assert (rejection.reason, rejection.agent_id) == (Reason.TOKEN_EXPIRED, "a1")
    assert ("WWW-Authenticate", 'Bearer realm="sidecar", error="invalid_token", error_description="token expired"') in (
        rejection.headers()
    )
    assert expired == []  # a refusal, counted as one; not an expiry of an open session


async def test_a_released_session_leaves_no_expiry_timer_holding_it() -> None:
    """The timer is cancelled with the release: a closed session is not kept in memory
    until its token would have expired (a day, for a minted token)."""
    registry = Registry()
    session = Session(ROUTE, "a1", expires_at=time.time() + 3600)
    async with admit(registry, session):
        registry.opened(session)
    gone = weakref.ref(session)
    del session
    gc.collect()
    assert gone() is None


def test_closing_bound() -> None:
    assert closing_bound(5.0) == 11.0


async def test_an_operator_ends_a_session_with_4403() -> None:
    session = Session(ROUTE, "a1")
    session.move(State.OPEN)
    session.end(EndCause.OPERATOR)
    cause = await asyncio.wait_for(session.stopped, 10)
    assert (cause.code, cause.reason, session.state) == (4403, "closed by operator", State.CLOSING)


class RecordingAgents(LocalAgents):
    """This process's table, noting what each session's cause was when its agent id was
    let go: the drain must let go before it sends 1012."""

    def __init__(self) -> None:
        super().__init__()
        self.let_go: list[tuple[str | None, EndCause | None]] = []

    async def release_all(self, sessions: list[Session]) -> None:
        self.let_go += [(s.agent_id, s.cause) for s in sessions]
        await super().release_all(sessions)


@pytest.mark.parametrize("window", [0.0, 0.2])
async def test_the_drain_lets_go_of_agent_ids_before_ending_sessions(window: float) -> None:
    agents = RecordingAgents()
    registry = Registry(agents)
    sessions = [Session(ROUTE, f"a{n}") for n in range(3)]
    unleased = Session(replace(ROUTE, duplicate_agent="allow"), "b")
    ended: list[EndCause] = []

    async def run(session: Session) -> None:
        async with admit(registry, session):
            registry.opened(session)
            ended.append(await session.stopped)

    tasks = [asyncio.ensure_future(run(s)) for s in [*sessions, unleased]]
    await asyncio.sleep(0)
    assert len(agents) == 3
    await registry.drain(window, asyncio.Event(), close_timeout=0.1)
    await asyncio.gather(*tasks)
    assert agents.let_go == [("a0", None), ("a1", None), ("a2", None), ("b", None)]
    assert ended == [EndCause.DRAINING] * 4
    assert len(agents) == 0
