"""Who reads the workers' acknowledgements now: a busy submitting thread, or the dispatcher thread.

Runs in the parent process, in whichever thread holds the dispatcher's lock; pure (no I/O, no
clock of its own: callers pass ``time.monotonic()``), so that the policy can be tested alone.
The reading itself is :meth:`eventmp.pool.WorkerPool.read_all`; this decides only when.

A thread that submits without pause holds the GIL; the dispatcher thread, woken by an
acknowledgement, may wait a whole switch interval (5 ms) for it while the worker sits idle. So
a busy submitter reads the acknowledgements itself every :data:`ACK_CHECK_INTERVAL` and sends
the next batch, and meanwhile the dispatcher thread leaves the result pipes to it: woken by
every acknowledgement only to queue for the GIL, it would cost the parent CPU per event, and
the worker a wake-up per batch. A submitter that stops to wait (a full pipeline, ``wait()``,
``stop()``) hands them back. ``docs/design.md`` ("Who reads acknowledgements") has the rest.
"""

from __future__ import annotations

import math

__all__ = ["ACK_CHECK_INTERVAL", "ACK_HANDOFF", "BUSY_SUBMITTER", "AckHandoff"]

# How often a busy submitter reads the acknowledgements: bounds how long an event waits under a
# busy producer, for a non-blocking read now and then.
ACK_CHECK_INTERVAL = 0.0001
# While a submitter read acknowledgements this recently, the dispatcher thread leaves them to it
# and sleeps until a worker rings.
ACK_HANDOFF = 0.02
# A submitter reading acknowledgements again this soon is busy: it takes them over. One that
# submits now and then (an idle pipeline) leaves them to the dispatcher thread, so that its
# next event finds the worker free.
BUSY_SUBMITTER = 0.001


class AckHandoff:
    """When a submitter reads acknowledgements next, and whether the dispatcher thread does."""

    __slots__ = ("next_check", "submitter_collected_at", "submitter_read_at")

    def __init__(self) -> None:
        self.next_check = 0.0  # a submitter reads them once the clock passes this
        self.submitter_read_at = -math.inf  # the last read by a busy submitter
        self.submitter_collected_at = -math.inf  # the last read by any submitter

    def collecting(self, now: float, *, by_submitter: bool) -> None:
        """Acknowledgements are read now, by a submitting thread or the dispatcher thread."""
        self.next_check = now + ACK_CHECK_INTERVAL
        if by_submitter:
            if now - self.submitter_collected_at < BUSY_SUBMITTER:
                self.submitter_read_at = now
            self.submitter_collected_at = now

    def take_back(self) -> bool:
        """The dispatcher thread reads them again; true if a submitter had them (wake it)."""
        if self.submitter_read_at == -math.inf:
            return False
        self.submitter_read_at = -math.inf
        return True

    def loop_leaves_acks(self, now: float) -> bool:
        """Whether the dispatcher thread's wait leaves the result pipes to a busy submitter."""
        return now - self.submitter_read_at < ACK_HANDOFF
