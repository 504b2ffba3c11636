"""The dispatcher thread's loop, and the sending that submitting threads share with it.

Runs in the parent process. :meth:`DispatcherLoop.run` is the dispatcher thread's body: one
loop that looks at the timers (stop deadline, restarts, timeouts), sends what is queued, polls
the generators when they are due and there is room, delivers outcomes, and waits in the
pool's one blocking wait (result pipes, sentinels, the wake-up pipe). :meth:`pump`,
:meth:`send_alone` and :meth:`collect_acks` run in whichever thread holds the dispatcher's
lock: a submitter (``submit()``'s fast path) or the loop.

It decides nothing the rooms decide: the ledger, the pool and its sender, acceptance,
stopping, the acknowledgement hand-off and outcome delivery are the dispatcher's, handed in;
of its own it keeps only whether a generator asked to be polled again at once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .acceptance import Acceptance
from .event import EventGenerator
from .generators import Generators
from .handoff import AckHandoff
from .ledger import Ledger
from .outcomes import OutcomeDelivery
from .pool import WorkerPool
from .shared import RUNNING, STOPPED, Mode, Waker
from .stopping import Stopping

__all__ = ["DispatcherLoop"]

_monotonic = time.monotonic


class DispatcherLoop:
    """The loop of one dispatcher, over that dispatcher's rooms."""

    def __init__(
        self,
        *,
        lock: Any,
        changed: threading.Condition,
        mode: Mode,
        waker: Waker,
        generators: Generators,
        ledger: Ledger,
        pool: WorkerPool,
        outcomes: OutcomeDelivery,
        acceptance: Acceptance,
        stopping: Stopping,
        handoff: AckHandoff,
        poll_interval: float,
        max_pending: int,
        max_pending_bytes: int | None,
    ) -> None:
        self._lock = lock
        self._changed = changed  # the lock's condition
        self._mode = mode
        self._waker = waker
        self._generators = generators
        self._ledger = ledger
        self._pool = pool
        self._sender = pool.sender
        self._outcomes = outcomes
        self._acceptance = acceptance
        self._inbox = acceptance.inbox
        self._stopping = stopping
        self._handoff = handoff
        self.poll_interval = poll_interval
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.poll_again = False  # a generator said it has more right now (has_more, poll_now())

    # == the dispatcher thread ===================================================================

    def run(self) -> None:
        """Loop until stopping and no worker is left to run what the pipeline holds."""
        next_poll = time.monotonic()
        while True:
            self._waker.arm()  # before the look below: a stop() during it must not be lost
            now = time.monotonic()
            with self._lock:
                self._maintain(now)
                if self._stopping.ended():
                    break
                self.pump()
                poll_due = (
                    self._mode.state == RUNNING
                    and (now >= next_poll or self.poll_again)
                    and self._room_to_poll()
                )
                if poll_due:
                    self.poll_again = False
                generators = self._generators.due() if poll_due else []
            self._outcomes.deliver_all()
            if poll_due:
                self._poll_generators(generators)
                next_poll = now + self.poll_interval
            # Even right after a poll: with poll_interval=0 the loop must still read results.
            self._wait_for_io(self._next_timer(time.monotonic(), next_poll))

    def shutdown(self) -> None:
        """End of the dispatcher thread: reap every worker, stop generators, last outcomes."""
        self._pool.kill_all()
        with self._lock:
            self._acceptance.close()
            self._stopping.abandon_unheld()
        self._outcomes.deliver_all()  # before the generators stop: a tail's last checkpoint
        self._generators.stop_all()
        self._outcomes.deliver_all()
        with self._lock:
            self._mode.state = STOPPED
            self._changed.notify_all()
        self._waker.close()

    def _wait_for_io(self, timeout: float | None) -> None:
        """Wait for the pool's I/O (the one place the dispatcher thread blocks)."""
        # A float read: no lock needed (a stale answer costs one wake-up, or one read).
        leave_acks = self._handoff.loop_leaves_acks(_monotonic())
        self._pool.wait_for_io(timeout, leave_acks)
        if self._pool.start_error is not None:
            with self._lock:
                self._check_pool()

    def _next_timer(self, now: float, next_poll: float) -> float | None:
        """Seconds until the loop must run without I/O: a poll, a restart, a timeout check."""
        with self._lock:
            timers = self._pool.timers(now)
            if (
                self._mode.state == RUNNING
                and self._generators.wants_polling()
                and self._room_to_poll()
            ):
                timers.append(now if self.poll_again else next_poll)
            deadline = self._stopping.timer()
            if deadline is not None:
                timers.append(deadline)
        if not timers:
            return None
        return max(0.0, min(timers) - now)

    def _maintain(self, now: float) -> None:
        """Timers: the stop deadline, abandoning, and the pool's (restarts, timeouts, kills)."""
        if self._stopping.maintain(now):
            self._changed.notify_all()
        self._pool.maintain(now)
        self._check_pool()

    def _check_pool(self) -> None:
        """A worker could not be started or replaced: fail everything rather than loop."""
        error = self._pool.start_error
        if error is not None and self._stopping.broken is None:
            self._acceptance.close()
            self._stopping.break_down(error)
            self._changed.notify_all()

    # -- generators -----------------------------------------------------------------------------

    def _room_to_poll(self) -> bool:
        """Whether the pipeline holds fewer than max_pending events and max_pending_bytes."""
        ledger = self._ledger
        limit = self.max_pending_bytes
        return len(ledger.pending) < self.max_pending and (
            limit is None or ledger.bytes_held < limit
        )

    def _poll_generators(self, generators: list[EventGenerator]) -> None:
        sized = self.max_pending_bytes is not None
        for generator in generators:
            polled = self._generators.poll(generator, sized=sized)
            with self._lock:
                for error in polled.errors:
                    self._outcomes.generator_failed(generator, error)
                if polled.events:
                    acceptance = self._acceptance
                    acceptance.take_inbox()
                    acceptance.enqueue(
                        polled.events, generator if polled.tracks else None, polled.sizes
                    )
                if polled.finished:
                    self._generators.mark_finished(generator)
                elif polled.has_more:
                    self.poll_again = True
                self.pump()
                self._changed.notify_all()
        self._outcomes.deliver_all()

    # == any thread, the lock held ===============================================================

    def pump(self) -> None:
        """Send queued events to every worker that has room, then the poison pills if draining."""
        while True:
            self._pump_once()
            if not (self._sender.sendable and self._inbox and self._mode.state == RUNNING):
                return
            # Appended after _pump_once took the inbox, by a submitter that saw sendable
            # still false: it counts on this pump to send it.

    def _pump_once(self) -> None:
        acceptance = self._acceptance
        arrived = self._ledger.accepted + len(self._inbox)
        acceptance.take_inbox()
        self._sender.feed(arrived)
        acceptance.reopen()

    def send_alone(self, *, caught_up: bool = False) -> bool:
        """Write the inbox's only event to an idle worker at once (see Sender.send_alone)."""
        inbox = self._inbox
        if len(inbox) != 1 or self._mode.state != RUNNING:
            return False
        if not self._sender.send_alone(inbox[0], caught_up=caught_up):
            return False
        inbox.clear()
        self._acceptance.reopen()
        return True

    def collect_acks(self) -> None:
        """Read the workers' acknowledgements from a submitting thread (see eventmp.handoff).

        A worker's death is left to the dispatcher thread.
        """
        self._handoff.collecting(_monotonic(), by_submitter=not self._waker.in_loop())
        # A busy producer at a modest rate: one event waits, and its worker has finished (its
        # acknowledgement not read yet). It is written first, the reads come after. Not in a
        # flood, where events go together in batches that grow while the worker is busy.
        sent = (
            len(self._inbox) == 1
            and not self._sender.flood.flooded
            and self.send_alone(caught_up=True)
        )
        # At a modest rate (few events queued), send first: a worker with room (one small
        # batch in hand) gets the events before the reads, which they would otherwise wait for.
        if not sent and len(self._inbox) <= 8:
            self.pump()
        if self._pool.read_all():
            self._waker.wake()  # a worker is leaving: the dispatcher thread reaps it
        self.pump()

    def take_back_acks(self) -> None:
        """A submitter that stops to wait: the dispatcher thread reads acknowledgements again."""
        if self._handoff.take_back():
            self._waker.wake()

    def idle(self) -> bool:
        """Every generator finished, every accepted event settled and its outcome delivered."""
        ledger = self._ledger
        return (
            not ledger.pending
            # After stop() the inbox holds only events that were never accepted (their
            # submitters take them back), even one whose submit() a KeyboardInterrupt cut short.
            and (not self._inbox or self._mode.state != RUNNING)
            and not self._outcomes.undelivered()
            and self._generators.all_finished()
        )
