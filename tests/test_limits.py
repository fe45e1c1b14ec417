"""sidecar.limits and sidecar.origins: the admission decisions, as plain tables. No sockets."""

from __future__ import annotations

import pytest

from sidecar.limits import FailureTable, SessionCounts, client_key, probably_a_proxy
from sidecar.origins import origin_allowed, serialize_origin

# --- origins (RFC 6454 section 6.2) ---------------------------------------------------

SERIALISED = [
    ("https://app.example.com", "https://app.example.com"),
    ("HTTPS://App.Example.COM", "https://app.example.com"),
    ("https://app.example.com:443", "https://app.example.com"),  # the default port is left out
    ("http://app.example.com:80", "http://app.example.com"),
    ("https://app.example.com:8443", "https://app.example.com:8443"),
    ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
    ("http://[::1]:3000", "http://[::1]:3000"),
    ("null", None),
    ("", None),
    ("*", None),
    ("https://app.example.com/", None),
    ("https://app.example.com/path", None),
    ("https://user@app.example.com", None),
    ("https://app.example.com?x", None),
    ("https://app.example.com:0", None),
    ("https://app.example.com:99999", None),
    ("https://app.example.com:", None),
    ("app.example.com", None),
    ("https://", None),
    ("https://..", None),
    ("https://app..example.com", None),
    ("https://bücher.example", None),  # browsers send the punycode (xn--...) form
    ("https://app.example.com\r\n", None),
]


@pytest.mark.parametrize(("text", "expected"), SERIALISED)
def test_serialize_origin(text: str, expected: str | None) -> None:
    assert serialize_origin(text) == expected


ALLOWED = frozenset({"https://app.example.com", "http://localhost:3000"})
ORIGIN_DECISIONS = [
    ([], None, True),
    (["https://evil.example"], None, True),  # no list: anything goes
    ([], ALLOWED, True),  # no Origin: not a browser (node ws, python websockets)
    (["https://app.example.com"], ALLOWED, True),
    (["HTTPS://APP.EXAMPLE.COM:443"], ALLOWED, True),
    (["http://localhost:3000"], ALLOWED, True),
    (["http://localhost:3001"], ALLOWED, False),
    (["http://app.example.com"], ALLOWED, False),  # another scheme is another origin
    (["https://app.example.com.evil.example"], ALLOWED, False),  # no suffix or prefix matching
    (["https://evil.example"], ALLOWED, False),
    (["null"], ALLOWED, False),  # sandboxed iframes, file:// pages
    (["https://app.example.com", "https://app.example.com"], ALLOWED, False),  # one header only
    (["https://app.example.com/"], ALLOWED, False),
]


@pytest.mark.parametrize(("header", "allowed", "expected"), ORIGIN_DECISIONS)
def test_origin_allowed(header: list[str], allowed: frozenset[str] | None, expected: bool) -> None:
    assert origin_allowed(header, allowed) is expected


# --- client keys -------------------------------------------------------------------------

KEYS = [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # the same /64, the same key
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),  # an IPv4 client on a dual-stack socket
    (None, "-"),
    ("", "-"),
    ("not-an-ip" * 20, ("not-an-ip" * 20)[:64]),
]


@pytest.mark.parametrize(("address", "key"), KEYS)
def test_client_key(address: str | None, key: str) -> None:
    assert client_key(address) == key


@pytest.mark.parametrize(
    ("address", "proxy"),
    [
        ("100.64.0.3", True),  # Railway's edge, as users report it
        ("100.127.255.254", True),
        ("10.1.2.3", True),
        ("172.16.0.9", True),
        ("192.168.1.1", True),
        ("fd12:3456::1", True),  # Railway's private network
        ("1.1.1.1", False),
        ("8.8.8.8", False),
        ("2001:4860::1", False),
        ("127.0.0.1", False),  # a local client (tests, a sidecar beside its load balancer)
        ("::1", False),
        (None, False),
        ("not an address", False),
    ],
)
def test_probably_a_proxy(address: str | None, proxy: bool) -> None:
    assert probably_a_proxy(address) is proxy


# --- the failure table -------------------------------------------------------------------

LIMITS = {"limit": 3, "window": 60.0, "capacity": 1000}


def test_blocked_after_the_limit_within_the_window_until_it_passes() -> None:
    table = FailureTable()
    for t in (0.0, 1.0):
        table.record_failure("a", t, **LIMITS)
        assert table.retry_after("a", t) is None
    table.record_failure("a", 2.0, **LIMITS)  # the third
    assert table.retry_after("a", 2.0) == 60
    assert table.retry_after("a", 31.5) == 31  # rounded up: never "0"
    assert table.retry_after("a", 61.9) == 1
    assert table.retry_after("a", 62.0) is None
    assert table.retry_after("b", 2.0) is None  # others unaffected


def test_failures_spread_beyond_the_window_do_not_block() -> None:
    table = FailureTable()
    for t in (0.0, 30.0, 60.0, 90.0, 120.0):  # two per window at most
        table.record_failure("a", t, **LIMITS)
        assert table.retry_after("a", t) is None


def test_after_a_block_the_count_starts_afresh() -> None:
    table = FailureTable()
    for t in (0.0, 1.0, 2.0):
        table.record_failure("a", t, **LIMITS)
    table.record_failure("a", 62.0, **LIMITS)
    table.record_failure("a", 63.0, **LIMITS)
    assert table.retry_after("a", 63.0) is None
    table.record_failure("a", 64.0, **LIMITS)
    assert table.retry_after("a", 64.0) == 60


def test_the_table_never_holds_more_than_its_capacity_and_evicts_the_oldest() -> None:
    evicted: list[None] = []
    table = FailureTable(on_evict=lambda: evicted.append(None))
    for i in range(5000):
        table.record_failure(f"10.0.{i // 256}.{i % 256}", float(i), limit=2, window=1e9, capacity=100)
        assert len(table) <= 100
    assert len(table) == 100
    assert len(evicted) == 4900
    # A second failure blocks a key still held (its count was kept), not one evicted.
    table.record_failure("10.0.0.0", 5000.0, limit=2, window=1e9, capacity=100)  # the oldest: evicted
    assert table.retry_after("10.0.0.0", 5000.0) is None
    table.record_failure("10.0.19.135", 5001.0, limit=2, window=1e9, capacity=100)  # the newest (4999)
    assert table.retry_after("10.0.19.135", 5001.0) is not None


def test_a_blocked_key_is_never_evicted_by_failures_from_other_keys() -> None:
    # An attacker blocked on one address fails once from many others (cheap with IPv6
    # /64s) to push its block out of a full table: the unblocked keys go, the block stays.
    evicted: list[None] = []
    table = FailureTable(on_evict=lambda: evicted.append(None))
    for t in (0.0, 1.0, 2.0):
        table.record_failure("attacker", t, limit=3, window=60.0, capacity=10)
    assert table.retry_after("attacker", 2.0) == 60
    for i in range(1000):
        table.record_failure(f"2001:db8:{i:x}::/64", 3.0, limit=3, window=60.0, capacity=10)
        assert len(table) <= 10
    assert table.retry_after("attacker", 3.0) == 59
    assert len(evicted) == 1000 - 9  # the other keys, one after another
    # Its block over, it is an unblocked key like any other: dropped before a newer one.
    table.record_failure("2001:db8:ffff::/64", 62.0, limit=3, window=60.0, capacity=10)
    table.record_failure("2001:db8:fffe::/64", 62.0, limit=3, window=60.0, capacity=10)
    assert table.retry_after("attacker", 62.0) is None
    assert len(table) == 10


def test_when_every_key_held_is_blocked_new_keys_share_one_count() -> None:
    # No key held can go: the new ones are not held one by one, they share one count
    # with the same limit, so together they get no more tries than one key; once it is
    # spent, every key the table does not hold is refused until that block ends.
    table = FailureTable()
    for key in ("a", "b"):
        table.block(key, 0.0, 60.0, capacity=2)
    for n, key in enumerate(("c", "d"), 1):
        table.record_failure(key, float(n), limit=3, window=60.0, capacity=2)
        assert table.retry_after("new", float(n)) is None
    table.record_failure("e", 3.0, limit=3, window=60.0, capacity=2)  # the third among them
    assert len(table) == 2
    assert table.retry_after("a", 3.0) == 57  # the blocks held are kept
    assert table.retry_after("b", 3.0) == 57
    for key in ("c", "d", "e", "never-failed"):
        assert table.retry_after(key, 3.0) == 60
    assert table.retry_after("c", 63.0) is None  # for a window, as any block
    table.record_failure("f", 63.0, limit=3, window=60.0, capacity=2)  # a and b's blocks are over: f is held
    assert len(table) == 2
    table.record_failure("f", 64.0, limit=3, window=60.0, capacity=2)
    table.record_failure("f", 65.0, limit=3, window=60.0, capacity=2)
    assert table.retry_after("f", 65.0) == 60
    assert table.retry_after("g", 65.0) is None  # f's count was its own


def test_a_smaller_capacity_after_a_reload_shrinks_the_table() -> None:
    table = FailureTable()
    for i in range(50):
        table.record_failure(str(i), 0.0, limit=5, window=60.0, capacity=50)
    table.record_failure("new", 0.0, limit=5, window=60.0, capacity=10)
    assert len(table) == 10


# --- session counts ----------------------------------------------------------------------


def test_route_cap_and_global_cap() -> None:
    counts = SessionCounts()
    assert counts.acquire("a", 2, 3)
    assert counts.acquire("a", 2, 3)
    assert not counts.acquire("a", 2, 3)  # the route's cap
    assert counts.acquire("b", None, 3)
    assert not counts.acquire("b", None, 3)  # the global cap
    counts.release("a")
    assert counts.acquire("b", None, 3)
    assert (counts.total, counts.per_route) == (3, {"a": 1, "b": 2})


def test_released_routes_leave_no_entry() -> None:
    counts = SessionCounts()
    assert counts.acquire("gone", None, 10)
    counts.release("gone")
    assert (counts.total, counts.per_route) == (0, {})


def test_a_block_from_the_fleet_refuses_the_key_for_its_time() -> None:
    table = FailureTable()
    table.block("10.0.0.1", 100.0, 30.0, capacity=10)
    assert table.retry_after("10.0.0.1", 100.0) == 30
    assert table.retry_after("10.0.0.1", 129.5) == 1
    assert table.retry_after("10.0.0.1", 130.0) is None
    assert table.retry_after("10.0.0.2", 100.0) is None
    table.block("10.0.0.1", 101.0, 5.0, capacity=10)  # a shorter block does not shorten a longer one
    assert table.retry_after("10.0.0.1", 110.0) == 20


def test_blocks_are_bounded_by_the_capacity_like_failures() -> None:
    table = FailureTable()
    for n in range(5):
        table.block(f"10.0.0.{n}", 0.0, 60.0, capacity=3)
    assert len(table) == 3
    assert table.retry_after("10.0.0.0", 1.0) == 59  # a block held is never dropped for another
    assert table.retry_after("10.0.0.4", 1.0) == 59  # the keys not held share the overflow's block
    table.block("10.0.0.5", 70.0, 60.0, capacity=3)  # the blocks held are over: dropped for a new one
    assert len(table) == 3
    assert table.retry_after("10.0.0.5", 71.0) == 59


def test_each_failure_is_reported_to_the_fleet() -> None:
    reported: list[tuple[str, int, float]] = []
    table = FailureTable(on_failure=lambda key, limit, window: reported.append((key, limit, window)))
    for _ in range(2):
        table.record_failure("10.0.0.1", 0.0, limit=5, window=60.0, capacity=10)
    assert reported == [("10.0.0.1", 5, 60.0), ("10.0.0.1", 5, 60.0)]
