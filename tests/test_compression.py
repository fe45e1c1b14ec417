"""permessage-deflate (RFC 7692): off on both legs unless a route enables it; then the size limit
applies to the decompressed message. Real backend, real sidecar; python `websockets` and raw sockets."""

from __future__ import annotations

import asyncio
import tracemalloc
import zlib

from .conftest import GOOD, Sidecar, StartSidecar, config_for, edge_yaml
from .framing import raw
from .relaying import _accept_for, close_of, read_masked_frame
from .upstream import Backend
from .wire import (
    closed_by_peer,
    handshake,
    masked_frame,
    open_raw_websocket,
    raw_upstream,
    read_frame,
    until,
    ws_connect,
)

LIMIT = 64 * 1024


async def start(start_sidecar: StartSidecar, backend: Backend, route: str = "") -> Sidecar:
    """The edge route, its agents identified by the default agent id rule, and ``route`` added."""
    return await start_sidecar(config_for(backend.url, edge_yaml(auth=", agent_id: {}", route=route)))


async def test_deflate_offered_by_the_client_is_not_accepted_and_not_offered_upstream(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start(start_sidecar, backend)
    # python websockets offers permessage-deflate by default; the backend would accept it if offered.
    async with ws_connect(sidecar, compression="deflate") as ws:
        assert ws.request is not None and "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        assert ws.response is not None and "Sec-WebSocket-Extensions" not in ws.response.headers
        assert ws.protocol.extensions == []
        await ws.send("x" * 1000)
        assert await ws.recv() == "x" * 1000
    assert "sec-websocket-extensions" not in backend.seen[0].headers


async def test_a_route_with_compression_negotiates_it_on_both_legs(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start(start_sidecar, backend, ", compression: true")
    async with ws_connect(sidecar, compression="deflate") as ws:
        assert ws.response is not None and ws.response.headers["Sec-WebSocket-Extensions"].startswith(
            "permessage-deflate"
        )
        assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
        await ws.send("y" * 10_000)
        assert await ws.recv() == "y" * 10_000
    assert backend.seen[0].headers["sec-websocket-extensions"][0].startswith("permessage-deflate")


def _deflated(data: bytes) -> bytes:
    squeeze = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, -15)
    out = squeeze.compress(data) + squeeze.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]  # RFC 7692 section 7.2.1


async def test_a_compression_bomb_is_refused_with_1009_and_never_inflated_whole(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    sidecar = await start(start_sidecar, backend, f", compression: true, max_message_size: {LIMIT}")
    bomb = _deflated(bytes(32 * 1024 * 1024))  # 32 MiB of zeros in about 32 KiB
    assert len(bomb) < LIMIT  # small on the wire: only the decompressed size is over
    frame = masked_frame(0x2, bomb, rsv1=True)  # RSV1: compressed, RFC 7692 section 6
    offer = handshake("/edge/ws", GOOD | {"Sec-WebSocket-Extensions": "permessage-deflate"})
    reader, writer, head = await open_raw_websocket(sidecar.port, offer)
    assert b"permessage-deflate" in head.lower()
    tracemalloc.start()
    try:
        writer.write(frame)
        close = await asyncio.wait_for(read_frame(reader), 10)
        assert close.first == 0x88  # a close frame (FIN, no RSV bits), unmasked from the server
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        writer.close()
    assert int.from_bytes(close.payload[:2], "big") == 1009
    assert peak < 8 * 1024 * 1024  # bounded by the limit, far below the 32 MiB it would inflate to
    await until(lambda: sidecar.sample("sidecar_ws_closes_total", route="edge", initiator="sidecar", code="1009") == 1)
    assert sidecar.sample("sidecar_ws_messages_total", route="edge", direction="upstream") == 0


async def test_a_compressed_message_under_the_limit_passes(backend: Backend, start_sidecar: StartSidecar) -> None:
    sidecar = await start(start_sidecar, backend, f", compression: true, max_message_size: {LIMIT}")
    async with ws_connect(sidecar, compression="deflate") as ws:
        await ws.send(bytes(LIMIT))
        assert await ws.recv() == bytes(LIMIT)
        await ws.send(bytes(LIMIT + 100))
        code, _ = await closed_by_peer(ws, skip_messages=False)
        assert code == 1009


async def test_a_bomb_after_a_message_ending_in_a_final_block_is_still_refused_with_1009(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    """RFC 7692 section 7.2.3.3: a sender may end a message with a block that has BFINAL set.
    The deflate stream ends there; the next message, a bomb, is measured afresh and refused."""
    sidecar = await start(start_sidecar, backend, f", compression: true, max_message_size: {LIMIT}")
    squeeze = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, -15)
    final = squeeze.compress(b"hello") + squeeze.flush(zlib.Z_FINISH)
    offer = handshake("/edge/ws", GOOD | {"Sec-WebSocket-Extensions": "permessage-deflate"})
    reader, writer, _ = await open_raw_websocket(sidecar.port, offer)
    try:
        writer.write(masked_frame(0x1, final, rsv1=True) + masked_frame(0x2, _deflated(bytes(32 << 20)), rsv1=True))
        frames = []
        while not frames or frames[-1].opcode != 0x8:
            frames.append(await asyncio.wait_for(read_frame(reader), 10))
    finally:
        writer.close()
    assert int.from_bytes(frames[-1].payload[:2], "big") == 1009
    assert len(frames) <= 2  # the echo of "hello" at most: the bomb was never relayed
    await until(lambda: backend.closes)
    assert backend.closes == [(1009, f"client: message larger than {LIMIT} bytes")]


async def test_a_peer_that_agreed_to_reset_per_message_is_measured_with_a_fresh_inflater(
    start_sidecar: StartSidecar,
) -> None:
    """With server_no_context_takeover agreed, each of the backend's messages is inflated on
    its own, as the client inflates it: one that refers back into the previous message
    breaks that promise and is refused (1002) before it reaches the client, a strict one
    (python `websockets`)."""
    text = b"the same sentence, again and again. " * 20
    closes: list[tuple[int, str]] = []

    async def speak(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + _accept_for(head) + b"\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"
        )
        squeeze = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, -15)  # never reset: the broken promise
        for _ in range(2):  # the second mostly a reference to the first
            writer.write(raw(0xC1, (squeeze.compress(text) + squeeze.flush(zlib.Z_SYNC_FLUSH))[:-4], key=None))
        first, payload = await read_masked_frame(reader)
        closes.append(close_of(payload) if first == 0x88 else (first, ""))
        writer.close()

    async with raw_upstream(speak) as url:
        sidecar = await start_sidecar(
            config_for(url, edge_yaml(auth=", agent_id: {}", route=f", compression: true, max_message_size: {LIMIT}"))
        )
        async with ws_connect(sidecar, compression="deflate") as ws:
            assert await ws.recv() == text.decode()
            assert await closed_by_peer(ws, skip_messages=False) == (
                1002,
                "upstream: compressed message is not valid deflate data",
            )
    assert closes == [(1002, "compressed message is not valid deflate data")]


async def test_a_bomb_spread_over_many_small_frames_is_refused_with_1009(
    backend: Backend, start_sidecar: StartSidecar
) -> None:
    """The inflated size is counted over the whole message, not frame by frame: each of
    these frames inflates to less than the limit, the message to 32 MiB."""
    sidecar = await start(start_sidecar, backend, f", compression: true, max_message_size: {LIMIT}")
    bomb = _deflated(bytes(32 * 1024 * 1024))
    pieces = [bomb[i : i + 16] for i in range(0, len(bomb), 16)]  # 16 bytes inflate to 17 KiB at most
    frames = masked_frame(0x2, pieces[0], fin=False, rsv1=True) + b"".join(
        masked_frame(0x0, piece, fin=i == len(pieces) - 1) for i, piece in enumerate(pieces[1:], 1)
    )
    offer = handshake("/edge/ws", GOOD | {"Sec-WebSocket-Extensions": "permessage-deflate"})
    reader, writer, _ = await open_raw_websocket(sidecar.port, offer)
    try:
        writer.write(frames)
        close = await asyncio.wait_for(read_frame(reader), 10)
    finally:
        writer.close()
    assert (close.opcode, int.from_bytes(close.payload[:2], "big")) == (0x8, 1009)
    await until(lambda: backend.closes)
    assert backend.closes == [(1009, f"client: message larger than {LIMIT} bytes")]
