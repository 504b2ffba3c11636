"""The messages that cross between the dispatcher and its worker processes.

Each is a small named type, pickled with protocol 5 and framed as ``multiprocessing.Connection``
frames (a 4-byte big-endian length, or -1 and an 8-byte length for huge ones), so the worker can
use a plain ``Connection`` while the parent writes and reads the same pipes without blocking.

Parent to worker: :class:`EventBatch`. Worker to parent: :class:`WorkerReady`,
:class:`EventFailed`, :class:`BatchDone`, :class:`BatchRejected`,
:class:`WorkerRetiring`.

Besides the messages, each worker shares a tiny array with the parent (:data:`PROGRESS_FIELDS`):
the sequence number of the event it started, when it started it, and the last one it finished.
It costs a memory write per event instead of a message, and it survives the worker's death, so
after a crash the parent knows exactly which event was in hand, which were done, and which never
started.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

__all__ = [
    "FINISHED",
    "PROGRESS_FIELDS",
    "STARTED",
    "STARTED_AT_NS",
    "STOP_HANDLER_ID",
    "BatchDone",
    "BatchRejected",
    "EventBatch",
    "EventFailed",
    "FrameReader",
    "WorkerReady",
    "WorkerRetiring",
    "frame",
]

# Handler id 0 is the poison pill (StopEventHandler); every worker knows it without being told.
STOP_HANDLER_ID = 0

# Indexes in the shared progress array.
STARTED = 0
STARTED_AT_NS = 1
FINISHED = 2
PROGRESS_FIELDS = 3

# One event on the wire: (seq, handler_id, originator, data, timestamp).
WireEvent = tuple[int, int, Any, Any, float]


class EventBatch(NamedTuple):
    """Events for a worker, in order, with the handler definitions it has not seen yet.

    The events travel as one inner pickle (``events``) so that the envelope always decodes: if
    the events do not unpickle in the worker, it still learns the handlers, reports the batch
    with :class:`BatchRejected`, and drops every batch after it until the parent re-sends them
    starting with a ``resync`` batch. In a resync batch ``events`` is a pickled list of
    separately pickled events, so one bad event fails alone.
    """

    batch_no: int
    handlers: list[tuple[int, bytes]]  # (handler_id, dill bytes), defined before the events run
    events: bytes
    forget: list[int]  # handler ids the parent dropped from its cache, after the events ran
    resync: bool = False


class WorkerReady(NamedTuple):
    """The worker imported everything and is waiting for events."""

    pid: int
    rss: int  # resident set size before any event, in bytes (0 if not measured)


class WorkerRetiring(NamedTuple):
    """The worker reached a recycling limit after its last event and is leaving."""

    reason: str


class EventFailed(NamedTuple):
    """The handler of event ``seq`` raised; sent at once, before the worker moves on."""

    seq: int
    exception: bytes  # the pickled exception, or b"" if it would not survive pickling
    type_name: str
    message: str
    traceback: str


class BatchRejected(NamedTuple):
    """The events of batch ``batch_no`` did not unpickle; the worker drops later batches too."""

    batch_no: int
    error: str


class BatchDone(NamedTuple):
    """Every event of batch ``batch_no`` has run: one acknowledgement per batch."""

    batch_no: int
    rss: int  # the worker's resident set size after the batch, in bytes (0 if not measured)


_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")


def frame(payload: bytes) -> bytes:
    """Frame ``payload`` exactly as ``Connection.send_bytes`` would."""
    n = len(payload)
    if n > 0x7FFFFFFF:
        return _SHORT.pack(-1) + _LONG.pack(n) + payload
    return _SHORT.pack(n) + payload


class FrameReader:
    """Reassembles ``Connection`` frames from bytes read without blocking."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes read from the pipe; return every frame now complete."""
        self._buffer += data
        frames: list[bytes] = []
        buf = self._buffer
        pos = 0
        while True:
            if len(buf) - pos < 4:
                break
            (size,) = _SHORT.unpack_from(buf, pos)
            header = 4
            if size == -1:
                if len(buf) - pos < 12:
                    break
                (size,) = _LONG.unpack_from(buf, pos + 4)
                header = 12
            end = pos + header + size
            if len(buf) < end:
                break
            frames.append(bytes(buf[pos + header : end]))
            pos = end
        if pos:
            del buf[:pos]
        return frames

    @property
    def partial(self) -> bool:
        """True while part of a frame is buffered (a worker that dies now lost a message)."""
        return bool(self._buffer)
