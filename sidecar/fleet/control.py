"""Messages between replicas over Redis pub/sub, and questions put to the whole fleet.

Each replica listens on two channels (:mod:`.layout`): its own (``replace``: end the
session holding this lease) and the fleet's (``block``: a client key is over the
failed-auth budget; ``list`` and ``end``: the operator's questions). A question names a
reply list; each replica that hears it pushes its answer there; the asker knows how
many heard it (PUBLISH's count) and collects that many answers, within :data:`ASK_WAIT`.
Pub/sub delivers at most once: what must not be lost has a second path (the renewal's
lease check, a budget block seen again on the next failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from ..logs import event
from .layout import REPLY_TTL_MS, Names, decode, encode
from .link import FAILURES, MAX_BACKOFF, Link, Unavailable

ASK_WAIT = 2.0  # seconds to collect the fleet's answers: a replica slower than this is left out
PING_WORD = "sidecar:subscription"  # the subscription's PING carries it, so its answer is known
PING_EVERY = 2.0  # seconds between two PINGs on the subscription: a silent one is found within this + state.timeout

Message = dict[str, Any]


@dataclass(frozen=True)
class Answers:
    answers: list[Any]
    heard: int  # how many replicas heard the question (some may not have answered in time)

    @property
    def missing(self) -> int:
        """Replicas that heard the question and did not answer in time: what they did is unknown."""
        return max(0, self.heard - len(self.answers))


class Control:
    def __init__(self, link: Link, names: Names, replica: str, process: str) -> None:
        self._link = link
        self._names = names
        self._channels = (names.fleet, names.replica(replica, process))
        self._handlers: dict[str, Callable[[Message], None]] = {}
        self._answerers: dict[str, Callable[[Message], object]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.listening = asyncio.Event()

    def on(self, op: str, handler: Callable[[Message], None]) -> None:
        """``op`` messages go to ``handler``."""
        self._handlers[op] = handler

    def answer(self, op: str, answer: Callable[[Message], object]) -> None:
        """``op`` questions are answered with ``answer(message)`` (JSON-able)."""
        self._answerers[op] = answer

    def start(self) -> None:
        self._listener = asyncio.ensure_future(self._listen())

    async def close(self) -> None:
        for task in [*self._tasks, *([self._listener] if self._listener else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def ask(self, op: str, **fields: Any) -> Answers:
        """Put ``op`` to every replica (this one included): the answers collected within
        :data:`ASK_WAIT`. :exc:`Unavailable` if Redis does not take the question."""
        reply = self._names.reply(secrets.token_hex(8))
        message = encode(op, reply=reply, **fields)
        heard = int(await self._link.call("admin", lambda redis: redis.publish(self._names.fleet, message)))
        answers: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ASK_WAIT
        wait = max(0.01, min(0.1, self._link.timeout / 2))  # a blocking pop, well within state.timeout
        # Once asked, the question is out: a failure while collecting leaves the answers
        # short (the replicas that heard it act on it all the same), never unasked.
        with contextlib.suppress(Unavailable):
            while len(answers) < heard and loop.time() < deadline:
                popped = await self._link.call("admin", lambda redis: redis.blpop([reply], timeout=wait))
                if popped:
                    answers.append(json.loads(popped[1]))
        with contextlib.suppress(Unavailable):
            await self._link.call("admin", lambda redis: redis.delete(reply))
        return Answers(answers, heard)

    async def _listen(self) -> None:
        pause = 0.0  # after a subscription that broke at once: Redis answers PING but not this
        while True:
            await self._link.wait_up()
            await asyncio.sleep(pause)
            pubsub = self._link.redis.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self._link.timeout):
                    await pubsub.subscribe(*self._channels)
                self.listening.set()
                pause = 0.0
                await self._read(pubsub)
                lost = f"no answer to a ping within {self._link.timeout * 1000:g} ms"
            except FAILURES as exc:
                # The subscription broke: so did Redis, perhaps. The probe finds out.
                self._link.fail("control", exc)
                lost = self._link.describe(exc)
            finally:
                self.listening.clear()
                close: Callable[[], Awaitable[None]] = pubsub.aclose  # redis-py leaves it unannotated
                with contextlib.suppress(*FAILURES):
                    async with asyncio.timeout(self._link.timeout):
                        await close()
            # Messages sent meanwhile are lost: their senders tell again (replace), or a
            # second path catches them (the renewal's lease check, the next budget failure).
            pause = min(max(pause * 2, 0.05), MAX_BACKOFF)
            self._link.count("control")
            event(logging.WARNING, "state.subscription_lost", error=lost, resubscribe_in_s=round(pause, 3))

    async def _read(self, pubsub: PubSub) -> None:
        """Dispatch what arrives; return when the subscription stops answering: a PING on
        it every :data:`PING_EVERY` seconds must be answered within ``state.timeout``, so
        a connection that died silently (no FIN, no RST) is found within seconds."""
        loop = asyncio.get_running_loop()
        next_ping, pinged = loop.time() + PING_EVERY, None  # pinged: when the unanswered PING left
        while True:
            now = loop.time()
            if pinged is None and now >= next_ping:
                async with asyncio.timeout(self._link.timeout):
                    await pubsub.ping(PING_WORD)
                pinged = now
            if pinged is not None and now - pinged >= self._link.timeout:
                return
            until = pinged + self._link.timeout if pinged is not None else next_ping
            # Read raw: the PONG's shape depends on the protocol (RESP2: ['pong', word];
            # RESP3: the word), and redis-py's message parsing drops the RESP3 one.
            response = await pubsub.parse_response(block=False, timeout=max(0.001, until - now))
            if response is None:
                continue
            if _is_pong(response):
                pinged, next_ping = None, loop.time() + PING_EVERY
                continue
            handle: Callable[..., Awaitable[Message | None]] = pubsub.handle_message  # unannotated in redis-py
            message = await handle(response, ignore_subscribe_messages=True)
            if message is not None and message.get("type") == "message":
                self._dispatch(message["data"])

    def _dispatch(self, data: str | bytes) -> None:
        message = decode(data)
        if message is None:
            return
        op = message["op"]
        try:
            if op in self._handlers:
                self._handlers[op](message)
            elif op in self._answerers and isinstance(message.get("reply"), str):
                answer = self._answerers[op](message)
                self._spawn(self._reply(message["reply"], json.dumps(answer, separators=(",", ":"))))
        except (KeyError, TypeError, ValueError):
            event(logging.WARNING, "state.bad_message", op=op[:32])

    async def _reply(self, reply: str, data: str) -> None:
        if not reply.startswith(self._names.reply("")):
            return  # not a reply list of this fleet's
        with contextlib.suppress(Unavailable):
            await self._link.call("admin", lambda redis: _push(redis, reply, data))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _is_pong(response: object) -> bool:
    """The answer to the subscription's PING, in either protocol's shape."""
    if isinstance(response, list) and len(response) == 2 and str(response[0]).lower() == "pong":
        return bool(response[1] == PING_WORD)
    return response == PING_WORD


async def _push(redis: Redis, key: str, data: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.rpush(key, data)
        pipe.pexpire(key, REPLY_TTL_MS)
        await pipe.execute()
