"""Helpers for testing your own handlers and pipelines (and eventmp's own tests).

- :class:`ErrorCollector`: an error handler that keeps every error event, thread-safe, with a
  bounded wait for the next ones.
- :class:`ListEventGenerator`: a generator that yields given events, then says it is finished.
- :class:`RecordingHandler`: a handler that appends what it saw (and in which process) to a file,
  so a test in the parent can read what ran in the worker.
- :func:`run_events`: run events through a real worker process and return the error events.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .dispatcher import EventDispatcher
from .event import Event, EventGenerator
from .handlers import EventHandler

__all__ = ["ErrorCollector", "ListEventGenerator", "RecordingHandler", "run_events"]


class ErrorCollector:
    """An error handler that records every error event it receives, in the parent."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = threading.Condition()

    def process_event(self, event: Event) -> bool:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()
        return True

    @property
    def exceptions(self) -> list[BaseException]:
        """The exception of each error event, in arrival order."""
        return [event.data[0] for event in self.events]

    @property
    def failed_events(self) -> list[Event | None]:
        """The original event of each error event (None for a generator's error)."""
        return [event.data[1] for event in self.events]

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` error events arrived; false after ``timeout``."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.events) >= count, timeout)


class ListEventGenerator(EventGenerator):
    """Yields the given events (all on the first poll, or ``per_poll`` at a time), then finishes."""

    def __init__(self, events: Iterable[Event], per_poll: int | None = None) -> None:
        self._events = list(events)
        self._per_poll = per_poll
        self.stopped = False
        self.polls = 0

    def get_events(self) -> list[Event]:
        self.polls += 1
        count = len(self._events) if self._per_poll is None else self._per_poll
        batch, self._events = self._events[:count], self._events[count:]
        if not self._events:
            self.finished = True
        return batch

    def stop(self) -> None:
        self.stopped = True


class RecordingHandler(EventHandler):
    """Appends one JSON line per event (data, pid, originator, timestamp) to ``path``.

    Each line is written with one ``write()`` on a file opened for append, so lines from
    several workers do not interleave. ``fail_on`` lists data values to raise ``ValueError`` on.
    """

    def __init__(self, path: str | os.PathLike[str], fail_on: Iterable[Any] = ()) -> None:
        self.path = os.fspath(path)
        self.fail_on = list(fail_on)

    def process_event(self, event: Event) -> bool:
        if event.data in self.fail_on:
            raise ValueError(f"failing on {event.data!r} as asked")
        line = json.dumps(
            {
                "data": event.data,
                "pid": os.getpid(),
                "originator": str(event.originator),
                "timestamp": event.timestamp,
            },
            default=repr,
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
        return True

    def records(self) -> list[dict[str, Any]]:
        """Every record written so far, parsed.

        A record is read only once its newline is there: a worker may be writing the last one
        as the file is read (a write of a big record is not atomic for a reader).
        """
        try:
            text = Path(self.path).read_text()
        except FileNotFoundError:
            return []
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.split("\n") if line.strip()]

    def wait_for(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """Poll the file until ``count`` records are there (or ``timeout``); return them."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.records()
            if len(records) >= count or time.monotonic() >= deadline:
                return records
            time.sleep(0.01)


def run_events(
    events: Iterable[Event], *, timeout: float = 60.0, **dispatcher_options: Any
) -> list[Event]:
    """Run ``events`` through a real worker process and return the error events, in order.

    Raises ``TimeoutError`` if they do not all have an outcome within ``timeout`` seconds.
    """
    errors = ErrorCollector()
    dispatcher = EventDispatcher(**dispatcher_options)
    dispatcher.error_handler(errors)
    with dispatcher:
        for event in events:
            dispatcher.submit(event)
        if not dispatcher.wait(timeout):
            dispatcher.stop(timeout=0)
            raise TimeoutError(f"events had no outcome after {timeout}s")
    return list(errors.events)
