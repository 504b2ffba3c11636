"""The worker pool: the parent's side of every worker process.

Runs in the parent process. It starts workers and waits until they are ready, reads what they
write back (acknowledgements, failures) into the :class:`~eventmp.ledger.Ledger`, enforces
``event_timeout``, notices deaths and reaps the dead, and waits on every pipe and sentinel at
once for the dispatcher thread (:meth:`WorkerPool.wait_for_io`, the one place that blocks). Its
methods run with the dispatcher's lock held unless they say otherwise; reaping, which may join,
runs without it. What an exit settles and whether a fresh worker follows is
:mod:`eventmp.lifecycle`'s job; what goes to the workers is :mod:`eventmp.sending`'s.

This is the seam a second backend would replace (workers as Ray actors, say): it turns a
worker's reports into ledger transitions. Here those reports are messages on a pipe plus the
shared progress array's positions; a backend without shared memory would report the same
positions by message, and the ledger would not change.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import threading
import time
from typing import Any

from . import batching, serialization, workers
from .errors import WorkerStartError
from .ledger import Ledger
from .lifecycle import SlotChange, WorkerLifecycle
from .messages import (
    FINISHED,
    PROGRESS_FIELDS,
    RING,
    STARTED,
    STARTED_AT_NS,
    BatchDone,
    BatchRejected,
    EventFailed,
    HandlerCounters,
    WorkerReady,
    WorkerRetiring,
    decode_result,
)
from .sending import Sender
from .shared import Mode, Waker
from .workers import Slot, WorkerHandle, WorkerSettings, processor_name

__all__ = ["WorkerPool"]

logger = logging.getLogger("eventmp")

_READ_CHUNK = 1 << 18
_SETTLE_INTERVAL = 0.2  # how often finished events of tracking generators are settled early
# ... and at most how often, while the loop turns faster: a look costs a read of the result
# pipe and a walk over the worker's batches, and a checkpoint needs no fresher news.
_SETTLE_MIN_GAP = 0.02
_monotonic = time.monotonic


class WorkerPool:
    """``count`` worker slots, their processes, and what each process holds (in the ledger)."""

    def __init__(
        self,
        ledger: Ledger,
        changed: threading.Condition,
        waker: Waker,
        mode: Mode,
        *,
        context: Any,
        count: int,
        keyed: bool,
        event_timeout: float | None,
        kill_grace: float,
        start_timeout: float,
        idle_spin: float,
        max_events_per_worker: int | None,
        max_memory_per_worker: int | None,
    ) -> None:
        self.ledger = ledger
        self.changed = changed  # the dispatcher's lock, and its condition
        self.waker = waker
        self.context = context
        self.start_method: str = context.get_start_method()
        self.count = count
        self.event_timeout = event_timeout
        self.kill_grace = kill_grace
        self.start_timeout = start_timeout
        self.max_memory_per_worker = max_memory_per_worker
        self.slots: list[Slot] = []
        self.sender = Sender(
            ledger, self.slots, waker, mode, keyed=keyed, event_timeout=event_timeout
        )
        settings = WorkerSettings(
            idle_spin, max_events_per_worker, max_memory_per_worker, event_timeout is not None
        )
        self.lifecycle = WorkerLifecycle(
            ledger,
            waker,
            mode,
            self.slots,
            context=context,
            settings=settings,
            event_timeout=event_timeout,
        )
        self.restarts = 0
        self.recycles = 0
        self.retired_counters: dict[str, int] = {}  # what exited workers' handlers counted
        self.messages_read = 0
        self.ringing = False  # the workers' RING marks are set (acknowledgements handed off)
        # Set when a worker cannot be started or replaced: the dispatcher then fails everything.
        self.start_error: WorkerStartError | None = None

    # -- start and stop (no lock held) ------------------------------------------------------------

    def start_all(self) -> None:
        """Start every worker and wait until each is ready; on failure none is left running."""
        try:
            for index in range(self.count):
                slot = Slot(index, self.context.RawArray("q", PROGRESS_FIELDS))
                self.slots.append(slot)
                with self.changed:
                    self.lifecycle.start_worker(
                        slot, ringing=self.ringing, flooded=self.sender.flood.flooded
                    )
            deadline = time.monotonic() + self.start_timeout
            for slot in self.slots:
                assert slot.worker is not None
                self.await_ready(slot.worker, deadline)
        except BaseException:
            for slot in self.slots:
                if slot.worker is not None:
                    workers.kill(slot.worker, self.kill_grace)
                    workers.close(slot.worker)
                    slot.worker = None
            raise

    def await_ready(self, worker: WorkerHandle, deadline: float) -> None:
        """Block until ``worker`` says it is ready (used by ``start()`` only)."""
        while not worker.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerStartError(
                    f"worker process {worker.pid} was not ready after {self.start_timeout}s"
                )
            ready = multiprocessing.connection.wait([worker.result_fd, worker.sentinel], remaining)
            if worker.result_fd in ready:
                with self.changed:
                    ended = self.read_results(worker)
                if worker.ready:
                    return
                if ended:
                    ready.append(worker.sentinel)
            if worker.sentinel in ready:
                worker.process.join(self.kill_grace)
                raise WorkerStartError(
                    workers.start_failure_message(
                        self.start_method, worker.pid, worker.process.exitcode
                    )
                )

    def kill_all(self) -> None:
        """Terminate, reap and settle every worker left (the end of the dispatcher thread)."""
        with self.changed:
            live = [s.worker for s in self.slots if s.worker is not None]
        for worker in live:
            if not worker.exited:
                workers.kill(worker, self.kill_grace)
                self.worker_gone(worker)

    def terminate_all(self) -> None:
        """Tell every worker to finish its event in hand and leave; start none (lock held)."""
        for slot in self.slots:
            slot.restart_at = None
            worker = slot.worker
            if worker is not None and not worker.exited and worker.kill_at is None:
                workers.terminate(worker, self.kill_grace)

    def all_gone(self) -> bool:
        """No worker runs and none is due to start (lock held)."""
        return all(
            (slot.worker is None or slot.worker.exited)
            and (slot.retired or slot.restart_at is None)
            for slot in self.slots
        )

    def take_stranded(self) -> list[int]:
        """Take from the queues the events no worker is left to run (stopping, lock held)."""
        return self.lifecycle.take_stranded()

    def counters(self) -> dict[str, int]:
        """What the handlers counted, over every worker this pool ran (lock held)."""
        totals = dict(self.retired_counters)
        for worker in self.live_workers():
            for name, value in worker.counters.items():
                totals[name] = totals.get(name, 0) + value
        return totals

    def live_workers(self) -> list[WorkerHandle]:
        return [s.worker for s in self.slots if s.worker is not None and not s.worker.exited]

    # -- the dispatcher thread's wait (takes the lock itself) ----------------------------------

    def wait_for_io(self, timeout: float | None, leave_acks: bool) -> None:
        """Wait for a result, a death, room in a task pipe or the wake-up pipe; handle them.

        With ``leave_acks``, a busy submitter reads the acknowledgements; this thread sleeps
        through them, since each wake-up would queue it for the GIL behind the producer.
        Should the submitter pause with events waiting, their worker rings the wake-up pipe
        once it has been idle a moment (RING). Reading the result pipes after setting RING
        closes the race: a worker either wrote its last acknowledgement before this read (it
        is read now) or reads RING after it (the pipe's lock orders the two).
        """
        waker = self.waker
        poller = select.poll()
        watched: dict[int, tuple[str, WorkerHandle | None]] = {waker.read_fd: ("wake", None)}
        poller.register(waker.read_fd, select.POLLIN)
        ended: list[WorkerHandle] = []  # result pipe at its end
        with self.changed:
            if leave_acks != self.ringing:
                self.ringing = leave_acks
                for slot in self.slots:
                    slot.view[RING] = int(leave_acks)
            if leave_acks:
                read_before = self.messages_read
                for worker in self.live_workers():
                    if self.read_results(worker):
                        ended.append(worker)
                if self.messages_read != read_before:
                    self.sender.feed()
                    timeout = 0  # what was read (outcomes to deliver) needs the loop now
            for worker in self.live_workers():
                if not leave_acks:
                    poller.register(worker.result_fd, select.POLLIN)
                    watched[worker.result_fd] = ("result", worker)
                if not worker.orphaned:
                    poller.register(worker.sentinel, select.POLLIN)
                    watched[worker.sentinel] = ("sentinel", worker)
                if worker.outbuf:
                    poller.register(worker.task_fd, select.POLLOUT)
                    watched[worker.task_fd] = ("task", worker)
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        ready = poller.poll(0 if ended else ms)
        signalled: list[WorkerHandle] = []  # sentinel fired
        with self.changed:
            read_before = self.messages_read
            for fd, _mask in ready:
                kind, source = watched[fd]
                if kind == "wake":
                    waker.drain()
                elif source is None or source.exited:
                    continue
                elif kind == "result":
                    if self.read_results(source):
                        ended.append(source)
                elif kind == "sentinel":
                    signalled.append(source)
                elif kind == "task":
                    self.sender.flush(source)
            if self.messages_read != read_before:
                # An acknowledgement frees a worker: send to it in this same hold of the lock.
                # Once this thread lets go, a busy submitter may keep the GIL for a whole
                # switch interval, and meanwhile submit() would not see the worker free.
                self.sender.feed()
        for worker in signalled:
            # May sleep a moment (a forkserver child): without the lock.
            if workers.confirm_exit(worker, self.start_method):
                ended.append(worker)
            else:
                worker.orphaned = True
                logger.info(
                    "the forkserver is gone; worker %s lives on, watched by its pid", worker.pid
                )
        for worker in dict.fromkeys(ended):
            self.worker_gone(worker)

    def worker_gone(self, worker: WorkerHandle) -> None:
        """Reap a worker whose pipe or sentinel says it is leaving, then settle what it held.

        The reap may join for ``kill_grace``: it runs without the lock, the worker closed to
        new batches first.
        """
        with self.changed:
            if worker.exited or worker.gone:
                return
            worker.gone = True
        exitcode = workers.reap(worker, self.kill_grace)
        with self.changed:
            self.on_worker_exit(worker, exitcode)

    # -- timers (lock held) -----------------------------------------------------------------------

    def timers(self, now: float) -> list[float]:
        """Moments the dispatcher thread must look without I/O: restarts, kills, timeouts."""
        timers: list[float] = []
        tracking = bool(self.ledger.trackers)
        for slot in self.slots:
            if slot.restart_at is not None:
                timers.append(slot.restart_at)
            worker = slot.worker
            if worker is None or worker.exited:
                continue
            if worker.kill_at is not None:
                timers.append(worker.kill_at)
            if worker.orphaned:
                timers.append(now + 0.25)
            if tracking and worker.batches:
                timers.append(now + _SETTLE_INTERVAL)
            if self.event_timeout is not None and worker.batches:
                timers.append(now + min(self.event_timeout / 4, 0.25))
        sender = self.sender
        sender.hold_timer_armed = sender.held_back
        if sender.held_back:
            # Monotonic like ``now``: when the busy workers would count as stalled.
            timers += [
                slot.worker.progressed_at + batching.STALLED_AFTER
                for slot in self.slots
                if slot.worker is not None and slot.worker.batches
            ]
        return timers

    def maintain(self, now: float) -> None:
        """Restarts due, handler timeouts, kill deadlines, early settling for trackers."""
        for slot in self.slots:
            worker = slot.worker
            if worker is None:
                if slot.restart_at is not None and now >= slot.restart_at:
                    self._record(
                        self.lifecycle.restart(
                            slot, ringing=self.ringing, flooded=self.sender.flood.flooded
                        )
                    )
                continue
            if worker.exited or worker.gone:
                continue
            if worker.orphaned and workers.process_gone(worker.pid):
                worker.gone = True
                self.on_worker_exit(worker, None)
                continue
            if worker.kill_at is not None and now >= worker.kill_at:
                worker.kill_at = None
                workers.send_signal(worker.pid, signal.SIGKILL)
            if self.event_timeout is not None and worker.timed_out is None:
                self.check_timeout(slot, worker)
            if self.ledger.trackers and worker.batches and now >= worker.settle_after:
                worker.settle_after = now + _SETTLE_MIN_GAP
                self.settle_finished(slot, worker)

    # -- results (lock held) ----------------------------------------------------------------------

    def read_all(self) -> bool:
        """Read every live worker's results; true if a result pipe reached its end."""
        ended = False
        for slot in self.slots:
            worker = slot.worker
            if worker is not None and not worker.exited and self.read_results(worker):
                ended = True
        return ended

    def read_results(self, worker: WorkerHandle) -> bool:
        """Read and handle every complete message; true if the pipe reached its end.

        The one place a result pipe is read, from whichever thread owns the acknowledgements;
        a failure read outside the dispatcher thread wakes it to deliver the error event.
        """
        failures = len(self.ledger.failures)
        try:
            while True:
                try:
                    data = os.read(worker.result_fd, _READ_CHUNK)
                except BlockingIOError:
                    return False
                except OSError:
                    return True
                if not data:
                    return True
                for payload in worker.reader.feed(data):
                    self._handle_message(worker, decode_result(payload))
        finally:
            if len(self.ledger.failures) != failures:
                self.waker.wake_from_elsewhere()

    def _handle_message(self, worker: WorkerHandle, message: Any) -> None:
        self.messages_read += 1
        kind = type(message)
        if kind is BatchDone:
            self._on_batch_done(worker, message)
        elif kind is EventFailed:
            exc = serialization.load_exception(
                message.exception, message.type_name, message.message, message.traceback
            )
            self.ledger.failed_at(
                worker.id, message.position, message.seq, processor_name(worker), exc
            )
            self.changed.notify_all()
        elif kind is WorkerReady:
            worker.ready = True
            worker.rss = message.rss
            limit = self.max_memory_per_worker
            if limit is not None and message.rss >= limit:
                logger.warning(
                    "worker %s starts at %d bytes RSS, above max_memory_per_worker=%d: it will "
                    "not be recycled for memory (raise the limit)",
                    worker.pid,
                    message.rss,
                    limit,
                )
        elif kind is HandlerCounters:
            worker.counters = message.counters
        elif kind is WorkerRetiring:
            worker.retiring = message.reason
            worker.signalled = message.signalled
        elif kind is BatchRejected:
            if self.ledger.batch_rejected(worker.id, message.batch_no):
                worker.stop_sent = False  # the pill was dropped with the rest: send it again
            logger.info(
                "worker %s could not unpickle a batch (%s); re-sending its events one by one",
                worker.pid,
                message.error,
            )
        else:
            logger.error("unexpected message from worker %s: %r", worker.pid, message)

    def _on_batch_done(self, worker: WorkerHandle, message: BatchDone) -> None:
        worker.rss = message.rss
        worker.progressed_at = _monotonic()
        events = self.ledger.batch_done(worker.id, message.batch_no)
        self.sender.estimates.note_batch(message.busy_ns, events)
        self.slots[worker.slot].crash_streak = 0
        self.changed.notify_all()

    def settle_finished(self, slot: Slot, worker: WorkerHandle) -> None:
        """Give the events a worker has finished their outcome before their batch is done.

        A checkpointing tail saves its position only up to settled lines; one slow event
        would otherwise hold back every event of its batch, and a kill -9 of the parent would
        send them all again. The worker reports a failure before it marks the event finished,
        so once the mark is read and the result pipe drained, every event up to it that has
        no failure was processed.
        """
        finished = int(slot.view[FINISHED])
        if self.read_results(worker) or worker.exited:
            return  # it is leaving: the exit settles what it held
        if self.ledger.finished_upto(worker.id, finished):
            self.changed.notify_all()

    def check_timeout(self, slot: Slot, worker: WorkerHandle) -> None:
        assert self.event_timeout is not None
        view = slot.view
        started = int(view[STARTED])
        if started <= view[FINISHED] or self.ledger.event_at(worker.id, started) is None:
            return
        started_at = view[STARTED_AT_NS]
        if view[STARTED] != started:
            return  # it moved on while we looked
        if time.monotonic_ns() - started_at < self.event_timeout * 1e9:
            return
        logger.warning(
            "handler of event %d ran longer than event_timeout=%gs; killing worker %s",
            self.ledger.event_at(worker.id, started),
            self.event_timeout,
            worker.pid,
        )
        worker.timed_out = started
        workers.terminate(worker, self.kill_grace)

    # -- exits and restarts, as the lifecycle settles them (lock held) -----------------------

    def on_worker_exit(self, worker: WorkerHandle, exitcode: int | None) -> None:
        """Settle every event the reaped worker held, then arrange its replacement (or not)."""
        self.read_results(worker)  # messages it wrote before dying come first
        for name, value in worker.counters.items():
            self.retired_counters[name] = self.retired_counters.get(name, 0) + value
        change = self.lifecycle.worker_exited(worker, exitcode)
        self._record(change)
        if change.failed:
            self.waker.wake_from_elsewhere()  # the dispatcher thread delivers the failure
        self.changed.notify_all()  # events were settled, requeued or failed

    def _record(self, change: SlotChange) -> None:
        """Count a restart or a recycling; keep the first worker that cannot start."""
        self.restarts += change.restarted
        self.recycles += change.recycled
        # Logged once, by the dispatcher when it acts on it.
        if change.start_error is not None and self.start_error is None:
            self.start_error = change.start_error
