"""How a WebSocket session ends: the close-code decisions, as pure functions.

No I/O, no aiohttp: the relay reports what happened first on a leg (a
:class:`Stopped`) and acts on the :class:`Closing` it gets back. How a session
ends is decided once, by whichever side ends first, and the other side is always
told with a real close frame (RFC 6455 section 7.4):

==========================  ======================  ==============================
first event                 to the other side       initiator label
==========================  ======================  ==============================
close frame (code, reason)  the same code, reason   the side that sent it
TCP gone, no close frame    1011 to the client,     the side that vanished
                            1001 to the upstream    (code label 1006)
protocol fault (1002/1007/  the same code           sidecar
1009) on one leg
sidecar stops the session   its code (e.g. 1001)    sidecar
==========================  ======================  ==============================

A close frame is relayed as a closing handshake (RFC 6455 section 7.1.2): the
other side gets it, the other direction keeps flowing until that side's close
reply arrives, and the reply goes back to the initiator. 1005, 1006 and 1015 are
never put on the wire (RFC 6455 section 7.4.1). A close frame received is passed
on byte for byte unless its code must change (:func:`passes_as_is`).

The side that broke the protocol is sent its fault's code and why
(:func:`to_faulty`); when the sidecar stops a session itself, the client gets the
sidecar's code and the upstream 1001 (:func:`sidecar_stop`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Side = Literal["client", "upstream"]
Initiator = Literal["client", "upstream", "sidecar"]
Cause = Literal["dead", "stalled"]  # why the sidecar cut a peer off
Frame = tuple[int, bytes]  # a close frame to send: code, reason

ABNORMAL = 1006  # a label only: never sent (RFC 6455 section 7.4.1)
NO_STATUS = 1005  # an empty close frame, as a label
_NOT_ON_THE_WIRE = frozenset({0, 1005, 1006, 1015})
# What the *other* side is sent when a peer vanishes without a close frame.
_VANISHED: dict[Side, Frame] = {"client": (1001, b"client went away"), "upstream": (1011, b"upstream went away")}
# What the upstream is sent when the sidecar itself ends a session.
SIDECAR_CLOSING_UPSTREAM: Frame = (1001, b"sidecar closing the session")
SIDECAR_ERROR = (1011, "sidecar error")


@dataclass(frozen=True)
class Stopped:
    """A leg's last word: ``code`` None means the TCP connection vanished; ``fault``
    means the leg broke the protocol and was already sent ``code``."""

    side: Side
    code: int | None
    reason: str = ""
    fault: bool = False


@dataclass(frozen=True)
class End:
    """How a session ended."""

    initiator: Initiator
    code: int  # the close code the initiator sent (or ABNORMAL as a label)
    reason: str = ""
    cut: tuple[Side, Cause] | None = None  # a peer the sidecar cut off, and why


@dataclass(frozen=True)
class Closing:
    """What the relay does once a leg has stopped: send ``to_other`` to the other leg,
    and, for a ``handshake``, wait for that leg's reply to pass back (see
    :func:`reply_to_initiator`). ``end`` is how the session is accounted for."""

    to_other: Frame
    handshake: bool
    end: End


def on_the_wire(code: int) -> int:
    """A received close code as it may be passed on: an empty close (0 or 1005) as
    1000, a code that may not be sent or is out of range as 1002 (protocol error)."""
    if code in _NOT_ON_THE_WIRE or not 1000 <= code <= 4999:
        return 1000 if code in (0, NO_STATUS) else 1002
    return code


def closing_after(first: Stopped) -> Closing:
    """The decision the table in this module's docstring describes."""
    if first.code is None:
        return Closing(_VANISHED[first.side], handshake=False, end=End(first.side, ABNORMAL))
    code = on_the_wire(first.code)
    if first.fault:
        # The faulty side was already sent ``code``; tell the other why.
        return Closing((code, f"{first.side}: {first.reason}".encode()), False, End("sidecar", code, first.reason))
    # An empty close frame reads as 1005 (RFC 6455 section 7.1.5).
    end = End(first.side, first.code or NO_STATUS, first.reason)
    return Closing((code, first.reason.encode("utf-8")), handshake=True, end=end)


def passes_as_is(code: int) -> bool:
    """Whether a close frame received with ``code`` may be relayed unchanged: only a code
    :func:`on_the_wire` keeps (an empty close becomes 1000, an invalid code 1002)."""
    return on_the_wire(code) == code


def to_faulty(first: Stopped) -> Frame:
    """What the side that broke the protocol is sent: the fault's code and why
    (RFC 6455 section 7.1.7: fail the connection, with a close frame first)."""
    assert first.fault and first.code is not None
    return first.code, first.reason.encode("utf-8")


def sidecar_stop(code: int, reason: str) -> tuple[Frame, Frame, End]:
    """The sidecar ends a session itself (a drain, a newer session, an operator): what
    the client is sent, what the upstream is sent, and how the session is accounted."""
    return (code, reason.encode("utf-8")), SIDECAR_CLOSING_UPSTREAM, End("sidecar", code, reason)


def sidecar_failed() -> tuple[Frame, End]:
    """A fault of the sidecar's own (a bug in the relay or what runs it): what both legs
    are sent, 1011, and how the session is accounted."""
    code, reason = SIDECAR_ERROR
    return (code, reason.encode("utf-8")), End("sidecar", code, reason)


def reply_to_initiator(first: Stopped, reply: Stopped | None) -> Frame:
    """What the initiator of a closing handshake gets back: the other side's reply
    (normally its own code echoed), or its own close frame if no valid reply came."""
    if reply is not None and reply.code is not None and not reply.fault:
        return on_the_wire(reply.code), reply.reason.encode("utf-8")
    assert first.code is not None
    return on_the_wire(first.code), first.reason.encode("utf-8")


def close_payload(code: int, reason: bytes) -> bytes:
    """A close frame's payload (RFC 6455 section 5.5.1): a control frame carries 125
    bytes at most, so the reason is cut to 123 (see :func:`cut_reason`)."""
    return code.to_bytes(2, "big") + cut_reason(reason)


def cut_reason(reason: bytes) -> bytes:
    """A close reason cut to the 123 bytes a close frame has room for, at a character
    boundary: a reason must be UTF-8 (RFC 6455 section 5.5.1), and half a character
    would make the peer fail the connection with 1007."""
    if len(reason) <= 123:
        return reason
    return reason[:123].decode("utf-8", "ignore").encode("utf-8")
