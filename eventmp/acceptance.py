"""Acceptance: events from ``submit()`` or a poll, numbered in the ledger and queued (by key).

Runs in the parent process. :class:`Inbox` is ``submit()``'s fast path: a submitting thread
appends to it without the lock (a list append is atomic under the GIL) while its ``room`` is
not 0, and whoever next holds the dispatcher's lock accepts what it holds, in order, so that
the lock and the bookkeeping cost once per batch rather than once per event.
:class:`Acceptance` does that accepting, with the dispatcher's lock held, in whichever thread
holds it (a submitter, the dispatcher thread, ``stop()``): it numbers the events in the
:class:`~eventmp.ledger.Ledger` and queues them, on the shared backlog or, with a ``key``
function, on the lane of the worker their key picks. No I/O and no thread of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from .batching import MAX_BATCH_EVENTS
from .errors import EventmpError
from .event import Event
from .ledger import Ledger
from .shared import RUNNING, Mode, Waker

__all__ = ["Acceptance", "Inbox"]

_ORIGINATOR = "EventDispatcher"  # the originator of an error event decided here


class Inbox(list[Event]):
    """Events ``submit()`` appended without the lock, and how many more it may append so.

    ``room`` 0 closes the fast path (not running, or ``max_pending`` reached): ``submit()``
    then takes the lock.
    """

    __slots__ = ("room",)

    def __init__(self) -> None:
        super().__init__()
        self.room = 0


class Acceptance:
    """Takes events into the ledger and its queues (lock held)."""

    def __init__(
        self,
        ledger: Ledger,
        mode: Mode,
        changed: Any,
        waker: Waker,
        *,
        key: Callable[[Event], Hashable] | None,
        workers: int,
        max_pending: int,
    ) -> None:
        self.ledger = ledger
        self.mode = mode
        self.changed = changed  # the dispatcher's condition (its lock held here)
        self.waker = waker
        self.key = key
        self.workers = workers
        self.max_pending = max_pending
        self.inbox = Inbox()

    def take_inbox(self) -> None:
        """Accept what ``submit()``'s fast path queued, in order (only while running).

        After ``stop()`` the inbox is left alone: an event still there was appended after
        ``stop()`` took its last look, and its submitter takes it back and refuses it.
        """
        inbox = self.inbox
        if not inbox or self.mode.state != RUNNING:
            return
        count = len(inbox)
        events = inbox[:count]
        del inbox[:count]
        self.enqueue(events)

    def enqueue(
        self, events: list[Event], tracker: Any = None, sizes: list[int] | None = None
    ) -> None:
        """Accept ``events`` into the ledger and queue them: all at once, or each by its key.

        ``tracker`` (a generator that hears of each outcome) is noted first: routing may fail
        an event at once. ``sizes`` are their estimated bytes, if a generator sized them.
        """
        seqs = self.ledger.accept(events, tracker, sizes)
        if self.key is None:
            self.ledger.queue(seqs)
            return
        for seq, event in zip(seqs, events, strict=True):
            try:
                slot = hash(self.key(event)) % self.workers
            except Exception as exc:
                error = EventmpError(f"the key function raised {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                self.fail(seq, error)
                continue
            self.ledger.queue((seq,), slot)

    def reopen(self) -> None:
        """Give the fast path its room again: up to a batch, within ``max_pending``."""
        if self.mode.state != RUNNING:
            self.inbox.room = 0
            return
        room = self.max_pending - len(self.ledger.pending) - len(self.inbox)
        self.inbox.room = max(0, min(MAX_BATCH_EVENTS, room))

    def close(self) -> None:
        """Close ``submit()``'s fast path and accept what it queued (before a stop)."""
        self.inbox.room = 0
        self.take_inbox()

    def take_back(self, event: Event) -> bool:
        """Remove ``event`` from the inbox, where ``stop()`` left it; false if it was accepted."""
        inbox = self.inbox
        for index in range(len(inbox) - 1, -1, -1):
            if inbox[index] is event:
                del inbox[index]
                return True
        return False

    def fail(self, seq: int, exception: BaseException) -> None:
        """Fail an accepted event no worker holds; the dispatcher thread delivers the error."""
        if self.ledger.fail(seq, _ORIGINATOR, exception):
            self.changed.notify_all()
            self.waker.wake_from_elsewhere()
