"""One leg of a relayed WebSocket session: reads its peer's bytes, forwards them.

After both 101s a session is two connections, each with a :class:`Leg` installed
as its protocol (``transport.set_protocol``). A leg scans each chunk its peer
sends (one :class:`sidecar.frames.Scanner` per direction) and writes the whole
frames in it to the other leg's transport, as they arrived: a client's frames keep
the client's mask, which is as valid toward the upstream. An incomplete header or
control frame at a chunk's end is held back and scanned again with the next one.

Frames of the sidecar's own (keep-alive pings, close frames) go into a stream
only between two frames of it (:meth:`Leg.send`): at once when the stream is
between frames, else when the other leg's scanner next reports a boundary. The
pong answering the sidecar's own ping is cut out of the stream, never relayed.

Backpressure: when a transport's write buffer passes its high-water mark, the
transport calls :meth:`Leg.pause_writing`, and the leg stops reading the other
connection until the buffer drains below its low-water mark. What a session
holds is bounded by the marks, plus one chunk.

permessage-deflate: a compressed frame is forwarded once its whole payload has
been measured (:mod:`sidecar.inflate`); until then it is held, so a message
refused for its inflated size is never half sent, and the other side can still be
told why with a close frame.

What a leg cannot decide alone (a close frame, a fault, a lost connection) it
reports to its :class:`Session`, the relay.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from .closing import Side
from .frames import PING, Boundary, Close, Deflated, Event, Fault, Pong, Scanner, client_frame, server_frame, unmask
from .inflate import Meter
from .metrics import Tally
from .transport import Transport as Transport  # what a leg needs of a connection (re-exported for the relay)

# Write buffer marks: a non-reading peer costs at most HIGH plus one read chunk.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024


class Session(Protocol):
    """What a leg reports to its relay."""

    def closed_by(self, leg: Leg, close: Close, frame: bytes) -> None: ...
    def close_sent(self, leg: Leg) -> None: ...
    def faulted(self, leg: Leg, fault: Fault) -> None: ...
    def lost(self, leg: Leg) -> None: ...
    def failed(self, leg: Leg, error: Exception) -> None: ...


class Leg(asyncio.Protocol):
    """One connection of a session; ``other`` is the other. What this leg's peer sends
    is scanned by ``scanner`` and counted in ``tally``; ``written`` counts what was
    written to this leg's transport (the stall check's measure of progress)."""

    __slots__ = (
        "between",
        "busy",
        "forwarding",
        "got_close",
        "heard",
        "held",
        "holding",
        "lost",
        "meter",
        "other",
        "paused",
        "pending_close",
        "pending_ping",
        "pinged",
        "released",
        "scanner",
        "sent_close",
        "session",
        "side",
        "stall_since",
        "stall_size",
        "stall_written",
        "tally",
        "token",
        "transport",
        "writing_paused",
        "written",
    )

    def __init__(self, side: Side, session: Session, scanner: Scanner, tally: Tally, token: bytes) -> None:
        self.side = side
        self.session = session
        self.scanner = scanner
        self.tally = tally
        self.token = token  # the payload of the sidecar's pings to this leg's peer
        self.meter: Meter | None = None  # on a permessage-deflate session
        self.transport: Transport
        self.other: Leg
        self.held = b""  # the scanner's unconsumed tail
        self.holding: bytearray | None = None  # a compressed frame being measured
        self.forwarding = True  # this peer's bytes go to the other peer (the fast path)
        self.between = True  # what was forwarded from this peer ends between two frames
        self.busy = False  # inside data_received: the session is called only at frame boundaries
        self.pending_ping: bytes | None = None  # frames for this peer, waiting for a boundary
        self.pending_close: bytes | None = None
        self.got_close = False  # nothing more is read from this peer: its close frame, a fault, gone
        self.sent_close = False  # a close frame was written to it
        self.lost = False  # its connection is gone
        self.released = False  # its transport was closed by the relay
        self.paused = False  # not read, because the other leg's write buffer is full
        self.writing_paused = False  # this leg's write buffer is over its high-water mark
        self.written = 0
        self.heard = False  # keep-alive: bytes from this peer since it was last pinged
        self.pinged = False
        self.stall_size = self.stall_written = 0  # stall check: the buffer and `written` last time
        self.stall_since = 0.0

    def attach(self, transport: Transport) -> None:
        self.transport = transport
        transport.set_protocol(self)

    def limit(self, *, paused: bool) -> None:
        """Set the write buffer's marks, once both legs are attached (a mark the new limits
        cross is reported to this leg). ``paused``: the buffer was already past the mark
        when its previous protocol had it, which told that protocol, not this leg."""
        if self.transport.is_closing():
            return  # gone already (uvloop refuses limits on it): the relay counts it as lost
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        if paused and not self.writing_paused:
            self.pause_writing()

    # --- bytes in ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.heard = True
        try:
            if self.held:
                data, self.held = self.held + data, b""
            if not self.forwarding:
                self._slow(data)
                return
            scanner = self.scanner
            end, events = scanner.scan(data)
            if events:
                self._events(data, end, events)
                return
            # The fast path: whole frames, or a payload continued. Forward; hold the tail.
            if end:
                self.other.transport.write(data if end == len(data) else data[:end])
                self.other.written += end
            if end != len(data):
                self.held = data[end:]
            self.between = scanner.at_boundary
            self.tally.messages = scanner.messages
            self.tally.bytes = scanner.payload_bytes
        except Exception as error:  # a bug must still end the session properly
            self.session.failed(self, error)

    def _slow(self, data: bytes) -> None:
        """Not forwarding (the other side was sent a close, or is gone): scan only for
        this peer's close reply; drop the rest."""
        if self.got_close:
            return
        end, events = self.scanner.scan(data)
        self.held = data[end:]
        for event in events:
            if isinstance(event, Close):
                self.got_close = True
                self.session.closed_by(self, event, data[event.start : event.end])
                return
            if isinstance(event, Fault):
                self.session.faulted(self, event)
                return

    def _events(self, data: bytes, end: int, events: list[Event]) -> None:
        out = cut = 0  # forwarded up to `out`; the last frame boundary at `cut`
        self.busy = True
        try:
            for event in events:
                if isinstance(event, Boundary):
                    out = cut = self._forward(data, out, event.offset, boundary=True)
                elif isinstance(event, Deflated):
                    if not self._measure(data, event, out, cut):
                        return
                elif isinstance(event, Fault):
                    self._forward(data, out, event.offset, boundary=True)
                    self.holding = None  # a refused frame is never sent
                    self._stop_reading()
                    self.session.faulted(self, event)
                    return
                else:  # a control frame: a boundary before it and after it
                    out = self._forward(data, out, event.start, boundary=True)
                    if isinstance(event, Close):
                        self._stop_reading()
                        self.session.closed_by(self, event, data[event.start : event.end])
                        return
                    if isinstance(event, Pong) and event.payload == self.token:
                        out = event.end  # the answer to the sidecar's own ping: cut out
                    cut = event.end
            if self.holding is None and self.meter is not None and _compressed_tail(events[-1], end):
                out = self._forward(data, out, cut, boundary=True)  # a compressed frame begins at `cut`:
                self.holding = bytearray(data[cut:end])  # held until measured whole
                out = end
            self._forward(data, out, end, boundary=self.scanner.at_boundary)
            self.held = data[end:]
        finally:
            self.busy = False
            self._count()

    def _count(self) -> None:
        scanner, meter = self.scanner, self.meter
        self.tally.messages = scanner.messages
        # On a permessage-deflate session, compressed messages count at their inflated size.
        self.tally.bytes = scanner.payload_bytes - (meter.wire - meter.inflated if meter else 0)

    def _forward(self, data: bytes, start: int, stop: int, *, boundary: bool) -> int:
        """``data[start:stop]`` to the other peer (or to the frame being held); then, at a
        boundary, the frames waiting for one. Returns ``stop``."""
        if stop > start:
            if self.holding is not None:
                self.holding += data[start:stop]
                if boundary:  # the held frame is whole and measured
                    self._write_other(self.holding)
                    self.holding = None
            elif self.forwarding:
                self._write_other(data[start:stop])
        self.between = boundary or self.holding is not None
        if self.between and self.forwarding:
            self.other.flush_pending()
        return stop

    def _write_other(self, data: bytes | bytearray) -> None:
        if self.forwarding:
            self.other.transport.write(data)
            self.other.written += len(data)

    def _measure(self, data: bytes, event: Deflated, out: int, cut: int) -> bool:
        """Measure a compressed payload; on refusal, report the fault (at the refused
        frame's start: a held frame is dropped) and return False."""
        assert self.meter is not None
        why = self.meter.feed(unmask(data[event.start : event.end], event.key, event.phase), event.last)
        if why is None:
            return True
        if self.holding is None:
            self._forward(data, out, cut, boundary=True)
        self.holding = None
        self.meter.inflated -= self.meter.size  # the refused message is not counted
        if event.last:
            self.scanner.messages -= 1  # (the scanner counted it whole)
        self._stop_reading()
        code = 1009 if why == self.meter.too_big else 1002
        self.session.faulted(self, Fault(code, why, cut))
        return False

    def _stop_reading(self) -> None:
        self.got_close = True
        self.forwarding = False

    # --- frames of the sidecar's own ----------------------------------------------------

    def send(self, frame: bytes, *, close: bool) -> bool:
        """Write ``frame`` (a control frame for this peer) between two frames of the stream
        to it: now, or at the other leg's next boundary. False if that can never be (the
        other peer left in the middle of a frame): the caller aborts this connection."""
        if self.lost or self.sent_close:
            return True
        source = self.other
        if close:
            self.pending_close = frame
        else:
            self.pending_ping = frame
        if source.between or not source.forwarding:
            if not source.between and (source.lost or source.got_close):
                return False
            self.flush_pending()
        else:
            source.scanner.boundaries = True  # wait for the next one
        return True

    def flush_pending(self) -> None:
        """The stream to this peer is between frames: write what waits for that."""
        ping, close = self.pending_ping, self.pending_close
        if ping is None and close is None:
            return
        self.pending_ping = self.pending_close = None
        if self.meter is None:
            self.other.scanner.boundaries = False
        for frame in (ping, close):
            if frame is not None and not self.lost:
                self.transport.write(frame)
                self.written += len(frame)
        if ping is not None:
            self.pinged, self.heard = True, False
        if close is not None:
            self.sent_close = True
            self.other.forwarding = False  # nothing more goes to this peer (RFC 6455 section 5.5.1)
            self.other.holding = None
            self.other.unpause()
            self.session.close_sent(self)

    def ping_frame(self) -> bytes:
        """The sidecar's keep-alive ping for this peer: a server frame to the client, a
        masked client frame (a fresh key each time) to the upstream."""
        if self.side == "client":
            return server_frame(PING, self.token)
        return client_frame(PING, self.token)

    # --- flow control, and the end ------------------------------------------------------

    def pause_writing(self) -> None:
        self.writing_paused = True
        source = self.other
        if source.forwarding and not source.lost:
            source.paused = True
            source.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.other.unpause()

    def unpause(self) -> None:
        if self.paused:
            self.paused = False
            if not self.lost:
                self.transport.resume_reading()

    def eof_received(self) -> bool:
        # After its close frame a peer may end its half (it waits for our reply); without
        # one, it is gone, and the transport closes.
        return self.got_close and not self.lost

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.lost(self)


def _compressed_tail(event: Event, end: int) -> bool:
    """Does the scan end inside a compressed frame (its last event a compressed payload
    reaching the end, not the message's last)?"""
    return isinstance(event, Deflated) and event.end == end and not event.last
