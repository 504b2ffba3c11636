"""The worker side: :class:`EventProcessor` runs in each worker process and calls the handlers.

Everything in this module runs in a worker process (the dispatcher module is the parent's).
The handlers it runs, loaded by id from what the parent sent, and the totals of their
``counters()`` are :mod:`eventmp.worker_handlers`.

The worker reads :class:`~eventmp.messages.EventBatch` messages from its task pipe with blocking
reads; for each event it marks the shared progress array (started, when,
finished), runs the handler, and on failure sends an
:class:`~eventmp.messages.EventFailed` at once; after the batch it sends one
:class:`~eventmp.messages.BatchDone` and marks it acknowledged in the array. It never waits on
the parent for anything but the next batch, and the parent always reads, so the two can never
block each other.

Between batches: with ``idle_spin`` the worker first polls for the next batch a moment (for an
adaptive window, and only while events come at a modest rate); while the parent's dispatcher
thread sleeps through a busy submitter's reads (RING in the array), a worker idle for 1 ms rings
the parent's wake-up pipe.

Signals: SIGINT is ignored (Ctrl-C in a terminal reaches the whole process group; the parent
decides what it means). SIGTERM lets the event in hand finish, then the worker leaves; the parent
gives whatever it had not started to a fresh worker. A watchdog thread ends the worker as soon as
its parent process is gone, even while a handler hangs.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from types import FrameType
from typing import Any

from . import serialization
from .errors import SerializationError
from .event import Event
from .ledger import position
from .messages import (
    ACKED,
    FINISHED,
    FLOODED,
    RING,
    STARTED,
    STARTED_AT_NS,
    STOP_HANDLER_ID,
    BatchDone,
    BatchRejected,
    EventBatch,
    EventFailed,
    FrameReader,
    HandlerCounters,
    HandlerUpdate,
    WireEvent,
    WorkerReady,
    WorkerRetiring,
    decode_task,
    encode_done,
    encode_result,
    plain_batch,
)
from .worker_handlers import HandlerTable

__all__ = ["EXIT_PARENT_GONE", "EventProcessor", "worker_main"]

logger = logging.getLogger("eventmp")

_READ_CHUNK = 1 << 16
_RING_AFTER_MS = 1  # idle this long with RING set: ring the parent
_SPIN_GROW_START_NS = 25_000  # the spin window's first step up from 0

# Exit status of a worker whose parent died: it has no one left to report to.
EXIT_PARENT_GONE = 75


class _Stop(Exception):
    """Leave the worker loop (SIGTERM while idle)."""


class EventProcessor:
    """Takes events off the task pipe and runs their handlers, in a worker process.

    ``run()`` loops over ``dispatch_event()`` until the poison pill, a SIGTERM, or the end of
    the task pipe. ``stop()`` makes ``run()`` return after the event in hand.
    """

    def __init__(
        self,
        name: str,
        tasks: multiprocessing.connection.Connection,
        results: multiprocessing.connection.Connection,
        progress: Any,
        *,
        ring: multiprocessing.connection.Connection | None = None,
        idle_spin_ns: int = 0,
        close_fds: Sequence[int] = (),
        max_events: int | None = None,
        max_memory: int | None = None,
        stamp_starts: bool = True,
    ) -> None:
        self.name = name
        # When each event started matters only to a parent that times handlers out.
        self._stamp_starts = stamp_starts
        self._tasks = tasks
        self._results = results
        # The parent's wake-up pipe: rung when the parent asked (RING) and no batch came for a
        # moment, since the parent's dispatcher thread may be asleep waiting for just that.
        self._ring = ring
        self._ring_fd = -1
        self._rung = False
        self._task_poller: Any = None
        # How long to poll for the next batch before sleeping: adapted between 0 and the
        # limit, as Linux's cpuidle-haltpoll does for a guest's idle CPU (see _spin).
        self._spin_limit_ns = idle_spin_ns
        self._spin_ns = 0
        self._progress: Any = progress
        self._close_fds = tuple(close_fds)
        self._max_events = max_events
        self._max_memory = max_memory
        self._events_done = 0
        self._rss_cache = 0
        self._rss_read_at = 0.0
        self._handlers = HandlerTable()
        self._running = True
        self._sigterm = False
        self._waiting = False
        self._task_fd = -1
        self._result_fd = -1
        self._reader = FrameReader()
        self._frames: deque[bytes] = deque()
        self._resyncing = False
        self._psutil_process: Any = None

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Set the process up, announce readiness, then process batches until told to stop."""
        self._setup_process()
        baseline = self._rss(fresh=True)
        if self._max_memory is not None and baseline >= self._max_memory:
            # Recycling a worker that starts above the limit would replace it after every
            # event, forever: the parent warns instead.
            self._max_memory = None
        self._send(WorkerReady(os.getpid(), baseline))
        try:
            while self._running and self.dispatch_event():
                pass
        except (_Stop, EOFError, BrokenPipeError):
            pass
        finally:
            # Leaving: a late SIGTERM must not raise into multiprocessing's exit hooks.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self._sigterm:
            # Told to leave (by the parent, or by a signal to the whole process group): the
            # parent must not count it a crash, whatever status the exit reports.
            with contextlib.suppress(OSError):
                self._send(WorkerRetiring("received SIGTERM", signalled=True))

    def dispatch_event(self) -> bool:
        """Take one message off the task pipe and run its events; false once it should stop."""
        # SIGTERM may interrupt only this wait: anywhere else the worker finishes what it is
        # doing (an event, the progress marks, a message) before it leaves.
        self._waiting = True
        try:
            if not self._running:
                return False
            data = self._next_frame()
        except EOFError:
            return False
        finally:
            self._waiting = False
        batch = plain_batch(data)
        if batch is not None and not self._resyncing:
            return self._run_events(batch[0], batch[1]) and self._running
        message = decode_task(data)
        if type(message) is HandlerUpdate:
            for handler_id, blob in message.definitions:
                self._handlers.define(handler_id, blob)
            for handler_id in message.forget:
                self._handlers.forget(handler_id)
            return True
        assert type(message) is EventBatch
        if message.resync:
            self._resyncing = False
        if self._resyncing:
            return True
        return self._run_events(message.batch_no, message.events, message.resync) and self._running

    def _next_frame(self) -> bytes:
        """Block until the next whole frame from the parent; EOFError when the pipe ends."""
        frames = self._frames
        while not frames:
            # Not under a flood (FLOODED, set by the parent, which sees every worker's events):
            # batches grow while a worker sleeps, where one that answers at once keeps them
            # small and the parent pays per batch.
            if not (self._spin_ns and not self._progress[FLOODED] and self._spin()):
                slept_from = time.monotonic_ns()
                if self._progress[RING] and not self._rung and self._ring_fd >= 0:
                    self._ring_when_idle()
                data = os.read(self._task_fd, _READ_CHUNK)
                if self._spin_limit_ns:
                    self._adapt_spin(time.monotonic_ns() - slept_from)
            else:
                data = os.read(self._task_fd, _READ_CHUNK)
            if not data:
                raise EOFError
            self._rung = False
            frames.extend(self._reader.feed(data))
        return frames.popleft()

    def _spin(self) -> bool:
        """Poll the task pipe without sleeping, for up to the spin window; true if data came.

        A worker that sleeps between batches lets its CPU halt; on a virtual machine whose
        guest does not poll before halting, the hypervisor may then run someone else there,
        and the next batch waits for the worker's vCPU to be run again: milliseconds, counted
        as steal. The spin keeps the vCPU busy across those short gaps; the measurements
        behind it are in docs/performance.md (see docs/design.md, "Idle spin").
        """
        poll = self._task_poller.poll
        deadline = time.monotonic_ns() + self._spin_ns
        while not poll(0):
            if time.monotonic_ns() >= deadline:
                return False
        return True

    def _adapt_spin(self, slept_ns: int) -> None:
        """Grow the spin window after a sleep it would have covered, shrink it after a long one.

        So the worker spins only while batches come closer together than the limit, and a
        pipeline that goes quiet costs no CPU.
        """
        if slept_ns <= self._spin_limit_ns:
            self._spin_ns = min(self._spin_limit_ns, max(_SPIN_GROW_START_NS, self._spin_ns * 2))
        else:
            self._spin_ns //= 2
            if self._spin_ns < _SPIN_GROW_START_NS:
                self._spin_ns = 0

    def _ring_when_idle(self) -> None:
        """Ring the parent's wake-up pipe once if no batch comes within _RING_AFTER_MS.

        The parent asks for it while a submitting thread reads the acknowledgements instead of
        its dispatcher thread: if that thread pauses, events may wait for this worker, and only
        this worker knows it has gone idle. A busy submitter sends the next batch well within
        the delay, so the dispatcher thread is not woken (and does not queue for the GIL).
        """
        if self._task_poller.poll(_RING_AFTER_MS):
            return
        self._rung = True
        # A full pipe means a wake-up is pending already; a closed one, a parent leaving.
        with contextlib.suppress(OSError):
            os.write(self._ring_fd, b"\0")

    def stop(self) -> None:
        """Leave ``run()`` after the event in hand."""
        self._running = False

    # -- events ---------------------------------------------------------------------------------

    def _run_events(self, batch_no: int, blob: bytes | memoryview, resync: bool = False) -> bool:
        try:
            events: list[WireEvent | tuple[int, bytes]] = serialization.loads(blob)
        except Exception as exc:
            # Drop this batch and every one after it until the parent re-sends them one by one.
            self._resyncing = True
            self._send(BatchRejected(batch_no, f"{type(exc).__name__}: {exc}"))
            return True
        progress = self._progress
        handlers = self._handlers
        callables = handlers.callables
        recycling = self._max_events is not None or self._max_memory is not None
        stamp_starts = self._stamp_starts
        new_event = Event.__new__
        monotonic_ns = time.monotonic_ns
        batch_started = monotonic_ns()
        # Progress marks are positions in this worker's batches (see eventmp.ledger): the
        # parent settles an event only on evidence about that event from the worker holding it.
        pos = position(batch_no, 0) - 1
        for item in events:
            pos += 1
            if not self._running:
                return False
            if resync:
                seq, blob = item  # type: ignore[misc]
                # Marked before unpickling: if unpickling kills the process, this event is
                # the one to blame.
                self._mark_started(pos)
                try:
                    item = serialization.loads(blob)
                except Exception as exc:
                    error = SerializationError(
                        f"event could not be deserialized in the worker: "
                        f"{type(exc).__name__}: {exc}"
                    )
                    self._report(pos, seq, error)
                    progress[FINISHED] = pos
                    continue
            seq, handler_id, originator, data, timestamp = item  # type: ignore[misc]
            if stamp_starts:
                progress[STARTED_AT_NS] = monotonic_ns()
            progress[STARTED] = pos
            if handler_id == STOP_HANDLER_ID:
                progress[FINISHED] = pos
                self._report_counters(force=True)
                self._send(BatchDone(batch_no, self._rss()))
                self._running = False
                return False
            try:
                handler, run = callables.get(handler_id) or handlers.lookup(handler_id)
                # Built field by field: Event.__init__ costs twice as much, and the parent
                # already checked what __init__ would.
                event = new_event(Event)
                event.originator = originator
                event.handler = handler
                event.data = data
                event.timestamp = timestamp
                run(event)
            except BaseException as exc:  # SystemExit and KeyboardInterrupt too: not ours
                self._report(pos, seq, exc)
            progress[FINISHED] = pos
            if recycling and self._retire_after_event():
                return False
        if handlers.counting:
            self._report_counters(force=False)
        # One write of under PIPE_BUF bytes to a blocking pipe: whole, and atomic.
        os.write(
            self._result_fd, encode_done(batch_no, self._rss(), monotonic_ns() - batch_started)
        )
        progress[ACKED] = batch_no  # after the write: the parent then finds it in the pipe
        return True

    def _retire_after_event(self) -> bool:
        """Leave between events once a recycling limit is reached (the parent starts another)."""
        self._events_done += 1
        reason = None
        if self._max_events is not None and self._events_done >= self._max_events:
            reason = f"processed max_events_per_worker={self._max_events} events"
        elif self._max_memory is not None:
            rss = self._rss(fresh=True)
            if rss > self._max_memory:
                reason = f"RSS {rss} bytes above max_memory_per_worker={self._max_memory}"
        if reason is None:
            return False
        self._report_counters(force=True)
        self._send(WorkerRetiring(reason))
        self._running = False
        return True

    def _mark_started(self, pos: int) -> None:
        self._progress[STARTED_AT_NS] = time.monotonic_ns()
        self._progress[STARTED] = pos

    def _report(self, pos: int, seq: int, exc: BaseException) -> None:
        blob, type_name, message, tb = serialization.dump_exception(exc)
        self._send(EventFailed(pos, seq, blob, type_name, message, tb))

    def _report_counters(self, *, force: bool) -> None:
        """Send what the handlers counted, if it changed: at most once a second unless ``force``."""
        totals = self._handlers.counters_to_report(force=force)
        if totals is not None:
            self._send(HandlerCounters(totals))

    def _send(self, message: tuple[Any, ...]) -> None:
        view = memoryview(encode_result(message))
        while view:
            view = view[os.write(self._result_fd, view) :]

    def _rss(self, fresh: bool = False) -> int:
        """Resident set size in bytes; read at most twice a second unless ``fresh``.

        Stats need it now and then; a recycling check needs it after every event. Reading it
        for every single-event batch would cost an idle event a tenth of its latency.
        """
        now = time.monotonic()
        if fresh or now - self._rss_read_at >= 0.5:
            if self._psutil_process is None:
                import psutil

                self._psutil_process = psutil.Process()
            self._rss_cache = int(self._psutil_process.memory_info().rss)
            self._rss_read_at = now
        return self._rss_cache

    # -- process set-up -------------------------------------------------------------------------

    def _setup_process(self) -> None:
        # The pipes came as Connections (so spawn and forkserver can pass them); the worker
        # reads and writes the frames itself: one read per batch instead of two.
        self._task_fd = os.dup(self._tasks.fileno())
        self._result_fd = os.dup(self._results.fileno())
        self._tasks.close()
        self._results.close()
        self._task_poller = select.poll()
        self._task_poller.register(self._task_fd, select.POLLIN)
        if self._ring is not None:
            self._ring_fd = os.dup(self._ring.fileno())
            self._ring.close()
        # A memoryview writes an int in a fraction of what a ctypes item assignment costs
        # (made here: a memoryview cannot travel to a spawned process).
        self._progress = memoryview(self._progress).cast("B").cast("q")
        for fd in self._close_fds:
            # Under fork, the parent's ends of every worker's pipes were inherited: holding them
            # would keep pipes open that must close when their owner dies.
            with contextlib.suppress(OSError):
                os.close(fd)
        # Ctrl-C reaches the whole process group; the parent decides what it means. A handler
        # that does nothing, rather than SIG_IGN, because an ignored signal stays ignored in
        # every program a handler starts, and a handled one is reset to its default by exec.
        signal.signal(signal.SIGINT, _ignore_signal)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        # A forked worker inherits the parent's heap; freezing it spares the collector from
        # re-scanning (and copy-on-write touching) objects the worker never changes.
        gc.freeze()
        threading.Thread(
            target=_exit_when_parent_dies, name="eventmp-watchdog", daemon=True
        ).start()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._running = False
        self._sigterm = True
        if self._waiting:
            raise _Stop


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    """SIGINT in a worker: nothing to do (see _setup_process)."""


def _exit_when_parent_dies() -> None:
    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is None:
        return
    multiprocessing.connection.wait([sentinel])
    os._exit(EXIT_PARENT_GONE)


def worker_main(processor: EventProcessor) -> None:
    """The worker process's entry point (a module-level function, so spawn can find it)."""
    processor.run()
