"""sidecar.inflate: the inflated size of permessage-deflate messages, as tables and a
property. Messages are compressed as RFC 7692 section 7.2.1 says (a sync flush, its
0x00 0x00 0xff 0xff removed) by zlib, the same as every client's compressor."""

from __future__ import annotations

import tracemalloc
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.inflate import Meter, resets

from .framing import split

LIMIT = 64 * 1024


def compressor() -> zlib._Compress:
    return zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)


def deflated(message: bytes, squeeze: zlib._Compress | None = None) -> bytes:
    squeeze = squeeze or compressor()
    out = squeeze.compress(message) + squeeze.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def feed_all(meter: Meter, payload: bytes, cuts: list[int] | None = None) -> str | None:
    pieces = split(payload, cuts or []) or [b""]
    for i, piece in enumerate(pieces):
        why = meter.feed(piece, i == len(pieces) - 1)
        if why is not None:
            return why
    return None


def test_messages_are_counted_at_their_inflated_size() -> None:
    meter = Meter(LIMIT)
    messages = [b"hello " * 1000, bytes(5000), b"", b"x"]
    wire = [deflated(m) for m in messages]
    for payload in wire:
        assert feed_all(meter, payload, [3, 10]) is None
    assert meter.inflated == sum(map(len, messages))
    assert meter.wire == sum(map(len, wire))
    assert meter.size == 0  # no message in progress


def test_the_limit_is_on_the_inflated_size_exactly() -> None:
    assert feed_all(Meter(LIMIT), deflated(bytes(LIMIT))) is None
    meter = Meter(LIMIT)
    assert feed_all(meter, deflated(bytes(LIMIT + 1))) == f"message larger than {LIMIT} bytes" == meter.too_big


def test_a_bomb_is_refused_without_inflating_it() -> None:
    bomb = deflated(bytes(32 * 1024 * 1024))  # 32 MiB of zeros in about 32 KiB
    assert len(bomb) < LIMIT
    tracemalloc.start()
    try:
        why = Meter(LIMIT).feed(bomb, True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert why == f"message larger than {LIMIT} bytes"
    assert peak < 1024 * 1024  # one step's output at a time, far below the 32 MiB


def test_a_bomb_in_small_pieces_is_refused_at_the_piece_that_passes_the_limit() -> None:
    bomb = deflated(bytes(32 * 1024 * 1024))
    meter = Meter(LIMIT)
    pieces = split(bomb, range(0, len(bomb), 16))
    refused_at = next(i for i, piece in enumerate(pieces) if meter.feed(piece, False) is not None)
    assert refused_at < len(pieces) // 8  # 64 KiB inflates from the first few hundred bytes


def test_with_context_takeover_a_message_may_refer_back_into_the_previous_one() -> None:
    """RFC 7692 section 7.1.2: without *_no_context_takeover the sender keeps its window, so the
    meter must keep its own; one that resets only where the sender does, and still counts."""
    squeeze = compressor()
    text = b"the same sentence, again and again. " * 20
    first, second = deflated(text, squeeze), deflated(text, squeeze)
    assert len(second) < len(first) // 4  # the second message is mostly a reference to the first
    kept = Meter(LIMIT)
    assert feed_all(kept, first) is None and feed_all(kept, second) is None
    assert kept.inflated == 2 * len(text)
    reset = Meter(LIMIT, reset=True)  # as if the sender had agreed to no_context_takeover: it did not
    assert feed_all(reset, first) is None
    assert feed_all(reset, second) == "compressed message is not valid deflate data"


def test_a_sender_that_resets_per_message_is_measured_with_a_fresh_inflater_each_time() -> None:
    meter = Meter(LIMIT, reset=True)
    for text in (b"one " * 500, b"two " * 500):
        assert feed_all(meter, deflated(text)) is None  # a fresh compressor each: no_context_takeover
    assert meter.inflated == 4000


def finished(message: bytes) -> bytes:
    """A message compressed as one deflate stream ending in a block with BFINAL set (RFC 7692
    section 7.2.3.3): nothing to remove at its end."""
    squeeze = compressor()
    return squeeze.compress(message) + squeeze.flush(zlib.Z_FINISH)


@pytest.mark.parametrize("reset", [False, True])
def test_after_a_final_block_the_next_message_is_measured_by_a_fresh_inflater(reset: bool) -> None:
    """An inflater past BFINAL reads nothing more: the next message, a bomb, must still be
    measured (and refused), and an ordinary one counted."""
    meter = Meter(LIMIT, reset=reset)
    assert feed_all(meter, finished(b"hello " * 100)) is None
    assert feed_all(meter, deflated(b"after the end")) is None
    assert feed_all(meter, finished(b"and again")) is None
    assert meter.inflated == 600 + len(b"after the end") + len(b"and again")
    assert feed_all(meter, deflated(bytes(32 * 1024 * 1024)), [5, 100]) == meter.too_big


def test_a_bomb_behind_a_final_block_in_the_same_message_is_still_measured() -> None:
    message = finished(b"short") + deflated(bytes(32 * 1024 * 1024))
    assert feed_all(Meter(LIMIT), message, [3, 40]) == f"message larger than {LIMIT} bytes"


def test_the_size_of_a_message_is_counted_over_all_its_frames() -> None:
    meter = Meter(LIMIT)
    pieces = split(deflated(bytes(LIMIT + 1)), [8, 16, 24])
    assert [meter.feed(piece, i == len(pieces) - 1) for i, piece in enumerate(pieces)][-1] == meter.too_big


@pytest.mark.parametrize(
    ("agreed", "expected"),
    [
        ("permessage-deflate", (False, False)),
        ("permessage-deflate; client_no_context_takeover", (True, False)),
        ("Permessage-Deflate; Server_No_Context_Takeover; client_max_window_bits=10", (False, True)),
        ("permessage-deflate;server_no_context_takeover;client_no_context_takeover", (True, True)),
        ("x-other; client_no_context_takeover, permessage-deflate", (False, False)),
    ],
)
def test_which_senders_reset_per_message_is_read_from_the_agreed_extension(
    agreed: str, expected: tuple[bool, bool]
) -> None:
    assert resets(agreed) == expected


@pytest.mark.parametrize("junk", [b"\xff\xff\xff\xff", b"\x07" * 40])
def test_data_that_is_not_deflate_is_refused(junk: bytes) -> None:
    assert Meter(LIMIT).feed(junk, True) == "compressed message is not valid deflate data"


@given(
    messages=st.lists(st.binary(max_size=3000) | st.builds(bytes, st.integers(0, 200_000)), max_size=6),
    cuts=st.lists(st.integers(0, 5000), max_size=5),
    takeover=st.booleans(),
)
def test_every_message_is_counted_at_its_size_however_it_is_cut(
    messages: list[bytes], cuts: list[int], takeover: bool
) -> None:
    squeeze = compressor()
    meter = Meter(1 << 20, reset=not takeover)
    for message in messages:
        payload = deflated(message, squeeze if takeover else None)
        assert feed_all(meter, payload, cuts) is None
    assert meter.inflated == sum(map(len, messages))


@given(
    messages=st.lists(st.tuples(st.binary(max_size=3000), st.booleans()), max_size=6),
    cuts=st.lists(st.integers(0, 5000), max_size=5),
)
def test_messages_ending_in_a_final_block_or_a_flush_are_all_counted(
    messages: list[tuple[bytes, bool]], cuts: list[int]
) -> None:
    """A sender may end any message with a final block (its compressor then starts afresh)
    or a sync flush (its window kept): every message is counted whole, whatever the mix."""
    squeeze, meter = compressor(), Meter(1 << 20)
    for message, final in messages:
        if final:
            payload, squeeze = squeeze.compress(message) + squeeze.flush(zlib.Z_FINISH), compressor()
        else:
            payload = deflated(message, squeeze)
        assert feed_all(meter, payload, cuts) is None
    assert meter.inflated == sum(len(message) for message, _ in messages)
