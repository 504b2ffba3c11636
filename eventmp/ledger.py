"""The ledger: where every accepted event is, from acceptance to its one outcome.

Runs in the parent process, from whichever thread holds the dispatcher's lock (the dispatcher
thread or a submitting one); it does no I/O and starts no thread, so it is tested alone
(``tests/test_ledger.py``). The dispatcher tells it what happened; it answers with facts (which
event a dead worker was running, which were requeued) and leaves the acting to the dispatcher.

An event's life::

    accept() ──> accepted ──queue()──> queued: a backlog (the shared one, or its slot's when
       │                                events are keyed), or a slot's resync list
       │                                 │ take() + assign()
       │                                 v
       │             held by one worker, at a position (batch_no, index)
       │                                 │ evidence from that worker about that position:
       │                                 ├─ batch_done(), finished_upto() ──> processed
       │                                 ├─ failed_at() ─────────────────────> failed
       │                                 ├─ worker_exited(): started there ──> crashed ──> fail()
       │                                 ├─ worker_exited(): not started ────> queued again
       │                                 └─ batch_rejected() ────────────────> queued again
       └─ fail(): a key that raised, an event that does not serialize, abandoned ──> failed

**Positions** (``position(batch_no, index)``) say what one worker did with the batches it was
given; the records and why they are not sequence numbers are in :mod:`eventmp.ledger_records`.

**Illegal transitions** (settling an event twice, or on evidence from a worker that never held
it) raise :class:`~eventmp.errors.LedgerError` when ``Ledger.strict`` is set (the environment
variable ``EVENTMP_STRICT_LEDGER=1``; eventmp's tests set it), and are otherwise logged as
errors and refused: never silently counted. Strict mode also audits the whole ledger after each
transition while it holds few events (:mod:`eventmp.ledger_audit`).
"""

from __future__ import annotations

import logging
import operator
import os
from collections import deque
from collections.abc import Callable, Iterable
from itertools import repeat
from typing import Any, ClassVar

from .errors import EventAbandonedError, LedgerError
from .event import Event
from .ledger_audit import audit_problems, held_seqs, holder
from .ledger_records import (
    INDEX_BITS,
    INDEX_MASK,
    MAX_BATCH_EVENTS,
    Batch,
    Outcome,
    SettledRun,
    WorkerExit,
    position,
)

# The worker marks its progress with position() and outcome delivery reads Outcome: both import
# them from here, the ledger's names.
__all__ = ["Ledger", "Outcome", "SettledRun", "position"]

logger = logging.getLogger("eventmp")

_new = tuple.__new__


class Ledger:
    """Every accepted event's state, for a dispatcher with ``slots`` worker slots.

    Not thread-safe: the dispatcher calls it with its lock held. ``pending`` maps each event
    without an outcome to the event; ``failures`` and ``settled`` are the outcomes the
    dispatcher has yet to deliver (to the error handler, to tracking generators).
    """

    strict: ClassVar[bool] = os.environ.get("EVENTMP_STRICT_LEDGER", "") not in ("", "0")

    def __init__(self, slots: int, keyed: bool = False) -> None:
        self.keyed = keyed
        self.pending: dict[int, Event] = {}
        self.shared: deque[int] = deque()
        self.lanes: list[deque[int]] = [deque() for _ in range(slots)]  # keyed backlogs
        self.resync: list[list[int]] = [[] for _ in range(slots)]  # to send one at a time
        self.trackers: dict[int, Any] = {}
        self.failures: deque[Outcome] = deque()
        self.settled: deque[SettledRun] = deque()
        # Estimated bytes of the pending events a generator sized (see
        # EventGenerator.event_size): the dispatcher stops polling at max_pending_bytes.
        self.sizes: dict[int, int] = {}
        self.bytes_held = 0
        self.accepted = 0
        self.processed = 0
        self.failed = 0
        self.abandoned = 0
        self.illegal = 0  # refused transitions (production only; strict mode raises)
        self._next_seq = 1
        self._held: dict[int, deque[Batch]] = {}  # worker id -> batches not yet settled
        self._slot_of: dict[int, int] = {}
        self._acked: dict[int, int] = {}  # worker id -> the last batch_no it settled whole
        self._pill: dict[int, int] = {}  # worker id -> the batch_no of its poison pill
        self._in_hand: list[int] = []  # taken from a backlog, not yet assigned (strict only)

    # -- acceptance and queues -----------------------------------------------------------------

    def accept(
        self, events: list[Event], tracker: Any = None, sizes: list[int] | None = None
    ) -> list[int]:
        """Number ``events`` and hold them as pending (not queued yet); their seqs.

        ``sizes`` are the events' estimated bytes, counted in ``bytes_held`` until each has
        its outcome.
        """
        first = self._next_seq
        self._next_seq = first + len(events)
        # A list, not a range: the pending map and the backlog then share one int object per
        # event, where each pass over a range would make its own.
        seqs = list(range(first, first + len(events)))
        self.pending.update(zip(seqs, events, strict=True))
        self.accepted += len(events)
        if tracker is not None:
            self.trackers.update(dict.fromkeys(seqs, tracker))
        if sizes is not None:
            for seq, size in zip(seqs, sizes, strict=True):
                if size > 0:
                    self.sizes[seq] = size
                    self.bytes_held += size
        return seqs

    def accept_one(self, event: Event) -> int:
        """Number one event (no tracker) and hold it as pending; its seq."""
        seq = self._next_seq
        self._next_seq = seq + 1
        self.pending[seq] = event
        self.accepted += 1
        return seq

    def next_seq(self) -> int:
        """The seq the next accepted event will get."""
        return self._next_seq

    def backlog(self, slot: int) -> deque[int]:
        """The queue a slot's worker takes its next events from (read it; change it here)."""
        return self.lanes[slot] if self.keyed else self.shared

    def queue(self, seqs: Iterable[int], slot: int | None = None) -> None:
        """Queue accepted events at the back: the shared backlog, or ``slot``'s when keyed."""
        (self.shared if slot is None else self.lanes[slot]).extend(seqs)

    def queued(self) -> int:
        """Events waiting in a backlog or a resync list."""
        return len(self.shared) + sum(map(len, self.lanes)) + sum(map(len, self.resync))

    def take(self, slot: int, count: int) -> list[int]:
        """Up to ``count`` events from the front of ``slot``'s backlog, to assign or fail."""
        backlog = self.lanes[slot] if self.keyed else self.shared
        if count >= len(backlog):
            seqs = list(backlog)  # the usual case under load: all of it, in one C-level pass
            backlog.clear()
        else:
            seqs = list(map(operator.call, repeat(backlog.popleft, count)))  # C-level too
        if self.strict:
            self._in_hand += seqs
        return seqs

    def take_resync(self, slot: int) -> list[int]:
        """The events ``slot``'s worker is to receive one at a time, to assign or fail."""
        seqs = [seq for seq in self.resync[slot] if seq in self.pending]
        self.resync[slot] = []
        if self.strict:
            self._in_hand += seqs
        return seqs

    def untake(self, slot: int, seqs: list[int]) -> None:
        """Put taken events back at the front of ``slot``'s backlog, in order."""
        self.backlog(slot).extendleft(reversed(seqs))
        if self.strict:
            self._release(seqs)

    # -- workers -------------------------------------------------------------------------------

    def worker_started(self, worker: int, slot: int) -> deque[Batch]:
        """Register worker ``worker`` (a unique id) in ``slot``; the batches it will hold."""
        if worker in self._held:
            self._illegal(f"worker {worker} registered twice")
        batches: deque[Batch] = deque()
        self._held[worker] = batches
        self._slot_of[worker] = slot
        self._acked[worker] = 0
        return batches

    def assign(self, worker: int, batch_no: int, seqs: list[int], stop: bool = False) -> None:
        """``worker`` was written batch ``batch_no`` holding ``seqs`` (taken), in that order."""
        batches = self._held.get(worker)
        if batches is None:
            self._illegal(f"batch {batch_no} assigned to unknown worker {worker}")
            return
        if (batches and batches[-1].no >= batch_no) or len(seqs) >= MAX_BATCH_EVENTS:
            last = batches[-1].no if batches else None
            self._illegal(f"batch {batch_no} ({len(seqs)} events) assigned after batch {last}")
        batches.append(Batch(batch_no, seqs, stop))
        if stop:
            self._pill[worker] = batch_no
        if self.strict:
            for seq in seqs:
                if seq not in self.pending:
                    self._illegal(f"event {seq} assigned without being pending")
            self._release(seqs)
            self.audit()

    def holds(self, worker: int) -> bool:
        """True while ``worker`` holds a batch not yet settled."""
        return bool(self._held.get(worker))

    def event_at(self, worker: int, pos: int) -> int | None:
        """The seq at ``pos`` in ``worker``'s batches, if it has no outcome yet."""
        batch = self._batch(worker, pos >> INDEX_BITS)
        if batch is None:
            return None
        index = pos & INDEX_MASK
        if index < batch.settled or index >= len(batch.seqs):
            return None
        if batch.failed and index in batch.failed:
            return None
        return batch.seqs[index]

    # -- evidence from a worker ----------------------------------------------------------------

    def failed_at(
        self, worker: int, pos: int, seq: int, originator: Any, exception: BaseException
    ) -> bool:
        """The handler of the event at ``pos`` in ``worker`` raised; false if refused."""
        batch = self._batch(worker, pos >> INDEX_BITS)
        index = pos & INDEX_MASK
        if batch is None or index >= len(batch.seqs) or batch.seqs[index] != seq:
            self._illegal(f"worker {worker} reported event {seq} failed at {_where(pos)}: not held")
            return False
        if index < batch.settled or (batch.failed and index in batch.failed):
            self._illegal(f"worker {worker} reported event {seq} failed twice")
            return False
        if batch.failed is None:
            batch.failed = set()
        batch.failed.add(index)
        self._settle_failed(seq, originator, exception)
        return True

    def batch_done(self, worker: int, batch_no: int) -> int:
        """``worker`` ran every event of ``batch_no`` (and of the batches before it).

        Returns how many events the acknowledged batch held, or -1 if the acknowledgement was
        refused.
        """
        batches = self._held.get(worker)
        if not batches or (batches[0].no != batch_no and self._batch(worker, batch_no) is None):
            self._illegal(f"worker {worker} acknowledged batch {batch_no}, which it does not hold")
            return -1
        size = -1
        pending = self.pending
        while batches and batches[0].no <= batch_no:
            batch = batches.popleft()
            seqs = batch.seqs
            if batch.no == batch_no:
                size = len(seqs)
            if batch.settled or batch.failed or self.trackers or self.sizes:
                self._settle_processed(batch, len(seqs))
                continue
            # The hot path, inlined: a whole batch, nothing settled or failed in it before.
            before = len(pending)
            pop = pending.pop
            for seq in seqs:
                pop(seq, None)
            settled = before - len(pending)
            batch.settled = len(seqs)
            self.processed += settled
            if settled != len(seqs):
                self._illegal(
                    f"batch {batch.no}: {len(seqs) - settled} of its events were settled twice"
                )
        self._acked[worker] = batch_no
        if self.strict:
            self.audit()
        return size

    def finished_upto(self, worker: int, pos: int) -> int:
        """``worker`` finished every event up to ``pos`` (its progress array's finished mark).

        Read the mark first, then every message the worker wrote: a worker reports a failure
        before it marks the event finished. Returns how many events this settled.
        """
        if not pos:
            return 0
        batch_no, index = pos >> INDEX_BITS, pos & INDEX_MASK
        batches = self._held.get(worker)
        if batches is None or (
            batch_no > self._acked[worker] and self._batch(worker, batch_no) is None
        ):
            self._illegal(f"worker {worker} marked {_where(pos)} finished, which it does not hold")
            return 0
        settled = 0
        for batch in batches:
            if batch.no > batch_no:
                break
            upto = len(batch.seqs) if batch.no < batch_no else min(index + 1, len(batch.seqs))
            settled += self._settle_processed(batch, upto)
        if self.strict:
            self.audit()
        return settled

    def batch_rejected(self, worker: int, batch_no: int) -> bool:
        """``worker`` could not unpickle ``batch_no`` and dropped it and every later batch.

        The rejected batch's events go to the slot's resync list (sent one at a time); those
        of later batches back to the front of its backlog. True if a dropped batch was the
        poison pill (to be sent again).
        """
        batches = self._held.get(worker)
        if batches is None or self._batch(worker, batch_no) is None:
            self._illegal(f"worker {worker} rejected batch {batch_no}, which it does not hold")
            return False
        slot = self._slot_of[worker]
        rejected: list[int] = []
        later: list[int] = []
        lost_pill = False
        while batches and batches[-1].no >= batch_no:
            batch = batches.pop()
            lost_pill |= batch.stop
            unsettled = batch.unsettled(len(batch.seqs))
            if batch.no == batch_no:
                rejected = unsettled
            else:
                later[:0] = unsettled
        if lost_pill:
            del self._pill[worker]
        self.resync[slot] = rejected + self.resync[slot]
        self.backlog(slot).extendleft(reversed(later))
        if self.strict:
            self.audit()
        return lost_pill

    def worker_exited(
        self, worker: int, started: int, finished: int, resync_unstarted: bool = False
    ) -> WorkerExit:
        """``worker`` is gone; settle what it held by its last progress marks.

        Call it after reading every message the worker wrote. Events up to ``finished`` were
        processed; the one at ``started``, if past ``finished`` and without an outcome, was
        running when it died (returned as ``crashed``, still pending, for the caller to fail);
        the rest never started and are queued again at the front (of the slot's resync list
        if ``resync_unstarted`` and no event was in hand: something in a batch killed it while
        being unpickled, so the next worker gets them one by one).
        """
        if worker not in self._held:
            self._illegal(f"worker {worker} exited twice, or was never registered")
            return WorkerExit(0, None, 0, False)
        processed = self.finished_upto(worker, finished)
        pill = self._pill.pop(worker, None)
        took_pill = pill is not None and finished >= position(pill, 0)
        crashed = self.event_at(worker, started) if started > finished else None
        if crashed is not None:
            batch = self._batch(worker, started >> INDEX_BITS)
            assert batch is not None
            if batch.failed is None:
                batch.failed = set()
            batch.failed.add(started & INDEX_MASK)  # its outcome is the caller's to give
        slot = self._slot_of.pop(worker)
        del self._acked[worker]
        last = max(started, finished)
        unstarted: list[int] = []
        for batch in self._held.pop(worker):
            for index in range(batch.settled, len(batch.seqs)):
                if batch.failed and index in batch.failed:
                    continue
                if position(batch.no, index) <= last:
                    # It started a later event, so it finished this one: its finished mark
                    # cannot lag by more than the event in hand.
                    self._illegal(f"worker {worker} skipped event {batch.seqs[index]}")
                unstarted.append(batch.seqs[index])
        if resync_unstarted and crashed is None:
            self.resync[slot] = unstarted + self.resync[slot]
        else:
            self.backlog(slot).extendleft(reversed(unstarted))
        if self.strict:
            self.audit()
        return WorkerExit(processed, crashed, len(unstarted), took_pill)

    # -- failures decided in the parent ---------------------------------------------------------

    def fail(self, seq: int, originator: Any, exception: BaseException) -> bool:
        """Fail a pending event that no worker holds now; false if refused.

        Refused (and logged, or raised in strict mode) if it has an outcome already or a live
        worker holds it: only that worker's evidence may settle it. The check scans the
        batches in flight, a C-level pass over a few thousand seqs at most.
        """
        if seq not in self.pending:
            self._illegal(f"event {seq} failed in the parent, but it has an outcome already")
            return False
        held_by = holder(self._held, seq)
        if held_by is not None:
            self._illegal(f"event {seq} failed in the parent while worker {held_by} holds it")
            return False
        if self.strict and seq in self._in_hand:
            self._in_hand.remove(seq)
        self._settle_failed(seq, originator, exception)
        return True

    def fail_queued(self, originator: Any, make_error: Callable[[], BaseException]) -> int:
        """Fail every queued event (backlogs and resync lists); how many."""
        queued: list[int] = []
        for backlog in (self.shared, *self.lanes):
            queued += backlog
            backlog.clear()
        for slot, seqs in enumerate(self.resync):
            self.resync[slot] = []
            queued += seqs
        held = held_seqs(self._held)
        count = 0
        for seq in queued:
            if seq not in self.pending:
                continue  # a resync list may name an event failed since
            if seq in held:
                self._illegal(f"event {seq} is queued while a worker holds it")
                continue
            self._settle_failed(seq, originator, make_error())
            count += 1
        return count

    def fail_unheld(self, originator: Any, error: BaseException) -> int:
        """Fail every pending event that no worker holds (queued or not); how many."""
        held = held_seqs(self._held)
        for backlog in (self.shared, *self.lanes):
            backlog.clear()
        self.resync = [[] for _ in self.resync]
        count = 0
        for seq in [seq for seq in self.pending if seq not in held]:
            self._settle_failed(seq, originator, error)
            count += 1
        return count

    # -- invariants ----------------------------------------------------------------------------

    def audit(self) -> None:
        """Check that each pending event is in exactly one place (strict mode calls it)."""
        for problem in audit_problems(
            self.pending,
            shared=self.shared,
            lanes=self.lanes,
            resync=self.resync,
            held=self._held,
            in_hand=self._in_hand,
            sizes=self.sizes,
            bytes_held=self.bytes_held,
        ):
            self._illegal(problem)

    # -- internals -----------------------------------------------------------------------------

    def _batch(self, worker: int, batch_no: int) -> Batch | None:
        for batch in self._held.get(worker, ()):
            if batch.no == batch_no:
                return batch
        return None

    def _settle_processed(self, batch: Batch, upto: int) -> int:
        """Settle ``batch``'s events before index ``upto`` as processed; how many it settled."""
        start = batch.settled
        if upto <= start:
            return 0
        seqs = batch.seqs[start:upto] if start or upto < len(batch.seqs) else batch.seqs
        failed = batch.failed
        skipped = sum(1 for index in failed if start <= index < upto) if failed else 0
        pending = self.pending
        if self.trackers:
            settled = 0
            untrack = self.trackers.pop
            last: Any = None  # the tracker of the run being built
            run_seqs: list[int] = []
            run_events: list[Event] = []
            for index, seq in enumerate(seqs, start):
                if failed and index in failed:
                    continue
                event = pending.pop(seq, None)
                if event is None:
                    continue
                settled += 1
                tracker = untrack(seq, None)
                if tracker is None:
                    continue
                if tracker is not last:
                    last, run_seqs, run_events = tracker, [], []
                    # tuple.__new__: a NamedTuple's own constructor is a Python function.
                    self.settled.append(_new(SettledRun, (tracker, run_seqs, run_events)))
                run_seqs.append(seq)
                run_events.append(event)
        else:
            # The hot path: a failed event was popped before, hence the default. A plain loop
            # costs less than a C-level pass through deque(map(...)) at every batch size.
            before = len(pending)
            pop = pending.pop
            for seq in seqs:
                pop(seq, None)
            settled = before - len(pending)
        if self.sizes:
            self._release_bytes(seqs)
        batch.settled = upto
        self.processed += settled
        if settled != len(seqs) - skipped:
            self._illegal(
                f"batch {batch.no}: {len(seqs) - skipped - settled} of its events were "
                "settled twice"
            )
        return settled

    def _release_bytes(self, seqs: Iterable[int]) -> None:
        """Stop counting the bytes of these settled events (those a generator sized)."""
        pop = self.sizes.pop
        released = 0
        for seq in seqs:
            released += pop(seq, 0)
        self.bytes_held -= released

    def _settle_failed(self, seq: int, originator: Any, exception: BaseException) -> None:
        event = self.pending.pop(seq)
        if self.sizes:
            self.bytes_held -= self.sizes.pop(seq, 0)
        self.failed += 1
        if isinstance(exception, EventAbandonedError):
            self.abandoned += 1
        tracker = self.trackers.pop(seq, None) if self.trackers else None
        self.failures.append(Outcome(seq, event, exception, originator, tracker))

    def _release(self, seqs: list[int]) -> None:
        in_hand = self._in_hand
        for seq in seqs:
            if seq in in_hand:
                in_hand.remove(seq)

    def _illegal(self, message: str) -> None:
        self.illegal += 1
        if self.strict:
            raise LedgerError(message)
        logger.error("eventmp ledger: %s; refused (a bug in eventmp: please report it)", message)


def _where(pos: int) -> str:
    return f"batch {pos >> INDEX_BITS} index {pos & INDEX_MASK}"
