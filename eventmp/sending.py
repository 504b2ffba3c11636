"""Sending: which events go to which worker now, encoded and queued on its task pipe.

Runs in the parent process, under the dispatcher's lock, in whichever thread holds it (the
dispatcher thread, or a submitting one). It asks :mod:`eventmp.batching` whether a worker gets
a batch, takes the events from the :class:`~eventmp.ledger.Ledger` and records the batch
against that worker there, serializes them (each handler once, through the
:class:`~eventmp.handler_cache.HandlerCache`), and writes what the task pipe takes without
blocking; the dispatcher thread writes the rest when the pipe has room.

An event that cannot be serialized fails here, alone, before anything is written: a pickling
error belongs to the one event that caused it.
"""

from __future__ import annotations

import errno
import itertools
import os
import time
from typing import Any

from . import batching, serialization
from .batching import MAX_BATCH_BYTES, MAX_INFLIGHT_BATCHES, Estimates, FloodGauge
from .errors import EventmpError
from .event import Event
from .handler_cache import HandlerCache
from .ledger import Ledger
from .messages import (
    FLOODED,
    STOP_HANDLER_ID,
    HandlerUpdate,
    WireEvent,
    batch_frame_head,
    encode_handler_update,
)
from .shared import Mode, Waker
from .workers import Slot, WorkerHandle

__all__ = ["Sender"]

_monotonic = time.monotonic
_ORIGINATOR = "EventDispatcher"  # the originator of an error event decided in the parent
_NO_HANDLER = object()  # no event's handler: the first event of a batch looks its handler up


class Sender:
    """Feeds the workers of ``slots`` from ``ledger``'s queues."""

    def __init__(
        self,
        ledger: Ledger,
        slots: list[Slot],
        waker: Waker,
        mode: Mode,
        *,
        keyed: bool,
        event_timeout: float | None,
    ) -> None:
        self.ledger = ledger
        self.slots = slots  # the pool's list: slots are added as workers start
        self.waker = waker
        self.mode = mode
        self.keyed = keyed
        self.event_timeout = event_timeout
        self.handlers = HandlerCache()
        self.estimates = Estimates()
        self.flood = FloodGauge()
        self._batch_no = itertools.count(1)
        # Whether some worker could take a batch now: submit() sends at once only then, and
        # otherwise leaves the event to the batch that the next acknowledgement sends.
        self.sendable = False
        self.idle_worker: WorkerHandle | None = None  # one with nothing in flight
        # Cheap events are being held back for a busy worker (see batching.hold_back); the
        # dispatcher thread then keeps a timer for the moment that worker would count as
        # stalled.
        self.held_back = False
        self.hold_timer_armed = False

    def feed(self, arrived: int | None = None) -> None:
        """Send queued events to every worker that has room, then the poison pills if draining.

        ``arrived`` is how many events the pipeline has accepted so far, counting those still
        in submit()'s inbox: the flood gauge's measure (left alone when not given).
        """
        self.held_back = False
        flood = self.flood
        ledger = self.ledger
        if arrived is not None and flood.update(_monotonic(), arrived):
            for slot in self.slots:
                slot.view[FLOODED] = int(flood.flooded)
        slots = self.slots
        pooled = len(slots) > 1 and not self.keyed  # several workers share one backlog
        if pooled:
            # The least busy worker first, so that a few slow events spread out.
            slots = sorted(
                slots, key=lambda slot: slot.worker.inflight_events if slot.worker else 0
            )
        cheap = len(slots) > 1 and self.estimates.cheap
        limit = self.estimates.batch_limit(pooled)
        draining = self.mode.draining
        for slot in slots:
            worker = slot.worker
            if worker is None or not worker.open:
                continue
            if ledger.resync[slot.index]:
                self.send_resync(worker)
            backlog = ledger.lanes[slot.index] if self.keyed else ledger.shared
            if backlog and not worker.batches and self.event_timeout is not None:
                # The dispatcher thread may sleep without a timer; it must now time this.
                self.waker.wake()
            if cheap:
                while len(worker.batches) < MAX_INFLIGHT_BATCHES and backlog:
                    if batching.hold_back(
                        self.slots, len(backlog), limit, flood.flooded, _monotonic()
                    ):
                        self.held_back = True
                        break
                    self.send_batch(worker, limit)
            else:
                # An idle worker gets what there is without asking (the usual case).
                while backlog and (
                    not worker.batches or batching.wants_batch(worker, len(backlog), limit)
                ):
                    share = len(backlog)
                    if pooled:
                        share = -(-share // batching.workers_with_room(self.slots))
                    self.send_batch(worker, min(limit, share))
            if draining and not backlog and not ledger.resync[slot.index]:
                self.send_stop(worker)
            if worker.outbuf:
                self.flush(worker)
        self.find_idle_worker()

    def send_alone(self, event: Event, *, caught_up: bool = False) -> bool:
        """Accept ``event`` and write it to the idle worker at once; false if not (nothing done).

        The idle-latency path: an event that finds its pipeline idle runs every line between
        ``submit()`` and the write with the CPU's caches cold, where each line costs several
        times what it does under load. This does the same bookkeeping as :meth:`feed` for the
        common case, one event, a worker that is idle and already knows the handler, and plain
        data, and leaves anything else to it.

        With ``caught_up``, a worker whose acknowledgements are not read yet will do too if
        its progress array says it has finished everything (see
        :func:`batching.caught_up_worker`): the event is written before they are read.
        """
        worker = self.idle_worker
        if worker is None and caught_up:
            worker = batching.caught_up_worker(self.slots)
            if worker is not None and len(worker.batches) >= MAX_INFLIGHT_BATCHES:
                worker = None
        ledger = self.ledger
        if (
            self.keyed  # the event's key picks its worker: feed() routes it
            or worker is None
            or ledger.shared
            or (worker.batches and not caught_up)
            or not worker.open
            or worker.outbuf
            or worker.forget
            or ledger.resync[worker.slot]
            or self.slots[worker.slot].worker is not worker
        ):
            return False
        originator = event.originator
        if (
            event.handler is not worker.last_handler
            or worker.last_handler_id < 0
            or type(originator) is not str
        ):
            return False
        seq = ledger.next_seq()
        try:
            blob = serialization.dumps(
                [(seq, worker.last_handler_id, originator, event.data, event.timestamp)]
            )
        except Exception:
            return False  # feed() knows what to do with data plain pickle refuses
        # Written first, recorded after: the lock, held throughout, keeps every reader of the
        # worker's answers out until the ledger knows the batch; what runs before the write
        # is what the event waits for.
        batch_no = next(self._batch_no)
        worker.outbuf += batch_frame_head(batch_no, len(blob))
        worker.outbuf += blob
        self.flush(worker)
        ledger.accept_one(event)
        self._record_batch(worker, batch_no, [seq], False)
        if len(self.slots) == 1:
            self.idle_worker = None
            self.sendable = False
        else:
            self.find_idle_worker()
        if self.event_timeout is not None:
            self.waker.wake()  # the dispatcher thread may sleep without a timer; it must time this
        return True

    def find_idle_worker(self) -> None:
        """Note a worker with nothing in flight, which submit() may write to at once.

        With several workers and cheap or keyed events, only while no worker has anything in
        flight (or only stalled ones): otherwise there is nearly always an idle worker, every
        event goes alone, and the parent pays a round trip per event. Events then wait for the
        busy worker's acknowledgement, or a submitter's next look (every 100 us at most), and
        go together. Unkeyed events that cost a worker more than a round trip go to an idle
        worker at once.
        """
        self.idle_worker = batching.idle_worker(self.slots)
        if (
            self.idle_worker is not None
            and len(self.slots) > 1
            and (self.keyed or self.estimates.cheap)
            and batching.inflight_progressing(self.slots, _monotonic())
        ):
            self.idle_worker = None
            self.held_back = True
        self.sendable = self.idle_worker is not None
        if self.held_back and not self.hold_timer_armed and not self.waker.in_loop():
            # Should the busy worker stall, nothing else would send what waits meanwhile.
            self.waker.wake()

    def send_batch(self, worker: WorkerHandle, count: int) -> None:
        """Take up to ``count`` queued events for ``worker``, encode them, queue the write."""
        ledger = self.ledger
        seqs = ledger.take(worker.slot, count)
        # The hot path under load: locals, and the handler looked up once per run of events
        # that share it (the usual case).
        items: list[WireEvent] = []
        definitions: list[tuple[int, bytes]] = []
        pending = ledger.pending
        last_handler: Any = _NO_HANDLER
        handler_id = -1
        last_originator: Any = None  # and its wire form: a generator's events come in runs
        wire: Any = None
        for seq in seqs:
            event = pending[seq]
            handler = event.handler
            if handler is not last_handler:
                try:
                    handler_id = self.handler_id(handler, worker, definitions)
                except EventmpError as exc:
                    last_handler = _NO_HANDLER  # the next event asks again
                    self._fail(seq, exc)
                    continue
                last_handler = handler
            originator = event.originator
            if type(originator) is not str:
                if originator is not last_originator:
                    last_originator, wire = originator, serialization.wire_originator(originator)
                originator = wire
            items.append((seq, handler_id, originator, event.data, event.timestamp))
        if not items and not definitions:
            return
        blob, kept, failures = serialization.encode_events(items)
        for seq, error in failures:
            self._fail(seq, error)
        while len(blob) > MAX_BATCH_BYTES and len(kept) > 1:
            # Heavier events than the estimate said: the second half goes back to the front.
            half = len(kept) // 2
            ledger.untake(worker.slot, [item[0] for item in kept[half:]])
            kept = kept[:half]
            blob = serialization.dumps(kept)
        self.estimates.note_bytes(len(blob), len(kept))
        # Usually every event taken went: the list taken is then the list sent.
        sent = seqs if len(kept) == len(seqs) else [item[0] for item in kept]
        self.write_batch(worker, definitions, blob, sent)

    def send_resync(self, worker: WorkerHandle) -> None:
        """Send the slot's resync list as one batch of separately pickled events."""
        ledger = self.ledger
        definitions: list[tuple[int, bytes]] = []
        items: list[WireEvent] = []
        for seq in ledger.take_resync(worker.slot):
            event = ledger.pending[seq]
            try:
                handler_id = self.handler_id(event.handler, worker, definitions)
            except EventmpError as exc:
                self._fail(seq, exc)
                continue
            originator = serialization.wire_originator(event.originator)
            items.append((seq, handler_id, originator, event.data, event.timestamp))
        blob, kept, failures = serialization.encode_single_events(items)
        for seq, error in failures:
            self._fail(seq, error)
        self.write_batch(worker, definitions, blob, [item[0] for item in kept], resync=True)

    def send_stop(self, worker: WorkerHandle) -> None:
        worker.stop_sent = True
        blob = serialization.dumps([(0, STOP_HANDLER_ID, "EventDispatcher", None, time.time())])
        self.write_batch(worker, [], blob, [], stop=True)

    def write_batch(
        self,
        worker: WorkerHandle,
        definitions: list[tuple[int, bytes]],
        blob: bytes,
        seqs: list[int],
        *,
        resync: bool = False,
        stop: bool = False,
    ) -> None:
        """Queue a batch's frames on ``worker``'s output and give it the batch in the ledger."""
        batch_no = next(self._batch_no)
        if definitions:
            worker.outbuf += encode_handler_update(HandlerUpdate(definitions, []))
        worker.outbuf += batch_frame_head(batch_no, len(blob), resync)
        worker.outbuf += blob
        if worker.forget:
            worker.outbuf += encode_handler_update(HandlerUpdate([], worker.forget))
            worker.forget = []
        self._record_batch(worker, batch_no, seqs, stop)

    def _record_batch(
        self, worker: WorkerHandle, batch_no: int, seqs: list[int], stop: bool
    ) -> None:
        """Give ``worker`` the batch in the ledger (lock held, before anyone reads its answers)."""
        if not worker.batches:
            worker.progressed_at = _monotonic()
        self.ledger.assign(worker.id, batch_no, seqs, stop)
        worker.last_batch = batch_no

    def handler_id(
        self, handler: Any, worker: WorkerHandle, definitions: list[tuple[int, bytes]]
    ) -> int:
        """The id ``worker`` knows ``handler`` by; queues its definition if it lacks it."""
        if handler is worker.last_handler and worker.last_handler_id >= 0:
            return worker.last_handler_id
        handler_id, blob, evicted = self.handlers.lookup(handler)
        if evicted is not None:
            for slot in self.slots:
                other = slot.worker
                if other is not None and evicted in other.known_handlers:
                    other.known_handlers.discard(evicted)
                    other.forget.append(evicted)
                    if other.last_handler_id == evicted:
                        other.last_handler = None
                        other.last_handler_id = -1
        if handler_id not in worker.known_handlers:
            worker.known_handlers.add(handler_id)
            definitions.append((handler_id, blob))
        worker.last_handler = handler
        worker.last_handler_id = handler_id
        return handler_id

    def flush(self, worker: WorkerHandle) -> None:
        """Write as much of the worker's output as its pipe takes now, without blocking."""
        if not worker.outbuf or worker.exited:
            return
        try:
            written = os.write(worker.task_fd, worker.outbuf)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EBADF):
                # The worker is gone; its sentinel will tell the dispatcher thread.
                worker.outbuf.clear()
                self.waker.wake()
                return
            raise
        del worker.outbuf[:written]
        if worker.outbuf and not self.waker.in_loop():
            self.waker.wake()  # the dispatcher thread must watch the pipe for room

    def _fail(self, seq: int, error: BaseException) -> None:
        """Fail an event that could not be sent; the dispatcher thread delivers it."""
        if self.ledger.fail(seq, _ORIGINATOR, error):
            self.waker.wake_from_elsewhere()
