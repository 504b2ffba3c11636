"""Several faults at once: crashes, hangs, recycling, stop() and checkpoints combined.

Each test checks what the handlers themselves wrote: every handler appends ``start <id>
<worker>`` before it does anything and ``done <id> <worker>`` after (one ``os.write`` on a file
opened with ``O_APPEND``), so the journal says which events ran, where, how often and in what
order, whatever the dispatcher counts. From it and the error events: every event ran at most
once and has exactly one outcome (``done`` and no error event, or no ``done`` and one error
event of the expected class); then ``stats()`` must agree. Nothing is mocked: handlers really
call ``os._exit``, dereference NULL, SIGKILL themselves or sleep past ``event_timeout``.
"""

from __future__ import annotations

import collections
import ctypes
import faulthandler
import json
import os
import re
import resource
import signal
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import child_pids

from eventmp import (
    Event,
    EventAbandonedError,
    EventDispatcher,
    HandlerTimeoutError,
    WorkerCrashedError,
)
from eventmp.tail import FileTailGenerator, Rule
from eventmp.testing import ErrorCollector

MakeDispatcher = Callable[..., EventDispatcher]

WAIT = 60.0  # upper bound for anything that should take a few seconds; only hit when broken
EVERYTHING = re.compile("")


# == what a handler does to its worker (module level, so spawn workers import them) ==============


def _exit3() -> None:
    os._exit(3)


def _segfault() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
    faulthandler.disable()  # spare the test log a worker's stack dump
    ctypes.string_at(0)


def _sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)


def _hang() -> None:
    time.sleep(30)  # far past event_timeout: the worker is killed long before


def _pause() -> None:
    time.sleep(0.002)  # an ordinary event that takes a moment, so that batches stay in flight


ACTIONS: dict[str, Callable[[], None]] = {
    "exit3": _exit3,
    "segfault": _segfault,
    "sigkill": _sigkill_self,
    "hang": _hang,
    "pause": _pause,
}

# What each fault must turn into: the exception class and, for a crash, the exit code.
CRASH_EXITCODES = {"exit3": 3, "segfault": -signal.SIGSEGV, "sigkill": -signal.SIGKILL}

_worker_token: tuple[int, str] | None = None


def worker_token() -> str:
    """A name for this process that a reused pid cannot repeat (made afresh after a fork)."""
    global _worker_token
    pid = os.getpid()
    if _worker_token is None or _worker_token[0] != pid:
        _worker_token = (pid, f"{pid}.{uuid.uuid4().hex[:8]}")
    return _worker_token[1]


class Journal:
    """Appends ``start <id> <worker>``, runs the event's action, then appends ``done ...``.

    ``actions`` maps an event's id to a name in ``ACTIONS``; other events do ``default``.
    """

    def __init__(
        self, path: Path, actions: dict[str, str] | None = None, default: str = ""
    ) -> None:
        self.path = os.fspath(path)
        self.actions = dict(actions or {})
        self.default = default

    def ident(self, event: Event) -> str:
        return str(event.data)

    def action(self, event: Event) -> str:
        return self.actions.get(self.ident(event), self.default)

    def write(self, what: str, ident: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{what} {ident} {worker_token()}\n".encode())
        finally:
            os.close(fd)

    def process_event(self, event: Event) -> bool:
        ident = self.ident(event)
        self.write("start", ident)
        action = self.action(event)
        if action:
            ACTIONS[action]()
        self.write("done", ident)
        return True


class TailJournal(Journal):
    """A Journal for tail events: the id is ``L<line number>``; a line saying CRASH exits."""

    def ident(self, event: Event) -> str:
        return f"L{event.data['line_number']}"

    def action(self, event: Event) -> str:
        return "exit3" if "CRASH" in event.data["line"] else "pause"


def key_of(event: Event) -> str:
    """Routing key of an event whose data is ``"<key>:<n>"``."""
    return str(event.data).split(":")[0]


# == reading the journal and checking outcomes ===================================================


@dataclass
class Entry:
    what: str
    ident: str
    worker: str


def read_journal(path: Path) -> list[Entry]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [Entry(*line.split()) for line in text.splitlines() if line.strip()]


@dataclass
class Outcomes:
    """What the journal and the error events say happened to each event."""

    starts: collections.Counter[str] = field(default_factory=collections.Counter)
    dones: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: dict[str, list[BaseException]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return sum(self.dones.values())

    @property
    def failed(self) -> int:
        return sum(len(excs) for excs in self.errors.values())

    def abandoned(self) -> int:
        return sum(
            isinstance(exc, EventAbandonedError) for excs in self.errors.values() for exc in excs
        )


def collect(
    journal: list[Entry], errors: ErrorCollector, ident: Callable[[Event], str]
) -> Outcomes:
    outcomes = Outcomes()
    for entry in journal:
        (outcomes.starts if entry.what == "start" else outcomes.dones)[entry.ident] += 1
    for error_event in errors.events:
        exc, original = error_event.data
        assert original is not None, f"an error event without its event: {exc!r}"
        outcomes.errors.setdefault(ident(original), []).append(exc)
    return outcomes


def _check_crash(kind: str) -> Callable[[BaseException], str | None]:
    def check(exc: BaseException) -> str | None:
        if not isinstance(exc, WorkerCrashedError):
            return f"expected WorkerCrashedError, got {exc!r}"
        if exc.exitcode != CRASH_EXITCODES[kind]:
            return f"expected exit code {CRASH_EXITCODES[kind]}, got {exc.exitcode}"
        return None

    return check


def _check_timeout(exc: BaseException) -> str | None:
    if not isinstance(exc, HandlerTimeoutError):
        return f"expected HandlerTimeoutError, got {exc!r}"
    return None


def find_problems(
    journal: list[Entry],
    errors: ErrorCollector,
    expected: dict[str, str],
    ident: Callable[[Event], str] = lambda event: str(event.data),
) -> Outcomes:
    """Check every event ran at most once and has exactly the one outcome its kind calls for.

    Kinds: ``"ok"`` (ran to completion, no error event), a key of ``CRASH_EXITCODES`` (ran,
    never finished, one WorkerCrashedError with that exit code), ``"hang"`` (ran, never
    finished, one HandlerTimeoutError), ``"crash_or_abandon"`` (never finished, one error:
    WorkerCrashedError only if it ran, EventAbandonedError if it did not run).
    """
    outcomes = collect(journal, errors, ident)
    lost: list[str] = []
    twice: list[str] = []
    wrong: list[str] = []
    for name in sorted(set(outcomes.starts) | set(outcomes.dones) | set(outcomes.errors)):
        if name not in expected:
            wrong.append(f"{name}: not an event of this test")
    for name, kind in expected.items():
        starts, dones = outcomes.starts[name], outcomes.dones[name]
        excs = outcomes.errors.get(name, [])
        if starts > 1 or dones > 1:
            twice.append(f"{name}: started {starts}x, done {dones}x")
        if dones > starts:
            wrong.append(f"{name}: done without a start")
        if kind == "ok":
            if dones == 0 and not excs:
                lost.append(f"{name}: started {starts}x, never done, no error event")
            elif dones == 0 or excs:
                wrong.append(f"{name}: started {starts}x, done {dones}x, errors {excs!r}")
            continue
        if dones:
            wrong.append(f"{name} ({kind}): ran to completion")
        if len(excs) != 1:
            (lost if not excs else wrong).append(
                f"{name} ({kind}): started {starts}x, errors {excs!r}"
            )
            continue
        exc = excs[0]
        if kind == "crash_or_abandon":
            if isinstance(exc, WorkerCrashedError):
                if starts != 1:
                    wrong.append(f"{name}: crashed its worker without running: {exc!r}")
            elif not isinstance(exc, EventAbandonedError):
                wrong.append(f"{name}: expected a crash or an abandon, got {exc!r}")
            continue
        if starts != 1:
            wrong.append(f"{name} ({kind}): failed with {exc!r} but started {starts}x")
        check = _check_timeout if kind == "hang" else _check_crash(kind)
        problem = check(exc)
        if problem:
            wrong.append(f"{name} ({kind}): {problem}")
    outcomes.problems = [
        *(f"lost: {p}" for p in lost),
        *(f"twice: {p}" for p in twice),
        *(f"wrong: {p}" for p in wrong),
    ]
    if outcomes.problems:
        outcomes.problems.insert(0, f"{len(lost)} lost, {len(twice)} run twice, {len(wrong)} wrong")
    return outcomes


def check_outcomes(
    journal: list[Entry],
    errors: ErrorCollector,
    expected: dict[str, str],
    ident: Callable[[Event], str] = lambda event: str(event.data),
) -> Outcomes:
    """Assert what find_problems() checks."""
    outcomes = find_problems(journal, errors, expected, ident)
    assert not outcomes.problems, "\n".join(outcomes.problems)
    return outcomes


def check_stats(dispatcher: EventDispatcher, outcomes: Outcomes, accepted: int) -> None:
    """stats() agrees with the journal: each done is processed, each error event a failure
    (an abandoned event too: it gets an error event), and nothing is left pending."""
    stats = dispatcher.stats()
    assert (stats.accepted, stats.processed, stats.failed, stats.pending, stats.abandoned) == (
        accepted,
        outcomes.processed,
        outcomes.failed,
        0,
        outcomes.abandoned(),
    ), stats


def submit_all(dispatcher: EventDispatcher, handler: Any, idents: Iterable[str]) -> int:
    count = 0
    for ident in idents:
        dispatcher.submit(Event("multifault", handler, ident))
        count += 1
    return count


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


def plan(*parts: int | str, prefix: str = "e") -> tuple[list[str], dict[str, str]]:
    """Event ids in order and the fault of each: an int is that many ordinary events."""
    idents: list[str] = []
    expected: dict[str, str] = {}
    for part in parts:
        kinds = ["ok"] * part if isinstance(part, int) else [part]
        for kind in kinds:
            ident = f"{prefix}{len(idents):03d}"
            idents.append(ident)
            expected[ident] = kind
    return idents, expected


def faults_of(expected: dict[str, str]) -> dict[str, str]:
    return {ident: kind for ident, kind in expected.items() if kind != "ok"}


# == 1. several crashes in a row over a shared backlog ===========================================


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pace", ["", "pause"], ids=["instant", "2ms"])
@pytest.mark.parametrize("workers", [2, 3])
def test_crashes_in_a_row_lose_and_repeat_nothing(
    start_method: str,
    workers: int,
    pace: str,
    make_dispatcher: MakeDispatcher,
    errors: ErrorCollector,
    tmp_path: Path,
) -> None:
    """Back-to-back crashes of every kind on shared-backlog workers fail only their own events."""
    # Instant events travel in big batches (a crash leaves many unstarted events to requeue);
    # 2 ms ones in small batches, so the requeued ones meet other batches in flight.
    idents, expected = plan(
        40, "exit3", "segfault", "sigkill", 30, "sigkill", 5, "exit3", "segfault", 40
    )
    journal = Journal(tmp_path / "journal", faults_of(expected), default=pace)
    dispatcher = make_dispatcher(start_method=start_method, workers=workers)
    dispatcher.start()
    accepted = submit_all(dispatcher, journal, idents)

    assert dispatcher.wait(WAIT), dispatcher.stats()
    outcomes = check_outcomes(read_journal(tmp_path / "journal"), errors, expected)
    check_stats(dispatcher, outcomes, accepted)


# == 2. a hang and a crash in the same burst =====================================================


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
def test_hang_and_crash_in_one_burst_with_event_timeout(
    start_method: str,
    workers: int,
    make_dispatcher: MakeDispatcher,
    errors: ErrorCollector,
    tmp_path: Path,
) -> None:
    """A hung handler times out and an exiting one crashes; every other event runs once."""
    idents, expected = plan(10, "hang", 10, "exit3", 10, "hang", "exit3", 10)
    journal = Journal(tmp_path / "journal", faults_of(expected))
    dispatcher = make_dispatcher(
        start_method=start_method, workers=workers, event_timeout=1.0, kill_grace=0.2
    )
    dispatcher.start()
    accepted = submit_all(dispatcher, journal, idents)

    assert dispatcher.wait(WAIT), dispatcher.stats()
    entries = read_journal(tmp_path / "journal")
    outcomes = check_outcomes(entries, errors, expected)
    check_stats(dispatcher, outcomes, accepted)
    for exc in errors.exceptions:
        if isinstance(exc, HandlerTimeoutError):
            assert exc.timeout == 1.0
    if workers == 1:
        done = [entry.ident for entry in entries if entry.what == "done"]
        assert done == [i for i in idents if expected[i] == "ok"], "one worker keeps the order"


# == 3. recycling while crashes requeue events ===================================================


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
def test_recycling_workers_take_requeued_events_once(
    start_method: str,
    workers: int,
    make_dispatcher: MakeDispatcher,
    errors: ErrorCollector,
    tmp_path: Path,
) -> None:
    """With max_events_per_worker=3 and crashes, each worker runs at most 3; none lost or rerun."""
    idents, expected = plan(4, "exit3", "sigkill", 7, "exit3", 2, "segfault", 8, "exit3", 12)
    journal = Journal(tmp_path / "journal", faults_of(expected))
    dispatcher = make_dispatcher(
        start_method=start_method, workers=workers, max_events_per_worker=3
    )
    dispatcher.start()
    accepted = submit_all(dispatcher, journal, idents)

    assert dispatcher.wait(WAIT), dispatcher.stats()
    entries = read_journal(tmp_path / "journal")
    outcomes = check_outcomes(entries, errors, expected)
    check_stats(dispatcher, outcomes, accepted)
    per_worker = collections.Counter(entry.worker for entry in entries if entry.what == "start")
    assert max(per_worker.values()) <= 3, per_worker
    if workers == 1:
        done = [entry.ident for entry in entries if entry.what == "done"]
        assert done == [i for i in idents if expected[i] == "ok"], "one worker keeps the order"
    # Without a recycle, each crashed worker ran at most 2 ordinary events and each of the last
    # ones at most 3: fewer than ran, so workers were recycled (counted once all are reaped).
    crashes = len(faults_of(expected))
    assert outcomes.processed > 2 * crashes + 3 * workers
    dispatcher.stop(timeout=WAIT)
    assert dispatcher.stats().worker_recycles >= 1


# == 4. stop(timeout) during a crash loop's backoff ==============================================


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
def test_stop_timeout_during_crash_loop_backoff(
    start_method: str,
    workers: int,
    make_dispatcher: MakeDispatcher,
    errors: ErrorCollector,
    tmp_path: Path,
) -> None:
    """stop(timeout) in a crash loop returns in time; each event crashed or was abandoned."""
    before = child_pids()
    idents = [f"c{n:03d}" for n in range(30)]
    expected = dict.fromkeys(idents, "crash_or_abandon")
    journal = Journal(tmp_path / "journal", default="exit3")
    kill_grace, timeout = 0.5, 0.3
    dispatcher = make_dispatcher(start_method=start_method, workers=workers, kill_grace=kill_grace)
    dispatcher.start()
    accepted = submit_all(dispatcher, journal, idents)
    # A few crashes in, each slot's restart backoff has started to grow.
    assert errors.wait_for(4, WAIT), dispatcher.stats()

    started = time.monotonic()
    dispatcher.stop(timeout=timeout)
    elapsed = time.monotonic() - started
    assert elapsed < timeout + kill_grace + 5.0, elapsed

    outcomes = check_outcomes(read_journal(tmp_path / "journal"), errors, expected)
    check_stats(dispatcher, outcomes, accepted)
    assert outcomes.processed == 0
    assert outcomes.abandoned() >= 1, "a backoff growing to 1 s cannot drain 26 crashes in 0.3 s"
    crashed = sum(isinstance(e, WorkerCrashedError) for e in errors.exceptions)
    assert crashed >= 4
    assert child_pids() <= before


# == 5. a checkpointing tail over crashing lines =================================================


def line_starts(text: str) -> list[int]:
    """Byte offset of the start of each line, and of the end: ``starts[n]`` follows line n."""
    starts = [0]
    for line in text.encode().splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def log_lines(first: int, last: int) -> tuple[str, dict[str, str]]:
    """Lines ``first`` to ``last`` of the log; lines 5 and 6 of every 15 make the handler exit."""
    text, expected = "", {}
    for number in range(first, last + 1):
        crash = number % 15 in (5, 6)
        text += f"{'FATAL CRASH' if crash else 'INFO ok'} request {number}\n"
        expected[f"L{number}"] = "exit3" if crash else "ok"
    return text, expected


@dataclass
class Sample:
    """A checkpoint read from the state file, and what the journal held just after."""

    offset: int
    line: int
    started: set[str]
    done: set[str]


def tail_ident(event: Event) -> str:
    return f"L{event.data['line_number']}"


def file_key(event: Event) -> str:
    return str(event.data["file"])


def checkpoint_problems(samples: list[Sample], text: str, expected: dict[str, str]) -> list[str]:
    """Each checkpoint is a line start, and every line before it had run (and, if ordinary,
    finished) by the time it was saved."""
    starts = line_starts(text)
    problems = []
    for s in samples:
        if s.offset != starts[s.line]:
            problems.append(f"offset {s.offset} is not the start of line {s.line + 1}")
        for number in range(1, s.line + 1):
            name = f"L{number}"
            if name not in s.started or (expected[name] == "ok" and name not in s.done):
                problems.append(f"checkpoint before line {s.line + 1} passed {name}, not run/done")
                break
    return problems


@pytest.mark.timeout(180)
@pytest.mark.parametrize("key", [None, file_key], ids=["no-key", "per-file-key"])
def test_tail_checkpoint_with_crashing_lines(
    start_method: str,
    key: Callable[[Event], str] | None,
    make_dispatcher: MakeDispatcher,
    errors: ErrorCollector,
    tmp_path: Path,
) -> None:
    """The checkpoint never passes a line without an outcome; a restart skips and repeats none."""
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    journal_path = tmp_path / "journal"
    journal = TailJournal(journal_path)
    initial, _ = log_lines(1, 40)  # there before run 1 starts
    appended, _ = log_lines(41, 60)  # appended while run 1 runs
    later, _ = log_lines(61, 70)  # appended while nothing runs, for run 2
    _, expected = log_lines(1, 70)
    log.write_text(initial)
    samples: list[Sample] = []

    def sample() -> None:
        """Read the state file, then the journal: lines before the checkpoint ran before it."""
        try:
            entry = json.loads(state.read_text())["files"][os.fspath(log)]
        except (FileNotFoundError, KeyError):
            return
        if samples and (samples[-1].offset, samples[-1].line) == (entry["offset"], entry["line"]):
            return
        entries = read_journal(journal_path)
        started = {e.ident for e in entries if e.what == "start"}
        done = {e.ident for e in entries if e.what == "done"}
        samples.append(Sample(entry["offset"], entry["line"], started, done))

    def run(new_lines: int, append: str = "") -> tuple[EventDispatcher, list[str]]:
        """Run a dispatcher and tail until the file is read and settled; stop; check the state."""
        tail = FileTailGenerator(
            [os.fspath(log)],
            [Rule("all", EVERYTHING, journal)],
            start_at="beginning",
            state_file=state,
            checkpoint_interval=0,
        )
        dispatcher = make_dispatcher(
            start_method=start_method, workers=2, key=key, poll_interval=0.02
        )
        dispatcher.add_event_generator(tail)
        dispatcher.start()
        if append:
            assert wait_until(lambda: dispatcher.stats().accepted > 0)
            with open(log, "a") as out:
                out.write(append)
        size = log.stat().st_size

        def settled() -> bool:
            sample()
            stats = dispatcher.stats()
            return tail.bytes_read >= size and stats.accepted >= new_lines and stats.pending == 0

        assert wait_until(settled, step=0.002), (dispatcher.stats(), tail.bytes_read, size)
        dispatcher.stop(timeout=WAIT)
        sample()
        text = log.read_text()
        problems = checkpoint_problems(samples, text, expected)
        # Every line has an outcome (a crash is one): the final checkpoint is the file's end.
        final = json.loads(state.read_text())["files"][os.fspath(log)]
        lines_now = text.count("\n")
        if (final["offset"], final["line"]) != (len(text.encode()), lines_now):
            problems.append(f"final checkpoint {final} is not the end, line {lines_now}")
        return dispatcher, problems

    first_run, problems = run(60, append=appended)
    first_expected = {f"L{n}": expected[f"L{n}"] for n in range(1, 61)}
    outcomes = find_problems(read_journal(journal_path), errors, first_expected, tail_ident)
    assert not problems + outcomes.problems, "\n".join(problems + outcomes.problems)
    check_stats(first_run, outcomes, 60)
    assert len(samples) >= 2

    # Run 2, a restart on the state file, reads the 10 lines appended since: none skipped,
    # none of the first 60 again.
    with open(log, "a") as out:
        out.write(later)
    second_run, problems = run(10)
    outcomes = find_problems(read_journal(journal_path), errors, expected, tail_ident)
    assert not problems + outcomes.problems, "\n".join(problems + outcomes.problems)
    assert second_run.stats().accepted == 10, "a restart reads only the new lines"
    assert second_run.stats().processed == sum(expected[f"L{n}"] == "ok" for n in range(61, 71))


# == 6. per-key order across crashes =============================================================


@pytest.mark.timeout(120)
def test_key_routing_keeps_per_key_order_across_crashes(
    start_method: str, make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """With key= on two workers and crashes in several keys, each key runs in order, singly."""
    keys = ["a", "b", "c", "d"]
    faults = {"a:005": "exit3", "a:006": "segfault", "b:010": "sigkill", "c:003": "exit3"}
    faults |= {"c:004": "exit3", "d:015": "segfault", "d:016": "sigkill", "b:020": "exit3"}
    idents = [f"{k}:{n:03d}" for n in range(25) for k in keys]  # interleaved, as they arrive
    expected = {ident: faults.get(ident, "ok") for ident in idents}
    journal = Journal(tmp_path / "journal", faults)
    dispatcher = make_dispatcher(start_method=start_method, workers=2, key=key_of)
    dispatcher.start()
    accepted = submit_all(dispatcher, journal, idents)

    assert dispatcher.wait(WAIT), dispatcher.stats()
    entries = read_journal(tmp_path / "journal")
    outcomes = check_outcomes(entries, errors, expected)
    check_stats(dispatcher, outcomes, accepted)
    for k in keys:
        mine = [e for e in entries if e.ident.startswith(f"{k}:")]
        done = [e.ident for e in mine if e.what == "done"]
        assert done == [i for i in idents if i.startswith(f"{k}:") and i not in faults], k
        # One at a time: each start follows the end (done, or a crash) of the one before.
        steps = [(e.what, e.ident) for e in mine]
        wanted = []
        for ident in (i for i in idents if i.startswith(f"{k}:")):
            wanted += [("start", ident)] if ident in faults else [("start", ident), ("done", ident)]
        assert steps == wanted, f"key {k}: {steps}"
