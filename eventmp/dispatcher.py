"""The parent side: :class:`EventDispatcher` polls generators and feeds the worker processes.

Everything in this module runs in the parent process (the worker side is
:mod:`eventmp.processor`). This module holds the public API and ``submit()``'s fast path; the
dispatcher thread's loop is :mod:`eventmp.loop`, and the rest of the parent side is one room
per module, called with the dispatcher's lock held unless they say otherwise: the table in
``docs/design.md`` ("The parent side, room by room") names each, and what it does.

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
  :mod:`eventmp.handoff`), and the dispatcher thread leaves them to it.
- The dispatcher thread (``run()``): one loop that waits with ``poll()`` on every worker's
  result pipe (unless a busy submitter reads them) and sentinel, the wake-up pipe, and (while a
  write is unfinished) the task pipes. It polls generators every ``poll_interval``, enforces
  ``event_timeout``, replaces dead workers, and delivers every outcome: the user's error
  handler and generators run only in this thread.

Who reads acknowledgements, what happens when a worker dies, and why nothing sleeps or joins
with the lock held: ``docs/design.md``.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.connection
import signal
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any

from . import batching
from .acceptance import Acceptance
from .errors import (
    DispatcherStoppedError,
    EventmpError,
    SubmitTimeoutError,
)
from .event import Event, EventGenerator
from .generators import Generators
from .handoff import AckHandoff
from .ledger import Ledger
from .loop import DispatcherLoop
from .options import (
    DEFAULT_MAX_PENDING_BYTES,
    DispatcherStats,
    check_settings,
    default_start_method,
)
from .outcomes import OutcomeDelivery
from .pool import WorkerPool
from .preload import preload_workers
from .shared import NEW, RUNNING, STOPPED, STOPPING, Changed, Mode, Waker
from .stopping import Stopping
from .units import parse_size

__all__ = ["DispatcherStats", "EventDispatcher", "default_start_method"]

logger = logging.getLogger("eventmp")

_monotonic = time.monotonic


_live_dispatchers: weakref.WeakSet[EventDispatcher] = weakref.WeakSet()


@atexit.register
def _stop_live_dispatchers() -> None:
    # Runs before multiprocessing's own exit hook (registered earlier, so run later), which
    # would otherwise wait forever for idle workers of a dispatcher nobody stopped.
    for dispatcher in list(_live_dispatchers):
        dispatcher.stop()


class EventDispatcher(threading.Thread):
    """Polls event generators and runs each event's handler in a worker process.

    docs/api.md describes every setting; the essentials:

    - ``poll_interval``: seconds between polls of the generators. ``submit()`` does not wait
      for it.
    - ``start_method``: ``"fork"``, ``"spawn"`` or ``"forkserver"`` (default: see
      :func:`default_start_method`).
    - ``workers``: number of worker processes.
    - ``event_timeout``: seconds a handler may run before its worker is killed and the event
      fails with :class:`HandlerTimeoutError`.
    - ``max_pending``: events accepted but without an outcome; ``submit()`` blocks and
      generators are not polled while the pipeline holds this many.
    - ``max_pending_bytes``: generators are not polled either while the pending events they
      sized (:meth:`EventGenerator.event_size`) hold this many bytes (``None``: no bound).
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
        max_pending_bytes: int | str | None = DEFAULT_MAX_PENDING_BYTES,
        max_events_per_worker: int | None = None,
        max_memory_per_worker: int | str | None = None,
        key: Callable[[Event], Hashable] | None = None,
        kill_grace: float = 1.0,
        start_timeout: float = 60.0,
        idle_spin: float = 0.0002,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or "EventDispatcher", daemon=True)
        check_settings(
            poll_interval=poll_interval,
            start_method=start_method,
            workers=workers,
            event_timeout=event_timeout,
            kill_grace=kill_grace,
            start_timeout=start_timeout,
            max_pending=max_pending,
            max_pending_bytes=max_pending_bytes,
            idle_spin=idle_spin,
            max_events_per_worker=max_events_per_worker,
        )
        self.idle_spin = float(idle_spin)
        method = start_method or default_start_method()
        self.poll_interval = float(poll_interval)
        self.start_method = method
        self.workers = workers
        self.event_timeout = event_timeout
        self.max_pending = max_pending
        self.max_pending_bytes = (
            None if max_pending_bytes is None else parse_size(max_pending_bytes)
        )
        self.kill_grace = kill_grace
        self.key = key
        self.max_events_per_worker = max_events_per_worker
        self.max_memory_per_worker = (
            None if max_memory_per_worker is None else parse_size(max_memory_per_worker)
        )
        self.start_timeout = start_timeout
        self._context = multiprocessing.get_context(method)

        self._lock = threading.Lock()
        self._changed = Changed(self._lock)
        # The state (new, running, stopping, stopped), drain and abandoning, shared with the
        # pool and the sender, which read them; set only here, with the lock held.
        self._mode = Mode()
        self._waker = Waker()
        self._generators = Generators()
        # Every accepted event's state until its outcome (made here so that events submitted
        # before start() have somewhere to go).
        self._ledger = Ledger(workers, keyed=key is not None)
        self._pool = WorkerPool(
            self._ledger,
            self._changed,
            self._waker,
            self._mode,
            context=self._context,
            count=workers,
            keyed=key is not None,
            event_timeout=event_timeout,
            kill_grace=kill_grace,
            start_timeout=start_timeout,
            idle_spin=self.idle_spin,
            max_events_per_worker=self.max_events_per_worker,
            max_memory_per_worker=self.max_memory_per_worker,
        )
        self._sender = self._pool.sender
        self._outcomes = OutcomeDelivery(self._ledger, self._changed)
        self._acceptance = Acceptance(
            self._ledger,
            self._mode,
            self._changed,
            self._waker,
            key=key,
            workers=workers,
            max_pending=max_pending,
        )
        self._inbox = self._acceptance.inbox  # submit()'s fast path, without the lock
        self._stopping = Stopping(self._ledger, self._pool, self._mode, self.name)
        self._handoff = AckHandoff()
        self._loop = DispatcherLoop(
            lock=self._lock,
            changed=self._changed,
            mode=self._mode,
            waker=self._waker,
            generators=self._generators,
            ledger=self._ledger,
            pool=self._pool,
            outcomes=self._outcomes,
            acceptance=self._acceptance,
            stopping=self._stopping,
            handoff=self._handoff,
            poll_interval=self.poll_interval,
            max_pending=self.max_pending,
            max_pending_bytes=self.max_pending_bytes,
        )
        self._changed.is_idle = self._loop.idle

    # == public API ==============================================================================

    def error_handler(self, handler: Any) -> None:
        """Set the handler that receives error events, in the parent process."""
        self._outcomes.error_handler = handler

    def add_event_generator(self, generator: EventGenerator) -> None:
        """Add a generator to poll; allowed before and after ``start()``."""
        with self._lock:
            if self._mode.state in (STOPPING, STOPPED):
                raise DispatcherStoppedError("cannot add a generator to a stopped dispatcher")
            self._generators.add(generator)
        self._waker.wake()

    def poll_now(self) -> None:
        """Poll the generators as soon as the dispatcher thread can, not at the next
        ``poll_interval``.

        For a generator that learns from elsewhere that it has something to give (an input
        released, a file-change notification). Any thread may call it, before or after
        ``start()``; ``max_pending`` still holds the poll back while the pipeline is full.
        """
        with self._lock:
            self._loop.poll_again = True
        self._waker.wake_from_elsewhere()

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
        inbox = self._inbox
        if inbox.room:
            # The common case, without the lock: one append, and the lock once per batch (an
            # uncontended lock costs more than the rest of this path). CPython 3.11 does not
            # switch threads between the check above and the append, but nothing promises it:
            # the second check catches a stop() that came in between.
            inbox.append(event)
            queued = len(inbox)
            if not inbox.room:
                self._submit_raced(event)
            elif self._sender.sendable or queued >= inbox.room:
                with self._lock:
                    if not self._loop.send_alone():
                        self._loop.pump()
            # The clock is read for the first 8 queued events, then every 8th: a busy producer
            # at a modest rate sees its worker free sooner, a flood pays for few reads (and
            # does not look for a free worker, which would keep its batches small).
            elif (queued <= 8 or not queued & 7) and (
                _monotonic() >= self._handoff.next_check
                or (not self._sender.flood.flooded and batching.caught_up(self._pool.slots))
            ):
                with self._lock:
                    self._loop.collect_acks()
            return
        with self._lock:
            self._acceptance.take_inbox()
            self._check_open()
            pending = self._ledger.pending
            if len(pending) >= self.max_pending and not self._waker.in_loop():
                self._loop.take_back_acks()  # a blocked submitter reads nothing
                if not self._changed.wait_for(
                    lambda: (
                        self._mode.state not in (NEW, RUNNING) or len(pending) < self.max_pending
                    ),
                    timeout,
                ):
                    raise SubmitTimeoutError(
                        f"no room in the pipeline after {timeout}s: "
                        f"{len(pending)} events pending (max_pending={self.max_pending})"
                    )
                self._check_open()
            self._acceptance.enqueue([event])
            if self._mode.state == RUNNING:
                self._loop.pump()

    def _submit_raced(self, event: Event) -> None:
        """The fast path closed between its check and the append: settle who owns ``event``.

        If the dispatcher still runs (the pipeline just filled up), the event is accepted,
        a little over ``max_pending``. If ``stop()`` came first, its last look at the inbox
        either took the event (accepted) or not: then it is taken back and refused.
        """
        with self._lock:
            if self._mode.state == RUNNING:
                self._loop.pump()
                return
            if self._acceptance.take_back(event):
                raise DispatcherStoppedError(
                    "the dispatcher is stopped; it accepts no more events"
                ) from self._stopping.broken

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
            self._generators.stop_all()
            self._waker.close()
            self._outcomes.deliver_all()
            return
        if self._waker.in_loop():
            return
        if self.is_alive():
            self.join()
        else:
            with self._lock:
                self._changed.wait_for(lambda: self._mode.state == STOPPED)

    def _begin_stop(self, timeout: float | None, drain: bool) -> bool:
        """Ask the loop to stop, without waiting; true if it never started (nothing to wait)."""
        with self._lock:
            if self._mode.state == NEW:
                self._stopping.never_started()
                self._changed.notify_all()
                return True
            if self._mode.state == STOPPED:
                return False
            if self._mode.state == RUNNING:
                self._acceptance.close()
                self._loop.take_back_acks()
            self._stopping.begin(timeout, drain, time.monotonic())
            self._changed.notify_all()
        self._waker.wake()
        return False

    def serve_forever(
        self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
    ) -> int | None:
        """Run until one of ``signals`` (SIGINT, SIGTERM), then stop with a drain and return.

        Starts the dispatcher if needed and blocks. The first signal stops it with a drain (a
        script that ends here exits 0); a second one stops it at once, abandoning what is
        queued. Returns the first signal received, or None if the dispatcher stopped without
        one (another thread's ``stop()``, or a :attr:`failure`). The previous signal handlers
        are restored on return. Call it from the main thread: only there can Python install
        signal handlers.
        """
        if self._mode.state == NEW:
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

        previous = {sig: signal.signal(sig, on_signal) for sig in signals}
        try:
            while self.is_alive():
                self.join(0.25)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return received[0] if received else None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every generator is finished and every accepted event has its outcome.

        Returns true then, false if ``timeout`` seconds passed first. Batch jobs call
        ``wait()``, then ``stop()``.
        """
        with self._lock:
            self._loop.take_back_acks()
            self._changed.idle_waiters += 1
            try:
                return self._changed.idle.wait_for(self._loop.idle, timeout)
            finally:
                self._changed.idle_waiters -= 1

    @property
    def failure(self) -> EventmpError | None:
        """Why the dispatcher stopped on its own, or None if it did not.

        Set when a worker cannot be started or replaced (:class:`WorkerStartError`; every
        pending event failed with it) or the dispatcher thread itself failed. A service that
        ends in ``serve_forever()`` checks it to exit with a failure status.
        """
        return self._stopping.broken

    def stats(self) -> DispatcherStats:
        """A consistent snapshot of the dispatcher's counters."""
        with self._lock:
            self._acceptance.take_inbox()
            ledger = self._ledger
            live = self._pool.live_workers()
            return DispatcherStats(
                accepted=ledger.accepted,
                processed=ledger.processed,
                failed=ledger.failed,
                pending=len(ledger.pending),
                pending_bytes=ledger.bytes_held,
                handler_counters=self._pool.counters(),
                abandoned=ledger.abandoned,
                worker_restarts=self._pool.restarts,
                worker_recycles=self._pool.recycles,
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
        """The dispatcher's loop (:mod:`eventmp.loop`): ``start()`` runs it in the dispatcher
        thread.

        Called directly on a dispatcher that was never started, it starts the workers and runs
        the loop in the calling thread until another thread (or a signal handler) calls
        ``stop()``.
        """
        if self._mode.state == NEW:
            self._start_workers()
        elif self._mode.state == STOPPED:
            return
        self._waker.loop_ident = threading.get_ident()
        try:
            self._loop.run()
        except BaseException as exc:
            logger.exception("eventmp dispatcher thread failed; stopping its workers")
            with self._lock:
                self._acceptance.close()
                self._stopping.thread_failed(exc)
                self._changed.notify_all()
        finally:
            self._loop.shutdown()
            _live_dispatchers.discard(self)

    def _start_workers(self) -> None:
        with self._lock:
            if self._mode.state != NEW:
                raise RuntimeError(f"dispatcher already {self._mode.state}")
            self._mode.state = RUNNING
        preload_workers(self._context)  # a forkserver started later forks ready workers
        try:
            self._pool.start_all()
        except BaseException:
            with self._lock:
                self._mode.state = STOPPED
            self._generators.stop_all()
            self._waker.close()
            raise
        _live_dispatchers.add(self)
        with self._lock:
            self._loop.pump()

    def _check_open(self) -> None:
        if self._mode.state in (STOPPING, STOPPED):
            raise DispatcherStoppedError(
                "the dispatcher is stopped; it accepts no more events"
            ) from self._stopping.broken
