"""Delivery of outcomes to the user's code: the error handler and tracking generators.

Parent-side. The ledger queues each outcome (:attr:`Ledger.failures`, :attr:`Ledger.settled`)
wherever it was learned, in whatever thread held the lock; :class:`OutcomeDelivery` hands them
to the user's callbacks, without the lock, in the dispatcher thread (and in ``stop()``'s thread
on a dispatcher that never started). The user's code then never runs in a submitter's thread,
and a slow error handler does not hold up sending or reading results.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from itertools import repeat
from typing import Any

from .event import Event, EventGenerator
from .handlers import call_handler, describe_handler
from .ledger import Ledger, Outcome, SettledRun

__all__ = ["OutcomeDelivery"]

logger = logging.getLogger("eventmp")

_DEFAULT_BATCH = EventGenerator.settled_batch  # settled() for each: called so here, each alone


class OutcomeDelivery:
    """Calls the error handler and ``settled()`` for each outcome the ledger queued."""

    def __init__(self, ledger: Ledger, changed: threading.Condition) -> None:
        self._ledger = ledger
        self._changed = changed  # its lock is the dispatcher's lock
        self.error_handler: Any = None
        # A generator whose get_events() failed: an error event with no original event.
        self._generator_errors: deque[tuple[EventGenerator, BaseException]] = deque()
        self._delivering = 0  # outcomes taken from the queues, their callbacks still running

    def generator_failed(self, generator: EventGenerator, error: BaseException) -> None:
        """Queue an error event for a generator's failure (lock held)."""
        self._generator_errors.append((generator, error))

    def undelivered(self) -> bool:
        """Whether an outcome still waits for, or is in, its callback (lock held)."""
        ledger = self._ledger
        return bool(self._generator_errors or ledger.failures or ledger.settled or self._delivering)

    def deliver_all(self) -> None:
        """Deliver every queued outcome, each without the lock: failures one at a time, and
        the events that were processed all those queued at once (a tracking generator hears
        of a run of its own with one ``settled_batch()`` call)."""
        ledger = self._ledger
        while True:
            with self._changed:
                error: tuple[EventGenerator, BaseException] | None = None
                outcome: Outcome | None = None
                processed: list[SettledRun] = []
                if self._generator_errors:
                    error = self._generator_errors.popleft()
                elif ledger.failures:
                    outcome = ledger.failures.popleft()
                elif ledger.settled:
                    processed = list(ledger.settled)
                    ledger.settled.clear()
                else:
                    self._changed.notify_all()
                    return
                self._delivering += 1
            try:
                if error is not None:
                    self._deliver_error(error[0], error[1], None)
                elif outcome is not None:
                    if outcome.exception is not None:
                        self._deliver_error(outcome.originator, outcome.exception, outcome.event)
                    if outcome.tracker is not None:
                        self._notify_settled(outcome.tracker, [(outcome.event, outcome.exception)])
                else:
                    self._notify_processed(processed)
            finally:
                with self._changed:
                    self._delivering -= 1

    def _notify_processed(self, runs: list[SettledRun]) -> None:
        """``settled()`` for processed events, in order, a run of one generator at a time."""
        for run in runs:
            self._notify_settled(run.tracker, list(zip(run.events, repeat(None))))

    @staticmethod
    def _notify_settled(tracker: Any, outcomes: list[tuple[Event, BaseException | None]]) -> None:
        if getattr(type(tracker), "settled_batch", None) not in (None, _DEFAULT_BATCH):
            try:
                tracker.settled_batch(outcomes)
            except Exception:
                logger.exception("generator %s failed in settled_batch()", tracker)
            return
        for event, exception in outcomes:  # one that raises does not keep the others from it
            try:
                tracker.settled(event, exception)
            except Exception:
                logger.exception("generator %s failed in settled()", tracker)

    def _deliver_error(
        self, originator: Any, exception: BaseException, event: Event | None
    ) -> None:
        handler = self.error_handler
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
