"""Crash isolation: real worker processes killed, hung, signalled and starved (issue 3).

Nothing here is mocked: handlers really call ``os._exit``, dereference NULL, SIGKILL themselves
or sleep past ``event_timeout``; tests send real signals to real pids and run whole parent
processes as subprocesses to kill them.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import faulthandler
import os
import re
import resource
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import child_pids

from eventmp import (
    Event,
    EventAbandonedError,
    EventDispatcher,
    EventmpError,
    HandlerTimeoutError,
    RemoteError,
    RemoteTraceback,
    WorkerCrashedError,
)
from eventmp.testing import ErrorCollector, RecordingHandler

MakeDispatcher = Callable[..., EventDispatcher]

REPO = Path(__file__).resolve().parent.parent
WAIT = 30.0  # generous upper bound for anything that should take a second or two
BAD = "bad"
HUGE_MESSAGE_LEN = 1_000_000
TEN_MB = 10 * 1024 * 1024


# == exceptions that do not travel well ==========================================================


class TwoArgError(Exception):
    """Pickles, but does not unpickle: ``__init__`` needs two arguments, ``args`` holds one."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code
        self.detail = detail


class LockedError(Exception):
    """Carries a lock, which pickle refuses."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


# == what a handler does to its worker (module level, so spawn workers import them) ==============


def _exit3(handler: ScriptedHandler, event: Event) -> None:
    os._exit(3)


def _exit1(handler: ScriptedHandler, event: Event) -> None:
    os._exit(1)


def _segfault(handler: ScriptedHandler, event: Event) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
    faulthandler.disable()  # inherited under fork: spare the test log a worker's stack dump
    ctypes.string_at(0)


def _sigkill_self(handler: ScriptedHandler, event: Event) -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)


def _system_exit(handler: ScriptedHandler, event: Event) -> None:
    raise SystemExit(5)


def _keyboard_interrupt(handler: ScriptedHandler, event: Event) -> None:
    raise KeyboardInterrupt


def _hang(handler: ScriptedHandler, event: Event) -> None:
    handler.mark(event)
    time.sleep(60)


def _two_arg(handler: ScriptedHandler, event: Event) -> None:
    raise TwoArgError(7, "needs two arguments")


def _unpicklable(handler: ScriptedHandler, event: Event) -> None:
    raise LockedError("carries a lock")


def _huge(handler: ScriptedHandler, event: Event) -> None:
    raise ValueError("x" * HUGE_MESSAGE_LEN)


def _slow(handler: ScriptedHandler, event: Event) -> None:
    """Mark that the handler started, then take a second (and return: the event is recorded)."""
    handler.mark(event)
    time.sleep(1.0)


ACTIONS: dict[str, Callable[[ScriptedHandler, Event], None]] = {
    "exit3": _exit3,
    "exit1": _exit1,
    "segfault": _segfault,
    "sigkill": _sigkill_self,
    "system_exit": _system_exit,
    "keyboard_interrupt": _keyboard_interrupt,
    "hang": _hang,
    "two_arg": _two_arg,
    "unpicklable": _unpicklable,
    "huge": _huge,
    "slow": _slow,
}


class ScriptedHandler(RecordingHandler):
    """Runs ``ACTIONS[actions[event.data]]`` first (if any), then records the event.

    ``mark(event)`` touches ``<path>.<data>.started`` so a test knows the handler is running.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        actions: dict[Any, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        super().__init__(path)
        self.actions = dict(actions or {})
        self.delay = delay

    def marker(self, data: Any) -> Path:
        return Path(f"{self.path}.{data}.started")

    def mark(self, event: Event) -> None:
        self.marker(event.data).touch()

    def process_event(self, event: Event) -> bool:
        action = self.actions.get(event.data)
        if action is not None:
            ACTIONS[action](self, event)
        if self.delay:
            time.sleep(self.delay)
        return super().process_event(event)


class SizeHandler(RecordingHandler):
    """Records ``len(event.data)`` instead of the data itself (for 10 MB payloads)."""

    def process_event(self, event: Event) -> bool:
        return super().process_event(Event(event.originator, self, len(event.data)))


# == helpers =====================================================================================


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, step: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def stop_bounded(dispatcher: EventDispatcher, timeout: float = WAIT) -> float:
    """Stop with a bound on the drain; return the seconds it took."""
    started = time.monotonic()
    dispatcher.stop(timeout=timeout)
    return time.monotonic() - started


def data_of(records: list[dict[str, Any]]) -> list[Any]:
    return [record["data"] for record in records]


# == the crash_cases table =======================================================================


def _check_exit3(exc: BaseException) -> None:
    assert isinstance(exc, WorkerCrashedError)
    assert exc.exitcode == 3
    assert exc.pid is not None
    assert "status 3" in str(exc)


def _check_segfault(exc: BaseException) -> None:
    assert isinstance(exc, WorkerCrashedError)
    assert exc.exitcode == -signal.SIGSEGV
    assert "SIGSEGV" in str(exc)
    assert "segmentation fault" in str(exc)


def _check_sigkill(exc: BaseException) -> None:
    assert isinstance(exc, WorkerCrashedError)
    assert exc.exitcode == -signal.SIGKILL
    assert "SIGKILL" in str(exc)
    assert "out-of-memory" in str(exc)


def _check_system_exit(exc: BaseException) -> None:
    assert type(exc) is SystemExit
    assert exc.code == 5
    assert isinstance(exc.__cause__, RemoteTraceback)


def _check_keyboard_interrupt(exc: BaseException) -> None:
    assert type(exc) is KeyboardInterrupt
    assert isinstance(exc.__cause__, RemoteTraceback)


def _check_timeout(exc: BaseException) -> None:
    assert isinstance(exc, HandlerTimeoutError)
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, EventmpError)
    assert exc.timeout == 1


def _check_remote(type_name: str, message: str) -> Callable[[BaseException], None]:
    def check(exc: BaseException) -> None:
        if isinstance(exc, RemoteError):
            assert exc.type_name.endswith(type_name), exc.type_name
            assert exc.message == message
            assert type_name in exc.traceback
        else:
            assert type(exc).__name__ == type_name
            assert str(exc) == message
        assert isinstance(exc.__cause__, RemoteTraceback)

    return check


def _check_huge(exc: BaseException) -> None:
    assert type(exc) is ValueError
    assert len(str(exc)) == HUGE_MESSAGE_LEN
    assert str(exc) == "x" * HUGE_MESSAGE_LEN


@dataclass(frozen=True)
class CrashCase:
    name: str
    action: str
    check: Callable[[BaseException], None]
    worker_dies: bool
    options: dict[str, Any] = field(default_factory=dict)


CRASH_CASES = [
    CrashCase("os_exit_3", "exit3", _check_exit3, worker_dies=True),
    CrashCase("segfault", "segfault", _check_segfault, worker_dies=True),
    CrashCase("sigkill_self", "sigkill", _check_sigkill, worker_dies=True),
    CrashCase("raise_system_exit", "system_exit", _check_system_exit, worker_dies=False),
    CrashCase("raise_keyboard_interrupt", "keyboard_interrupt", _check_keyboard_interrupt, False),
    CrashCase(
        "hang_past_timeout",
        "hang",
        _check_timeout,
        worker_dies=True,
        options={"event_timeout": 1, "kill_grace": 0.5},
    ),
    CrashCase(
        "two_arg_exception",
        "two_arg",
        _check_remote("TwoArgError", "code 7: needs two arguments"),
        worker_dies=False,
    ),
    CrashCase(
        "unpicklable_exception",
        "unpicklable",
        _check_remote("LockedError", "carries a lock"),
        worker_dies=False,
    ),
    CrashCase("huge_exception_message", "huge", _check_huge, worker_dies=False),
]


@pytest.mark.parametrize("case", CRASH_CASES, ids=lambda case: case.name)
def test_crash_case(
    case: CrashCase,
    start_method: str,
    make_dispatcher: MakeDispatcher,
    errors: ErrorCollector,
    tmp_path: Path,
) -> None:
    """The bad event becomes exactly one error event of the right class; the rest run in order."""
    before = child_pids()
    handler = ScriptedHandler(tmp_path / "records", {BAD: case.action})
    dispatcher = make_dispatcher(start_method=start_method, **case.options)
    dispatcher.start()
    bad_event = Event("test", handler, BAD)
    for event in (
        Event("test", handler, "g1"),
        bad_event,
        Event("test", handler, "g2"),
        Event("test", handler, "g3"),
    ):
        dispatcher.submit(event)

    assert dispatcher.wait(WAIT), f"events had no outcome after {WAIT}s: {dispatcher.stats()}"
    assert len(errors.events) == 1, errors.exceptions
    error_event = errors.events[0]
    exc, original = error_event.data
    case.check(exc)
    assert original is bad_event
    assert original.data == BAD

    records = handler.records()
    assert data_of(records) == ["g1", "g2", "g3"]
    pids = [record["pid"] for record in records]
    if case.worker_dies:
        assert pids[0] != pids[1], "a fresh worker should take over after the bad event"
        if isinstance(exc, WorkerCrashedError):
            assert exc.pid == pids[0]
    else:
        assert pids[0] == pids[1] == pids[2], "an exception must not cost the worker its life"
    stats = dispatcher.stats()
    assert (stats.processed, stats.failed, stats.pending) == (3, 1, 0)

    assert stop_bounded(dispatcher) < WAIT
    assert child_pids() <= before


# == idle kill, crash loop, several workers ======================================================


def test_idle_worker_killed_is_replaced_silently(
    start_method: str, make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """A worker SIGKILLed while idle is replaced, and no event is reported as failed."""
    before = child_pids()
    handler = ScriptedHandler(tmp_path / "records")
    dispatcher = make_dispatcher(start_method=start_method)
    dispatcher.start()
    dispatcher.submit(Event("test", handler, "before"))
    assert dispatcher.wait(WAIT)
    (old_pid,) = dispatcher.stats().worker_pids

    os.kill(old_pid, signal.SIGKILL)
    assert wait_until(lambda: dispatcher.stats().worker_pids not in ((), (old_pid,)))
    (new_pid,) = dispatcher.stats().worker_pids
    assert new_pid != old_pid
    assert gone(old_pid)

    for data in ("after1", "after2"):
        dispatcher.submit(Event("test", handler, data))
    assert dispatcher.wait(WAIT)
    assert errors.events == []
    records = handler.records()
    assert data_of(records) == ["before", "after1", "after2"]
    assert [record["pid"] for record in records] == [old_pid, new_pid, new_pid]
    assert dispatcher.stats().worker_restarts == 1

    assert stop_bounded(dispatcher) < WAIT
    assert child_pids() <= before


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_crash_loop_drains_with_capped_backoff(
    start_method: str, make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """Eight events that each kill their worker give eight errors, bounded backoff, clean stop."""
    before = child_pids()
    count = 8
    handler = ScriptedHandler(tmp_path / "records", {n: "exit1" for n in range(count)})
    dispatcher = make_dispatcher(start_method=start_method)
    dispatcher.start()
    me = psutil.Process()
    cpu_before = sum(me.cpu_times()[:2])
    started = time.monotonic()
    for n in range(count):
        dispatcher.submit(Event("test", handler, n))

    assert dispatcher.wait(WAIT), dispatcher.stats()
    elapsed = time.monotonic() - started
    cpu_used = sum(me.cpu_times()[:2]) - cpu_before
    assert len(errors.events) == count
    for exc in errors.exceptions:
        assert isinstance(exc, WorkerCrashedError)
        assert exc.exitcode == 1
    assert [event.data for event in errors.failed_events if event is not None] == list(range(count))
    assert len({exc.pid for exc in errors.exceptions}) == count  # type: ignore[attr-defined]
    assert dispatcher.stats().worker_restarts >= count - 1
    assert handler.records() == []
    # The backoff is capped at about a second, so eight crashes take seconds, not minutes; and
    # the parent waits instead of spinning (a spin would burn about one CPU second per second).
    assert elapsed < 20, elapsed
    assert cpu_used < 0.5 * elapsed + 1.0, (cpu_used, elapsed)

    assert stop_bounded(dispatcher) < WAIT
    assert child_pids() <= before


def test_crash_in_one_of_two_workers_fails_only_its_event(
    start_method: str, make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """With workers=2, a crash fails only the crashing event; the other worker carries on."""
    before = child_pids()
    handler = ScriptedHandler(tmp_path / "records", {BAD: "exit3"}, delay=0.01)
    dispatcher = make_dispatcher(start_method=start_method, workers=2)
    dispatcher.start()
    initial_pids = set(dispatcher.stats().worker_pids)
    assert len(initial_pids) == 2

    good = [f"e{n}" for n in range(30)]
    sequence = [*good[:15], BAD, *good[15:]]
    for data in sequence:
        dispatcher.submit(Event("test", handler, data))
    assert dispatcher.wait(WAIT), dispatcher.stats()

    assert len(errors.events) == 1, errors.exceptions
    exc, original = errors.events[0].data
    assert isinstance(exc, WorkerCrashedError)
    assert exc.exitcode == 3
    assert original.data == BAD
    counts = collections.Counter(data_of(handler.records()))
    assert counts == collections.Counter(good), "every good event exactly once"

    survivor = initial_pids - {exc.pid}
    assert exc.pid in initial_pids and len(survivor) == 1
    pids_now = set(dispatcher.stats().worker_pids)
    assert survivor <= pids_now, "the worker that did not crash must not be disturbed"
    assert len(pids_now) == 2
    assert dispatcher.stats().worker_restarts == 1

    assert stop_bounded(dispatcher) < WAIT
    assert child_pids() <= before


# == bad payloads ================================================================================


def test_ten_megabyte_events_are_processed_and_shut_down(
    start_method: str, make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """Events of 10 MB are processed like any other and stop() does not deadlock on them."""
    before = child_pids()
    handler = SizeHandler(tmp_path / "records")
    dispatcher = make_dispatcher(start_method=start_method)
    dispatcher.start()
    for n in range(3):
        dispatcher.submit(Event("test", handler, bytes([n]) * TEN_MB))
    # Stop straight away: the drain must push 30 MB through the pipe, not hang on a full one.
    assert stop_bounded(dispatcher) < WAIT
    assert errors.events == []
    assert data_of(handler.records()) == [TEN_MB] * 3
    assert dispatcher.stats().processed == 3
    assert child_pids() <= before


class ExitAtUnpickle:
    """Event data that pickles in the parent and ends the worker process as it is unpickled."""

    def __reduce__(self) -> tuple[Callable[[int], None], tuple[int]]:
        return (os._exit, (1,))


def test_event_that_kills_worker_while_unpickled_fails_alone(
    start_method: str, make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """Data whose unpickling ends the worker fails that one event, not the pipeline, and no loop."""
    before = child_pids()
    handler = ScriptedHandler(tmp_path / "records")
    dispatcher = make_dispatcher(start_method=start_method)
    dispatcher.start()
    bad_event = Event("test", handler, ExitAtUnpickle())
    for event in (Event("test", handler, "g1"), bad_event, Event("test", handler, "g2")):
        dispatcher.submit(event)

    drained = dispatcher.wait(10)
    stats = dispatcher.stats()
    if not drained:
        dispatcher.stop(timeout=1)  # end the restart loop now rather than in the teardown
    assert drained, f"no outcome for every event: {stats}"
    assert len(errors.events) == 1, errors.exceptions
    exc, original = errors.events[0].data
    assert isinstance(exc, EventmpError), exc
    assert original is bad_event
    assert data_of(handler.records()) == ["g1", "g2"]
    assert stop_bounded(dispatcher) < WAIT
    assert child_pids() <= before


# == stop() with hung handlers ===================================================================


def _stop_with_hung_handler(
    make_dispatcher: MakeDispatcher, tmp_path: Path, timeout: float
) -> tuple[EventDispatcher, ScriptedHandler, float]:
    """Submit a hung event and two behind it, wait until it hangs, stop(timeout); time it."""
    handler = ScriptedHandler(tmp_path / "records", {"hung": "hang"})
    dispatcher = make_dispatcher(start_method="fork", kill_grace=1.0)
    dispatcher.start()
    for data in ("hung", "q1", "q2"):
        dispatcher.submit(Event("test", handler, data))
    assert wait_until(handler.marker("hung").exists)
    return dispatcher, handler, stop_bounded(dispatcher, timeout)


def _logged_abandon_counts(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [
        int(match.group(1))
        for record in caplog.records
        if record.name == "eventmp"
        and (match := re.search(r"(\d+) (?:queued )?events abandoned", record.getMessage()))
    ]


def test_stop_timeout_abandons_hung_and_queued_events(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """stop(timeout=T) with a hung handler returns in about T plus the kill grace, abandoning."""
    before = child_pids()
    timeout = 1.0
    dispatcher, handler, elapsed = _stop_with_hung_handler(make_dispatcher, tmp_path, timeout)
    assert elapsed < timeout + 15, elapsed

    assert len(errors.events) == 3, errors.exceptions
    for exc in errors.exceptions:
        assert isinstance(exc, EventAbandonedError), exc
    # One outcome each; the order of abandonment reports is not promised.
    assert sorted(event.data for event in errors.failed_events if event is not None) == [
        "hung",
        "q1",
        "q2",
    ]
    assert handler.records() == []
    stats = dispatcher.stats()
    assert (stats.abandoned, stats.pending) == (3, 0)
    assert child_pids() <= before


def test_stop_timeout_logs_count_of_every_abandoned_event(
    make_dispatcher: MakeDispatcher,
    errors: ErrorCollector,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The abandoned count that stop(timeout=T) logs covers the hung event and the queued ones."""
    caplog.set_level("INFO", logger="eventmp")
    dispatcher, _handler, _elapsed = _stop_with_hung_handler(make_dispatcher, tmp_path, 1.0)
    assert dispatcher.stats().abandoned == 3
    logged = _logged_abandon_counts(caplog)
    assert sum(logged) == 3, [r.getMessage() for r in caplog.records]


def test_stop_without_drain_abandons_queue_and_logs_count(
    make_dispatcher: MakeDispatcher,
    errors: ErrorCollector,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """stop(drain=False) lets the event in hand finish, abandons the queue, and logs how many."""
    caplog.set_level("INFO", logger="eventmp")
    before = child_pids()
    handler = ScriptedHandler(tmp_path / "records", {"first": "slow"})
    dispatcher = make_dispatcher(start_method="fork", kill_grace=10.0)
    dispatcher.start()
    queued = [f"q{n}" for n in range(5)]
    for data in ("first", *queued):
        dispatcher.submit(Event("test", handler, data))
    assert wait_until(handler.marker("first").exists)

    started = time.monotonic()
    dispatcher.stop(drain=False)
    assert time.monotonic() - started < WAIT

    assert data_of(handler.records()) == ["first"]
    assert len(errors.events) == len(queued), errors.exceptions
    for exc in errors.exceptions:
        assert isinstance(exc, EventAbandonedError), exc
    assert sorted(e.data for e in errors.failed_events if e is not None) == queued
    assert dispatcher.stats().abandoned == len(queued)

    logged = _logged_abandon_counts(caplog)
    assert sum(logged) == len(queued), [r.getMessage() for r in caplog.records]
    assert child_pids() <= before


# == signals to workers ==========================================================================


def test_worker_ignores_sigint(
    start_method: str, make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """SIGINT to a worker mid-event changes nothing: the event completes on the same worker."""
    handler = ScriptedHandler(tmp_path / "records", {"slow": "slow"})
    dispatcher = make_dispatcher(start_method=start_method)
    dispatcher.start()
    (pid,) = dispatcher.stats().worker_pids
    dispatcher.submit(Event("test", handler, "slow"))
    assert wait_until(handler.marker("slow").exists)

    os.kill(pid, signal.SIGINT)
    dispatcher.submit(Event("test", handler, "next"))
    assert dispatcher.wait(WAIT)
    assert errors.events == []
    records = handler.records()
    assert data_of(records) == ["slow", "next"]
    assert {record["pid"] for record in records} == {pid}
    assert dispatcher.stats().worker_pids == (pid,)
    assert dispatcher.stats().worker_restarts == 0
    assert stop_bounded(dispatcher) < WAIT


def test_sigterm_finishes_event_in_hand_and_hands_queue_to_fresh_worker(
    start_method: str, make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """SIGTERM mid-event: that event completes, the worker leaves, a fresh one runs the queue."""
    before = child_pids()
    handler = ScriptedHandler(tmp_path / "records", {"slow": "slow"})
    dispatcher = make_dispatcher(start_method=start_method)
    dispatcher.start()
    (old_pid,) = dispatcher.stats().worker_pids
    queued = ["q1", "q2", "q3"]
    for data in ("slow", *queued):
        dispatcher.submit(Event("test", handler, data))
    assert wait_until(handler.marker("slow").exists)

    os.kill(old_pid, signal.SIGTERM)
    assert dispatcher.wait(WAIT), dispatcher.stats()
    assert errors.events == [], errors.exceptions
    records = handler.records()
    assert data_of(records) == ["slow", *queued], "none lost, none twice, in order"
    assert records[0]["pid"] == old_pid
    new_pids = {record["pid"] for record in records[1:]}
    assert len(new_pids) == 1 and old_pid not in new_pids
    assert wait_until(lambda: gone(old_pid))
    assert dispatcher.stats().worker_pids == tuple(new_pids)

    assert stop_bounded(dispatcher) < WAIT
    assert child_pids() <= before


# == resource hygiene ============================================================================


def _cycle(start_method: str, path: Path) -> None:
    errors = ErrorCollector()
    handler = RecordingHandler(path)
    dispatcher = EventDispatcher(poll_interval=0.05, start_method=start_method)
    dispatcher.error_handler(errors)
    dispatcher.start()
    dispatcher.submit(Event("test", handler, "x"))
    assert dispatcher.wait(WAIT)
    dispatcher.stop(timeout=WAIT)
    assert errors.events == []


def _resources() -> tuple[int, int, int]:
    return len(child_pids()), psutil.Process().num_fds(), threading.active_count()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("start_method", "cycles"), [("fork", 50), ("forkserver", 15)])
def test_start_stop_cycles_leak_nothing(start_method: str, cycles: int, tmp_path: Path) -> None:
    """Many create/start/submit/stop cycles leave children, fds and threads where they were."""
    path = tmp_path / "records"
    _cycle(start_method, path)  # warm-up: imports, and the forkserver if there is to be one
    baseline = _resources()
    for _ in range(cycles):
        _cycle(start_method, path)
    assert wait_until(lambda: _resources() == baseline, timeout=10), (_resources(), baseline)
    assert len(RecordingHandler(path).records()) == cycles + 1


# == worker start failure and parent death (whole parents run as subprocesses) ===================

START_FAILS_SCRIPT = """
if __name__ != "__main__":
    raise ImportError("boom")  # the spawned worker re-imports this module as __mp_main__

import psutil

from eventmp import EventDispatcher, WorkerStartError

if __name__ == "__main__":
    dispatcher = EventDispatcher(start_method="spawn", start_timeout=30)
    try:
        dispatcher.start()
    except WorkerStartError as exc:
        print("WorkerStartError:", exc, flush=True)
    else:
        print("started", flush=True)
        dispatcher.stop(timeout=5)
    alive = [
        p.pid
        for p in psutil.Process().children(recursive=True)
        if p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline())
    ]
    print("children:", alive, flush=True)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def test_worker_start_failure_raises_clear_error(tmp_path: Path) -> None:
    """A worker that cannot import the main module makes start() raise WorkerStartError, once."""
    script = tmp_path / "start_fails.py"
    script.write_text(START_FAILS_SCRIPT)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=45,
        env=_env(),
        cwd=tmp_path,
    )
    assert time.monotonic() - started < 45
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("WorkerStartError: "), result.stdout
    message = lines[0]
    assert "before it was ready" in message
    assert "exited with status 1" in message
    assert "__main__" in message and "spawn" in message
    assert lines[-1] == "children: []", result.stdout
    # One worker tried once: no restart loop.
    assert result.stderr.count("ImportError: boom") == 1, result.stderr


ORPHAN_SCRIPT = """
import os
import sys
import time

from eventmp import Event, EventDispatcher


def hang(event):
    with open(event.data, "w"):
        pass
    time.sleep(300)


if __name__ == "__main__":
    method, marker = sys.argv[1], sys.argv[2]
    dispatcher = EventDispatcher(start_method=method, workers=2)
    dispatcher.start()
    dispatcher.submit(Event("orphan-test", hang, marker))
    deadline = time.monotonic() + 30
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    print(" ".join(str(pid) for pid in dispatcher.stats().worker_pids), flush=True)
    time.sleep(300)
"""


@pytest.fixture
def reap_strays() -> Iterator[list[psutil.Process]]:
    """Processes a test registers here are SIGKILLed at teardown if they still run."""
    strays: list[psutil.Process] = []
    yield strays
    for process in strays:
        with contextlib.suppress(psutil.Error):
            process.kill()


def test_parent_sigkill_leaves_no_orphans(
    start_method: str, tmp_path: Path, reap_strays: list[psutil.Process]
) -> None:
    """When the parent is SIGKILLed, its workers (one mid-event, one idle) exit within seconds."""
    script = tmp_path / "orphans.py"
    script.write_text(ORPHAN_SCRIPT)
    marker = tmp_path / "handler.started"
    parent = subprocess.Popen(
        [sys.executable, str(script), start_method, str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    try:
        assert parent.stdout is not None
        readable, _, _ = select.select([parent.stdout], [], [], WAIT)
        assert readable, "the parent script printed no worker pids"
        line = parent.stdout.readline()
        worker_pids = [int(pid) for pid in line.split()]
        assert len(worker_pids) == 2, (line, parent.poll())
        assert marker.exists()
        descendants = psutil.Process(parent.pid).children(recursive=True)
        reap_strays.extend(descendants)
        assert {p.pid for p in descendants} >= set(worker_pids)

        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
        if parent.stderr is not None:
            parent.stderr.close()

    assert wait_until(lambda: all(gone(pid) for pid in worker_pids), timeout=10), [
        pid for pid in worker_pids if not gone(pid)
    ]
    # Nothing else the parent started (forkserver, resource tracker) may linger either.
    assert wait_until(lambda: all(gone(p.pid) for p in descendants), timeout=10), [
        (p.pid, p.name()) for p in descendants if not gone(p.pid)
    ]


REPLACEMENT_NEVER_STARTS_SCRIPT = textwrap.dedent(
    """
    import os, resource, threading, time

    from eventmp import Event, EventDispatcher
    from eventmp.testing import ErrorCollector

    def crash(event):
        os._exit(1)

    hoarded = []
    done = threading.Event()

    def hoard():
        # Every descriptor the process may open, taken as soon as one is free: a replacement
        # worker needs several at once and never gets them.
        while not done.is_set():
            try:
                hoarded.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                time.sleep(0.001)

    if __name__ == "__main__":
        errors = ErrorCollector()
        d = EventDispatcher(1.0, start_method="spawn")
        d.error_handler(errors)
        d.start()
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 32, highest + 32))
        hoarder = threading.Thread(target=hoard, daemon=True)
        hoarder.start()
        time.sleep(0.5)
        d.submit(Event("x", crash, 1))
        print("waited", d.wait(30), flush=True)
        deadline = time.monotonic() + 30
        while d.failure is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the restarts, retried with back-off, until they give up
        # Descriptors back before any thread ends: glibc opens libgcc_s for pthread_exit.
        done.set()
        hoarder.join()
        for fd in hoarded:
            os.close(fd)
        d.stop(timeout=10)
        print("errors", sorted(type(e).__name__ for e in errors.exceptions))
        print("failure", type(d.failure).__name__)
    """
)


@pytest.mark.timeout(90)
def test_replacements_that_never_start_break_the_pipeline_without_a_hang(tmp_path: Path) -> None:
    """Restarts that keep failing (retried with back-off) end in WorkerStartError, not a hang."""
    script = tmp_path / "never_starts.py"
    script.write_text(REPLACEMENT_NEVER_STARTS_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines == {
        "waited": "True",
        "errors": "['WorkerCrashedError']",
        "failure": "WorkerStartError",
    }, result.stderr
    assert "could not start a replacement worker" in result.stderr


REPLACEMENT_FAILS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    FLAG = sys.argv[1] if len(sys.argv) > 1 else os.environ["EVENTMP_TEST_FLAG"]
    if __name__ == "__mp_main__" and os.path.exists(FLAG):
        sys.exit(3)  # a replacement worker fails while importing the main module

    from eventmp import Event, EventDispatcher
    from eventmp.testing import ErrorCollector

    def crash(event):
        os._exit(1)

    def noop(event):
        return True

    if __name__ == "__main__":
        os.environ["EVENTMP_TEST_FLAG"] = FLAG
        errors = ErrorCollector()
        d = EventDispatcher(1.0, start_method="spawn")
        d.error_handler(errors)
        d.start()
        open(FLAG, "w").close()
        d.submit(Event("x", crash, 1))
        d.submit(Event("x", noop, 2))
        print("waited", d.wait(20), flush=True)
        d.stop(timeout=10)
        print("alive", d.is_alive())
        print("errors", sorted(type(e).__name__ for e in errors.exceptions))
        print("stats", d.stats().processed, d.stats().failed, d.stats().pending)
        print("failure", type(d.failure).__name__)
    """
)


@pytest.mark.timeout(90)
def test_replacement_that_cannot_start_fails_pending_events_cleanly(tmp_path: Path) -> None:
    """A replacement worker that dies before it is ready fails the pending events, no crash."""
    script = tmp_path / "replacement.py"
    script.write_text(REPLACEMENT_FAILS_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "flag")],
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert result.returncode == 0, result.stderr
    assert "dispatcher thread failed" not in result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["waited"] == "True"
    assert lines["alive"] == "False"
    assert lines["errors"] == "['WorkerCrashedError', 'WorkerStartError']"
    assert lines["stats"] == "0 2 0"
    assert lines["failure"] == "WorkerStartError"
    # Said once, and no fresh worker is announced for a pipeline that is breaking.
    assert result.stderr.count("before it was ready") == 1, result.stderr
    assert "starting a fresh one" not in result.stderr, result.stderr
