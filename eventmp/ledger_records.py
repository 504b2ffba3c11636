"""The ledger's records: positions, the batches a worker was given, and the facts it returns.

Plain values and arithmetic, no I/O. The parent's :class:`~eventmp.ledger.Ledger` keeps and
returns them, in whichever thread holds the dispatcher's lock; a worker process
(:mod:`eventmp.processor`) marks its progress with :func:`position`.

**Positions.** A worker marks in its progress array the position of the event it started and
of the last one it finished, ``position(batch_no, index)``. It runs its batches in the order
they were written to its pipe, and the parent numbers batches in that order, so within one
worker (one process, not one slot) positions order its events. They are never compared across
workers, and every piece of evidence is checked against the batches that worker was given:
events requeued after a crash land behind later-numbered ones on other workers, so a global
sequence number says nothing about what a worker has run. See ``docs/design.md``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .event import Event

__all__ = [
    "INDEX_BITS",
    "INDEX_MASK",
    "MAX_BATCH_EVENTS",
    "Batch",
    "Outcome",
    "WorkerExit",
    "position",
]

# A position packs (batch_no, index) into one int64, so that a worker marks it with one
# aligned write the parent can read at any time without tearing.
INDEX_BITS = 16
MAX_BATCH_EVENTS = 1 << INDEX_BITS
INDEX_MASK = MAX_BATCH_EVENTS - 1


def position(batch_no: int, index: int) -> int:
    """The progress-array value for the event at ``index`` in batch ``batch_no``."""
    return (batch_no << INDEX_BITS) | index


class Batch:
    """One batch written to one worker: its events, in order, and how far they are settled."""

    __slots__ = ("failed", "no", "seqs", "settled", "stop")

    def __init__(self, no: int, seqs: list[int], stop: bool = False) -> None:
        self.no = no
        self.seqs = seqs
        self.stop = stop  # the poison pill (no events; its index 0 is the pill)
        self.settled = 0  # events seqs[:settled] have their outcome
        self.failed: set[int] | None = None  # indexes past ``settled`` that failed already

    def unsettled(self, upto: int) -> list[int]:
        """The events before index ``upto`` that have no outcome yet, in order."""
        failed = self.failed
        return [
            seq
            for index, seq in enumerate(self.seqs[:upto])
            if index >= self.settled and not (failed and index in failed)
        ]


class Outcome(NamedTuple):
    """An event's outcome, for the error handler (failures) or for a tracking generator."""

    seq: int
    event: Event
    exception: BaseException | None  # None: processed
    originator: Any
    tracker: Any


class SettledRun(NamedTuple):
    """Processed events of one tracking generator, settled together, in order.

    Runs, not one record per event: a log tail tracks every event it makes, and its outcomes
    are settled and delivered by the thousand.
    """

    tracker: Any
    seqs: list[int]
    events: list[Event]


class WorkerExit(NamedTuple):
    """What the ledger concluded from a worker's death."""

    processed: int  # events it finished that were not settled yet
    crashed: int | None  # seq of the event it was running (still pending: the caller fails it)
    requeued: int  # events it held but never started, queued again
    took_pill: bool  # it finished its poison pill: it left because it was told to
