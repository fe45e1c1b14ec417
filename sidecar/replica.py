"""Which replica this process is: the name the fleet, its logs and its metrics know it by.

On Railway every replica of a service has ``RAILWAY_REPLICA_ID``; elsewhere the host
name and the process id tell two processes apart (two on one host, or one restarted).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

ENV = "RAILWAY_REPLICA_ID"
_MAX = 128  # a label value and a part of a Redis channel name: bounded


def replica_id(env: Mapping[str, str], hostname: str, pid: int) -> str:
    """``RAILWAY_REPLICA_ID`` when set, else ``hostname:pid``; printable, at most 128 characters."""
    given = "".join(c for c in env.get(ENV, "") if c.isprintable() and not c.isspace())
    return (given or f"{hostname}:{pid}")[:_MAX]


def this_replica() -> str:
    """This process's replica id."""
    return replica_id(os.environ, socket.gethostname(), os.getpid())
