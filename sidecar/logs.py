"""One structured line per event, that Railway's log explorer can read and keep up with.

Callers pass fields as ``extra={"fields": {...}}`` (:func:`event` does); the formatter
writes them as one JSON object (``LOG_FORMAT=json``) or ``key=value`` pairs (``text``).
Fields never hold a secret: the code that builds them only ever has reasons, ids and counts.

A JSON line has ``level`` and ``message`` (a short sentence, from :data:`MESSAGES`) beside
``event`` and the fields, as Railway's log explorer wants. Every line logged while a
request or its session is handled carries that request's ``request_id``
(:func:`correlate`; :attr:`sidecar.context.Context.request_id` says where it comes from).

Railway drops lines past about 500 a second per replica. So the per-session lines
(:data:`SUMMARISED`: sessions opened and closed, refusals, ...) go through a
:class:`Summary`: past :data:`BURST` lines of one event in a second (a drain, a reconnect
storm, an attack), the rest of that second's are logged at ``debug`` and counted, and one
``log.summary`` line at ``info`` gives the counts, by close code, reason or route.

Every line configured by :func:`configure` also says which replica wrote it
(``replica``: :mod:`sidecar.replica`), as several write to one log on Railway.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from .replica import this_replica

logger = logging.getLogger("sidecar")

# The request being handled (and its session, whose task inherits it): set once per request.
_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def correlate(request_id: str) -> None:
    """Log ``request_id`` on every line from here on, in this task and those it starts."""
    _REQUEST_ID.set(request_id)


def event(level: int, name: str, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` (``None`` values are left out), at ``level``, or at
    ``debug`` if it is one of a burst that :data:`SUMMARY` counts instead."""
    if not logger.isEnabledFor(level):
        return  # nor at debug, to which a summary lowers a line: nothing to log or count
    level = SUMMARY.level(level, name, fields)
    if logger.isEnabledFor(level):
        kept = {k: v for k, v in fields.items() if v is not None}
        request_id = _REQUEST_ID.get()
        if request_id is not None:
            kept.setdefault("request_id", request_id)
        logger.log(level, name, extra={"fields": kept})


# --- messages -------------------------------------------------------------------------

# A short sentence per event, from its fields: '{field}' is replaced by the field's value,
# and a '[...]' part is left out when a field it names is absent.
MESSAGES: dict[str, str] = {
    "auth.failures_keyed_on_proxy": "failed authentications are counted against the proxy {peer}, "
    "so every client behind it shares one budget: set listen.trusted_proxies",
    "config.problem": "config problem: {problem}",
    "config.reload_failed": "config reload failed with {errors} error(s); still serving config {config_sha256}",
    "config.reloaded": "config reloaded: now {config_sha256}[, was {previous_sha256}]"
    "[; takes a restart: {restart_needed_for}]",
    "http.client_gone": "client went away before the response was complete[ on route {route}]",
    "http.rejected": "refused {method} with {status} {reason}[ on route {route}][ for agent {agent_id}]",
    "http.request": "{method} on route {route}: {status} in {duration_s}s",
    "http.upstream_broke": "the backend broke off a response[ on route {route}] ({error})",
    "jwks.refresh_failed": "fetching the JWKS {url} failed ({why}): still using the {keeping} key(s) "
    "fetched before; trying again in {retry_in_s}s",
    "jwks.refreshed": "JWKS {url}: {keys} key(s)[ ({kids})][; left out: {skipped}]",
    "log.summary": "{lines} more {of} lines in the last second, by {by}: {counts} (each at debug)",
    "sidecar.cancelling_requests": "cancelling {requests} request(s) still in flight",
    "sidecar.no_ipv6": "no IPv6 on this host: listening on IPv4 only[ ({detail})]",
    "sidecar.not_ready": "not ready: an upstream cannot be reached[ ({upstreams})]",
    "sidecar.open_files_low": "the open-files limit {open_files_limit} is below the {needed} "
    "that {max_sessions} sessions need: {fix}",
    "sidecar.pure_python": "running aiohttp without its C extensions ({parts}), as allowed by {allowed_by}",
    "sidecar.ready": "ready: every upstream accepts connections",
    "sidecar.started": "listening on {listen} (metrics: {metrics}) with {config}",
    "sidecar.stopped": "stopped",
    "sidecar.stopping": "stopping: closing sessions over {drain_timeout_s}s",
    "ws.closed": "session closed by the {initiator} with {code}[ ({reason})][ on route {route}][ for agent {agent_id}]",
    "ws.closing_all": "closing {sessions} session(s) over {over_s}s",
    "ws.established": "session open[ on route {route}][ for agent {agent_id}]",
    "ws.peer_dead": "the {peer} stopped answering pings: cut off[ (agent {agent_id})]",
    "ws.rejected": "refused a WebSocket upgrade with {status} {reason}[ on route {route}][ for agent {agent_id}]",
    "ws.replacing": "agent {agent_id} connected again: closing its older session on route {route}"
    "[ (held by replica {holder})]",
    "ws.replaced_remote": "closing agent {agent_id}'s session on route {route}: another replica admitted "
    "a newer one (found by {found_by})",
    "ws.closing_by_operator": "closing {sessions} session(s) of agent {agent_id}: an operator asked",
    "admin.sessions_ended": "an operator ended agent {agent_id}'s sessions: {closed} closed ({scope})"
    "[; {missing_replicas} replica(s) did not answer]",
    "state.down": "the fleet's shared state (Redis) does not answer ({error}): {fallback}",
    "state.up": "the fleet's shared state (Redis) answers[ again (restored: {restored})]",
    "state.subscription_lost": "this replica's subscription to the fleet's messages was lost ({error}): "
    "subscribing again[ in {resubscribe_in_s}s] (once Redis answers)",
    "state.bad_message": "a message from another replica could not be read (op {op})",
    "state.renew_failed": "renewing the agent leases failed; the next renewal tries again",
    "ws.stalled": "the {peer} stopped reading for {stall_timeout_s}s: cut off[ (agent {agent_id})]",
    "ws.token_expired": "the session's token expired: ending it[ on route {route}][ for agent {agent_id}]",
    "ws.upstream_retry": "backend handshake failed ({error}): try {attempt} of {attempts}, "
    "the next in {retry_in_s}s[ (agent {agent_id})]",
}

_FIELD = re.compile(r"\{(\w+)\}")
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")


def message(name: str, fields: Mapping[str, Any]) -> str:
    """The sentence for event ``name`` (its name, for an event not in :data:`MESSAGES`)."""
    template = MESSAGES.get(name)
    if template is None:
        return name

    def present(m: re.Match[str]) -> bool:
        return all(fields.get(f) not in (None, "") for f in _FIELD.findall(m.group(1)))

    text = _OPTIONAL.sub(lambda m: m.group(1) if present(m) else "", template)
    return _FIELD.sub(lambda m: _words(fields.get(m.group(1))), text)


def _words(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return "?" if value is None else str(value)


# --- log volume -----------------------------------------------------------------------

# The per-session lines, and the field their summary counts them by.
SUMMARISED: dict[str, str] = {
    "ws.established": "route",
    "ws.closed": "code",
    "ws.rejected": "reason",
    "http.rejected": "reason",
    "ws.replacing": "route",
    "ws.peer_dead": "peer",
    "ws.stalled": "peer",
    "ws.upstream_retry": "error",
    "ws.token_expired": "route",  # tokens minted together expire together
}
BURST = 20  # lines of one such event a second logged one by one (at most 160 a second in all)
WINDOW = 1.0  # seconds a summary covers


class Summary:
    """Counts per-session lines past :data:`BURST` in a second, and logs the counts.

    :meth:`level` is asked for every line: a per-session line past the burst is to be
    logged at ``debug`` (kept for whoever asks for debug) and is counted, by its
    :data:`SUMMARISED` field. The counts are written as one ``log.summary`` line an
    event, at ``info``, when the second is over (on a timer of the running event loop,
    or at the next line), and before any other line at ``info`` or above, so lines
    stay in order.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, burst: int = BURST) -> None:
        self._clock = clock
        self._burst = burst
        self._started = clock()
        self._seen: Counter[str] = Counter()
        self._counts: dict[str, Counter[str]] = {}
        self._timed: float | None = None  # the window a flush is scheduled for

    def level(self, level: int, name: str, fields: Mapping[str, Any]) -> int:
        """The level to log ``name`` at: ``level``, or ``debug`` if it is counted instead."""
        by = SUMMARISED.get(name)
        if self._counts and ((by is None and level >= logging.INFO) or self._clock() - self._started >= WINDOW):
            self.flush()
        if by is None:
            return level
        now = self._clock()
        if now - self._started >= WINDOW:
            self._started, self._seen = now, Counter()
        self._seen[name] += 1
        if self._seen[name] <= self._burst:
            return level
        self._counts.setdefault(name, Counter())[str(fields.get(by))] += 1
        self._flush_later(now)
        return logging.DEBUG

    def flush(self) -> None:
        """Log the counts so far (one ``log.summary`` line an event), and start again."""
        counts, self._counts = self._counts, {}
        self._started, self._seen = self._clock(), Counter()
        for name, counted in counts.items():
            if logger.isEnabledFor(logging.INFO):
                # No request_id: a summary is many requests' lines, whichever request flushes it.
                fields = {"of": name, "by": SUMMARISED[name], "counts": dict(counted), "lines": counted.total()}
                logger.info("log.summary", extra={"fields": fields})

    def reset(self) -> None:
        """Forget everything counted (nothing is logged)."""
        self._counts, self._seen, self._started, self._timed = {}, Counter(), self._clock(), None

    def _flush_later(self, now: float) -> None:
        if self._timed == self._started:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the next line, or the one after a second, flushes
        self._timed = self._started
        delay = max(0.0, self._started + WINDOW - now)
        # In an empty context: the summary is not one request's line.
        loop.call_later(delay, self._due, context=contextvars.Context())

    def _due(self) -> None:
        if not self._counts:
            return
        now = self._clock()
        if now - self._started >= WINDOW:
            self.flush()
        else:  # early by the loop's clock (its resolution), or a clock of a test's: wait the rest
            self._timed = None
            self._flush_later(now)


# The one summary of this process's lines: logging state, like the logger itself.
SUMMARY = Summary()


# --- formatting -----------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    def __init__(self, common: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.common = dict(common or {})  # fields every line carries (the replica)

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        name = record.getMessage()
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": name,
            "message": message(name, fields),
        }
        line.update(self.common)
        line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self, common: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.common = dict(common or {})  # fields every line carries (the replica)

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={_text(v)}" for k, v in {**self.common, **getattr(record, "fields", {})}.items())
        head = (
            f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} {record.getMessage()}"
        )
        text = f"{head} {fields}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' ="')) else text


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    common = {"replica": this_replica()}
    handler.setFormatter(JsonFormatter(common) if fmt == "json" else TextFormatter(common))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logger.setLevel(level.upper())
    # aiohttp warns, per handshake, of a client's subprotocols that overlap none of
    # the server's, quoting the whole list; the sidecar chooses none itself (the
    # upstream chooses), and a list can carry a browser client's credentials.
    logging.getLogger("aiohttp.websocket").setLevel(logging.ERROR)
