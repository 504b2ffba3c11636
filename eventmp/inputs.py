"""The command's inputs: the file tails of one pipeline, behind one generator that can swap them.

Parent-side; polled in the dispatcher thread. ``eventmp run`` gives its dispatcher a single
:class:`InputSet` instead of one generator per tail, for two reasons:

- the dispatcher keeps the generators it was given for good, and a reload (SIGHUP) must replace
  the tails: the set stays, the tails behind it change;
- the command counts matches and outcomes per rule and per input (:class:`Counts`) as the events
  and their outcomes pass through, which needs no change to the dispatcher.

What the dispatcher asks of a generator about one event (``settled()``, ``event_size()``) goes
to the tail that made it, the event's originator.

A swap loses and repeats no line: the set stops polling, waits until every event its tails made
has its outcome, stops the old tails (each saves its checkpoint: the end of the last line it
read), and only then builds the new ones, which start from the state files. In follow mode an
input without a ``state_file`` gets a private one (in a temporary directory removed at exit) so
that it too resumes where it was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Any

from .event import Event, EventGenerator
from .pipeline import InputSpec, Pipeline
from .reporting import Counts
from .tail import STDIN, FileTailGenerator, Rule, line_event_sizes

__all__ = ["InputSet", "StateFiles", "make_tails"]

logger = logging.getLogger("eventmp")

_originator = attrgetter("originator")


class StateFiles:
    """Where each input keeps its position: its ``state_file``, or a private one.

    With ``private`` (follow mode, where a reload may replace the tails), an input without a
    ``state_file`` gets one in a temporary directory, by input name, so that the tail built
    for it after a reload starts where the previous one stopped. :meth:`close` removes them.
    """

    def __init__(self, *, private: bool) -> None:
        self._directory = tempfile.mkdtemp(prefix="eventmp-") if private else None
        self._names: dict[str, str] = {}

    def __call__(self, spec: InputSpec) -> str | None:
        if spec.state_file is not None:
            return spec.state_file
        return self.path_for(spec.name)

    def path_for(self, name: str) -> str | None:
        """The private state file of the input called ``name`` (None unless ``private``)."""
        if self._directory is None:
            return None
        if name not in self._names:
            self._names[name] = os.path.join(self._directory, f"{len(self._names)}.state")
        return self._names[name]

    def close(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)


def make_tails(
    pipeline: Pipeline, *, once: bool, state_files: Callable[[InputSpec], str | None]
) -> list[FileTailGenerator]:
    """A tail per input of ``pipeline``, with its rules (not yet reading)."""
    tails = []
    for spec in pipeline.inputs:
        rules = [
            Rule(rule.name, rule.regex, rule.handler, rule.exclude, rule.quick)
            for rule in pipeline.rules_for(spec.name)
        ]
        tails.append(
            FileTailGenerator(
                spec.paths,
                rules,
                name=spec.name,
                start_at=spec.start_at or ("beginning" if once else "end"),
                encoding=spec.encoding,
                state_file=None if spec.paths == [STDIN] else state_files(spec),
                once=once,
                rescan_interval=spec.rescan_interval,
                missing_ok=spec.missing_ok,
                max_line_bytes=spec.max_line_bytes,
            )
        )
    return tails


def _runs_by_tail(
    outcomes: list[tuple[Event, BaseException | None]],
) -> list[tuple[FileTailGenerator, list[tuple[Event, BaseException | None]]]]:
    """The outcomes of tails that track them, in runs of consecutive ones of the same tail."""
    runs: list[tuple[FileTailGenerator, list[tuple[Event, BaseException | None]]]] = []
    last: Any = None
    run: list[tuple[Event, BaseException | None]] = []
    for outcome in outcomes:
        tail = outcome[0].originator
        if tail is not last:
            last = tail
            run = []
            if isinstance(tail, FileTailGenerator) and tail.track_outcomes:
                runs.append((tail, run))
        run.append(outcome)
    return runs


class InputSet(EventGenerator):
    """The tails of the current pipeline, polled as one generator (see the module docstring).

    Held (polling returns nothing) until :meth:`release`: the command starts its workers first,
    and a signal during that start stops it before a line is read.
    """

    track_outcomes = True

    def __init__(self, tails: Iterable[FileTailGenerator], counts: Counts | None = None) -> None:
        self.tails = list(tails)
        self.counts = Counts() if counts is None else counts
        # The condition's own lock, taken as it is in settled(), which runs for every event:
        # entering a Condition is a call in Python, entering its lock is not.
        self._mutex = threading.RLock()
        self._lock = threading.Condition(self._mutex)
        self._held = True
        # Called once reading may start again (released, or reloaded): the runner sets it to
        # the dispatcher's poll_now(), so that the first poll does not wait for poll_interval.
        self.on_ready: Callable[[], None] | None = None
        self._stopped = False
        self._outstanding = 0  # events of these tails without an outcome yet
        self._error: Exception | None = None  # a tail's get_events() failed: said next poll
        # Lines and bytes read by the tails a reload stopped, by input name.
        self._retired: dict[str, tuple[int, int]] = {}
        self._retired_slow: Counter[str] = Counter()  # their slow lines, by rule name
        self._resumed: dict[int, int] = {}  # by id(tail): bytes before where it resumed

    # == the generator API =======================================================================

    def get_events(self) -> list[Event]:
        with self._lock:
            error, self._error = self._error, None
            if error is not None:
                # A failure of the previous poll: its other tails' events went out then.
                raise error
            if self._held or self._stopped:
                self.has_more = False
                return []
            events: list[Event] = []
            for tail in self.tails:
                if tail.finished:
                    continue
                try:
                    events += tail.get_events()
                except Exception as exc:
                    # The lines the other tails read are out of their files: send them now.
                    if self._error is None:
                        self._error = exc
                    else:
                        logger.warning("%s failed in get_events(): %r", tail, exc)
            self._outstanding += len(events)
            self.counts.matched(events)
            self.finished = bool(self.tails) and all(tail.finished for tail in self.tails)
            self.has_more = self._error is not None or any(tail.has_more for tail in self.tails)
            return events

    def settled(self, event: Event, exception: BaseException | None) -> None:
        self.settled_batch([(event, exception)])

    def settled_batch(self, outcomes: list[tuple[Event, BaseException | None]]) -> None:
        """:meth:`settled` for a run of outcomes, the lock taken once; each counted even if
        its tail failed (logged)."""
        with self._mutex:
            try:
                # Only a tail with a state file hears of its outcomes. (A tail that replace()
                # retired has none left: it waits for them all before it swaps the tails.)
                if any(tail.track_outcomes for tail in self.tails):
                    for tail, run in _runs_by_tail(outcomes):
                        try:
                            tail.settled_batch(run)
                        except Exception:  # one tail's failure leaves the others their outcomes
                            logger.exception("%s failed in settled_batch()", tail)
            finally:
                self.counts.settled_batch(outcomes)
                self._outstanding -= len(outcomes)
                if self._outstanding <= 0:
                    self._lock.notify_all()

    def event_size(self, event: Event) -> int:
        """The size the event's own tail gives it (``max_pending_bytes`` counts it)."""
        tail = event.originator
        if isinstance(tail, FileTailGenerator):
            return int(tail.event_size(event))
        return 0

    def event_sizes(self, events: list[Event]) -> list[int]:
        """:meth:`event_size` of each, in one pass while every event is a plain tail's."""
        if set(map(type, map(_originator, events))) <= {FileTailGenerator}:
            return line_event_sizes(events)
        return [self.event_size(event) for event in events]

    def stop(self) -> None:
        """Stop every tail (each saves its last checkpoint); later polls return nothing."""
        with self._lock:
            self._stopped = True
            self._lock.notify_all()  # a replace() waiting for outcomes gives up
            for tail in self.tails:
                try:
                    tail.stop()
                except Exception:
                    logger.exception("%s failed in stop()", tail)

    def __str__(self) -> str:
        return "inputs"

    # == the command's side ======================================================================

    def release(self) -> None:
        """Start reading (the workers are up)."""
        with self._lock:
            self._held = False
        self._ready()

    def _ready(self) -> None:
        if self.on_ready is not None:
            self.on_ready()

    def replace(
        self,
        make: Callable[[], list[FileTailGenerator]],
        *,
        restore: Callable[[], list[FileTailGenerator]],
        timeout: float,
    ) -> bool:
        """Swap the tails for those ``make`` builds, losing and repeating no line.

        Reading pauses until every event already made has its outcome (at most ``timeout``
        seconds; then the old tails go on and this returns false). The old tails then stop,
        saving their checkpoints, and ``make`` builds the new ones, which read them. If
        ``make`` raises, ``restore`` builds the old pipeline's tails again (from the same
        checkpoints) and the exception propagates. False too when the set was stopped.
        """
        try:
            with self._lock:
                if self._stopped:
                    return False
                self._held = True
                deadline = time.monotonic() + timeout
                while self._outstanding > 0 and not self._stopped:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._held = False
                        return False
                    self._lock.wait(min(left, 0.5))
                if self._stopped:
                    return False
                retired = dict(self._retired)
                self._retired_slow = self.slow_lines()
                for tail in self.tails:
                    tail.stop()
                    lines, read = retired.get(tail.name, (0, 0))
                    retired[tail.name] = (lines + tail.lines_read, read + tail.bytes_read)
                tails: list[FileTailGenerator] = []  # if restore() fails too: nothing left to read
                try:
                    tails = make()
                except BaseException:
                    tails = restore()
                    raise
                finally:
                    self.tails, self._retired = tails, retired
                    # A new tail counts as read the bytes before its checkpoint, which the old one
                    # counted already.
                    self._resumed = {id(tail): _saved_bytes(tail.state_file) for tail in tails}
                    self._held = False
                return True
        finally:
            # Reading may start again (the new tails, or the old ones if none were built). Out
            # of this set's lock: poll_now() takes the dispatcher's.
            if not self._stopped:
                self._ready()

    # == progress ================================================================================

    @property
    def lines_read(self) -> int:
        return sum(lines for lines, _ in self.input_progress().values())

    @property
    def bytes_read(self) -> int:
        return sum(read for _, read in self.input_progress().values())

    @property
    def bytes_total(self) -> int:
        """What ``--once``'s progress bar divides by (no reload there to count twice)."""
        return sum(tail.bytes_total for tail in list(self.tails))

    def input_progress(self) -> dict[str, tuple[int, int]]:
        """``(lines, bytes)`` read per input, over every tail it has had."""
        progress = dict(self._retired)
        resumed = self._resumed
        for tail in list(self.tails):
            lines, read = progress.get(tail.name, (0, 0))
            new = max(tail.bytes_read - resumed.get(id(tail), 0), 0)
            progress[tail.name] = (lines + tail.lines_read, read + new)
        return progress

    def slow_lines(self) -> Counter[str]:
        """Per rule, the lines its regex took long on (``slow_line_seconds``), where the tails
        count them (``rule_stats()``; a tail without it counts none)."""
        slow = Counter(self._retired_slow)
        for tail in list(self.tails):
            rule_stats = getattr(tail, "rule_stats", None)
            if rule_stats is None:
                continue
            for name, figures in rule_stats().items():
                slow[name] += int(getattr(figures, "slow_lines", 0))
        return slow

    def without_files(self) -> list[str]:
        """The inputs that matched no file and do not say ``missing_ok = true``."""
        return [tail.name for tail in self.tails if tail.matched_no_file and not tail.missing_ok]

    @property
    def read_everything(self) -> bool:
        return all(tail.finished for tail in self.tails)


def _saved_bytes(state_file: str | None) -> int:
    """The bytes before the saved offsets of a checkpoint (the format docs/tailing.md gives)."""
    if state_file is None:
        return 0
    try:
        with open(state_file, encoding="utf-8") as f:
            files = json.load(f).get("files", {})
        return sum(int(entry.get("offset", 0)) for entry in files.values())
    except (OSError, ValueError, TypeError, AttributeError):
        return 0
