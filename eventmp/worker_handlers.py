"""The handlers a worker holds, by id: loaded from what the parent sent, and what they counted.

Runs in a worker process, in its main thread (called by :mod:`eventmp.processor` for each
``HandlerUpdate``, for a handler id it has not got, and between batches). No I/O: what the
handlers counted is returned, and the processor sends it (``HandlerCounters``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import serialization
from .errors import SerializationError
from .event import Event
from .handlers import ChainEventHandler, StopEventHandler, call_handler
from .messages import STOP_HANDLER_ID

__all__ = ["COUNTERS_INTERVAL", "HandlerTable"]

# How often, at most, a worker tells the parent what its handlers counted (HandlerCounters):
# often enough for the stats line, rarely enough to cost nothing per batch.
COUNTERS_INTERVAL = 1.0


class HandlerTable:
    """A worker's handlers by id, each loaded once, and the totals of those that count things."""

    def __init__(self) -> None:
        stop = StopEventHandler()
        # handler id -> (the handler, the callable that runs it): one instance per worker, so
        # a handler keeps its state from one event to the next.
        self.callables: dict[int, tuple[Any, Callable[[Event], Any]]] = {
            STOP_HANDLER_ID: (stop, stop.process_event)
        }
        self._broken_handlers: dict[int, str] = {}
        # Handlers (and links of chains) that count things, by handler id; what the forgotten
        # ones counted; what was last reported and when the next report may go.
        self.counting: dict[int, list[Any]] = {}
        self._counted_before: dict[str, int] = {}
        self._counters_sent: dict[str, int] = {}
        self._next_counters = 0.0

    def lookup(self, handler_id: int) -> tuple[Any, Callable[[Event], Any]]:
        """The handler and what to call for it; raises if the worker could not load it."""
        try:
            return self.callables[handler_id]
        except KeyError:
            reason = self._broken_handlers.get(handler_id, "the parent never sent it")
            raise SerializationError(
                f"handler could not be loaded in the worker: {reason}"
            ) from None

    def define(self, handler_id: int, blob: bytes) -> None:
        """Load a handler the parent sent; one that fails to load is kept as a reason."""
        try:
            handler = serialization.load_handler(blob)
        except BaseException as exc:
            self._broken_handlers[handler_id] = f"{type(exc).__name__}: {exc}"
            return
        self.callables[handler_id] = (handler, _callable_for(handler))
        counting = _counting_parts(handler)
        if counting:
            self.counting[handler_id] = counting

    def forget(self, handler_id: int) -> None:
        """A handler the parent dropped: what it counted stays in the totals."""
        for part in self.counting.pop(handler_id, ()):
            for name, value in _counters_of(part).items():
                self._counted_before[name] = self._counted_before.get(name, 0) + value
        self.callables.pop(handler_id, None)
        self._broken_handlers.pop(handler_id, None)

    def counters_to_report(self, *, force: bool) -> dict[str, int] | None:
        """What the handlers counted if it changed since the last report, at most once a second
        unless ``force``; None when there is nothing to report."""
        if not self.counting:
            return None
        now = time.monotonic()
        if not force and now < self._next_counters:
            return None
        self._next_counters = now + COUNTERS_INTERVAL
        totals = self._counter_totals()
        if totals == self._counters_sent:
            return None
        self._counters_sent = totals
        return totals

    def _counter_totals(self) -> dict[str, int]:
        totals = dict(self._counted_before)
        for parts in self.counting.values():
            for part in parts:
                for name, value in _counters_of(part).items():
                    totals[name] = totals.get(name, 0) + value
        return totals


def _counting_parts(handler: Any) -> list[Any]:
    """The handler, and the links of a chain (nested too), that define ``counters()``."""
    found: list[Any] = []
    stack = [handler]
    while stack:
        part = stack.pop()
        if callable(getattr(part, "counters", None)):
            found.append(part)
        if isinstance(part, ChainEventHandler):
            stack.extend(part.handlers)
    return found


def _counters_of(part: Any) -> dict[str, int]:
    """``part.counters()``, or nothing if it fails: a report must not cost an event."""
    try:
        return {str(name): int(value) for name, value in part.counters().items()}
    except Exception:
        return {}


def _callable_for(handler: Any) -> Callable[[Event], Any]:
    process = getattr(handler, "process_event", None)
    if process is not None:
        return process  # type: ignore[no-any-return]
    if callable(handler):
        return handler  # type: ignore[no-any-return]
    return lambda event: call_handler(handler, event)  # raises the TypeError that explains
