"""Admission limits: the failed-authentication table and the session counts.
Pure: no I/O, no aiohttp; the caller passes the clock and the configured limits,
so the state survives a config reload (it lives on the Runtime) and the limits
in force are always the current config's.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

# What an over_capacity refusal tells the client to wait (RFC 9110 section 10.2.3).
OVER_CAPACITY_RETRY_AFTER = 5


@functools.lru_cache(maxsize=4096)  # parsed once per address, not per request
def client_key(address: str | None) -> str:
    """The key failures are counted under: the address, or its /64 for IPv6 (one
    host usually holds a whole /64, RFC 4291 section 2.5.1, so counting single
    addresses would give it 2**64 fresh counters)."""
    if not address:
        return "-"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]  # a unix socket peer or the like: bounded anyway
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598: carrier and platform NAT


def probably_a_proxy(address: str | None) -> bool:
    """Is a peer at ``address`` more likely a proxy in front of the sidecar than a
    client? Internet clients do not arrive from private or shared address space
    (RFC 1918, RFC 6598, RFC 4193); a platform's edge does (Railway's from 100.64/10)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return not ip.is_loopback and (ip.is_private or ip in _SHARED_ADDRESS_SPACE)


@dataclass(slots=True)
class _Entry:
    window_start: float
    failures: int = 0
    blocked_until: float = 0.0


@dataclass(eq=False)
class FailureTable:
    """Failed authentications per client key, in fixed windows.

    The ``limit``-th failure within ``window`` seconds of the window's first one
    blocks the key for ``window`` seconds from then. The table holds at most
    ``capacity`` keys: recording a failure for a new key beyond that evicts the
    key whose last failure is the oldest, so memory is bounded whatever the number
    of addresses an attacker uses (an evicted attacker only gets a fresh count).
    A success does not reset the count: behind a shared address (NAT, a proxy) a
    legitimate agent's success would otherwise give an attacker endless tries.

    ``on_evict`` is told of each key dropped (the runtime counts them:
    ``sidecar_auth_clients_evicted_total``), so a table too small is seen, not guessed.

    Shared by a fleet (``state.redis``), ``on_failure`` is told of each failure (key,
    limit, window) so the fleet-wide count can decide, and a key the fleet blocked is
    recorded here with :meth:`block`: the check stays a local look-up.
    """

    _entries: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    on_failure: Callable[[str, int, float], None] | None = field(default=None, repr=False)
    # Told of each key dropped because the table was full (its count, its block, lost here).
    on_evict: Callable[[], None] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self._entries)

    def retry_after(self, key: str, now: float) -> int | None:
        """Seconds until ``key`` may try again (at least 1), or ``None``: not blocked."""
        entry = self._entries.get(key)
        if entry is None or entry.blocked_until <= now:
            return None
        return max(1, math.ceil(entry.blocked_until - now))

    def record_failure(self, key: str, now: float, *, limit: int, window: float, capacity: int) -> None:
        entry = self._entries.get(key)
        if entry is None or now - entry.window_start >= window:
            entry = _Entry(window_start=now, blocked_until=entry.blocked_until if entry else 0.0)
            self._entries[key] = entry
        entry.failures += 1
        if entry.failures >= limit:
            entry.blocked_until = now + window
            entry.failures = 0  # the block is the penalty; the next window starts after it
            entry.window_start = entry.blocked_until
        self._keep(key, capacity)
        if self.on_failure is not None:
            self.on_failure(key, limit, window)

    def block(self, key: str, now: float, seconds: float, *, capacity: int) -> None:
        """Block ``key`` for ``seconds`` from ``now`` (the fleet's count says so), unless
        it is blocked for longer already."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(window_start=now)
        if now + seconds > entry.blocked_until:
            entry.blocked_until = now + seconds
            entry.failures = 0
            entry.window_start = entry.blocked_until
        self._keep(key, capacity)

    def _keep(self, key: str, capacity: int) -> None:
        self._entries.move_to_end(key)
        while len(self._entries) > capacity:
            self._entries.popitem(last=False)
            if self.on_evict is not None:
                self.on_evict()


@dataclass(eq=False)
class SessionCounts:
    """WebSocket sessions being admitted or open, in all and per route name.

    A session counts from the moment it is admitted (before the upstream
    handshake) until it ends, so a burst of handshakes cannot overshoot a cap.
    """

    total: int = 0
    per_route: dict[str, int] = field(default_factory=dict)

    def acquire(self, route: str, route_cap: int | None, global_cap: int) -> bool:
        """Count one more session on ``route`` if neither cap is reached."""
        current = self.per_route.get(route, 0)
        if self.total >= global_cap or (route_cap is not None and current >= route_cap):
            return False
        self.total += 1
        self.per_route[route] = current + 1
        return True

    def release(self, route: str) -> None:
        self.total -= 1
        left = self.per_route[route] - 1
        if left:
            self.per_route[route] = left
        else:
            del self.per_route[route]  # no entry left behind for a route that was removed
