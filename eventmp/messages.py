"""The messages that cross between the dispatcher and its worker processes.

Each is a small named type. On the wire they are ``multiprocessing.Connection`` frames (a
4-byte big-endian length, or -1 and an 8-byte length for huge ones) holding a kind byte and the
message: the two that travel for every batch (:class:`EventBatch`, :class:`BatchDone`) have
headers packed by hand, the rest are pickled (protocol 5). Both sides write and read the pipes
themselves, the parent without ever blocking.

Parent to worker: :class:`EventBatch`, :class:`HandlerUpdate`. Worker to parent:
:class:`WorkerReady`, :class:`EventFailed`, :class:`BatchDone`, :class:`BatchRejected`,
:class:`WorkerRetiring`.

Besides the messages, each worker shares a tiny array with the parent (:data:`PROGRESS_FIELDS`):
the position (batch and index, see :func:`eventmp.ledger.position`) of the event it started,
when it started it, the position of the last one it finished, and the last batch it
acknowledged. It costs a memory write per event instead of a message, and it survives the
worker's death, so after a crash the parent knows exactly which event was in hand, which were
done, and which never started; a submitting thread reads the acknowledgements as
soon as the last one shows there. The parent sets RING while its dispatcher thread sleeps
without watching the result pipes: a worker then rings the parent's wake-up pipe once it has
been idle a moment. It sets FLOODED while events arrive faster than a worker should spin for.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, NamedTuple

__all__ = [
    "ACKED",
    "FINISHED",
    "FLOODED",
    "PROGRESS_FIELDS",
    "RING",
    "STARTED",
    "STARTED_AT_NS",
    "STOP_HANDLER_ID",
    "BatchDone",
    "BatchRejected",
    "EventBatch",
    "EventFailed",
    "FrameReader",
    "HandlerCounters",
    "HandlerUpdate",
    "WorkerReady",
    "WorkerRetiring",
    "batch_frame_head",
    "decode_result",
    "decode_task",
    "encode_batch",
    "encode_done",
    "encode_handler_update",
    "encode_result",
    "frame",
    "plain_batch",
]

_PROTOCOL = 5

# Handler id 0 is the poison pill (StopEventHandler); every worker knows it without being told.
STOP_HANDLER_ID = 0

# Indexes in the shared progress array.
STARTED = 0  # position of the event in hand (or last run)
STARTED_AT_NS = 1
FINISHED = 2  # position of the last event finished
ACKED = 3  # the batch_no of the last BatchDone written
RING = 4  # set by the parent: ring its wake-up pipe when idle and no new batch comes
FLOODED = 5  # set by the parent: events arrive too fast for a worker to spin between batches
PROGRESS_FIELDS = 6

# One event on the wire: (seq, handler_id, originator, data, timestamp).
WireEvent = tuple[int, int, Any, Any, float]


class EventBatch(NamedTuple):
    """Events for a worker, to run in order; acknowledged by one :class:`BatchDone`.

    ``events`` is one pickle of a list of wire events. If it does not unpickle in the worker,
    the worker reports :class:`BatchRejected` and drops every batch after it until the parent
    re-sends them, starting with a ``resync`` batch, whose ``events`` is a pickled list of
    ``(seq, pickled event)``, so that one bad event fails alone.
    """

    batch_no: int
    events: bytes | memoryview
    resync: bool = False


class HandlerUpdate(NamedTuple):
    """Handlers the worker has not seen yet (sent before the batch that uses them), and the
    ids of handlers the parent dropped from its cache (sent after their last use)."""

    definitions: list[tuple[int, bytes]]  # (handler_id, dill bytes)
    forget: list[int]


class WorkerReady(NamedTuple):
    """The worker imported everything and is waiting for events."""

    pid: int
    rss: int  # resident set size before any event, in bytes (0 if not measured)


class HandlerCounters(NamedTuple):
    """What the worker's handlers have counted so far (their ``counters()``), summed by name.

    Cumulative for this worker process, sent when it changed, at most about once a second and
    before the worker leaves: the parent keeps the last one of each worker.
    """

    counters: dict[str, int]


class WorkerRetiring(NamedTuple):
    """The worker is leaving between events: a recycling limit, or a SIGTERM (``signalled``).

    A worker that leaves because it was told to is not a crash, whatever its exit status says
    (a worker whose forkserver died reports 255).
    """

    reason: str
    signalled: bool = False


class EventFailed(NamedTuple):
    """The handler of event ``seq``, at ``position`` in the worker's batches, raised.

    Sent at once, before the worker marks the event finished and moves on.
    """

    position: int  # see eventmp.ledger.position
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
    busy_ns: int = 0  # time the worker spent running the batch (the parent sizes batches by it)


_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")

# Parent-to-worker frames start with a kind byte; a batch's header is packed by hand because
# it is on every event's path, and the rare handler updates are pickled.
_TASK_BATCH = 1
_TASK_RESYNC = 2
_TASK_HANDLERS = 3
_BATCH_HEADER = struct.Struct("!BQ")  # kind, batch_no
_BATCH_FRAME_HEAD = struct.Struct("!iBQ")  # the same, framed
# Worker-to-parent frames: an acknowledgement is packed by hand (one per batch); the rest
# (failures, readiness, recycling) are pickled named tuples.
_RESULT_DONE = 1
_RESULT_PICKLED = 2
_DONE = struct.Struct("!BQQQ")  # kind, batch_no, rss, busy_ns
_DONE_FRAME = struct.Struct("!iBQQQ")  # the same, framed: packed in one go, once per batch


def encode_batch(batch_no: int, events: bytes, resync: bool = False) -> bytes:
    """A framed :class:`EventBatch`, ready to write to a task pipe."""
    return batch_frame_head(batch_no, len(events), resync) + events


def batch_frame_head(batch_no: int, size: int, resync: bool = False) -> bytes:
    """The bytes that go before a batch's ``size`` bytes of pickled events on a task pipe.

    The sender appends the two to its output buffer one after the other: a batch is tens of
    kilobytes, and joining it to its header first would copy it once more.
    """
    kind = _TASK_RESYNC if resync else _TASK_BATCH
    n = _BATCH_HEADER.size + size
    if n > 0x7FFFFFFF:
        return _SHORT.pack(-1) + _LONG.pack(n) + _BATCH_HEADER.pack(kind, batch_no)
    return _BATCH_FRAME_HEAD.pack(n, kind, batch_no)


def encode_handler_update(update: HandlerUpdate) -> bytes:
    """A framed :class:`HandlerUpdate`."""
    return frame(bytes((_TASK_HANDLERS,)) + pickle.dumps(tuple(update), _PROTOCOL))


def decode_task(payload: bytes) -> EventBatch | HandlerUpdate:
    """Decode a frame's payload read from the task pipe (without unpickling the events)."""
    kind = payload[0]
    if kind == _TASK_HANDLERS:
        return HandlerUpdate(*pickle.loads(memoryview(payload)[1:]))
    _kind, batch_no = _BATCH_HEADER.unpack_from(payload)
    return EventBatch(batch_no, memoryview(payload)[_BATCH_HEADER.size :], kind == _TASK_RESYNC)


def plain_batch(payload: bytes) -> tuple[int, memoryview] | None:
    """``(batch_no, events)`` if ``payload`` is an ordinary (not resync) batch, else None.

    The worker's common case, decoded without building an :class:`EventBatch`: on an idle
    pipeline each line between the read and the handler runs with the CPU's caches cold.
    """
    if payload[0] != _TASK_BATCH:
        return None
    return _BATCH_HEADER.unpack_from(payload)[1], memoryview(payload)[_BATCH_HEADER.size :]


def encode_done(batch_no: int, rss: int, busy_ns: int = 0) -> bytes:
    """A framed :class:`BatchDone`, without building one (the worker sends one per batch)."""
    return _DONE_FRAME.pack(_DONE.size, _RESULT_DONE, batch_no, rss, busy_ns)


def encode_result(message: tuple[Any, ...]) -> bytes:
    """A framed worker-to-parent message."""
    if type(message) is BatchDone:
        return encode_done(message.batch_no, message.rss, message.busy_ns)
    return frame(bytes((_RESULT_PICKLED,)) + pickle.dumps(message, _PROTOCOL))


def decode_result(payload: bytes) -> Any:
    """Decode a frame's payload read from a result pipe."""
    if payload[0] == _RESULT_DONE:
        _kind, batch_no, rss, busy_ns = _DONE.unpack(payload)
        return BatchDone(batch_no, rss, busy_ns)
    return pickle.loads(memoryview(payload)[1:])


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
        if not self._buffer and len(data) >= 4:
            # The common case: the read holds exactly one whole frame.
            (size,) = _SHORT.unpack_from(data)
            if size >= 0 and len(data) == size + 4:
                return [data[4:]]
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
