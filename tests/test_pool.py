"""sidecar.pool: keep-alive connections to an upstream, on real sockets (port 0)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sidecar.config import Upstream
from sidecar.pool import Pool, Target, keep_alive_hint

from .wire import until


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[asyncio.StreamWriter]]]:
    """A server that accepts and holds connections; its URL and the connections it holds."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    listening = await asyncio.start_server(accept, "127.0.0.1", 0)
    async with listening:
        yield f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}", held
        for writer in held:
            writer.transport.abort()


def test_target_of_an_upstream_url() -> None:
    plain = Target.of(Upstream("b", "http://backend:8080/base"))
    assert (plain.host, plain.port, plain.tls, plain.host_field, plain.base) == (
        "backend",
        8080,
        False,
        b"backend:8080",
        "/base",
    )
    tls = Target.of(Upstream("b", "https://[::1]"))
    assert (tls.host, tls.port, tls.tls, tls.host_field, tls.base) == ("::1", 443, True, b"[::1]", "")


async def test_a_connection_given_back_is_taken_again_until_it_expires(
    server: tuple[str, list[asyncio.StreamWriter]],
) -> None:
    url, _ = server
    pool = Pool(idle_timeout=0.3)
    target = pool.target(Upstream("b", url))
    assert pool.take(target) is None
    connection = await pool.open(target)
    pool.give(connection)
    assert pool.take(target) is connection and connection.reused
    pool.give(connection)
    await until(lambda: pool.idle() == 0)  # expired: closed by the pool
    await until(lambda: connection.transport is None)
    assert pool.take(target) is None
    pool.close()


async def test_an_idle_connection_the_upstream_closes_or_writes_to_leaves_the_pool(
    server: tuple[str, list[asyncio.StreamWriter]],
) -> None:
    url, held = server
    pool = Pool()
    target = pool.target(Upstream("b", url))
    first, second = await pool.open(target), await pool.open(target)
    pool.give(first)
    pool.give(second)
    await until(lambda: len(held) == 2)
    held[0].transport.abort()  # closed by the upstream
    held[1].write(b"HTTP/1.1 200 OK\r\n\r\n")  # bytes nobody asked for: out of step
    await until(lambda: pool.idle() == 0)
    assert pool.take(target) is None
    pool.close()


async def test_a_connection_given_back_paused_still_sees_the_upstream_close_it(
    server: tuple[str, list[asyncio.StreamWriter]],
) -> None:
    """Reading from an upstream is paused while its client's write buffer is full; a response
    that ends then goes back to the pool paused. Idle, it must read again: else the upstream's
    FIN is never seen, and the dead connection is lent to the next request."""
    url, held = server
    pool = Pool(idle_timeout=60)
    target = pool.target(Upstream("b", url))
    connection = await pool.open(target)
    assert connection.transport is not None
    connection.transport.pause_reading()
    pool.give(connection)
    await until(lambda: len(held) == 1)
    held[0].close()  # the upstream's FIN, as a server closing an idle keep-alive connection sends it
    await until(lambda: pool.idle() == 0)
    assert pool.take(target) is None
    pool.close()


async def test_the_pool_is_bounded_and_closing_it_closes_the_idle(
    server: tuple[str, list[asyncio.StreamWriter]],
) -> None:
    url, _ = server
    pool = Pool(max_idle=2)
    target = pool.target(Upstream("b", url))
    connections = [await pool.open(target) for _ in range(3)]
    for connection in connections:
        pool.give(connection)
    assert pool.idle() == 2
    await until(lambda: connections[2].transport is None)  # the third was closed, not kept
    pool.close()
    await until(lambda: all(c.transport is None for c in connections))


@pytest.mark.parametrize(
    ("value", "seconds"), [(b"timeout=5", 4.0), (b"timeout=5, max=100", 4.0), (b"max=3", None), (b"timeout=x", None)]
)
def test_keep_alive_hint(value: bytes, seconds: float | None) -> None:
    assert keep_alive_hint(value) == seconds
