"""The fleet's layout in Redis: key and channel names, the Lua scripts that change them
atomically, and the messages replicas send each other. Pure: strings only, no I/O.

Every name starts with ``state.key_prefix`` (``p``, default ``sidecar:``); route names,
agent ids and client keys are percent-encoded where they are part of a name, so no two
pairs share one:

=============================  ======================  =====================================
name                           kind (expiry)           what
=============================  ======================  =====================================
``p lease:{route}:{agent}``    string (``lease_ttl``)  the agent's lease: the holder session's
                                                       :func:`lease_value`
``p fails:{client}``           counter (window)        failed authentications in the window
``p blocked:{client}``         string (window)         the client key is refused (429)
``p reply:{request}``          list (10 s)             the replicas' answers to one request
``p replica:{replica}:{proc}``  channel                 messages for one process (``replace``)
``p fleet``                    channel                 messages for all (``block``, ``list``,
                                                       ``end``)
=============================  ======================  =====================================

A lease is only ever changed by a script that compares first (:data:`SYNC`,
:data:`TAKE`, :data:`RENEW`, :data:`RELEASE`), so a session never removes or extends
another's. The scripts touch several keys at once (batches): a single Redis, or a
cluster's single shard, as Railway's template is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

REPLY_TTL_MS = 10_000  # an answer nobody collected is gone after this


@dataclass(frozen=True)
class Names:
    prefix: str

    def lease(self, route: str, agent_id: str) -> str:
        return f"{self.prefix}lease:{quote(route, safe='')}:{quote(agent_id, safe='')}"

    def fails(self, client: str) -> str:
        return f"{self.prefix}fails:{quote(client, safe='')}"

    def blocked(self, client: str) -> str:
        return f"{self.prefix}blocked:{quote(client, safe='')}"

    def reply(self, request: str) -> str:
        return f"{self.prefix}reply:{request}"

    def replica(self, replica: str, process: str | None = None) -> str:
        """The channel of one process of ``replica`` (``None``: a value written before
        leases named their process: the replica's channel, as it was then)."""
        name = f"{self.prefix}replica:{quote(replica, safe='')}"
        return name if process is None else f"{name}:{quote(process, safe='')}"

    @property
    def fleet(self) -> str:
        return f"{self.prefix}fleet"


@dataclass(frozen=True)
class Holder:
    """Who a lease value names: the replica, and the process within it (its nonce)."""

    replica: str
    process: str | None  # None: a value written before leases named their process


def lease_value(replica: str, process: str, session: int) -> str:
    """What a lease holds: the holder's replica and process (to tell it, on the process's
    own channel) and its session's serial in that process. The process is a nonce drawn at
    start, so two processes with one replica id (a restart, a deploy) never share a value:
    only the session that wrote a value renews or deletes it."""
    return json.dumps({"replica": replica, "process": process, "session": session}, separators=(",", ":"))


def lease_holder(value: str) -> Holder | None:
    """The holder a lease value names (``None``: not a value this layout wrote)."""
    try:
        fields = json.loads(value)
        replica, process = fields.get("replica"), fields.get("process")
    except (ValueError, AttributeError):
        return None
    if not isinstance(replica, str):
        return None
    return Holder(replica, process if isinstance(process, str) else None)


def encode(op: str, **fields: Any) -> str:
    """A message between replicas: ``op`` and its fields, as JSON."""
    return json.dumps({"op": op, **fields}, separators=(",", ":"))


def decode(data: str | bytes) -> dict[str, Any] | None:
    """A message, or ``None`` if it is not one (another program on the channel)."""
    try:
        message = json.loads(data)
    except ValueError:
        return None
    return message if isinstance(message, dict) and isinstance(message.get("op"), str) else None


# Claims and releases, in the order they were made: KEYS[i] with ARGV[2i-1], 'c' (claim:
# set to the value ARGV[2i] unless another value holds it) or 'r' (release: delete it if
# ARGV[2i] still holds it); ARGV[#ARGV] is the TTL (ms). For each key: '' (claimed, or
# already held by the value; or released) or, for a claim, the value holding it.
SYNC = """
local ttl = ARGV[#ARGV]
local out = {}
for i, key in ipairs(KEYS) do
  local op, value = ARGV[2 * i - 1], ARGV[2 * i]
  local holder = redis.call('GET', key)
  out[i] = ''
  if op == 'c' then
    if not holder or holder == value then
      redis.call('SET', key, value, 'PX', ttl)
    else
      out[i] = holder
    end
  elseif holder == value then
    redis.call('DEL', key)
  end
end
return out
"""

# KEYS[1] is taken for ARGV[2] if it is free, or held by ARGV[1] ('' = whoever holds it);
# ARGV[3] is the TTL (ms). '' (taken) or the value holding it now.
TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder and ARGV[1] ~= '' and holder ~= ARGV[1] and holder ~= ARGV[2] then
  return holder
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return ''
"""

# Each KEYS[i] held by ARGV[i] gets a fresh TTL (ARGV[#ARGV], ms); one that is gone (Redis
# restarted empty, or the lease expired while Redis was out of reach) is written again.
# The 1-based indexes of the keys another value holds: those sessions were replaced.
RENEW = """
local ttl = ARGV[#ARGV]
local lost = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == ARGV[i] then
    redis.call('PEXPIRE', key, ttl)
  elseif not holder then
    redis.call('SET', key, ARGV[i], 'PX', ttl)
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

# Each KEYS[i] still held by ARGV[i] is deleted (compare-and-delete); how many were.
RELEASE = """
local released = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    redis.call('DEL', key)
    released = released + 1
  end
end
return released
"""

# One failed authentication for a client key: KEYS[1] counts them in a window of ARGV[2]
# ms from the first; the ARGV[1]-th blocks the key (KEYS[2]) for the window and tells
# every replica (ARGV[3]: the channel, ARGV[4]: the message). Returns the ms the key is
# blocked for from now (0: not blocked).
FAIL = """
local blocked = redis.call('PTTL', KEYS[2])
if blocked > 0 then
  return blocked
end
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if failures < tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return tonumber(ARGV[2])
"""
