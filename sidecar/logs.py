"""One structured line per event.

Callers pass fields as ``extra={"fields": {...}}``; the formatter writes them as one
JSON object (``LOG_FORMAT=json``) or ``key=value`` pairs (``text``). Fields never
hold a secret: the code that builds them only ever has reasons, ids and counts.
Every line configured by :func:`configure` also says which replica wrote it
(``replica``: :mod:`sidecar.replica`), as several write to one log on Railway.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from .replica import this_replica

logger = logging.getLogger("sidecar")


def event(level: int, name: str, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` (``None`` values are left out)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": {k: v for k, v in fields.items() if v is not None}})


class JsonFormatter(logging.Formatter):
    def __init__(self, common: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.common = dict(common or {})  # fields every line carries (the replica)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        line.update(self.common)
        line.update(getattr(record, "fields", {}))
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
