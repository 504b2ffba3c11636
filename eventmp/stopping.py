"""Stopping: the stop deadline, what is abandoned and why, and a pipeline that breaks.

Runs in the parent process, with the dispatcher's lock held, in whichever thread holds it (one
calling ``stop()``, or the dispatcher thread). No I/O but a log line, no thread, no wait: it
decides on the :class:`~eventmp.ledger.Ledger`, the :class:`~eventmp.pool.WorkerPool` and the
:class:`~eventmp.shared.Mode`, and the dispatcher does the rest (waking its thread, closing
``submit()``'s inbox, joining).

A stop goes ``running -> stopping -> stopped``. With a drain, each worker gets its poison pill
once its queue is empty (the sender reads :attr:`Mode.draining`); the stop deadline, or
``drain=False``, or a broken pipeline, sets :attr:`Mode.abandoning`, and from then on every
queued event fails with :class:`EventAbandonedError` and every worker is told to leave after
the event in hand. ``docs/design.md`` ("Workers that leave", "The poison pill") says why.
"""

from __future__ import annotations

import logging

from .errors import EventAbandonedError, EventmpError
from .ledger import Ledger
from .pool import WorkerPool
from .shared import RUNNING, STOPPED, STOPPING, Mode

__all__ = ["Stopping"]

logger = logging.getLogger("eventmp")


class Stopping:
    """How far the pipeline is from its end, and what it gives up on the way."""

    def __init__(self, ledger: Ledger, pool: WorkerPool, mode: Mode, name: str) -> None:
        self.ledger = ledger
        self.pool = pool
        self.mode = mode
        self.name = name  # the originator of the error events decided here
        self.deadline: float | None = None  # stop(timeout=...): when queued events give up
        self.broken: EventmpError | None = None  # why the pipeline stopped on its own

    def begin(self, timeout: float | None, drain: bool, now: float) -> None:
        """A ``stop()`` of a started pipeline (the dispatcher closed the inbox first)."""
        mode = self.mode
        if mode.state == RUNNING:
            mode.state = STOPPING
            if timeout is not None:
                self.deadline = now + timeout
        elif timeout is not None:
            # A second stop() may shorten the first one's deadline, never lengthen it.
            deadline = now + timeout
            if self.deadline is None or deadline < self.deadline:
                self.deadline = deadline
        if not drain:
            mode.drain = False
            if mode.abandoning is None:
                mode.abandoning = "stop(drain=False) was called"

    def never_started(self) -> None:
        """A ``stop()`` before ``start()``: events submitted meanwhile get their outcome too."""
        self.mode.state = STOPPED
        self.mode.abandoning = "the dispatcher was stopped before it was started"
        self.abandon_all()
        self.log_abandoned()

    def timer(self) -> float | None:
        """When the loop must look again without I/O: the stop deadline, until it passed."""
        return self.deadline if self.mode.abandoning is None else None

    def maintain(self, now: float) -> bool:
        """The dispatcher thread's look: an expired deadline, stranded and abandoned events;
        true if it gave events their outcome (or gave up on them)."""
        mode = self.mode
        failed_before = self.ledger.failed
        if (
            mode.state == STOPPING
            and self.deadline is not None
            and now >= self.deadline
            and mode.abandoning is None
        ):
            mode.abandoning = "stop(timeout=...) expired before the event had run"
        if mode.state == STOPPING and mode.abandoning is None:
            for seq in self.pool.take_stranded():
                self.ledger.fail(
                    seq,
                    self.name,
                    EventAbandonedError(
                        "its worker left on SIGTERM while the dispatcher was stopping"
                    ),
                )
        if mode.abandoning is not None:
            self.abandon_all()
            return True
        return self.ledger.failed != failed_before

    def ended(self) -> bool:
        """Stopping, and no worker is left to run what the pipeline still holds."""
        return (
            self.mode.state == STOPPING
            and self.pool.all_gone()
            and (self.mode.abandoning is not None or not self.ledger.queued())
        )

    def abandon_all(self) -> None:
        """Fail everything queued; make every worker finish its event in hand and leave."""
        reason = self.mode.abandoning or "abandoned"
        self.ledger.fail_queued(self.name, lambda: EventAbandonedError(reason))
        self.pool.terminate_all()

    def thread_failed(self, exc: BaseException) -> None:
        """The dispatcher thread itself raised: abandon what is queued (inbox closed first)."""
        if self.broken is None:
            self.broken = EventmpError(f"the dispatcher thread failed: {exc!r}")
            self.broken.__cause__ = exc
        self.mode.abandoning = self.mode.abandoning or "the dispatcher thread failed"
        self.abandon_all()

    def break_down(self, error: EventmpError) -> None:
        """A replacement worker cannot start: fail everything rather than loop (inbox closed)."""
        logger.error("%s", error)
        self.broken = error
        self.mode.state = STOPPING
        self.mode.abandoning = str(error)
        self.ledger.fail_unheld(self.name, error)

    def abandon_unheld(self) -> None:
        """The dispatcher thread's end: whatever no worker holds fails."""
        self.ledger.fail_unheld(self.name, EventAbandonedError("the dispatcher stopped"))
        self.log_abandoned()

    def log_abandoned(self) -> None:
        """One line with the total, once the dispatcher has stopped."""
        if self.ledger.abandoned:
            logger.warning(
                "%d events abandoned: %s", self.ledger.abandoned, self.mode.abandoning or "stopped"
            )
