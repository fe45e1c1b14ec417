"""Why a listener cannot start, in words: which port (the public one or the metrics
one), the error, and what holds the port where that can be told.

What holds a port is found on Linux, best effort: ``/proc/net/tcp`` and ``tcp6`` give
the inode of the socket bound to it, and the ``/proc/<pid>/fd`` links name the process
that has that socket open, if this user may read its descriptors. Only the process's
id and name are shown, never its command line (another program's arguments can carry
its secrets). Elsewhere, or in another network namespace, nothing is said about it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

_PROC = Path("/proc")
_BOUND = {"0A", "07"}  # LISTEN, and CLOSE: bound but not listening (both hold the port)


class ListenFailed(OSError):
    """``what`` (``listen.port``, ``metrics.port``) could not listen on ``host``:``port``."""

    def __init__(self, what: str, host: str, port: int, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.what = what
        self.host = host
        self.port = port
        self.holder = holder(port) if cause.errno == errno.EADDRINUSE else None

    def __str__(self) -> str:
        text = f"cannot listen on {self.host}:{self.port} ({self.what}): {self.strerror}"
        if self.holder:
            text += f"; {self.holder}"
        elif self.errno == errno.EACCES and 0 < self.port < 1024:
            text += "; a port below 1024 needs privileges (CAP_NET_BIND_SERVICE): use a higher one"
        return text


@contextlib.contextmanager
def listening(what: str, host: str, port: int) -> Iterator[None]:
    """An ``OSError`` raised within becomes a :class:`ListenFailed` naming ``what``."""
    try:
        yield
    except ListenFailed:
        raise
    except OSError as exc:
        raise ListenFailed(what, host, port, exc) from exc


def holder(port: int, proc: Path = _PROC) -> str | None:
    """``held by pid N (name)`` for the process whose socket holds TCP ``port``; another
    wording if the socket is there but its process is not visible; ``None`` if unknown."""
    inodes = _socket_inodes(port, proc)
    if not inodes:
        return None
    links = {f"socket:[{inode}]" for inode in inodes}
    for entry in _processes(proc):
        if any(link in links for link in _fd_links(entry)):
            return f"held by pid {entry.name} ({_name(entry)})"
    return "held by a process this user cannot see (another user's, or another container's)"


def _socket_inodes(port: int, proc: Path) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            if len(fields) > 9 and fields[3] in _BOUND and int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(fields[9])
    inodes.discard("0")
    return inodes


def _processes(proc: Path) -> Iterator[Path]:
    try:
        entries = list(proc.iterdir())
    except OSError:
        return
    yield from (entry for entry in entries if entry.name.isdigit())


def _fd_links(process: Path) -> Iterator[str]:
    try:
        fds = list((process / "fd").iterdir())
    except OSError:  # not ours to read, or gone
        return
    for fd in fds:
        with contextlib.suppress(OSError):  # closed since it was listed
            yield os.readlink(fd)


def _name(process: Path) -> str:
    try:
        return (process / "comm").read_text().strip() or "?"
    except OSError:
        return "?"
