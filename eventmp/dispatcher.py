"""The parent side: :class:`EventDispatcher` polls generators and feeds the worker processes.

Everything in this module runs in the parent process (the processor module is the workers').

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
                                     +<- progress array (started/finished) --+

Actors:

- The submitting threads (``submit()``): append the event to the inbox without the lock (a list
  append is atomic under the GIL); whoever next holds the lock numbers the inbox's events and
  moves them to the backlog, so the lock, the sequence numbers and the pending entries cost
  once per batch. When a worker is idle a submitter takes the lock at once, encodes and writes
  the event itself, so an event on an idle pipeline pays for no thread hand-off; under load it
  sends full batches (up to 1,024 events, 1 MiB) and reads the acknowledgements itself, as soon
  as the progress array shows a worker's last one written (not under a flood, when that would
  keep batches small) and every 100 us at most: the dispatcher thread may wait a whole GIL
  switch interval behind a busy submitter, so meanwhile it sleeps without watching the result
  pipes, and a worker that goes idle while it sleeps rings the wake-up pipe (a submitter that
  blocks, ``wait()`` and ``stop()`` wake it at once).
- The dispatcher thread (``run()``): one loop that waits with ``poll()`` on every worker's
  result pipe (unless a busy submitter reads them) and sentinel, the wake-up pipe (rung by
  submitters and by idle workers), and (while a write is unfinished) the task pipes.
  It reads acknowledgements and failures, sends backlog to workers as they acknowledge (so
  events batch up exactly while workers are busy, with no linger timer), polls generators every
  ``poll_interval``, enforces ``event_timeout``, replaces dead workers, and calls the error
  handler. The user's error handler and generators run only in this thread.
- The worker processes: see :mod:`eventmp.processor`.

Bookkeeping: every accepted event is in the inbox (not yet numbered) or in ``_pending`` (by
sequence number) until it has its outcome; ``stop()`` takes the inbox before it closes, and a
submit whose append raced it takes its own event back and raises. Each worker handle knows
which batches it was sent and not yet acknowledged; the shared progress array tells which event
the worker started and which it finished last. When a worker dies, events up to ``finished``
were processed, the one it had started is the one that killed it, and the rest go back to the
front of the backlog for a fresh worker on fresh pipes: a pipe that a killed process wrote half
a message into is never trusted again.
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
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import psutil

from . import serialization
from .errors import (
    DispatcherStoppedError,
    EventAbandonedError,
    EventmpError,
    HandlerTimeoutError,
    SerializationError,
    SubmitTimeoutError,
    WorkerCrashedError,
    WorkerStartError,
    describe_exit,
)
from .event import Event, EventGenerator
from .handlers import call_handler, describe_handler
from .messages import (
    ACKED,
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
    FrameReader,
    HandlerUpdate,
    WireEvent,
    WorkerReady,
    WorkerRetiring,
    decode_result,
    encode_batch,
    encode_handler_update,
)
from .processor import EventProcessor, worker_main
from .units import parse_size

__all__ = ["DispatcherStats", "EventDispatcher", "default_start_method"]

logger = logging.getLogger("eventmp")

_NEW, _RUNNING, _STOPPING, _STOPPED = "new", "running", "stopping", "stopped"

# Unacknowledged batches a worker may hold: two keep it busy while the next one is in flight.
_MAX_INFLIGHT_BATCHES = 2
# A batch holds at most this many events and, past its first event, this many bytes. 1,024
# events: fewer batches cost the parent less per event (interleaved A/B: 523k events/s at 256,
# 554k at 512, 616k-657k at 1,024, 578k at 2,048).
_MAX_BATCH_EVENTS = 1024
_MAX_BATCH_BYTES = 1 << 20
_PIPELINE_BELOW = 64  # events in flight under which a busy worker gets its next batch at once
_HANDLER_CACHE_SIZE = 1024
_READ_CHUNK = 1 << 18
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
_START_RETRIES = 5
_BATCH_WORK_NS = 2_000_000
# An event that costs a worker more than this goes to an idle worker at once, even while
# another is busy; cheaper ones wait to go together (see _find_idle_worker).
_SPREAD_AT_ONCE_NS = 50_000
# A worker with events in flight that has acknowledged nothing for this long is not waited for
# (a hung handler, a slow event): idle workers get cheap events at once meanwhile.
_STALLED_AFTER = 0.01
_COST_SMOOTHING = 0.3
_NO_HANDLER = object()
_ACK_CHECK_INTERVAL = 0.0001
# While a submitter read acknowledgements this recently, the dispatcher thread leaves them to it
# and sleeps until a worker rings (see _wait_for_io).
_ACK_HANDOFF = 0.02
_BUSY_SUBMITTER = 0.001  # a submitter reading acknowledgements again this soon is busy
_SETTLE_INTERVAL = 0.2  # how often finished events of tracking generators are settled early
# Events accepted faster than this, by the whole pipeline, make a flood (see _FloodGauge).
_FLOOD_EVENTS_PER_S = 100_000
# The arrival rate is measured over windows at least this long: a producer that catches up
# after being held up for a few ms (a GIL switch, a preempted vCPU) is not a flood. With 1 ms
# windows, a busy producer at 30,000/s on two workers flipped to a flood and back 114-166
# times in 3 s; with 10 ms windows, 16-18.
_RATE_WINDOW = 0.01
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


@dataclass
class _Outcome:
    """An error event waiting to be delivered to the error handler by the dispatcher thread."""

    originator: Any
    exception: BaseException
    event: Event | None


class _Worker:
    """The parent's handle on one worker process and its two pipes."""

    def __init__(self, slot: int, process: Any, task_fd: int, result_fd: int) -> None:
        self.slot = slot
        self.process = process
        self.pid: int = process.pid
        self.sentinel: int = process.sentinel
        self.task_fd = task_fd
        self.result_fd = result_fd
        self.reader = FrameReader()
        self.outbuf = bytearray()
        self.inflight: deque[tuple[int, list[int]]] = deque()  # (batch_no, seqs), unacked
        self.last_batch = 0  # batch_no of the last batch sent
        self.progressed_at = 0.0  # when it last took work with nothing in flight, or acknowledged
        self.known_handlers: set[int] = set()
        # The handler of the last event sent: consecutive events usually share it.
        self.last_handler: Any = _NO_HANDLER
        self.last_handler_id = 0
        self.forget: list[int] = []
        self.resync: list[int] = []  # seqs to re-send one by one after a BatchRejected
        self.ready = False
        self.stop_seq: int | None = None  # seq of the poison pill, once sent
        self.exited = False
        self.timed_out_seq: int | None = None
        self.kill_at: float | None = None
        self.rss = 0
        self.retiring: str | None = None  # why it is leaving for a fresh worker, if it is
        # Under forkserver the sentinel reports the server's death as the worker's: once it
        # fired for a worker still alive, the worker is watched by its result pipe and pid.
        self.orphaned = False

    @property
    def inflight_events(self) -> int:
        return sum(len(seqs) for _, seqs in self.inflight)


class _FloodGauge:
    """Tells a flood from a trickle by the events accepted over windows of at least 10 ms.

    Under a flood the workers do not spin between batches (FLOODED in the progress array):
    batches grow while a worker sleeps, where one that answers at once keeps them small and the
    parent pays per batch (interleaved, 200,000 submits under forkserver: 547k events/s with a
    spin after every batch, 709k without). Batch size cannot tell a flood from a trickle, for
    that reason, and a worker cannot either: with two workers, each sees half the rate.
    """

    __slots__ = ("arrived_then", "flooded", "window_at")

    def __init__(self) -> None:
        self.flooded = False
        self.window_at = -math.inf
        self.arrived_then = 0

    def update(self, now: float, arrived: int) -> bool:
        """Close the window if it is long enough; true if the verdict changed."""
        elapsed = now - self.window_at
        if elapsed < _RATE_WINDOW:
            return False
        flooded = arrived - self.arrived_then > _FLOOD_EVENTS_PER_S * elapsed
        self.window_at = now
        self.arrived_then = arrived
        if flooded == self.flooded:
            return False
        self.flooded = flooded
        return True


class _Slot:
    """A worker position: it outlives the processes that fill it one after another."""

    def __init__(self, index: int, progress: Any) -> None:
        self.index = index
        self.progress = progress
        # The same memory as int64s: an item read costs a fraction of a ctypes one.
        self.view = memoryview(progress).cast("B").cast("q")
        self.worker: _Worker | None = None
        self.restart_at: float | None = None
        self.crash_streak = 0
        self.start_failures = 0
        self.backlog: deque[int] = deque()  # events routed here by key, not yet sent
        self.resync: list[int] = []  # events for the next worker to receive one at a time
        self.retired = False  # processed its poison pill: not to be restarted


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

        self._next_seq = 1
        self._batch_no = itertools.count(1)
        self._pending: dict[int, Event] = {}
        self._backlog: deque[int] = deque()
        # submit()'s fast path appends here without the lock (a list append is atomic under
        # the GIL); whoever holds the lock next moves the events to the backlog, numbered.
        # _inbox_room is how many events it may take before the lock is needed: 0 closes the
        # fast path (not running, events routed by key, or max_pending reached).
        self._inbox: list[Event] = []
        self._inbox_room = 0
        # With a key, each slot's events wait in a queue of their own (made here so that
        # events submitted before start() have somewhere to go).
        self._keyed_backlogs: list[deque[int]] = [deque() for _ in range(workers)]
        self._outcomes: deque[_Outcome] = deque()
        # Generators with ``track_outcomes`` hear of each of their events' outcome, from the
        # dispatcher thread (a tail saves its checkpoint only up to settled lines).
        self._trackers: dict[int, Any] = {}
        self._settled: deque[tuple[Any, Event, BaseException | None]] = deque()
        self._slots: list[_Slot] = []
        self._handler_ids: OrderedDict[Any, tuple[int, Any, bytes | SerializationError]] = (
            OrderedDict()
        )
        self._next_handler_id = itertools.count(STOP_HANDLER_ID + 1)

        self._accepted = 0
        self._processed = 0
        self._failed = 0
        self._abandoned = 0
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
        self._idle_worker: _Worker | None = None  # one with nothing in flight, if _sendable
        self._poll_again = False  # a generator said it has more right now (has_more)
        self._next_ack_check = 0.0
        self._submitter_read_acks_at = -math.inf
        self._submitter_collected_at = -math.inf
        self._ringing = False  # the workers' RING marks are set (acknowledgements handed off)
        self._flood = _FloodGauge()
        # Cheap events are being held back for a busy worker (see _send_cheap); the dispatcher
        # thread then keeps a timer for the moment that worker would count as stalled.
        self._held_back = False
        self._hold_timer_armed = False
        self._messages_read = 0
        # What an event costs a worker, smoothed: with several workers, batches hold about
        # _BATCH_WORK_NS of work, so slow handlers go one by one and stay balanced while fast
        # ones travel 1,024 at a time. Until a worker has said, events count as costly: the
        # first ones are spread across the workers, in small batches.
        self._event_cost_ns = float(_SPREAD_AT_ONCE_NS)
        self._event_bytes = 0.0  # what an event weighs pickled, smoothed
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

    def _start_workers(self) -> None:
        with self._lock:
            if self._state != _NEW:
                raise RuntimeError(f"dispatcher already {self._state}")
            self._state = _RUNNING
        try:
            for index in range(self.workers):
                slot = _Slot(index, self._context.RawArray("q", PROGRESS_FIELDS))
                slot.backlog = self._keyed_backlogs[index]
                self._slots.append(slot)
                self._start_worker(slot)
            deadline = time.monotonic() + self.start_timeout
            for slot in self._slots:
                assert slot.worker is not None
                self._await_ready(slot.worker, deadline)
        except BaseException:
            for slot in self._slots:
                if slot.worker is not None:
                    self._kill_worker(slot.worker)
                    self._close_worker(slot.worker)
                    slot.worker = None
            with self._lock:
                self._state = _STOPPED
            self._stop_generators()
            self._close_wake_pipe()
            raise
        _live_dispatchers.add(self)
        with self._lock:
            self._pump()

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
                or (not self._flood.flooded and self._caught_up())
            ):
                with self._lock:
                    self._collect_acks()
            return
        with self._lock:
            self._take_inbox()
            self._check_open()
            if len(self._pending) >= self.max_pending and not self._in_loop_thread():
                self._take_back_acks()  # a blocked submitter reads nothing
                if not self._changed.wait_for(
                    lambda: (
                        self._state not in (_NEW, _RUNNING) or len(self._pending) < self.max_pending
                    ),
                    timeout,
                ):
                    raise SubmitTimeoutError(
                        f"no room in the pipeline after {timeout}s: "
                        f"{len(self._pending)} events pending (max_pending={self.max_pending})"
                    )
                self._check_open()
            self._accept(event)
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
            workers = [s.worker for s in self._slots if s.worker is not None]
            return DispatcherStats(
                accepted=self._accepted,
                processed=self._processed,
                failed=self._failed,
                pending=len(self._pending),
                abandoned=self._abandoned,
                worker_restarts=self._restarts,
                worker_recycles=self._recycles,
                worker_pids=tuple(w.pid for w in workers if not w.exited),
                worker_rss=tuple(w.rss for w in workers if not w.exited),
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
                    and len(self._pending) < self.max_pending
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
        watched: dict[int, tuple[str, _Worker | None]] = {self._wake_r: ("wake", None)}
        poller.register(self._wake_r, select.POLLIN)
        exited: list[_Worker] = []
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
                        exited.append(worker)
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
        ready = poller.poll(0 if exited else ms)
        with self._lock:
            for fd, _mask in ready:
                kind, worker = watched[fd]
                if kind == "wake":
                    self._drain_wake_pipe()
                elif kind == "result" and worker is not None:
                    if self._read_results(worker):
                        exited.append(worker)
                elif kind == "sentinel" and worker is not None:
                    if self._sentinel_means_exit(worker):
                        exited.append(worker)
                    else:
                        worker.orphaned = True
                        logger.info(
                            "the forkserver is gone; worker %s lives on, watched by its pid",
                            worker.pid,
                        )
                elif kind == "task" and worker is not None:
                    self._flush(worker)
            for worker in dict.fromkeys(exited):
                if not worker.exited:
                    self._on_worker_exit(worker)

    def _sentinel_means_exit(self, worker: _Worker) -> bool:
        """A direct child's sentinel is the truth; a forkserver child's may be the server's.

        The sentinel fires as the process closes its files, a moment before it is a zombie,
        so a forkserver child gets that moment to show it is gone.
        """
        if self.start_method != "forkserver":
            return True
        deadline = time.monotonic() + 0.2
        while not _process_gone(worker.pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    def _next_timer(self, now: float, next_poll: float) -> float | None:
        """Seconds until the loop must run without I/O: a poll, a restart, a timeout check."""
        with self._lock:
            timers: list[float] = []
            if (
                self._state == _RUNNING
                and self._generators
                and not self._all_exhausted()
                and len(self._pending) < self.max_pending
            ):
                timers.append(now if self._poll_again else next_poll)
            if self._stop_deadline is not None and self._abandoning is None:
                timers.append(self._stop_deadline)
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
                if self._trackers and worker.inflight:
                    timers.append(now + _SETTLE_INTERVAL)
                if self.event_timeout is not None and worker.inflight:
                    timers.append(now + min(self.event_timeout / 4, 0.25))
            self._hold_timer_armed = self._held_back
            if self._held_back:
                # Monotonic like ``now``: when the busy workers would count as stalled.
                timers += [
                    slot.worker.progressed_at + _STALLED_AFTER
                    for slot in self._slots
                    if slot.worker is not None and slot.worker.inflight
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
                    self._outcomes.append(_Outcome(generator, exc, None))
                continue
            tracker = generator if getattr(generator, "track_outcomes", False) else None
            with self._lock:
                accepted = [event for event in events if isinstance(event, Event)]
                self._accept_many(accepted, tracker)
                if len(accepted) < len(events):
                    for item in events:
                        if not isinstance(item, Event):
                            error = TypeError(
                                f"get_events() returned a {type(item).__qualname__}, not an Event"
                            )
                            self._outcomes.append(_Outcome(generator, error, None))
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

    # -- acceptance and sending (called with the lock held, from any thread) -------------------

    def _events_waiting(self) -> bool:
        return bool(self._inbox or any(self._backlogs()))

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

    def _new_seq(self) -> int:
        seq = self._next_seq
        self._next_seq = seq + 1
        return seq

    def _take_inbox(self) -> None:
        """Accept what submit()'s fast path queued, in order (lock held; only while running).

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
        """Number ``events`` and queue them: in C-level passes, or each by its key.

        ``tracker`` (a generator that hears of each outcome) is noted first: routing may fail
        an event at once.
        """
        first = self._next_seq
        self._next_seq = first + len(events)
        seqs = range(first, first + len(events))
        self._pending.update(zip(seqs, events, strict=True))
        self._accepted += len(events)
        if tracker is not None:
            self._trackers.update(dict.fromkeys(seqs, tracker))
        if self.key is None:
            self._backlog.extend(seqs)
        else:
            for seq, event in zip(seqs, events, strict=True):
                self._route(seq, event)

    def _route(self, seq: int, event: Event) -> None:
        """Queue a numbered event for the worker its key maps to; fail it if the key raises."""
        assert self.key is not None
        try:
            index = hash(self.key(event)) % self.workers
        except Exception as exc:
            error = EventmpError(f"the key function raised {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self._fail(seq, "EventDispatcher", error)
            return
        self._keyed_backlogs[index].append(seq)

    def _accept_many(self, events: list[Event], tracker: Any) -> None:
        """Accept a generator's events (lock held), in bulk."""
        self._take_inbox()
        self._enqueue(events, tracker)

    def _close_inbox(self) -> None:
        """Close submit()'s fast path and accept what it queued (lock held, before a stop)."""
        self._inbox_room = 0
        self._take_inbox()

    def _accept(self, event: Event, tracker: Any = None) -> None:
        self._take_inbox()
        seq = self._new_seq()
        self._pending[seq] = event
        self._accepted += 1
        if tracker is not None:
            self._trackers[seq] = tracker
        if self.key is None:
            self._backlog.append(seq)
        else:
            self._route(seq, event)

    def _backlog_of(self, slot: _Slot) -> deque[int]:
        """Where a slot's next events come from: its own queue when events are keyed."""
        return self._backlog if self.key is None else slot.backlog

    def _backlogs(self) -> list[deque[int]]:
        return [self._backlog, *self._keyed_backlogs]

    def _pump(self) -> None:
        """Send backlog to every worker that has room, then the poison pills when draining."""
        while True:
            self._pump_once()
            if not (self._sendable and self._inbox and self._state is _RUNNING):
                return
            # Appended after _pump_once took the inbox, by a submitter that saw _sendable
            # still false: it counts on this pump to send it.

    def _pump_once(self) -> None:
        self._held_back = False
        flood = self._flood
        if flood.update(_monotonic(), self._accepted + len(self._inbox)):
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
        for slot in slots:
            worker = slot.worker
            if (
                worker is None
                or worker.exited
                or worker.stop_seq is not None
                or worker.retiring is not None
            ):
                continue
            if worker.resync:
                self._send_resync(worker)
            backlog = self._backlog_of(slot)
            if backlog and not worker.inflight and self.event_timeout is not None:
                # The dispatcher thread may sleep without a timer; it must now time this.
                self._wake()
            limit = min(_MAX_BATCH_EVENTS, max(1, int(_MAX_BATCH_BYTES / (self._event_bytes or 1))))
            if pooled:
                limit = min(limit, max(1, int(_BATCH_WORK_NS / max(self._event_cost_ns, 1.0))))
            if len(slots) > 1 and self._event_cost_ns < _SPREAD_AT_ONCE_NS:
                self._send_cheap(worker, backlog, limit)
            else:
                self._send_to(worker, backlog, limit, pooled)
            if (
                self._state == _STOPPING
                and self._drain
                and self._abandoning is None
                and not backlog
            ):
                self._send_stop(worker)
            self._flush(worker)
        self._find_idle_worker()
        self._inbox_room = (
            max(0, min(_MAX_BATCH_EVENTS, self.max_pending - len(self._pending) - len(self._inbox)))
            if self._state is _RUNNING
            else 0
        )
        if self._outcomes and not self._in_loop_thread():
            self._wake()

    def _send_to(self, worker: _Worker, backlog: deque[int], limit: int, pooled: bool) -> None:
        """Send ``worker`` what it has room for (lock held).

        An idle worker gets what there is at once; a busy one gets a second batch only once it
        is full, so that under load batches are full and acknowledgements few, or if the batch
        in hand is small (a modest rate): then the next one waits in the pipe for the worker
        instead of a round trip through this process. Workers that share a backlog get a share
        each, so that a few slow events spread out.
        """
        while backlog and (
            not worker.inflight
            or (
                len(worker.inflight) < _MAX_INFLIGHT_BATCHES
                and (len(backlog) >= limit or worker.inflight_events < _PIPELINE_BELOW)
            )
        ):
            share = len(backlog)
            if pooled:
                share = -(-share // self._workers_with_room())
            self._send_batch(worker, backlog, min(limit, share))

    def _send_cheap(self, worker: _Worker, backlog: deque[int], limit: int) -> None:
        """Send cheap events to one of several workers (lock held), from ``backlog``.

        The workers then act as one with more room. Were every idle worker given what there
        is at once, as events that take a while are, a flood would go out in batches of what
        arrives between two looks, split among the workers (or by key), and the parent would
        pay a round trip per few events (two workers, no-op handler: 110,000-320,000 events/s
        against 600,000 and more for one). So a batch that is not full goes out only while
        little is in flight: at a modest rate, at once; under a flood, when the workers run dry.
        """
        while backlog and len(worker.inflight) < _MAX_INFLIGHT_BATCHES:
            if len(backlog) < limit:
                inflight = self._inflight_progressing()
                if inflight and (self._flood.flooded or inflight >= _PIPELINE_BELOW):
                    self._held_back = True
                    return
            self._send_batch(worker, backlog, limit)

    def _inflight_progressing(self) -> int:
        """Events in flight to workers that acknowledged something lately (see _STALLED_AFTER).

        A worker stuck on one event (until event_timeout, or for good) must not hold back the
        others: its events in flight would otherwise count for ever.
        """
        stalled_before = _monotonic() - _STALLED_AFTER
        return sum(
            slot.worker.inflight_events
            for slot in self._slots
            if slot.worker is not None
            and slot.worker.inflight
            and slot.worker.progressed_at > stalled_before
        )

    def _send_alone(self) -> bool:
        """Send the inbox's only event to the idle worker at once (lock held); false if not.

        The idle-latency path: an event that finds its pipeline idle runs every line between
        ``submit()`` and the write with the CPU's caches cold, where each line costs several
        times what it does under load (through _pump, about 45 us here before the write). This
        does the same bookkeeping for the common case, one event, a worker that is idle and
        already knows the handler, and plain data, and leaves anything else to _pump.
        """
        inbox = self._inbox
        worker = self._idle_worker
        if (
            self.key is not None  # the event's key picks its worker: _pump routes it
            or len(inbox) != 1
            or worker is None
            or self._state is not _RUNNING
            or self._backlog
            or worker.inflight
            or worker.exited
            or worker.stop_seq is not None
            or worker.retiring is not None
            or worker.outbuf
            or worker.forget
            or worker.resync
            or self._slots[worker.slot].worker is not worker
        ):
            return False
        event = inbox[0]
        originator = event.originator
        if event.handler is not worker.last_handler or type(originator) is not str:
            return False
        seq = self._next_seq
        try:
            blob = serialization.dumps(
                [(seq, worker.last_handler_id, originator, event.data, event.timestamp)]
            )
        except Exception:
            return False  # _pump knows what to do with data plain pickle refuses
        inbox.clear()
        self._next_seq = seq + 1
        self._pending[seq] = event
        self._accepted += 1
        self._write_batch(worker, [], blob, [seq])
        self._flush(worker)
        if len(self._slots) == 1:
            self._idle_worker = None
            self._sendable = False
        else:
            self._find_idle_worker()
        self._inbox_room = max(0, min(_MAX_BATCH_EVENTS, self.max_pending - len(self._pending)))
        if self.event_timeout is not None:
            self._wake()  # the dispatcher thread may sleep without a timer; it must time this
        return True

    def _find_idle_worker(self) -> None:
        """Note a worker with nothing in flight, which submit() may write to at once.

        With several workers and cheap or keyed events, only while no worker has anything in
        flight (or only stalled ones): otherwise there is nearly always an idle worker, every
        event goes alone, and the parent pays a round trip per event (interleaved A/B, two
        workers, a no-op handler: 42,000-153,000 events/s). Events then wait for the busy
        worker's acknowledgement, or a submitter's next look (every 100 us at most), and go
        together. Unkeyed events that cost a worker more than a round trip go to an idle worker
        at once.
        """
        self._idle_worker = next(
            (
                slot.worker
                for slot in self._slots
                if slot.worker is not None
                and not slot.worker.exited
                and slot.worker.stop_seq is None
                and slot.worker.retiring is None
                and not slot.worker.inflight
            ),
            None,
        )
        if (
            self._idle_worker is not None
            and len(self._slots) > 1
            and (self.key is not None or self._event_cost_ns < _SPREAD_AT_ONCE_NS)
            and self._inflight_progressing()
        ):
            self._idle_worker = None
            self._held_back = True
        self._sendable = self._idle_worker is not None
        if self._held_back and not self._hold_timer_armed and not self._in_loop_thread():
            # Should the busy worker stall, nothing else would send what waits meanwhile.
            self._wake()

    def _caught_up(self) -> bool:
        """True if a worker has acknowledged every batch sent to it, by the progress array.

        A hint, read without the lock, that the acknowledgement waits in the pipe and reading
        it now frees a worker: under a busy producer at a modest rate, events then wait for a
        worker to finish, not for the next timed read (every 100 us).
        """
        for slot in self._slots:
            worker = slot.worker
            if worker is not None and worker.inflight and slot.view[ACKED] >= worker.last_batch:
                return True
        return False

    def _workers_with_room(self) -> int:
        return max(
            1,
            sum(
                1
                for s in self._slots
                if s.worker is not None
                and not s.worker.exited
                and s.worker.stop_seq is None
                and s.worker.retiring is None
                and len(s.worker.inflight) < _MAX_INFLIGHT_BATCHES
            ),
        )

    def _send_batch(self, worker: _Worker, backlog: deque[int], count: int) -> None:
        # The hot path under load: locals, and the handler looked up once per run of events
        # that share it (the usual case).
        items: list[WireEvent] = []
        definitions: list[tuple[int, bytes]] = []
        pending = self._pending
        last_handler: Any = _NO_HANDLER
        handler_id = 0
        for _ in range(min(count, len(backlog))):
            seq = backlog.popleft()
            event = pending[seq]
            handler = event.handler
            if handler is not last_handler:
                try:
                    handler_id = self._handler_id(handler, worker, definitions)
                except EventmpError as exc:
                    last_handler = _NO_HANDLER
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
        while len(blob) > _MAX_BATCH_BYTES and len(kept) > 1:
            # Heavier events than the estimate said: the second half goes back to the front.
            half = len(kept) // 2
            backlog.extendleft(item[0] for item in reversed(kept[half:]))
            kept = kept[:half]
            blob = serialization.dumps(kept)
        if kept:
            self._event_bytes += (len(blob) / len(kept) - self._event_bytes) * _COST_SMOOTHING
        self._write_batch(worker, definitions, blob, [item[0] for item in kept])

    def _send_resync(self, worker: _Worker) -> None:
        seqs = [seq for seq in worker.resync if seq in self._pending]
        worker.resync = []
        definitions: list[tuple[int, bytes]] = []
        items: list[WireEvent] = []
        for seq in seqs:
            event = self._pending[seq]
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

    def _send_stop(self, worker: _Worker) -> None:
        seq = self._new_seq()
        worker.stop_seq = seq
        blob = serialization.dumps([(seq, STOP_HANDLER_ID, "EventDispatcher", None, time.time())])
        if worker.forget:
            worker.outbuf += encode_handler_update(HandlerUpdate([], worker.forget))
            worker.forget = []
        self._write_batch(worker, [], blob, [])

    def _write_batch(
        self,
        worker: _Worker,
        definitions: list[tuple[int, bytes]],
        blob: bytes,
        seqs: list[int],
        *,
        resync: bool = False,
    ) -> None:
        batch_no = next(self._batch_no)
        if definitions:
            worker.outbuf += encode_handler_update(HandlerUpdate(definitions, []))
        worker.outbuf += encode_batch(batch_no, blob, resync)
        if worker.forget:
            worker.outbuf += encode_handler_update(HandlerUpdate([], worker.forget))
            worker.forget = []
        if not worker.inflight:
            worker.progressed_at = _monotonic()
        worker.inflight.append((batch_no, seqs))
        worker.last_batch = batch_no

    def _handler_id(
        self, handler: Any, worker: _Worker, definitions: list[tuple[int, bytes]]
    ) -> int:
        """The id a worker knows ``handler`` by; queues its definition if the worker lacks it.

        A handler is serialized with dill once, then referred to by id: dill costs about 20
        times what pickle does. The cache is keyed by identity (a bound method by its object
        and function, since each attribute access builds a new one) and bounded, so handlers
        built per event do not grow it without end.
        """
        if handler is worker.last_handler:
            return worker.last_handler_id
        if handler is None:
            raise EventmpError("the event has no handler")
        key = _handler_key(handler)
        entry = self._handler_ids.get(key)
        if entry is None:
            handler_id = next(self._next_handler_id)
            blob: bytes | SerializationError
            try:
                blob = serialization.dump_handler(handler)
            except SerializationError as exc:
                blob = exc
            entry = (handler_id, handler, blob)
            self._handler_ids[key] = entry
            if len(self._handler_ids) > _HANDLER_CACHE_SIZE:
                _key, (old_id, _h, _b) = self._handler_ids.popitem(last=False)
                for slot in self._slots:
                    other = slot.worker
                    if other is not None and old_id in other.known_handlers:
                        other.known_handlers.discard(old_id)
                        other.forget.append(old_id)
                        if other.last_handler_id == old_id:
                            other.last_handler = _NO_HANDLER
        else:
            self._handler_ids.move_to_end(key)
        handler_id, _handler, blob = entry
        if isinstance(blob, SerializationError):
            raise blob
        if handler_id not in worker.known_handlers:
            worker.known_handlers.add(handler_id)
            definitions.append((handler_id, blob))
        worker.last_handler = handler
        worker.last_handler_id = handler_id
        return handler_id

    def _flush(self, worker: _Worker) -> None:
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

    # -- results (dispatcher thread, lock held) -------------------------------------------------

    def _collect_acks(self) -> None:
        """Read the workers' acknowledgements from a submitting thread (lock held).

        A thread that submits without pause holds the GIL; the dispatcher thread, woken by an
        acknowledgement, may wait a whole switch interval (5 ms) for it while the worker sits
        idle. So every _ACK_CHECK_INTERVAL the submitter reads the acknowledgements itself and
        sends the next batch: it bounds how long an event waits in the backlog under a busy
        producer, for a non-blocking read now and then. A worker's death is left to the
        dispatcher thread.

        Meanwhile the dispatcher thread stops watching the result pipes (see _wait_for_io):
        woken by every acknowledgement only to queue for the GIL, it would cost the parent
        about a fifth more CPU per event, and the worker a wake-up per batch.
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

    def _read_results(self, worker: _Worker) -> bool:
        """Read and handle every complete message; true if the pipe reached its end."""
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

    def _handle_message(self, worker: _Worker, message: Any) -> None:
        self._messages_read += 1
        kind = type(message)
        if kind is BatchDone:
            self._on_batch_done(worker, message)
        elif kind is EventFailed:
            self._on_event_failed(worker, message)
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
        elif kind is BatchRejected:
            self._on_batch_rejected(worker, message)
        else:
            logger.error("unexpected message from worker %s: %r", worker.pid, message)

    def _on_batch_done(self, worker: _Worker, message: BatchDone) -> None:
        worker.rss = message.rss
        worker.progressed_at = _monotonic()
        while worker.inflight:
            batch_no, seqs = worker.inflight.popleft()
            if batch_no == message.batch_no and seqs:
                cost = message.busy_ns / len(seqs)
                self._event_cost_ns += (cost - self._event_cost_ns) * _COST_SMOOTHING
            if self._trackers:
                for seq in seqs:
                    event = self._pending.pop(seq, None)
                    if event is not None:
                        self._processed += 1
                        self._track(seq, event, None)
            else:
                # The hot path under load: one C-level pass (a failed event was popped before).
                before = len(self._pending)
                deque(map(self._pending.pop, seqs, repeat(None)), maxlen=0)
                self._processed += before - len(self._pending)
            if batch_no == message.batch_no:
                break
        self._slots[worker.slot].crash_streak = 0
        self._changed.notify_all()
        self._pump()

    def _on_event_failed(self, worker: _Worker, message: EventFailed) -> None:
        exc = serialization.load_exception(
            message.exception, message.type_name, message.message, message.traceback
        )
        self._fail(message.seq, self._processor_name(worker), exc)

    def _on_batch_rejected(self, worker: _Worker, message: BatchRejected) -> None:
        # The worker drops this batch and every later one until a resync batch: take them all
        # back, the rejected one to be re-sent event by event, the later ones as usual.
        rejected: list[int] = []
        later: list[int] = []
        found = False
        for batch_no, seqs in worker.inflight:
            if batch_no == message.batch_no:
                found = True
                rejected.extend(seqs)
            elif found:
                later.extend(seqs)
        while worker.inflight and worker.inflight[-1][0] != message.batch_no:
            worker.inflight.pop()
        if worker.inflight:
            worker.inflight.pop()
        worker.resync = [seq for seq in rejected if seq in self._pending]
        backlog = self._backlog_of(self._slots[worker.slot])
        backlog.extendleft(reversed([seq for seq in later if seq in self._pending]))
        logger.info(
            "worker %s could not unpickle a batch (%s); re-sending its events one by one",
            worker.pid,
            message.error,
        )
        self._pump()

    # -- worker lifecycle -----------------------------------------------------------------------

    def _start_worker(self, slot: _Slot) -> None:
        task_r, task_w = os.pipe2(os.O_CLOEXEC)
        result_r, result_w = os.pipe2(os.O_CLOEXEC)
        for index in range(PROGRESS_FIELDS):
            slot.progress[index] = 0
        slot.progress[RING] = int(self._ringing)
        slot.progress[FLOODED] = int(self._flood.flooded)
        close_fds: list[int] = []
        if self.start_method == "fork":
            close_fds = [task_w, result_r, self._wake_r, self._wake_w]
            for other in self._slots:
                if other.worker is not None and not other.worker.exited:
                    close_fds += [other.worker.task_fd, other.worker.result_fd]
        tasks = multiprocessing.connection.Connection(task_r, writable=False)
        results = multiprocessing.connection.Connection(result_w, readable=False)
        # The worker's own copy of the wake-up pipe's write end (non-blocking, as it is here).
        ring = multiprocessing.connection.Connection(os.dup(self._wake_w), readable=False)
        processor = EventProcessor(
            self._processor_label(slot.index),
            tasks,
            results,
            slot.progress,
            ring=ring,
            idle_spin_ns=int(self.idle_spin * 1e9),
            close_fds=close_fds,
            max_events=self.max_events_per_worker,
            max_memory=self.max_memory_per_worker,
            stamp_starts=self.event_timeout is not None,
        )
        process = self._context.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(processor,),
            name=f"eventmp-worker-{slot.index}",
            daemon=False,  # so that handlers may start processes of their own
        )
        try:
            process.start()
        except BaseException:
            for fd in (task_w, result_r):
                os.close(fd)
            raise
        finally:
            tasks.close()
            results.close()
            ring.close()
        os.set_blocking(task_w, False)
        os.set_blocking(result_r, False)
        slot.worker = _Worker(slot.index, process, task_w, result_r)
        slot.worker.resync, slot.resync = slot.resync, []
        slot.restart_at = None
        logger.debug("started worker %s in slot %d", process.pid, slot.index)

    def _await_ready(self, worker: _Worker, deadline: float) -> None:
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
                raise WorkerStartError(self._start_failure_message(worker, worker.process.exitcode))

    def _start_failure_message(self, worker: _Worker, exitcode: int | None) -> str:
        hint = ""
        if self.start_method != "fork":
            hint = (
                f" Under {self.start_method!r} the worker re-imports the main module and "
                "eventmp: a script needs an `if __name__ == '__main__':` guard, and every "
                "module the handlers use must be importable; the worker's traceback is on "
                "stderr."
            )
        return f"worker process {worker.pid} {describe_exit(exitcode)} before it was ready.{hint}"

    def _maintain(self, now: float) -> None:
        """Timers: restarts due, handler timeouts, kill deadlines, the stop deadline."""
        if (
            self._state == _STOPPING
            and self._stop_deadline is not None
            and now >= self._stop_deadline
            and self._abandoning is None
        ):
            self._abandoning = "stop(timeout=...) expired before the event had run"
        if self._abandoning is not None:
            self._abandon_all()
        for slot in self._slots:
            worker = slot.worker
            if worker is None:
                if slot.restart_at is not None and now >= slot.restart_at:
                    self._restart(slot)
                continue
            if worker.exited:
                continue
            if worker.orphaned and _process_gone(worker.pid):
                self._on_worker_exit(worker)
                continue
            if worker.kill_at is not None and now >= worker.kill_at:
                worker.kill_at = None
                _signal(worker.pid, signal.SIGKILL)
            if self.event_timeout is not None and worker.timed_out_seq is None:
                self._check_timeout(slot, worker)
            if self._trackers and worker.inflight:
                self._settle_finished(slot, worker)

    def _settle_finished(self, slot: _Slot, worker: _Worker) -> None:
        """Give the events a worker has finished their outcome before their batch is done.

        A checkpointing tail saves its position only up to settled lines; one slow event
        would otherwise hold back every event of its batch, and a kill -9 of the parent would
        send them all again. The worker reports a failure before it marks the event finished,
        so once ``finished`` is read and the result pipe drained, every event up to it that
        has no failure was processed.
        """
        finished = int(slot.progress[FINISHED])
        if self._read_results(worker) or worker.exited:
            return  # it is leaving: _on_worker_exit settles what it held
        for _batch_no, seqs in worker.inflight:
            for seq in seqs:
                if seq > finished:
                    return
                event = self._pending.pop(seq, None)
                if event is not None:
                    self._processed += 1
                    self._track(seq, event, None)
                    self._changed.notify_all()

    def _check_timeout(self, slot: _Slot, worker: _Worker) -> None:
        assert self.event_timeout is not None
        started = slot.progress[STARTED]
        if not started or started <= slot.progress[FINISHED] or started not in self._pending:
            return
        started_at = slot.progress[STARTED_AT_NS]
        if slot.progress[STARTED] != started:
            return  # it moved on while we looked
        if time.monotonic_ns() - started_at < self.event_timeout * 1e9:
            return
        logger.warning(
            "handler of event %d ran longer than event_timeout=%gs; killing worker %s",
            started,
            self.event_timeout,
            worker.pid,
        )
        worker.timed_out_seq = started
        self._terminate(worker)

    def _terminate(self, worker: _Worker) -> None:
        """SIGTERM now, SIGKILL after ``kill_grace`` if it has not exited (pebble's way)."""
        _signal(worker.pid, signal.SIGTERM)
        if worker.kill_at is None:
            worker.kill_at = time.monotonic() + self.kill_grace

    def _restart(self, slot: _Slot) -> None:
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
                slot.restart_at = time.monotonic() + _BACKOFF_FIRST * 2**slot.start_failures
            return
        slot.start_failures = 0
        self._restarts += 1

    def _on_worker_exit(self, worker: _Worker) -> None:
        """Settle every event the dead worker held, then arrange its replacement."""
        self._read_results(worker)  # messages it wrote before dying come first
        exitcode = self._reap(worker)
        slot = self._slots[worker.slot]
        started = int(slot.progress[STARTED])
        finished = int(slot.progress[FINISHED])
        held = [seq for _, seqs in worker.inflight for seq in seqs]
        worker.inflight.clear()
        held = worker.resync + held
        worker.resync = []
        self._close_worker(worker)
        slot.worker = None

        if not worker.ready and self._state == _RUNNING and (exitcode or 0) > 0:
            self._break(WorkerStartError(self._start_failure_message(worker, exitcode)))

        crashed = started if started > finished else None
        requeue: list[int] = []
        lost_event = False
        for seq in held:
            if seq not in self._pending:
                continue
            if seq <= finished:
                event = self._pending.pop(seq)
                self._processed += 1
                if self._trackers:
                    self._track(seq, event, None)
            elif seq == crashed:
                lost_event = True
                self._fail(
                    seq, self._processor_name(worker), self._death_error(worker, seq, exitcode)
                )
            else:
                requeue.append(seq)
        if requeue and crashed is None and exitcode != 0 and self._abandoning is None:
            # It died holding events, none of them started: something in the batch killed it
            # while being unpickled (a __reduce__ that exits, say). The replacement gets them
            # one at a time, each marked started before it is unpickled, so the next death
            # names its event instead of looping.
            slot.resync = requeue + slot.resync
        else:
            self._backlog_of(slot).extendleft(reversed(requeue))

        if worker.stop_seq is not None and finished >= worker.stop_seq:
            slot.retired = True  # it took its poison pill and left
        elif self._abandoning is not None:
            slot.retired = True
        else:
            delay = 0.0
            if worker.retiring is not None and exitcode == 0:
                self._recycles += 1
                logger.info("recycling worker %s: %s", worker.pid, worker.retiring)
            elif exitcode == 0 and not lost_event:
                logger.info("worker %s left (SIGTERM); starting a fresh one", worker.pid)
            else:
                slot.crash_streak += 1
                if slot.crash_streak > 1:
                    delay = min(_BACKOFF_FIRST * 2 ** (slot.crash_streak - 2), _BACKOFF_MAX)
                if not lost_event:
                    logger.warning(
                        "idle worker %s %s; starting a fresh one",
                        worker.pid,
                        describe_exit(exitcode),
                    )
            slot.restart_at = time.monotonic() + delay
        self._changed.notify_all()
        if self._abandoning is not None:
            self._abandon_all()

    def _reap(self, worker: _Worker) -> int | None:
        """Wait (bounded) for a worker that is leaving; its exit code, None if unknowable."""
        if worker.orphaned:
            # Its forkserver, which alone could report the status, is gone.
            deadline = time.monotonic() + self.kill_grace
            while not _process_gone(worker.pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if not _process_gone(worker.pid):
                _signal(worker.pid, signal.SIGKILL)
            return None
        worker.process.join(self.kill_grace)
        if worker.process.exitcode is None:
            _signal(worker.pid, signal.SIGKILL)
            worker.process.join(self.kill_grace)
        exitcode: int | None = worker.process.exitcode
        return exitcode

    def _death_error(self, worker: _Worker, seq: int, exitcode: int | None) -> EventmpError:
        """Why the event a dead worker held failed."""
        if self._abandoning is not None:
            return EventAbandonedError(self._abandoning)
        if worker.timed_out_seq == seq and self.event_timeout is not None:
            return HandlerTimeoutError(self.event_timeout, worker.pid)
        return WorkerCrashedError(exitcode, worker.pid)

    def _close_worker(self, worker: _Worker) -> None:
        worker.exited = True
        for fd in (worker.task_fd, worker.result_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        # close() refuses a process still running: only when start() failed half-way.
        with contextlib.suppress(ValueError):
            worker.process.close()

    def _kill_worker(self, worker: _Worker) -> None:
        """Terminate, wait ``kill_grace``, then kill; never an unbounded join."""
        if worker.orphaned:
            _signal(worker.pid, signal.SIGKILL)
            return
        if worker.process.exitcode is not None:
            return
        _signal(worker.pid, signal.SIGTERM)
        worker.process.join(self.kill_grace)
        if worker.process.exitcode is None:
            _signal(worker.pid, signal.SIGKILL)
            worker.process.join(self.kill_grace * 5)

    def _all_workers_gone(self) -> bool:
        return all(
            (slot.worker is None or slot.worker.exited)
            and (slot.retired or slot.restart_at is None)
            for slot in self._slots
        ) and (
            self._abandoning is not None
            or not (any(self._backlogs()) or any(slot.resync for slot in self._slots))
        )

    # -- outcomes -------------------------------------------------------------------------------

    def _fail(self, seq: int, originator: Any, exc: BaseException) -> None:
        event = self._pending.pop(seq, None)
        if event is None:
            return
        if isinstance(exc, EventAbandonedError):
            self._abandoned += 1
        self._failed += 1
        self._outcomes.append(_Outcome(originator, exc, event))
        if self._trackers:
            self._track(seq, event, exc)
        self._changed.notify_all()

    def _track(self, seq: int, event: Event, exc: BaseException | None) -> None:
        """Queue the outcome for the generator that asked to hear of it (a checkpointing tail)."""
        tracker = self._trackers.pop(seq, None)
        if tracker is not None:
            self._settled.append((tracker, event, exc))

    def _abandon_all(self) -> None:
        """Abandon the backlog; make every worker finish its event in hand and leave."""
        reason = self._abandoning or "abandoned"
        for backlog in self._backlogs():
            while backlog:
                seq = backlog.popleft()
                if seq in self._pending:
                    self._fail(seq, self.name, EventAbandonedError(reason))
        for slot in self._slots:
            slot.restart_at = None
            worker = slot.worker
            held = slot.resync + (worker.resync if worker is not None else [])
            slot.resync = []
            if worker is not None:
                worker.resync = []
            for seq in held:
                if seq in self._pending:
                    self._fail(seq, self.name, EventAbandonedError(reason))
            if worker is None or worker.exited:
                continue
            if worker.kill_at is None:
                self._terminate(worker)

    def _log_abandoned(self) -> None:
        """One line with the total, once the dispatcher has stopped."""
        if self._abandoned:
            logger.warning(
                "%d events abandoned: %s", self._abandoned, self._abandoning or "stopped"
            )

    def _break(self, error: EventmpError) -> None:
        """A replacement worker cannot start: fail everything rather than loop."""
        logger.error("%s", error)
        self._broken = error
        self._close_inbox()
        self._state = _STOPPING
        self._abandoning = str(error)
        for seq in list(self._pending):
            self._fail(seq, self.name, error)
        for backlog in self._backlogs():
            backlog.clear()
        self._changed.notify_all()

    def _deliver_outcomes(self) -> None:
        """Call the error handler for each failure, in this (the dispatcher's) thread."""
        while True:
            with self._lock:
                if self._outcomes:
                    outcome: _Outcome | None = self._outcomes.popleft()
                    settled = None
                elif self._settled:
                    outcome = None
                    settled = self._settled.popleft()
                else:
                    self._changed.notify_all()
                    return
                self._delivering += 1
            try:
                if outcome is not None:
                    self._deliver(outcome)
                elif settled is not None:
                    self._notify_settled(*settled)
            finally:
                with self._lock:
                    self._delivering -= 1

    def _notify_settled(self, tracker: Any, event: Event, exc: BaseException | None) -> None:
        try:
            tracker.settled(event, exc)
        except Exception:
            logger.exception("generator %s failed in settled()", tracker)

    def _deliver(self, outcome: _Outcome) -> None:
        handler = self._error_handler
        if handler is None:
            logger.warning(
                "event %s failed: %s: %s",
                outcome.event if outcome.event is not None else "(none)",
                type(outcome.exception).__name__,
                outcome.exception,
                exc_info=outcome.exception,
            )
            return
        error_event = Event(outcome.originator, handler, (outcome.exception, outcome.event))
        try:
            call_handler(handler, error_event)
        except Exception:
            logger.exception("error handler %s raised; ignored", describe_handler(handler))

    def _idle(self) -> bool:
        return (
            not self._pending
            # After stop() the inbox holds only events that were never accepted (their
            # submitters take them back), even one whose submit() a KeyboardInterrupt cut short.
            and (not self._inbox or self._state is not _RUNNING)
            and not self._outcomes
            and not self._settled
            and not self._delivering
            and self._all_exhausted()
        )

    def _all_exhausted(self) -> bool:
        return all(id(g) in self._exhausted for g in self._generators)

    # -- shutdown -------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """End of the dispatcher thread: reap every worker, stop generators, last outcomes."""
        with self._lock:
            workers = [s.worker for s in self._slots if s.worker is not None]
        for worker in workers:
            if not worker.exited:
                self._kill_worker(worker)
                with self._lock:
                    self._on_worker_exit(worker)
        with self._lock:
            self._close_inbox()
            for seq in list(self._pending):
                self._fail(seq, self.name, EventAbandonedError("the dispatcher stopped"))
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

    def _processor_name(self, worker: _Worker) -> str:
        return f"{self._processor_label(worker.slot)}[pid {worker.pid}]"


def _handler_key(handler: Any) -> Any:
    self_obj = getattr(handler, "__self__", None)
    func = getattr(handler, "__func__", None)
    if self_obj is not None and func is not None:
        return ("method", id(self_obj), id(func))
    return id(handler)


def _process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts as gone: it runs no more code)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
