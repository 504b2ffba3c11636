"""The parent side: :class:`EventDispatcher` polls generators and feeds the worker processes.

Everything in this module runs in the parent process (the worker side is
:mod:`eventmp.processor`). Its rooms, one module each, all parent-side and called with the
dispatcher's lock held unless they say otherwise:

- :mod:`eventmp.ledger`: where every accepted event is, until its one outcome (no I/O);
- :mod:`eventmp.batching`: which worker gets how many events, and when (no I/O);
- :mod:`eventmp.workers`: start, confirm an exit, reap and kill worker processes;
- :mod:`eventmp.handler_cache`: each handler serialized once, then sent by id;
- this module: the public API, the dispatcher thread's loop, and the pipes' reads and writes.

Data flow::

  |================ parent process =================|=== worker process(es) ===|
   EventGenerator --get_events()--> dispatcher thread -- task pipe ---> EventProcessor
   EventGenerator --get_events()-->  | polls, batches,    (EventBatch)   runs handlers
   dispatcher.submit(event) -------->| writes, restarts                      |
      (writes the pipe itself when   |                                       |
       the pipeline is idle)         +<- wakes on: result pipes, wake-up     |
                                     |   pipe, worker sentinels, timers      |
   error_handler.process_event() <---+<- result pipe (EventFailed, <---------+
                                     |   BatchDone)                          |
                                     +<- progress array (positions) ---------+

Actors:

- The submitting threads (``submit()``): append the event to the inbox without the lock (a list
  append is atomic under the GIL); whoever next holds the lock accepts the inbox's events into
  the ledger, so the lock and the bookkeeping cost once per batch. When a worker is idle a
  submitter writes the event itself, so an event on an idle pipeline pays for no thread
  hand-off. Under load it sends full batches and reads the acknowledgements itself (see
  :meth:`EventDispatcher._collect_acks`): the dispatcher thread may wait a whole GIL switch
  interval behind a busy submitter, so meanwhile it sleeps without watching the result pipes,
  and a worker that goes idle while it sleeps rings the wake-up pipe.
- The dispatcher thread (``run()``): one loop that waits with ``poll()`` on every worker's
  result pipe (unless a busy submitter reads them) and sentinel, the wake-up pipe, and (while a
  write is unfinished) the task pipes. It polls generators every ``poll_interval``, enforces
  ``event_timeout``, replaces dead workers, and delivers every outcome: the user's error
  handler and generators run only in this thread.

Who reads acknowledgements: one function reads a result pipe (:meth:`_read_results`), with the
lock held; the dispatcher thread does unless a submitter read them within the last
``_ACK_HANDOFF`` (it owns them then). A failure read by anyone is queued in the ledger and
wakes the dispatcher thread, which delivers it. Nothing sleeps or joins with the lock held:
confirming and reaping a worker's exit happen between two holds of it.

When a worker dies, the ledger settles what it held from the worker's own progress marks
(positions in its batches): events it finished were processed, the one in hand failed, the
rest go back to the front of the queue for a fresh worker on fresh pipes (a pipe a killed
process wrote half a message into is never trusted again).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import itertools
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from . import batching, serialization, workers
from .batching import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_INFLIGHT_BATCHES, Estimates, FloodGauge
from .errors import (
    DispatcherStoppedError,
    EventAbandonedError,
    EventmpError,
    HandlerTimeoutError,
    SubmitTimeoutError,
    WorkerCrashedError,
    WorkerStartError,
    describe_exit,
)
from .event import Event, EventGenerator
from .handler_cache import HandlerCache
from .handlers import call_handler, describe_handler
from .ledger import Ledger, Outcome
from .messages import (
    FINISHED,
    FLOODED,
    PROGRESS_FIELDS,
    RING,
    STARTED,
    STARTED_AT_NS,
    STOP_HANDLER_ID,
    BatchDone,
    BatchRejected,
    EventFailed,
    HandlerUpdate,
    WireEvent,
    WorkerReady,
    WorkerRetiring,
    decode_result,
    encode_batch,
    encode_handler_update,
)
from .units import parse_size
from .workers import Slot, WorkerHandle

__all__ = ["DispatcherStats", "EventDispatcher", "default_start_method"]

logger = logging.getLogger("eventmp")

_NEW, _RUNNING, _STOPPING, _STOPPED = "new", "running", "stopping", "stopped"

_READ_CHUNK = 1 << 18
_START_RETRIES = 5
_ACK_CHECK_INTERVAL = 0.0001
# While a submitter read acknowledgements this recently, the dispatcher thread leaves them to it
# and sleeps until a worker rings (see _wait_for_io).
_ACK_HANDOFF = 0.02
_BUSY_SUBMITTER = 0.001  # a submitter reading acknowledgements again this soon is busy
_SETTLE_INTERVAL = 0.2  # how often finished events of tracking generators are settled early
_monotonic = time.monotonic


def default_start_method() -> str:
    """``forkserver`` where the platform has it, else ``spawn``; never ``fork`` by default.

    The dispatcher's own process has threads (the dispatcher thread, and usually the user's),
    and a fork taken while another thread holds a lock (logging's, an allocator's, a C
    library's) leaves that lock held forever in the child. Python 3.14 moved its own default
    off fork for this reason. forkserver forks workers from a clean single-threaded server, so
    a restart costs a fork, not a new interpreter.
    """
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


@dataclass(frozen=True)
class DispatcherStats:
    """A snapshot of a dispatcher's counters."""

    accepted: int
    processed: int
    failed: int
    pending: int
    abandoned: int
    worker_restarts: int
    worker_recycles: int
    worker_pids: tuple[int, ...]
    worker_rss: tuple[int, ...] = field(default=())


_live_dispatchers: weakref.WeakSet[EventDispatcher] = weakref.WeakSet()


@atexit.register
def _stop_live_dispatchers() -> None:
    # Runs before multiprocessing's own exit hook (registered earlier, so run later), which
    # would otherwise wait forever for idle workers of a dispatcher nobody stopped.
    for dispatcher in list(_live_dispatchers):
        dispatcher.stop()


class EventDispatcher(threading.Thread):
    """Polls event generators and runs each event's handler in a worker process.

    See the README for every setting; the essentials:

    - ``poll_interval``: seconds between polls of the generators. ``submit()`` does not wait
      for it.
    - ``start_method``: ``"fork"``, ``"spawn"`` or ``"forkserver"`` (default: see
      :func:`default_start_method`).
    - ``workers``: number of worker processes.
    - ``event_timeout``: seconds a handler may run before its worker is killed and the event
      fails with :class:`HandlerTimeoutError`.
    - ``max_pending``: events accepted but without an outcome; ``submit()`` blocks and
      generators are not polled while the pipeline holds this many.
    - ``idle_spin``: at most this many seconds a worker polls for its next batch before it
      sleeps, while events come closer together than that and slower than 100,000 a second
      (``0`` turns it off).
    """

    def __init__(
        self,
        poll_interval: float = 1.0,
        *,
        start_method: str | None = None,
        workers: int = 1,
        event_timeout: float | None = None,
        max_pending: int = 10_000,
        max_events_per_worker: int | None = None,
        max_memory_per_worker: int | str | None = None,
        key: Callable[[Event], Hashable] | None = None,
        kill_grace: float = 1.0,
        start_timeout: float = 60.0,
        idle_spin: float = 0.0002,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or "EventDispatcher", daemon=True)
        if poll_interval < 0:
            raise ValueError(f"poll_interval must be >= 0, got {poll_interval!r}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        if event_timeout is not None and event_timeout <= 0:
            raise ValueError(f"event_timeout must be > 0, got {event_timeout!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
        if not 0 <= idle_spin <= 0.01:
            raise ValueError(f"idle_spin must be between 0 and 0.01 seconds, got {idle_spin!r}")
        self.idle_spin = float(idle_spin)
        method = start_method or default_start_method()
        if method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"start_method must be one of {multiprocessing.get_all_start_methods()}, "
                f"got {method!r}"
            )
        self.poll_interval = float(poll_interval)
        self.start_method = method
        self.workers = workers
        self.event_timeout = event_timeout
        self.max_pending = max_pending
        self.kill_grace = kill_grace
        self.key = key
        if max_events_per_worker is not None and max_events_per_worker < 1:
            raise ValueError(f"max_events_per_worker must be >= 1, got {max_events_per_worker!r}")
        self.max_events_per_worker = max_events_per_worker
        self.max_memory_per_worker = (
            None if max_memory_per_worker is None else parse_size(max_memory_per_worker)
        )
        self.start_timeout = start_timeout
        self._context = multiprocessing.get_context(method)

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._state = _NEW
        self._error_handler: Any = None
        self._generators: list[EventGenerator] = []
        self._exhausted: set[int] = set()  # ids of generators that said they are finished
        # Every accepted event's state until its outcome (made here so that events submitted
        # before start() have somewhere to go).
        self._ledger = Ledger(workers, keyed=key is not None)
        self._batch_no = itertools.count(1)
        # submit()'s fast path appends here without the lock (a list append is atomic under
        # the GIL); whoever holds the lock next accepts the events into the ledger, in order.
        # _inbox_room is how many events it may take before the lock is needed: 0 closes the
        # fast path (not running, or max_pending reached).
        self._inbox: list[Event] = []
        self._inbox_room = 0
        self._generator_errors: deque[tuple[EventGenerator, BaseException]] = deque()
        self._slots: list[Slot] = []
        self._handlers = HandlerCache()

        self._restarts = 0
        self._recycles = 0
        self._stop_deadline: float | None = None
        self._abandoning: str | None = None  # reason, once events are to be abandoned
        self._drain = True
        self._broken: EventmpError | None = None

        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_pending = False
        self._loop_ident: int | None = None
        # Whether some worker could take a batch now: submit() sends at once only then, and
        # otherwise leaves the event to the batch that the next acknowledgement sends.
        self._sendable = False
        self._idle_worker: WorkerHandle | None = None  # one with nothing in flight
        self._poll_again = False  # a generator said it has more right now (has_more)
        self._next_ack_check = 0.0
        self._submitter_read_acks_at = -math.inf
        self._submitter_collected_at = -math.inf
        self._ringing = False  # the workers' RING marks are set (acknowledgements handed off)
        self._flood = FloodGauge()
        self._estimates = Estimates()
        # Cheap events are being held back for a busy worker (see batching.hold_back); the
        # dispatcher thread then keeps a timer for the moment that worker would count as
        # stalled.
        self._held_back = False
        self._hold_timer_armed = False
        self._messages_read = 0
        self._delivering = 0

    # == public API ==============================================================================

    def error_handler(self, handler: Any) -> None:
        """Set the handler that receives error events, in the parent process."""
        self._error_handler = handler

    def add_event_generator(self, generator: EventGenerator) -> None:
        """Add a generator to poll; allowed before and after ``start()``."""
        with self._lock:
            if self._state in (_STOPPING, _STOPPED):
                raise DispatcherStoppedError("cannot add a generator to a stopped dispatcher")
            self._generators.append(generator)
        self._wake()

    def start(self) -> None:
        """Start the worker processes, wait until they are ready, then the dispatcher thread.

        Raises :class:`WorkerStartError` if a worker cannot start; nothing is left running.
        """
        self._start_workers()
        super().start()

    def submit(self, event: Event, timeout: float | None = None) -> None:
        """Hand ``event`` to the pipeline now, without waiting for the next poll.

        Thread-safe. Blocks while ``max_pending`` events are pending, at most ``timeout``
        seconds (then :class:`SubmitTimeoutError`). Raises :class:`DispatcherStoppedError`
        once ``stop()`` was called.
        """
        if type(event) is not Event and not isinstance(event, Event):
            raise TypeError(f"submit() takes an Event, not {type(event).__qualname__}")
        if self._inbox_room:
            # The common case, without the lock: one append, and the lock once per batch (an
            # uncontended lock costs more than the rest of this path). CPython 3.11 does not
            # switch threads between the check above and the append, but nothing promises it:
            # the second check catches a stop() that came in between.
            inbox = self._inbox
            inbox.append(event)
            queued = len(inbox)
            if not self._inbox_room:
                self._submit_raced(event)
            elif self._sendable or queued >= self._inbox_room:
                with self._lock:
                    if not self._send_alone():
                        self._pump()
            # The clock is read for the first 8 queued events, then every 8th: a busy producer
            # at a modest rate sees its worker free sooner, a flood pays for few reads (and
            # does not look for a free worker, which would keep its batches small).
            elif (queued <= 8 or not queued & 7) and (
                _monotonic() >= self._next_ack_check
                or (not self._flood.flooded and batching.caught_up(self._slots))
            ):
                with self._lock:
                    self._collect_acks()
            return
        with self._lock:
            self._take_inbox()
            self._check_open()
            pending = self._ledger.pending
            if len(pending) >= self.max_pending and not self._in_loop_thread():
                self._take_back_acks()  # a blocked submitter reads nothing
                if not self._changed.wait_for(
                    lambda: self._state not in (_NEW, _RUNNING) or len(pending) < self.max_pending,
                    timeout,
                ):
                    raise SubmitTimeoutError(
                        f"no room in the pipeline after {timeout}s: "
                        f"{len(pending)} events pending (max_pending={self.max_pending})"
                    )
                self._check_open()
            self._enqueue([event])
            if self._state == _RUNNING:
                self._pump()

    def _submit_raced(self, event: Event) -> None:
        """The fast path closed between its check and the append: settle who owns ``event``.

        If the dispatcher still runs (the pipeline just filled up), the event is accepted,
        a little over ``max_pending``. If ``stop()`` came first, its last look at the inbox
        either took the event (accepted) or not: then it is taken back and refused.
        """
        with self._lock:
            if self._state is _RUNNING:
                self._pump()
                return
            inbox = self._inbox
            for index in range(len(inbox) - 1, -1, -1):
                if inbox[index] is event:
                    del inbox[index]
                    raise DispatcherStoppedError(
                        "the dispatcher is stopped; it accepts no more events"
                    ) from self._broken

    def stop(self, timeout: float | None = None, *, drain: bool = True) -> None:
        """Stop the pipeline and return once it has ended.

        With ``drain`` (the default), every event accepted before the call gets its outcome
        first: the poison pill goes behind them. With ``timeout``, events still without an
        outcome after that many seconds are abandoned (reported with
        :class:`EventAbandonedError`) and the workers killed; ``drain=False`` abandons every
        queued event at once and lets each worker finish only the event in hand. On return the
        workers have exited and been reaped and every generator's ``stop()`` has been called.
        Idempotent; safe before ``start()``.
        """
        if self._begin_stop(timeout, drain):
            self._stop_generators()
            self._close_wake_pipe()
            self._deliver_outcomes()
            return
        if self._in_loop_thread():
            return
        if self.is_alive():
            self.join()
        else:
            with self._lock:
                self._changed.wait_for(lambda: self._state == _STOPPED)

    def _begin_stop(self, timeout: float | None, drain: bool) -> bool:
        """Ask the loop to stop, without waiting; true if it never started (nothing to wait)."""
        with self._lock:
            if self._state == _NEW:
                self._state = _STOPPED
                # Events submitted before start() were accepted: they get their outcome too.
                self._abandoning = "the dispatcher was stopped before it was started"
                self._abandon_all()
                self._log_abandoned()
                return True
            if self._state == _STOPPED:
                return False
            if self._state == _RUNNING:
                self._close_inbox()
                self._take_back_acks()
                self._state = _STOPPING
                if timeout is not None:
                    self._stop_deadline = time.monotonic() + timeout
            elif timeout is not None:
                deadline = time.monotonic() + timeout
                if self._stop_deadline is None or deadline < self._stop_deadline:
                    self._stop_deadline = deadline
            if not drain:
                self._drain = False
                if self._abandoning is None:
                    self._abandoning = "stop(drain=False) was called"
            self._changed.notify_all()
        self._wake()
        return False

    def serve_forever(self) -> None:
        """Run until SIGINT or SIGTERM, then stop with a drain and return normally.

        Starts the dispatcher if needed and blocks. The first signal stops it with a drain (a
        script that ends here exits 0); a second one stops it at once, abandoning what is
        queued. The previous signal handlers are restored on return. Call it from the main
        thread: only there can Python install signal handlers.
        """
        if self._state == _NEW:
            self.start()
        received: list[int] = []

        def on_signal(signum: int, _frame: object) -> None:
            received.append(signum)
            name = signal.Signals(signum).name
            if len(received) == 1:
                logger.warning("%s received: draining; send it again to stop at once", name)
                self._begin_stop(None, drain=True)
            else:
                logger.warning("%s received again: stopping at once", name)
                self._begin_stop(None, drain=False)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.is_alive():
                self.join(0.25)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every generator is finished and every accepted event has its outcome.

        Returns true then, false if ``timeout`` seconds passed first. Batch jobs call
        ``wait()``, then ``stop()``.
        """
        with self._lock:
            self._take_back_acks()
            return self._changed.wait_for(self._idle, timeout)

    def stats(self) -> DispatcherStats:
        """A consistent snapshot of the dispatcher's counters."""
        with self._lock:
            self._take_inbox()
            ledger = self._ledger
            live = [s.worker for s in self._slots if s.worker is not None and not s.worker.exited]
            return DispatcherStats(
                accepted=ledger.accepted,
                processed=ledger.processed,
                failed=ledger.failed,
                pending=len(ledger.pending),
                abandoned=ledger.abandoned,
                worker_restarts=self._restarts,
                worker_recycles=self._recycles,
                worker_pids=tuple(w.pid for w in live),
                worker_rss=tuple(w.rss for w in live),
            )

    def __enter__(self) -> EventDispatcher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # == the dispatcher thread ===================================================================

    def run(self) -> None:
        """The dispatcher's loop: ``start()`` runs it in the dispatcher thread.

        Called directly on a dispatcher that was never started, it starts the workers and runs
        the loop in the calling thread until another thread (or a signal handler) calls
        ``stop()``.
        """
        if self._state == _NEW:
            self._start_workers()
        elif self._state == _STOPPED:
            return
        self._loop_ident = threading.get_ident()
        try:
            self._loop()
        except BaseException:
            logger.exception("eventmp dispatcher thread failed; stopping its workers")
            with self._lock:
                self._close_inbox()
                self._abandoning = self._abandoning or "the dispatcher thread failed"
                self._abandon_all()
        finally:
            self._shutdown()

    def _loop(self) -> None:
        next_poll = time.monotonic()
        while True:
            now = time.monotonic()
            with self._lock:
                self._maintain(now)
                if self._state == _STOPPING and self._all_workers_gone():
                    break
                self._pump()
                poll_due = (
                    self._state == _RUNNING
                    and (now >= next_poll or self._poll_again)
                    and len(self._ledger.pending) < self.max_pending
                )
                if poll_due:
                    self._poll_again = False
                generators = list(self._generators) if poll_due else []
            self._deliver_outcomes()
            if poll_due:
                self._poll_generators(generators)
                next_poll = now + self.poll_interval
            # Even right after a poll: with poll_interval=0 the loop must still read results.
            self._wait_for_io(self._next_timer(time.monotonic(), next_poll))

    def _wait_for_io(self, timeout: float | None) -> None:
        poller = select.poll()
        watched: dict[int, tuple[str, WorkerHandle | None]] = {self._wake_r: ("wake", None)}
        poller.register(self._wake_r, select.POLLIN)
        ended: list[WorkerHandle] = []  # result pipe at its end
        with self._lock:
            leave_acks = _monotonic() - self._submitter_read_acks_at < _ACK_HANDOFF
            if leave_acks != self._ringing:
                self._ringing = leave_acks
                for slot in self._slots:
                    slot.view[RING] = int(leave_acks)
            if leave_acks:
                # A busy submitter reads the acknowledgements; this thread sleeps through them,
                # since each wake-up would queue it for the GIL behind the producer. Should the
                # submitter pause with events waiting, their worker rings the wake-up pipe once
                # it has been idle a moment (RING). Reading the result pipes after setting RING
                # closes the race: a worker either wrote its last acknowledgement before this
                # read (it is read now) or reads RING after it (the pipe's lock orders the two).
                read_before = self._messages_read
                for slot in self._slots:
                    worker = slot.worker
                    if worker is not None and not worker.exited and self._read_results(worker):
                        ended.append(worker)
                if self._messages_read != read_before:
                    timeout = 0  # what was read (outcomes to deliver, room) needs the loop now
            for slot in self._slots:
                worker = slot.worker
                if worker is None or worker.exited:
                    continue
                if not leave_acks:
                    poller.register(worker.result_fd, select.POLLIN)
                    watched[worker.result_fd] = ("result", worker)
                if not worker.orphaned:
                    poller.register(worker.sentinel, select.POLLIN)
                    watched[worker.sentinel] = ("sentinel", worker)
                if worker.outbuf:
                    poller.register(worker.task_fd, select.POLLOUT)
                    watched[worker.task_fd] = ("task", worker)
            self._wake_pending = False
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        ready = poller.poll(0 if ended else ms)
        signalled: list[WorkerHandle] = []  # sentinel fired
        with self._lock:
            for fd, _mask in ready:
                kind, worker = watched[fd]
                if kind == "wake":
                    self._drain_wake_pipe()
                elif worker is None or worker.exited:
                    continue
                elif kind == "result":
                    if self._read_results(worker):
                        ended.append(worker)
                elif kind == "sentinel":
                    signalled.append(worker)
                elif kind == "task":
                    self._flush(worker)
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
            self._worker_gone(worker)

    def _worker_gone(self, worker: WorkerHandle) -> None:
        """Reap a worker whose pipe or sentinel says it is leaving, then settle what it held.

        The reap may join for ``kill_grace``: it runs without the lock, the worker closed to
        new batches first.
        """
        with self._lock:
            if worker.exited or worker.gone:
                return
            worker.gone = True
        exitcode = workers.reap(worker, self.kill_grace)
        with self._lock:
            self._on_worker_exit(worker, exitcode)

    def _next_timer(self, now: float, next_poll: float) -> float | None:
        """Seconds until the loop must run without I/O: a poll, a restart, a timeout check."""
        with self._lock:
            timers: list[float] = []
            if (
                self._state == _RUNNING
                and self._generators
                and not self._all_exhausted()
                and len(self._ledger.pending) < self.max_pending
            ):
                timers.append(now if self._poll_again else next_poll)
            if self._stop_deadline is not None and self._abandoning is None:
                timers.append(self._stop_deadline)
            tracking = bool(self._ledger.trackers)
            for slot in self._slots:
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
            self._hold_timer_armed = self._held_back
            if self._held_back:
                # Monotonic like ``now``: when the busy workers would count as stalled.
                timers += [
                    slot.worker.progressed_at + batching.STALLED_AFTER
                    for slot in self._slots
                    if slot.worker is not None and slot.worker.batches
                ]
        if not timers:
            return None
        return max(0.0, min(timers) - now)

    # -- generators -----------------------------------------------------------------------------

    def _poll_generators(self, generators: list[EventGenerator]) -> None:
        for generator in generators:
            if id(generator) in self._exhausted:
                continue
            try:
                events = list(generator.get_events() or ())
            except Exception as exc:
                logger.warning("generator %s failed in get_events(): %r", generator, exc)
                with self._lock:
                    self._generator_errors.append((generator, exc))
                continue
            tracker = generator if getattr(generator, "track_outcomes", False) else None
            with self._lock:
                accepted = [event for event in events if isinstance(event, Event)]
                self._take_inbox()
                self._enqueue(accepted, tracker)
                if len(accepted) < len(events):
                    for item in events:
                        if not isinstance(item, Event):
                            error = TypeError(
                                f"get_events() returned a {type(item).__qualname__}, not an Event"
                            )
                            self._generator_errors.append((generator, error))
                if getattr(generator, "finished", False):
                    self._exhausted.add(id(generator))
                elif getattr(generator, "has_more", False):
                    self._poll_again = True
                self._pump()
                self._changed.notify_all()
        self._deliver_outcomes()

    def _stop_generators(self) -> None:
        with self._lock:
            generators = list(self._generators)
        for generator in generators:
            try:
                generator.stop()
            except Exception:
                logger.exception("generator %s failed in stop()", generator)

    # -- acceptance (lock held, any thread) -----------------------------------------------------

    def _take_back_acks(self) -> None:
        """A submitter that stops to wait: the dispatcher thread reads acknowledgements again."""
        if self._submitter_read_acks_at != -math.inf:
            self._submitter_read_acks_at = -math.inf
            self._wake()

    def _check_open(self) -> None:
        if self._state in (_STOPPING, _STOPPED):
            raise DispatcherStoppedError(
                "the dispatcher is stopped; it accepts no more events"
            ) from self._broken

    def _take_inbox(self) -> None:
        """Accept what submit()'s fast path queued, in order (only while running).

        After stop() the inbox is left alone: an event still there was appended after stop()
        took its last look, and its submitter takes it back and refuses it.
        """
        inbox = self._inbox
        if not inbox or self._state is not _RUNNING:
            return
        count = len(inbox)
        events = inbox[:count]
        del inbox[:count]
        self._enqueue(events)

    def _enqueue(self, events: list[Event], tracker: Any = None) -> None:
        """Accept ``events`` into the ledger and queue them: all at once, or each by its key.

        ``tracker`` (a generator that hears of each outcome) is noted first: routing may fail
        an event at once.
        """
        seqs = self._ledger.accept(events, tracker)
        if self.key is None:
            self._ledger.queue(seqs)
            return
        for seq, event in zip(seqs, events, strict=True):
            try:
                slot = hash(self.key(event)) % self.workers
            except Exception as exc:
                error = EventmpError(f"the key function raised {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                self._fail(seq, "EventDispatcher", error)
                continue
            self._ledger.queue((seq,), slot)

    def _close_inbox(self) -> None:
        """Close submit()'s fast path and accept what it queued (before a stop)."""
        self._inbox_room = 0
        self._take_inbox()

    # -- sending (lock held, any thread) --------------------------------------------------------

    def _pump(self) -> None:
        """Send queued events to every worker that has room, then the poison pills if draining."""
        while True:
            self._pump_once()
            if not (self._sendable and self._inbox and self._state is _RUNNING):
                return
            # Appended after _pump_once took the inbox, by a submitter that saw _sendable
            # still false: it counts on this pump to send it.

    def _pump_once(self) -> None:
        self._held_back = False
        flood = self._flood
        ledger = self._ledger
        if flood.update(_monotonic(), ledger.accepted + len(self._inbox)):
            for slot in self._slots:
                slot.view[FLOODED] = int(flood.flooded)
        self._take_inbox()
        slots = self._slots
        pooled = len(slots) > 1 and self.key is None  # several workers share one backlog
        if pooled:
            # The least busy worker first, so that a few slow events spread out.
            slots = sorted(
                slots, key=lambda slot: slot.worker.inflight_events if slot.worker else 0
            )
        cheap = len(slots) > 1 and self._estimates.cheap
        limit = self._estimates.batch_limit(pooled)
        for slot in slots:
            worker = slot.worker
            if worker is None or not worker.open:
                continue
            if ledger.resync[slot.index]:
                self._send_resync(worker)
            backlog = ledger.backlog(slot.index)
            if backlog and not worker.batches and self.event_timeout is not None:
                # The dispatcher thread may sleep without a timer; it must now time this.
                self._wake()
            if cheap:
                while len(worker.batches) < MAX_INFLIGHT_BATCHES and backlog:
                    if batching.hold_back(
                        self._slots, len(backlog), limit, flood.flooded, _monotonic()
                    ):
                        self._held_back = True
                        break
                    self._send_batch(worker, limit)
            else:
                while batching.wants_batch(worker, len(backlog), limit):
                    share = len(backlog)
                    if pooled:
                        share = -(-share // batching.workers_with_room(self._slots))
                    self._send_batch(worker, min(limit, share))
            if (
                self._state == _STOPPING
                and self._drain
                and self._abandoning is None
                and not backlog
                and not ledger.resync[slot.index]
            ):
                self._send_stop(worker)
            self._flush(worker)
        self._find_idle_worker()
        self._inbox_room = (
            max(0, min(MAX_BATCH_EVENTS, self.max_pending - len(ledger.pending) - len(self._inbox)))
            if self._state is _RUNNING
            else 0
        )

    def _send_alone(self) -> bool:
        """Send the inbox's only event to the idle worker at once; false if not.

        The idle-latency path: an event that finds its pipeline idle runs every line between
        ``submit()`` and the write with the CPU's caches cold, where each line costs several
        times what it does under load. This does the same bookkeeping as _pump for the common
        case, one event, a worker that is idle and already knows the handler, and plain data,
        and leaves anything else to _pump.
        """
        inbox = self._inbox
        worker = self._idle_worker
        ledger = self._ledger
        if (
            self.key is not None  # the event's key picks its worker: _pump routes it
            or len(inbox) != 1
            or worker is None
            or self._state is not _RUNNING
            or ledger.shared
            or worker.batches
            or not worker.open
            or worker.outbuf
            or worker.forget
            or ledger.resync[worker.slot]
            or self._slots[worker.slot].worker is not worker
        ):
            return False
        event = inbox[0]
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
            return False  # _pump knows what to do with data plain pickle refuses
        inbox.clear()
        ledger.accept_one(event)
        self._write_batch(worker, [], blob, [seq])
        self._flush(worker)
        if len(self._slots) == 1:
            self._idle_worker = None
            self._sendable = False
        else:
            self._find_idle_worker()
        self._inbox_room = max(0, min(MAX_BATCH_EVENTS, self.max_pending - len(ledger.pending)))
        if self.event_timeout is not None:
            self._wake()  # the dispatcher thread may sleep without a timer; it must time this
        return True

    def _find_idle_worker(self) -> None:
        """Note a worker with nothing in flight, which submit() may write to at once.

        With several workers and cheap or keyed events, only while no worker has anything in
        flight (or only stalled ones): otherwise there is nearly always an idle worker, every
        event goes alone, and the parent pays a round trip per event. Events then wait for the
        busy worker's acknowledgement, or a submitter's next look (every 100 us at most), and
        go together. Unkeyed events that cost a worker more than a round trip go to an idle
        worker at once.
        """
        self._idle_worker = batching.idle_worker(self._slots)
        if (
            self._idle_worker is not None
            and len(self._slots) > 1
            and (self.key is not None or self._estimates.cheap)
            and batching.inflight_progressing(self._slots, _monotonic())
        ):
            self._idle_worker = None
            self._held_back = True
        self._sendable = self._idle_worker is not None
        if self._held_back and not self._hold_timer_armed and not self._in_loop_thread():
            # Should the busy worker stall, nothing else would send what waits meanwhile.
            self._wake()

    def _send_batch(self, worker: WorkerHandle, count: int) -> None:
        """Take up to ``count`` queued events for ``worker``, encode them, queue the write."""
        ledger = self._ledger
        seqs = ledger.take(worker.slot, count)
        # The hot path under load: locals, and the handler looked up once per run of events
        # that share it (the usual case).
        items: list[WireEvent] = []
        definitions: list[tuple[int, bytes]] = []
        pending = ledger.pending
        last_handler: Any = None
        handler_id = -1
        for seq in seqs:
            event = pending[seq]
            handler = event.handler
            if handler is not last_handler or handler_id < 0:
                try:
                    handler_id = self._handler_id(handler, worker, definitions)
                except EventmpError as exc:
                    handler_id = -1
                    self._fail(seq, "EventDispatcher", exc)
                    continue
                last_handler = handler
            originator = event.originator
            if type(originator) is not str:
                originator = serialization.wire_originator(originator)
            items.append((seq, handler_id, originator, event.data, event.timestamp))
        if not items and not definitions:
            return
        blob, kept, failures = serialization.encode_events(items)
        for seq, error in failures:
            self._fail(seq, "EventDispatcher", error)
        while len(blob) > MAX_BATCH_BYTES and len(kept) > 1:
            # Heavier events than the estimate said: the second half goes back to the front.
            half = len(kept) // 2
            ledger.untake(worker.slot, [item[0] for item in kept[half:]])
            kept = kept[:half]
            blob = serialization.dumps(kept)
        self._estimates.note_bytes(len(blob), len(kept))
        self._write_batch(worker, definitions, blob, [item[0] for item in kept])

    def _send_resync(self, worker: WorkerHandle) -> None:
        """Send the slot's resync list as one batch of separately pickled events."""
        ledger = self._ledger
        definitions: list[tuple[int, bytes]] = []
        items: list[WireEvent] = []
        for seq in ledger.take_resync(worker.slot):
            event = ledger.pending[seq]
            try:
                handler_id = self._handler_id(event.handler, worker, definitions)
            except EventmpError as exc:
                self._fail(seq, "EventDispatcher", exc)
                continue
            originator = serialization.wire_originator(event.originator)
            items.append((seq, handler_id, originator, event.data, event.timestamp))
        blob, kept, failures = serialization.encode_single_events(items)
        for seq, error in failures:
            self._fail(seq, "EventDispatcher", error)
        self._write_batch(worker, definitions, blob, [item[0] for item in kept], resync=True)

    def _send_stop(self, worker: WorkerHandle) -> None:
        worker.stop_sent = True
        blob = serialization.dumps([(0, STOP_HANDLER_ID, "EventDispatcher", None, time.time())])
        self._write_batch(worker, [], blob, [], stop=True)

    def _write_batch(
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
        worker.outbuf += encode_batch(batch_no, blob, resync)
        if worker.forget:
            worker.outbuf += encode_handler_update(HandlerUpdate([], worker.forget))
            worker.forget = []
        if not worker.batches:
            worker.progressed_at = _monotonic()
        self._ledger.assign(worker.id, batch_no, seqs, stop)
        worker.last_batch = batch_no

    def _handler_id(
        self, handler: Any, worker: WorkerHandle, definitions: list[tuple[int, bytes]]
    ) -> int:
        """The id ``worker`` knows ``handler`` by; queues its definition if it lacks it."""
        if handler is worker.last_handler and worker.last_handler_id >= 0:
            return worker.last_handler_id
        handler_id, blob, evicted = self._handlers.lookup(handler)
        if evicted is not None:
            for slot in self._slots:
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

    def _flush(self, worker: WorkerHandle) -> None:
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
                self._wake()
                return
            raise
        del worker.outbuf[:written]
        if worker.outbuf and not self._in_loop_thread():
            self._wake()  # the dispatcher thread must watch the pipe for room

    # -- results (lock held) ----------------------------------------------------------------------

    def _collect_acks(self) -> None:
        """Read the workers' acknowledgements from a submitting thread.

        A thread that submits without pause holds the GIL; the dispatcher thread, woken by an
        acknowledgement, may wait a whole switch interval (5 ms) for it while the worker sits
        idle. So every _ACK_CHECK_INTERVAL the submitter reads the acknowledgements itself and
        sends the next batch: it bounds how long an event waits under a busy producer, for a
        non-blocking read now and then. A worker's death is left to the dispatcher thread.

        Meanwhile the dispatcher thread stops watching the result pipes (see _wait_for_io):
        woken by every acknowledgement only to queue for the GIL, it would cost the parent
        CPU per event, and the worker a wake-up per batch.
        """
        now = _monotonic()
        self._next_ack_check = now + _ACK_CHECK_INTERVAL
        if not self._in_loop_thread():
            # A submitter that comes back within a millisecond is busy: it takes the
            # acknowledgements over. One that submits now and then (an idle pipeline) leaves
            # them to the dispatcher thread, so that its next event finds the worker free.
            if now - self._submitter_collected_at < _BUSY_SUBMITTER:
                self._submitter_read_acks_at = now
            self._submitter_collected_at = now
        # At a modest rate (few events queued), send first: a worker with room (one small
        # batch in hand) gets the events before the reads, which they would otherwise wait for.
        if len(self._inbox) <= 8:
            self._pump()
        for slot in self._slots:
            worker = slot.worker
            if worker is not None and not worker.exited and self._read_results(worker):
                self._wake()
        self._pump()

    def _read_results(self, worker: WorkerHandle) -> bool:
        """Read and handle every complete message; true if the pipe reached its end.

        The one place a result pipe is read, from whichever thread owns the acknowledgements;
        a failure read outside the dispatcher thread wakes it to deliver the error event.
        """
        failures = len(self._ledger.failures)
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
            if len(self._ledger.failures) != failures and not self._in_loop_thread():
                self._wake()

    def _handle_message(self, worker: WorkerHandle, message: Any) -> None:
        self._messages_read += 1
        kind = type(message)
        if kind is BatchDone:
            self._on_batch_done(worker, message)
        elif kind is EventFailed:
            exc = serialization.load_exception(
                message.exception, message.type_name, message.message, message.traceback
            )
            self._ledger.failed_at(
                worker.id, message.position, message.seq, self._processor_name(worker), exc
            )
            self._changed.notify_all()
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
        elif kind is WorkerRetiring:
            worker.retiring = message.reason
            worker.signalled = message.signalled
        elif kind is BatchRejected:
            if self._ledger.batch_rejected(worker.id, message.batch_no):
                worker.stop_sent = False  # the pill was dropped with the rest: send it again
            logger.info(
                "worker %s could not unpickle a batch (%s); re-sending its events one by one",
                worker.pid,
                message.error,
            )
            self._pump()
        else:
            logger.error("unexpected message from worker %s: %r", worker.pid, message)

    def _on_batch_done(self, worker: WorkerHandle, message: BatchDone) -> None:
        worker.rss = message.rss
        worker.progressed_at = _monotonic()
        events = self._ledger.batch_done(worker.id, message.batch_no)
        self._estimates.note_batch(message.busy_ns, events)
        self._slots[worker.slot].crash_streak = 0
        self._changed.notify_all()
        self._pump()

    # -- timers and worker lifecycle (dispatcher thread, lock held) -----------------------------

    def _maintain(self, now: float) -> None:
        """Timers: restarts due, handler timeouts, kill deadlines, the stop deadline."""
        if (
            self._state == _STOPPING
            and self._stop_deadline is not None
            and now >= self._stop_deadline
            and self._abandoning is None
        ):
            self._abandoning = "stop(timeout=...) expired before the event had run"
        if self._state == _STOPPING and self._abandoning is None:
            self._abandon_stranded()
        if self._abandoning is not None:
            self._abandon_all()
        for slot in self._slots:
            worker = slot.worker
            if worker is None:
                if slot.restart_at is not None and now >= slot.restart_at:
                    self._restart(slot)
                continue
            if worker.exited or worker.gone:
                continue
            if worker.orphaned and workers.process_gone(worker.pid):
                worker.gone = True
                self._on_worker_exit(worker, None)
                continue
            if worker.kill_at is not None and now >= worker.kill_at:
                worker.kill_at = None
                workers.send_signal(worker.pid, signal.SIGKILL)
            if self.event_timeout is not None and worker.timed_out is None:
                self._check_timeout(slot, worker)
            if self._ledger.trackers and worker.batches:
                self._settle_finished(slot, worker)

    def _settle_finished(self, slot: Slot, worker: WorkerHandle) -> None:
        """Give the events a worker has finished their outcome before their batch is done.

        A checkpointing tail saves its position only up to settled lines; one slow event
        would otherwise hold back every event of its batch, and a kill -9 of the parent would
        send them all again. The worker reports a failure before it marks the event finished,
        so once the mark is read and the result pipe drained, every event up to it that has
        no failure was processed.
        """
        finished = int(slot.view[FINISHED])
        if self._read_results(worker) or worker.exited:
            return  # it is leaving: the exit settles what it held
        if self._ledger.finished_upto(worker.id, finished):
            self._changed.notify_all()

    def _check_timeout(self, slot: Slot, worker: WorkerHandle) -> None:
        assert self.event_timeout is not None
        view = slot.view
        started = int(view[STARTED])
        if started <= view[FINISHED] or self._ledger.event_at(worker.id, started) is None:
            return
        started_at = view[STARTED_AT_NS]
        if view[STARTED] != started:
            return  # it moved on while we looked
        if time.monotonic_ns() - started_at < self.event_timeout * 1e9:
            return
        logger.warning(
            "handler of event %d ran longer than event_timeout=%gs; killing worker %s",
            self._ledger.event_at(worker.id, started),
            self.event_timeout,
            worker.pid,
        )
        worker.timed_out = started
        self._terminate(worker)

    def _terminate(self, worker: WorkerHandle) -> None:
        """SIGTERM now, SIGKILL after ``kill_grace`` if it has not exited (pebble's way)."""
        workers.send_signal(worker.pid, signal.SIGTERM)
        if worker.kill_at is None:
            worker.kill_at = time.monotonic() + self.kill_grace

    def _start_workers(self) -> None:
        with self._lock:
            if self._state != _NEW:
                raise RuntimeError(f"dispatcher already {self._state}")
            self._state = _RUNNING
        try:
            for index in range(self.workers):
                slot = Slot(index, self._context.RawArray("q", PROGRESS_FIELDS))
                self._slots.append(slot)
                with self._lock:
                    self._start_worker(slot)
            deadline = time.monotonic() + self.start_timeout
            for slot in self._slots:
                assert slot.worker is not None
                self._await_ready(slot.worker, deadline)
        except BaseException:
            for slot in self._slots:
                if slot.worker is not None:
                    workers.kill(slot.worker, self.kill_grace)
                    workers.close(slot.worker)
                    slot.worker = None
            with self._lock:
                self._state = _STOPPED
            self._stop_generators()
            self._close_wake_pipe()
            raise
        _live_dispatchers.add(self)
        with self._lock:
            self._pump()

    def _start_worker(self, slot: Slot) -> None:
        close_fds = [self._wake_r, self._wake_w]
        for other in self._slots:
            if other.worker is not None and not other.worker.exited:
                close_fds += [other.worker.task_fd, other.worker.result_fd]
        handle = workers.start_worker(
            self._context,
            slot,
            deque(),
            label=self._processor_label(slot.index),
            wake_fd=self._wake_w,
            close_fds=close_fds,
            ringing=self._ringing,
            flooded=self._flood.flooded,
            idle_spin=self.idle_spin,
            max_events=self.max_events_per_worker,
            max_memory=self.max_memory_per_worker,
            stamp_starts=self.event_timeout is not None,
        )
        handle.batches = self._ledger.worker_started(handle.id, slot.index)
        slot.worker = handle
        slot.restart_at = None

    def _await_ready(self, worker: WorkerHandle, deadline: float) -> None:
        """Block until ``worker`` says it is ready (used by ``start()`` only)."""
        while not worker.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerStartError(
                    f"worker process {worker.pid} was not ready after {self.start_timeout}s"
                )
            ready = multiprocessing.connection.wait([worker.result_fd, worker.sentinel], remaining)
            if worker.result_fd in ready:
                with self._lock:
                    ended = self._read_results(worker)
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

    def _restart(self, slot: Slot) -> None:
        if self._abandoning is not None or slot.retired:
            slot.restart_at = None
            return
        try:
            self._start_worker(slot)
        except Exception as exc:
            # A forkserver killed by the same process-group signal refuses connections for a
            # moment before multiprocessing starts a new one: retry a few times, then give up.
            slot.start_failures += 1
            if slot.start_failures > _START_RETRIES:
                self._break(WorkerStartError(f"could not start a replacement worker: {exc}"))
            else:
                logger.warning("could not start a worker (%s); retrying", exc)
                slot.restart_at = time.monotonic() + workers.BACKOFF_FIRST * 2**slot.start_failures
            return
        slot.start_failures = 0
        self._restarts += 1

    def _on_worker_exit(self, worker: WorkerHandle, exitcode: int | None) -> None:
        """Settle every event the reaped worker held, then arrange its replacement (or not)."""
        self._read_results(worker)  # messages it wrote before dying come first
        slot = self._slots[worker.slot]
        started = int(slot.view[STARTED])
        finished = int(slot.view[FINISHED])
        workers.close(worker)
        slot.worker = None
        outcome = self._ledger.worker_exited(
            worker.id,
            started,
            finished,
            resync_unstarted=exitcode != 0 and self._abandoning is None and not worker.signalled,
        )
        if outcome.crashed is not None:
            self._fail(
                outcome.crashed,
                self._processor_name(worker),
                self._death_error(worker, started, exitcode),
            )
        if not worker.ready and self._state == _RUNNING and (exitcode or 0) > 0:
            # What it held is queued again by now: _break fails it with the reason.
            self._break(
                WorkerStartError(
                    workers.start_failure_message(self.start_method, worker.pid, exitcode)
                )
            )
        told_to_leave = worker.signalled or (
            exitcode == 0 and outcome.crashed is None and worker.retiring is None
        )
        if outcome.took_pill or self._abandoning is not None:
            slot.retired = True  # it took its poison pill and left, or everything is abandoned
        elif (
            told_to_leave
            and self._state != _RUNNING
            and not (self._ledger.backlog(slot.index) or self._ledger.resync[slot.index])
        ):
            # Told to leave while stopping (a SIGTERM to the whole process group, say), with
            # nothing left for it to drain: not a crash, and no fresh worker.
            slot.retired = True
            logger.info("worker %s left on SIGTERM while stopping", worker.pid)
        else:
            delay = 0.0
            if told_to_leave:
                logger.info("worker %s left (SIGTERM); starting a fresh one", worker.pid)
            elif worker.retiring is not None and outcome.crashed is None:
                self._recycles += 1
                logger.info("recycling worker %s: %s", worker.pid, worker.retiring)
            else:
                slot.crash_streak += 1
                delay = workers.restart_delay(slot.crash_streak)
                if outcome.crashed is None:
                    logger.warning(
                        "idle worker %s %s; starting a fresh one",
                        worker.pid,
                        describe_exit(exitcode),
                    )
            slot.restart_at = time.monotonic() + delay
        self._changed.notify_all()
        if self._abandoning is not None:
            self._abandon_all()

    def _death_error(self, worker: WorkerHandle, pos: int, exitcode: int | None) -> EventmpError:
        """Why the event a dead worker held failed."""
        if self._abandoning is not None:
            return EventAbandonedError(self._abandoning)
        if worker.timed_out == pos and self.event_timeout is not None:
            return HandlerTimeoutError(self.event_timeout, worker.pid)
        return WorkerCrashedError(exitcode, worker.pid)

    def _all_workers_gone(self) -> bool:
        return all(
            (slot.worker is None or slot.worker.exited)
            and (slot.retired or slot.restart_at is None)
            for slot in self._slots
        ) and (self._abandoning is not None or not self._ledger.queued())

    # -- outcomes -------------------------------------------------------------------------------

    def _fail(self, seq: int, originator: Any, exc: BaseException) -> None:
        """Fail an event no worker holds; the dispatcher thread delivers the error event."""
        if self._ledger.fail(seq, originator, exc):
            self._changed.notify_all()
            if not self._in_loop_thread():
                self._wake()

    def _abandon_stranded(self) -> None:
        """While stopping: abandon queued events that no worker is left to run.

        A worker that leaves on SIGTERM while the dispatcher stops (systemd's
        ``KillMode=control-group`` signals every process of the service) is not replaced; the
        events it would have run have no one else.
        """
        ledger = self._ledger
        if not ledger.queued():
            return
        stranded: list[int] = []
        for slot in self._slots:
            if slot.retired:
                stranded += ledger.take_resync(slot.index)
                if self.key is not None:
                    stranded += ledger.take(slot.index, len(ledger.lanes[slot.index]))
        if self.key is None and all(slot.retired for slot in self._slots):
            stranded += ledger.take(0, len(ledger.shared))
        for seq in stranded:
            self._fail(
                seq,
                self.name,
                EventAbandonedError("its worker left on SIGTERM while the dispatcher was stopping"),
            )

    def _abandon_all(self) -> None:
        """Abandon everything queued; make every worker finish its event in hand and leave."""
        reason = self._abandoning or "abandoned"
        self._ledger.fail_queued(self.name, lambda: EventAbandonedError(reason))
        for slot in self._slots:
            slot.restart_at = None
            worker = slot.worker
            if worker is None or worker.exited:
                continue
            if worker.kill_at is None:
                self._terminate(worker)
        self._changed.notify_all()

    def _log_abandoned(self) -> None:
        """One line with the total, once the dispatcher has stopped."""
        if self._ledger.abandoned:
            logger.warning(
                "%d events abandoned: %s", self._ledger.abandoned, self._abandoning or "stopped"
            )

    def _break(self, error: EventmpError) -> None:
        """A replacement worker cannot start: fail everything rather than loop."""
        logger.error("%s", error)
        self._broken = error
        self._close_inbox()
        self._state = _STOPPING
        self._abandoning = str(error)
        self._ledger.fail_unheld(self.name, error)
        self._changed.notify_all()

    def _deliver_outcomes(self) -> None:
        """Call the error handler and tracking generators for each outcome, in this thread."""
        ledger = self._ledger
        while True:
            with self._lock:
                error: tuple[EventGenerator, BaseException] | None = None
                outcome: Outcome | None = None
                if self._generator_errors:
                    error = self._generator_errors.popleft()
                elif ledger.failures:
                    outcome = ledger.failures.popleft()
                elif ledger.settled:
                    outcome = ledger.settled.popleft()
                else:
                    self._changed.notify_all()
                    return
                self._delivering += 1
            try:
                if error is not None:
                    self._deliver(error[0], error[1], None)
                elif outcome is not None:
                    if outcome.exception is not None:
                        self._deliver(outcome.originator, outcome.exception, outcome.event)
                    if outcome.tracker is not None:
                        self._notify_settled(outcome.tracker, outcome.event, outcome.exception)
            finally:
                with self._lock:
                    self._delivering -= 1

    def _notify_settled(self, tracker: Any, event: Event, exc: BaseException | None) -> None:
        try:
            tracker.settled(event, exc)
        except Exception:
            logger.exception("generator %s failed in settled()", tracker)

    def _deliver(self, originator: Any, exception: BaseException, event: Event | None) -> None:
        handler = self._error_handler
        if handler is None:
            logger.warning(
                "event %s failed: %s: %s",
                event if event is not None else "(none)",
                type(exception).__name__,
                exception,
                exc_info=exception,
            )
            return
        error_event = Event(originator, handler, (exception, event))
        try:
            call_handler(handler, error_event)
        except Exception:
            logger.exception("error handler %s raised; ignored", describe_handler(handler))

    def _idle(self) -> bool:
        ledger = self._ledger
        return (
            not ledger.pending
            # After stop() the inbox holds only events that were never accepted (their
            # submitters take them back), even one whose submit() a KeyboardInterrupt cut short.
            and (not self._inbox or self._state is not _RUNNING)
            and not self._generator_errors
            and not ledger.failures
            and not ledger.settled
            and not self._delivering
            and self._all_exhausted()
        )

    def _all_exhausted(self) -> bool:
        return all(id(g) in self._exhausted for g in self._generators)

    # -- shutdown -------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """End of the dispatcher thread: reap every worker, stop generators, last outcomes."""
        with self._lock:
            live = [s.worker for s in self._slots if s.worker is not None]
        for worker in live:
            if not worker.exited:
                workers.kill(worker, self.kill_grace)
                self._worker_gone(worker)
        with self._lock:
            self._close_inbox()
            self._ledger.fail_unheld(self.name, EventAbandonedError("the dispatcher stopped"))
            self._log_abandoned()
        self._deliver_outcomes()  # before the generators stop: a tail's last checkpoint
        self._stop_generators()
        self._deliver_outcomes()
        with self._lock:
            self._state = _STOPPED
            self._changed.notify_all()
        _live_dispatchers.discard(self)
        self._close_wake_pipe()

    # -- small helpers --------------------------------------------------------------------------

    def _wake(self) -> None:
        """Wake the dispatcher thread (one byte at most per wait, not one per event)."""
        if self._wake_pending or self._wake_w < 0:
            return
        self._wake_pending = True
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _close_wake_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _in_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_ident

    def _processor_label(self, index: int) -> str:
        return f"EventProcessor-{index}"

    def _processor_name(self, worker: WorkerHandle) -> str:
        return f"{self._processor_label(worker.slot)}[pid {worker.pid}]"
