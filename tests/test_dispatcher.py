"""Tests for eventmp.dispatcher: EventDispatcher with real worker processes, no mocks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import (
    WAIT,
    GatedRecorder,
    HangOn,
    LineRecorder,
    child_pids,
    data_of,
    wait_until,
)

from eventmp import (
    ChainEventHandler,
    DispatcherStoppedError,
    Event,
    EventDispatcher,
    EventGenerator,
    EventmpError,
    HandlerTimeoutError,
    RemoteTraceback,
    SerializationError,
    SubmitTimeoutError,
    WorkerCrashedError,
)
from eventmp.testing import ErrorCollector, ListEventGenerator, RecordingHandler

MakeDispatcher = Callable[..., EventDispatcher]


# == handlers and helpers (module level: under spawn/forkserver the worker imports them) =========


class RecordThenReturn(RecordingHandler):
    """Records the event with a tag, then returns ``result``."""

    def __init__(self, path: Path, tag: str, result: bool) -> None:
        super().__init__(path)
        self.tag = tag
        self.result = result

    def process_event(self, event: Event) -> bool:
        super().process_event(Event(event.originator, self, self.tag, event.timestamp))
        return self.result


class RecordThenRaise(RecordingHandler):
    """Records the event, then raises a fresh instance of ``exc_type``."""

    def __init__(self, path: Path, exc_type: type[BaseException]) -> None:
        super().__init__(path)
        self.exc_type = exc_type

    def process_event(self, event: Event) -> bool:
        super().process_event(event)
        raise self.exc_type()


class Recorder:
    """A plain class (not an EventHandler) whose bound method is used as a handler."""

    def __init__(self, path: Path) -> None:
        self.recording = RecordingHandler(path)

    def handle(self, event: Event) -> bool:
        return self.recording.process_event(Event(event.originator, None, "bound-method"))


class ModuleClassHandler:
    """A handler class defined at module level, with ``process_event``."""

    def __init__(self, path: Path) -> None:
        self.recording = RecordingHandler(path)

    def process_event(self, event: Event) -> bool:
        return self.recording.process_event(Event(event.originator, None, "module-class"))


def failing_handler_function(event: Event) -> bool:
    """A handler whose name must show up in the traceback the parent receives."""
    raise ValueError(f"bad data {event.data!r}")


def sleepy_handler(event: Event) -> bool:
    """Records that it started, then sleeps ``event.data[1]`` seconds."""
    path, seconds = event.data
    RecordingHandler(path).process_event(Event("sleepy", None, "started"))
    time.sleep(seconds)
    return True


def _explode_on_load() -> None:
    raise RuntimeError("refusing to unpickle, on purpose")


class FailsToUnpickle:
    """Pickles fine in the parent; unpickling it (in the worker) raises."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_explode_on_load, ())


class FailingGenerator(EventGenerator):
    """Raises in its first ``get_events()``; then yields ``events`` and is finished."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.polls = 0
        self.stopped = False

    def get_events(self) -> list[Event]:
        self.polls += 1
        if self.polls == 1:
            raise OSError("the log file vanished")
        events, self.events = self.events, []
        self.finished = True
        return events

    def stop(self) -> None:
        self.stopped = True


class ParentSideErrorHandler:
    """An error handler that notes the process and thread it runs in."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, threading.Thread, Event]] = []

    def process_event(self, event: Event) -> bool:
        self.calls.append((os.getpid(), threading.current_thread(), event))
        return True


# == where handlers run ==========================================================================


def test_handlers_run_in_another_process(
    make_dispatcher: MakeDispatcher, start_method: str, tmp_path: Path
) -> None:
    """Each handler runs in a worker process, not in the test's own process."""
    recorder = RecordingHandler(tmp_path / "out.jsonl")
    dispatcher = make_dispatcher(start_method=start_method)
    dispatcher.start()
    worker_pids = dispatcher.stats().worker_pids
    dispatcher.submit(Event("test", recorder, "hello"))
    records = recorder.wait_for(1, WAIT)
    assert len(records) == 1
    assert records[0]["pid"] != os.getpid()
    assert records[0]["pid"] in worker_pids
    assert records[0]["pid"] in {c.pid for c in psutil.Process().children(recursive=True)}


def test_one_worker_keeps_submission_order(make_dispatcher: MakeDispatcher, tmp_path: Path) -> None:
    """With one worker, 500 submitted events are processed in the order they were submitted."""
    recorder = RecordingHandler(tmp_path / "out.jsonl")
    dispatcher = make_dispatcher()
    dispatcher.start()
    for i in range(500):
        dispatcher.submit(Event("test", recorder, i))
    assert dispatcher.wait(WAIT)
    assert data_of(recorder.records()) == list(range(500))


def test_lambdas_closures_methods_and_local_classes_work(
    make_dispatcher: MakeDispatcher, start_method: str, tmp_path: Path
) -> None:
    """Lambdas, closures, bound methods and classes of the test module run in the worker."""
    path = tmp_path / "out.jsonl"
    recording = RecordingHandler(path)
    tag = "closure"

    def closure(event: Event) -> bool:
        return recording.process_event(Event(event.originator, None, tag))

    class LocalClass:
        def __init__(self, recording: RecordingHandler) -> None:
            self.recording = recording

        def process_event(self, event: Event) -> bool:
            return self.recording.process_event(Event(event.originator, None, "local-class"))

    handlers: list[Any] = [
        lambda event: recording.process_event(Event(event.originator, None, "lambda")),
        closure,
        Recorder(path).handle,
        LocalClass(recording),
        ModuleClassHandler(path),
    ]
    dispatcher = make_dispatcher(start_method=start_method)
    dispatcher.start()
    for handler in handlers:
        dispatcher.submit(Event("test", handler, None))
    assert dispatcher.wait(WAIT)
    records = recording.records()
    assert data_of(records) == [
        "lambda",
        "closure",
        "bound-method",
        "local-class",
        "module-class",
    ]
    assert all(record["pid"] != os.getpid() for record in records)
    assert dispatcher.stats().failed == 0


MAIN_SCRIPT = textwrap.dedent(
    """
    import json
    import os
    import sys

    from eventmp import Event, EventDispatcher
    from eventmp.testing import ErrorCollector


    def write(path, kind):
        with open(path, "a") as out:
            out.write(json.dumps({"kind": kind, "pid": os.getpid()}) + "\\n")
        return True


    class MainHandler:
        def __init__(self, path):
            self.path = path

        def process_event(self, event):
            return write(self.path, "class:" + type(self).__name__)


    main_lambda = lambda event: write(event.data, "lambda")


    if __name__ == "__main__":
        start_method, path = sys.argv[1], sys.argv[2]
        errors = ErrorCollector()
        dispatcher = EventDispatcher(0.05, start_method=start_method)
        dispatcher.error_handler(errors)
        with dispatcher:
            dispatcher.submit(Event("main", MainHandler(path), path))
            dispatcher.submit(Event("main", main_lambda, path))
            done = dispatcher.wait(30)
        print(json.dumps({
            "parent": os.getpid(),
            "done": done,
            "errors": [repr(exc) for exc in errors.exceptions],
        }))
    """
)


def test_main_module_classes_and_lambdas_work(start_method: str, tmp_path: Path) -> None:
    """A class and a lambda defined in a script's ``__main__`` run in the script's worker."""
    script = tmp_path / "pipeline.py"
    script.write_text(MAIN_SCRIPT)
    out = tmp_path / "out.jsonl"
    result = subprocess.run(
        [sys.executable, str(script), start_method, str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"parent": summary["parent"], "done": True, "errors": []}
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["kind"] for record in records] == ["class:MainHandler", "lambda"]
    assert all(record["pid"] != summary["parent"] for record in records)


# == handlers ====================================================================================


def test_chain_short_circuits_in_the_worker(
    make_dispatcher: MakeDispatcher, tmp_path: Path
) -> None:
    """A chain stops at a handler that returns False; one that returns True lets it go on."""
    path = tmp_path / "out.jsonl"
    recording = RecordingHandler(path)
    stopping = ChainEventHandler(
        RecordThenReturn(path, "first-false", False), RecordThenReturn(path, "after-false", True)
    )
    going_on = ChainEventHandler(
        RecordThenReturn(path, "first-true", True), RecordThenReturn(path, "after-true", True)
    )
    dispatcher = make_dispatcher()
    dispatcher.start()
    dispatcher.submit(Event("test", stopping, None))
    dispatcher.submit(Event("test", going_on, None))
    assert dispatcher.wait(WAIT)
    records = recording.records()
    assert data_of(records) == ["first-false", "first-true", "after-true"]
    assert all(record["pid"] != os.getpid() for record in records)


# == error events ================================================================================


def test_error_handler_runs_in_parent_with_error_event(make_dispatcher: MakeDispatcher) -> None:
    """A handler's exception reaches the error handler, in the parent, as a full error event."""
    error_handler = ParentSideErrorHandler()
    dispatcher = make_dispatcher()
    dispatcher.error_handler(error_handler)
    dispatcher.start()
    (worker_pid,) = dispatcher.stats().worker_pids
    event = Event("the-originator", failing_handler_function, {"n": 42})
    dispatcher.submit(event)
    assert dispatcher.wait(WAIT)

    assert len(error_handler.calls) == 1
    pid, thread, error_event = error_handler.calls[0]
    assert pid == os.getpid()
    assert thread is dispatcher
    assert error_event.handler is error_handler
    assert "EventProcessor" in str(error_event.originator)
    assert str(worker_pid) in str(error_event.originator)
    exception, original = error_event.data
    assert type(exception) is ValueError
    assert str(exception) == "bad data {'n': 42}"
    assert original.originator == "the-originator"
    assert original.data == {"n": 42}
    assert original.timestamp == event.timestamp
    assert isinstance(exception.__cause__, RemoteTraceback)
    assert "failing_handler_function" in str(exception.__cause__)


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_system_exit_and_keyboard_interrupt_become_error_events(
    make_dispatcher: MakeDispatcher,
    errors: ErrorCollector,
    tmp_path: Path,
    exc_type: type[BaseException],
) -> None:
    """SystemExit or KeyboardInterrupt in a handler is an error event; the worker lives on."""
    path = tmp_path / "out.jsonl"
    recording = RecordingHandler(path)
    dispatcher = make_dispatcher()
    dispatcher.start()
    dispatcher.submit(Event("test", RecordThenRaise(path, exc_type), "raises"))
    dispatcher.submit(Event("test", recording, "after"))
    assert dispatcher.wait(WAIT)
    assert [type(exc) for exc in errors.exceptions] == [exc_type]
    records = recording.records()
    assert data_of(records) == ["raises", "after"]
    assert records[0]["pid"] == records[1]["pid"]
    assert dispatcher.stats().worker_restarts == 0


def test_unserializable_handler_is_a_serialization_error(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """A handler dill cannot serialize fails its event with SerializationError; others run."""
    recording = RecordingHandler(tmp_path / "out.jsonl")

    class HoldsAGenerator:
        def __init__(self) -> None:
            self.generator = (i for i in range(3))

        def process_event(self, event: Event) -> bool:
            return True

    dispatcher = make_dispatcher()
    dispatcher.start()
    dispatcher.submit(Event("test", recording, "before"))
    bad = Event("test", HoldsAGenerator(), "bad")
    dispatcher.submit(bad)
    dispatcher.submit(Event("test", recording, "after"))
    assert dispatcher.wait(WAIT)
    assert [type(exc) for exc in errors.exceptions] == [SerializationError]
    assert errors.failed_events == [bad]
    assert data_of(recording.records()) == ["before", "after"]


def test_unserializable_data_is_a_serialization_error(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """Data neither pickle nor dill can serialize fails its event; the following events run."""
    recording = RecordingHandler(tmp_path / "out.jsonl")
    dispatcher = make_dispatcher()
    dispatcher.start()
    bad = Event("test", recording, (i for i in range(3)))
    dispatcher.submit(bad)
    dispatcher.submit(Event("test", recording, "after"))
    assert dispatcher.wait(WAIT)
    assert [type(exc) for exc in errors.exceptions] == [SerializationError]
    assert errors.failed_events == [bad]
    assert data_of(recording.records()) == ["after"]


def test_data_that_fails_to_unpickle_in_worker(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """Data that fails to unpickle in the worker fails alone; its batch-mates run, in order."""
    recording = RecordingHandler(tmp_path / "out.jsonl")
    bad = Event("test", recording, FailsToUnpickle())
    events = [
        Event("test", recording, "one"),
        Event("test", recording, "two"),
        bad,
        Event("test", recording, "three"),
        Event("test", recording, "four"),
    ]
    # One poll of one generator: all five events go to the worker in one batch.
    generator = ListEventGenerator(events)
    dispatcher = make_dispatcher()
    dispatcher.add_event_generator(generator)
    dispatcher.start()
    assert dispatcher.wait(WAIT)
    assert [type(exc) for exc in errors.exceptions] == [SerializationError]
    assert "refusing to unpickle" in str(errors.exceptions[0])
    assert errors.failed_events == [bad]
    assert data_of(recording.records()) == ["one", "two", "three", "four"]
    stats = dispatcher.stats()
    assert (stats.processed, stats.failed, stats.pending) == (4, 1, 0)


def test_data_that_fails_to_unpickle_among_submitted_events(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """An unpicklable event among a stream of submitted events fails alone, order is kept."""
    recording = RecordingHandler(tmp_path / "out.jsonl")
    dispatcher = make_dispatcher()
    dispatcher.start()
    expected = []
    for i in range(200):
        if i % 50 == 25:
            dispatcher.submit(Event("test", recording, FailsToUnpickle()))
        else:
            dispatcher.submit(Event("test", recording, i))
            expected.append(i)
    assert dispatcher.wait(WAIT)
    assert [type(exc) for exc in errors.exceptions] == [SerializationError] * 4
    assert data_of(recording.records()) == expected


# == generators ==================================================================================


def test_generator_events_run(make_dispatcher: MakeDispatcher, tmp_path: Path) -> None:
    """Events from a ListEventGenerator run in the worker; its stop() is called by stop()."""
    recording = RecordingHandler(tmp_path / "out.jsonl")
    generator = ListEventGenerator([Event("gen", recording, i) for i in range(5)], per_poll=2)
    dispatcher = make_dispatcher()
    dispatcher.add_event_generator(generator)
    dispatcher.start()
    assert dispatcher.wait(WAIT)
    records = recording.records()
    assert data_of(records) == [0, 1, 2, 3, 4]
    assert all(record["pid"] != os.getpid() for record in records)
    assert generator.polls >= 3
    assert not generator.stopped
    dispatcher.stop()
    assert generator.stopped


def test_generator_that_raises_gives_error_event_and_is_polled_again(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """get_events() raising is an error event (exc, None) from the generator; it is re-polled."""
    recording = RecordingHandler(tmp_path / "out.jsonl")
    generator = FailingGenerator([Event("gen", recording, "later")])
    dispatcher = make_dispatcher()
    dispatcher.add_event_generator(generator)
    dispatcher.start()
    assert dispatcher.wait(WAIT)
    assert len(errors.events) == 1
    error_event = errors.events[0]
    assert error_event.originator is generator
    exception, original = error_event.data
    assert isinstance(exception, OSError)
    assert str(exception) == "the log file vanished"
    assert original is None
    assert generator.polls >= 2
    assert data_of(recording.records()) == ["later"]
    dispatcher.stop()
    assert generator.stopped


# == errors in error handling ====================================================================


def test_error_handler_that_raises_is_logged_and_ignored(
    make_dispatcher: MakeDispatcher, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception from the error handler is logged on "eventmp"; the pipeline continues."""
    caplog.set_level(logging.WARNING, logger="eventmp")
    recording = RecordingHandler(tmp_path / "out.jsonl", fail_on=["bad1", "bad2"])
    calls: list[Event] = []

    def raising_error_handler(event: Event) -> bool:
        calls.append(event)
        raise RuntimeError("the error handler broke")

    dispatcher = make_dispatcher()
    dispatcher.error_handler(raising_error_handler)
    dispatcher.start()
    for data in ["bad1", "ok1", "bad2", "ok2"]:
        dispatcher.submit(Event("test", recording, data))
    assert dispatcher.wait(WAIT)
    assert [call.data[1].data for call in calls] == ["bad1", "bad2"]
    assert data_of(recording.records()) == ["ok1", "ok2"]
    logged = [
        record
        for record in caplog.records
        if record.name == "eventmp"
        and record.exc_info is not None
        and isinstance(record.exc_info[1], RuntimeError)
        and "the error handler broke" in str(record.exc_info[1])
    ]
    assert len(logged) == 2
    assert dispatcher.is_alive()


def test_failures_without_error_handler_are_logged_at_warning(
    make_dispatcher: MakeDispatcher, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With no error handler set, a failed event is logged at WARNING on "eventmp"."""
    caplog.set_level(logging.WARNING, logger="eventmp")
    recording = RecordingHandler(tmp_path / "out.jsonl", fail_on=["bad"])
    dispatcher = make_dispatcher()
    dispatcher.error_handler(None)
    dispatcher.start()
    dispatcher.submit(Event("test", recording, "bad"))
    dispatcher.submit(Event("test", recording, "ok"))
    assert dispatcher.wait(WAIT)
    warnings = [
        record
        for record in caplog.records
        if record.name == "eventmp" and record.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert "failing on 'bad'" in warnings[0].getMessage()
    assert data_of(recording.records()) == ["ok"]


# == stop, wait, stats ===========================================================================


def test_stop_drains_a_thousand_queued_events(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """Every one of 1,000 events submitted just before stop() has its outcome when it returns."""
    failing = {i for i in range(0, 1000, 97)}
    recording = RecordingHandler(tmp_path / "out.jsonl", fail_on=sorted(failing))
    dispatcher = make_dispatcher()
    dispatcher.start()
    for i in range(1000):
        dispatcher.submit(Event("test", recording, i))
    dispatcher.stop()
    assert data_of(recording.records()) == [i for i in range(1000) if i not in failing]
    assert sorted(event.data for event in errors.failed_events if event) == sorted(failing)
    stats = dispatcher.stats()
    assert (stats.accepted, stats.processed, stats.failed, stats.pending) == (
        1000,
        1000 - len(failing),
        len(failing),
        0,
    )
    assert not dispatcher.is_alive()


def test_submit_after_stop_raises(make_dispatcher: MakeDispatcher, tmp_path: Path) -> None:
    """submit() after stop() raises DispatcherStoppedError, an EventmpError."""
    dispatcher = make_dispatcher()
    dispatcher.start()
    dispatcher.stop()
    with pytest.raises(EventmpError) as raised:
        dispatcher.submit(Event("test", RecordingHandler(tmp_path / "out.jsonl"), 1))
    assert isinstance(raised.value, DispatcherStoppedError)


def test_stop_is_idempotent_and_safe_before_start(make_dispatcher: MakeDispatcher) -> None:
    """stop() may be called twice, and before start(); nothing starts afterwards."""
    generator = ListEventGenerator([])
    never_started = make_dispatcher()
    never_started.add_event_generator(generator)
    never_started.stop()
    never_started.stop()
    assert generator.stopped
    with pytest.raises(EventmpError):
        never_started.submit(Event("test", print, 1))

    started = make_dispatcher()
    started.start()
    started.stop()
    started.stop()
    assert not started.is_alive()
    assert started.stats().worker_pids == ()


def test_unstarted_dispatcher_leaves_no_process(make_dispatcher: MakeDispatcher) -> None:
    """Building a dispatcher (and stopping it unstarted) starts no process."""
    before = child_pids()
    dispatcher = make_dispatcher()
    dispatcher.add_event_generator(ListEventGenerator([]))
    assert child_pids() == before
    dispatcher.stop()
    assert child_pids() == before
    assert not dispatcher.is_alive()


def test_stop_before_start_gives_submitted_events_an_outcome(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """An event submitted before start() still has an outcome once stop() returns."""
    recording = RecordingHandler(tmp_path / "out.jsonl")
    dispatcher = make_dispatcher()
    event = Event("test", recording, "submitted before start")
    dispatcher.submit(event)
    dispatcher.stop()
    outcomes = len(recording.records()) + len(errors.events)
    assert outcomes == 1, "the event vanished without an outcome"
    stats = dispatcher.stats()
    assert stats.pending == 0
    assert stats.processed + stats.failed == stats.accepted == 1


def test_no_child_process_left_after_stop(make_dispatcher: MakeDispatcher, tmp_path: Path) -> None:
    """After stop() the worker processes have exited and been reaped."""
    before = child_pids()
    recording = RecordingHandler(tmp_path / "out.jsonl")
    dispatcher = make_dispatcher(workers=2)
    dispatcher.start()
    workers = set(dispatcher.stats().worker_pids)
    assert len(workers) == 2
    assert workers <= child_pids() - before
    dispatcher.submit(Event("test", recording, 1))
    assert recording.wait_for(1, WAIT)
    dispatcher.stop()
    assert child_pids() == before
    for pid in workers:
        # Reaped: not even a zombie is left (a pid reused by an unrelated process is no child).
        assert not psutil.pid_exists(pid) or psutil.Process(pid).ppid() != os.getpid()


def test_wait_true_when_finished_false_on_timeout(
    make_dispatcher: MakeDispatcher, tmp_path: Path
) -> None:
    """wait() is False while a handler is still busy, True once generators and events are done."""
    gate = tmp_path / "gate"
    recording = GatedRecorder(tmp_path / "out.jsonl", gate)
    generator = ListEventGenerator([Event("gen", recording, i) for i in range(3)], per_poll=1)
    dispatcher = make_dispatcher()
    dispatcher.add_event_generator(generator)
    dispatcher.start()
    assert dispatcher.wait(0.3) is False
    assert recording.records() == []
    gate.touch()
    assert dispatcher.wait(WAIT) is True
    assert generator.finished
    assert data_of(recording.records()) == [0, 1, 2]


def test_wait_false_while_a_generator_is_unfinished(make_dispatcher: MakeDispatcher) -> None:
    """wait() does not return True while a generator has not said it is finished."""
    dispatcher = make_dispatcher()
    dispatcher.add_event_generator(Endless())
    dispatcher.start()
    assert dispatcher.wait(0.3) is False


def test_stats_counts_outcomes(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """stats() counts accepted, processed, failed and pending events."""
    gate = tmp_path / "gate"
    recording = GatedRecorder(tmp_path / "out.jsonl", gate)
    recording.fail_on = ["bad"]
    dispatcher = make_dispatcher()
    dispatcher.start()
    stats = dispatcher.stats()
    assert (stats.accepted, stats.processed, stats.failed, stats.pending) == (0, 0, 0, 0)
    for data in ["a", "bad", "b", "bad", "c"]:
        dispatcher.submit(Event("test", recording, data))
    stats = dispatcher.stats()
    assert (stats.accepted, stats.processed, stats.failed, stats.pending) == (5, 0, 0, 5)
    gate.touch()
    assert dispatcher.wait(WAIT)
    stats = dispatcher.stats()
    assert (stats.accepted, stats.processed, stats.failed, stats.pending) == (5, 3, 2, 0)
    assert len(errors.events) == 2


def test_context_manager_starts_and_stops(make_dispatcher: MakeDispatcher, tmp_path: Path) -> None:
    """``with dispatcher:`` starts the dispatcher and its worker, and stops both on exit."""
    before = child_pids()
    recording = RecordingHandler(tmp_path / "out.jsonl")
    with make_dispatcher() as dispatcher:
        assert dispatcher.is_alive()
        assert len(child_pids() - before) == 1
        dispatcher.submit(Event("test", recording, "inside"))
    assert not dispatcher.is_alive()
    assert data_of(recording.records()) == ["inside"]
    assert child_pids() == before
    with pytest.raises(DispatcherStoppedError):
        dispatcher.submit(Event("test", recording, "after"))


# == submit ======================================================================================


def test_submit_does_not_wait_for_the_poll_interval(
    make_dispatcher: MakeDispatcher, tmp_path: Path
) -> None:
    """With poll_interval=60, a submitted event is still processed (and acknowledged) at once."""
    recording = RecordingHandler(tmp_path / "out.jsonl")
    dispatcher = make_dispatcher(poll_interval=60)
    dispatcher.add_event_generator(ListEventGenerator([]))
    dispatcher.start()
    time.sleep(0.1)  # the first poll is over: the next one is a minute away
    dispatcher.submit(Event("test", recording, "now"))
    # Deadlines far below the poll interval, far above any honest latency.
    assert data_of(recording.wait_for(1, 10)) == ["now"]
    assert dispatcher.wait(10)
    # A second event, submitted while the dispatcher thread sleeps in its wait.
    time.sleep(0.1)
    dispatcher.submit(Event("test", recording, "again"))
    assert dispatcher.wait(10)
    assert data_of(recording.records()) == ["now", "again"]


def test_submit_rejects_non_events(make_dispatcher: MakeDispatcher) -> None:
    """submit() of anything but an Event raises TypeError."""
    dispatcher = make_dispatcher()
    with pytest.raises(TypeError):
        dispatcher.submit("not an event")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        dispatcher.submit(("originator", print, "data"))  # type: ignore[arg-type]
    assert dispatcher.stats().accepted == 0


def test_max_pending_applies_backpressure(make_dispatcher: MakeDispatcher, tmp_path: Path) -> None:
    """With max_pending events pending, submit(timeout=...) raises SubmitTimeoutError."""
    gate = tmp_path / "gate"
    recording = GatedRecorder(tmp_path / "out.jsonl", gate)
    dispatcher = make_dispatcher(max_pending=5)
    dispatcher.start()
    for i in range(5):
        dispatcher.submit(Event("test", recording, i), timeout=0.5)
    with pytest.raises(SubmitTimeoutError) as raised:
        dispatcher.submit(Event("test", recording, 5), timeout=0.5)
    assert isinstance(raised.value, TimeoutError)
    assert dispatcher.stats().accepted == 5
    gate.touch()
    dispatcher.submit(Event("test", recording, 5), timeout=WAIT)
    assert dispatcher.wait(WAIT)
    assert data_of(recording.records()) == [0, 1, 2, 3, 4, 5]


def test_submit_blocks_until_room_then_succeeds(
    make_dispatcher: MakeDispatcher, tmp_path: Path
) -> None:
    """A submit() blocked by max_pending returns once the worker makes room."""
    gate = tmp_path / "gate"
    recording = GatedRecorder(tmp_path / "out.jsonl", gate)
    dispatcher = make_dispatcher(max_pending=2)
    dispatcher.start()
    dispatcher.submit(Event("test", recording, 0))
    dispatcher.submit(Event("test", recording, 1))
    threading.Timer(0.3, gate.touch).start()
    dispatcher.submit(Event("test", recording, 2), timeout=WAIT)
    assert dispatcher.wait(WAIT)
    assert data_of(recording.records()) == [0, 1, 2]


class SizedGenerator(EventGenerator):
    """Makes ``total`` events, ``per_poll`` a poll, each ``size`` bytes by its event_size()."""

    def __init__(self, handler: Any, total: int, per_poll: int, size: int) -> None:
        self.handler = handler
        self.total = total
        self.per_poll = per_poll
        self.size = size
        self.made = 0

    def get_events(self) -> list[Event]:
        count = min(self.per_poll, self.total - self.made)
        events = [Event("sized", self.handler, self.made + i) for i in range(count)]
        self.made += count
        self.finished = self.made >= self.total
        return events

    def event_size(self, event: Event) -> int:
        if self.size < 0:
            raise RuntimeError("cannot size it")
        return self.size


class BatchSizedGenerator(SizedGenerator):
    """SizedGenerator that sizes each poll in one event_sizes() call (``size`` -1: one short)."""

    def event_size(self, event: Event) -> int:
        raise AssertionError("event_sizes() overrides it: not called per event")

    def event_sizes(self, events: list[Event]) -> list[int]:
        if self.size < 0:
            return [1000] * (len(events) - 1)
        return [self.size] * len(events)


@pytest.mark.parametrize("kind", [SizedGenerator, BatchSizedGenerator])
def test_max_pending_bytes_pauses_polling_until_outcomes_free_room(
    make_dispatcher: MakeDispatcher, tmp_path: Path, kind: type[SizedGenerator]
) -> None:
    """Generators are not polled while their pending events hold max_pending_bytes (sized one
    by one, or a poll at a time); none is lost."""
    gate = tmp_path / "gate"
    recording = GatedRecorder(tmp_path / "out.jsonl", gate)
    generator = kind(recording, total=60, per_poll=4, size=1000)
    dispatcher = make_dispatcher(poll_interval=0.01, max_pending_bytes=10_000)
    dispatcher.add_event_generator(generator)
    dispatcher.start()
    assert wait_until(lambda: dispatcher.stats().pending_bytes >= 10_000)
    time.sleep(0.3)  # thirty poll intervals: polling would have made every event by now
    # Polled while under the budget: at most one poll past it.
    assert 10 <= generator.made <= 10 + generator.per_poll
    assert dispatcher.stats().pending_bytes == generator.made * 1000
    gate.touch()
    assert dispatcher.wait(WAIT)
    assert sorted(data_of(recording.records())) == list(range(60))
    assert dispatcher.stats().pending_bytes == 0


def test_max_pending_bytes_none_and_unsized_generators_are_not_bounded(
    make_dispatcher: MakeDispatcher, tmp_path: Path
) -> None:
    """Without a byte bound, or from a generator without event_size(), events are not counted."""
    gate = tmp_path / "gate"
    recording = GatedRecorder(tmp_path / "out.jsonl", gate)
    unbounded = SizedGenerator(recording, total=30, per_poll=4, size=1000)
    unsized = ListEventGenerator([Event("plain", recording, 100 + i) for i in range(30)])
    first = make_dispatcher(poll_interval=0.01, max_pending_bytes=None)
    first.add_event_generator(unbounded)
    second = make_dispatcher(poll_interval=0.01, max_pending_bytes=1)
    second.add_event_generator(unsized)
    first.start()
    second.start()
    assert wait_until(lambda: (first.stats().accepted, second.stats().accepted) == (30, 30)), (
        first.stats(),
        second.stats(),
    )
    assert first.stats().pending_bytes == second.stats().pending_bytes == 0
    gate.touch()
    assert first.wait(WAIT) and second.wait(WAIT)


@pytest.mark.parametrize(
    ("kind", "logged"),
    [
        (SizedGenerator, "failed in event_size(): RuntimeError('cannot size it')"),
        (BatchSizedGenerator, "failed in event_sizes(): ValueError('3 sizes for 4 events')"),
    ],
)
def test_event_size_that_raises_is_logged_and_the_events_still_run(
    make_dispatcher: MakeDispatcher,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    kind: type[SizedGenerator],
    logged: str,
) -> None:
    """A generator whose event_size() raises, or whose event_sizes() does not give one size per
    event, loses no event: they run uncounted; it is logged."""
    recording = RecordingHandler(tmp_path / "out.jsonl")
    generator = kind(recording, total=8, per_poll=4, size=-1)
    dispatcher = make_dispatcher(poll_interval=0.01, max_pending_bytes=100)
    dispatcher.add_event_generator(generator)
    with caplog.at_level(logging.WARNING, logger="eventmp"):
        dispatcher.start()
        assert dispatcher.wait(WAIT)
    assert sorted(data_of(recording.records())) == list(range(8))
    assert logged in caplog.text


class CountingLink:
    """Counts the events it saw in its worker (``counters()``) and lets the chain go on."""

    def __init__(self) -> None:
        self.seen = 0

    def process_event(self, event: Event) -> bool:
        self.seen += 1
        return True

    def counters(self) -> dict[str, int]:
        return {"seen": self.seen}


def test_handler_counters_add_up_over_recycled_workers_and_chains(
    make_dispatcher: MakeDispatcher, tmp_path: Path
) -> None:
    """What a chained handler counts in each worker reaches stats(), recycled workers' included."""
    recording = RecordingHandler(tmp_path / "out.jsonl")
    chain = ChainEventHandler([CountingLink(), recording])
    dispatcher = make_dispatcher(max_events_per_worker=3)
    dispatcher.start()
    for i in range(10):
        dispatcher.submit(Event("test", chain, i))
    assert dispatcher.wait(WAIT)
    dispatcher.stop()
    assert sorted(data_of(recording.records())) == list(range(10))
    stats = dispatcher.stats()
    assert stats.worker_recycles >= 3
    assert stats.handler_counters == {"seen": 10}


def noop_handler(event: Event) -> bool:
    """Does nothing: for tests that count outcomes, not what handlers do."""
    return True


def test_submits_racing_stop_each_end_accepted_or_refused(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """Four threads submit while stop() runs: each submit that returned ran once, no other ran.

    submit() queues without the lock, and stop() must take what is queued before it closes.
    """
    recorder = LineRecorder(tmp_path / "ran.jsonl")
    dispatcher = make_dispatcher()
    dispatcher.start()
    returned = [0] * 4
    refused = [0] * 4
    go = threading.Event()

    def submitter(index: int) -> None:
        go.wait(WAIT)
        while True:
            try:
                dispatcher.submit(Event("test", recorder, (index, returned[index])))
            except DispatcherStoppedError:
                refused[index] += 1
                return
            returned[index] += 1

    threads = [threading.Thread(target=submitter, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    # Threads switch every few bytecodes instead of every 5 ms: more interleavings of the
    # submitters' appends with stop().
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        go.set()
        time.sleep(0.3)
        dispatcher.stop(timeout=WAIT)
        for thread in threads:
            thread.join(WAIT)
    finally:
        sys.setswitchinterval(interval)
    stats = dispatcher.stats()
    ran = recorder.ran()  # complete: stop() returned after the worker exited
    assert refused == [1, 1, 1, 1]
    assert min(returned) > 0
    # Exactly the events of the submits that returned ran, each once; the refused ones did not.
    assert sorted(ran) == [(i, n) for i in range(4) for n in range(returned[i])]
    # One worker: each thread's events ran in the order it submitted them.
    for i in range(4):
        assert [n for index, n in ran if index == i] == list(range(returned[i]))
    assert stats.accepted == sum(returned)
    assert stats.processed + stats.failed == sum(returned)
    assert (stats.processed, stats.failed, stats.pending) == (len(ran), 0, 0)
    assert errors.events == []


def test_wait_after_stop_ignores_an_event_left_in_the_inbox(
    make_dispatcher: MakeDispatcher,
) -> None:
    """An event a cut-short submit() left behind after stop() (never accepted) blocks no wait().

    A KeyboardInterrupt between submit()'s append and its second check leaves the event in the
    inbox; the test puts it there directly, since no signal can be timed to land there.
    """
    dispatcher = make_dispatcher()
    dispatcher.start()
    dispatcher.stop()
    dispatcher._inbox.append(Event("test", noop_handler, "late"))
    assert dispatcher.wait(5)
    assert dispatcher.stats().accepted == 0


def test_fast_and_locked_submits_keep_order_within_max_pending(
    make_dispatcher: MakeDispatcher, tmp_path: Path
) -> None:
    """Near max_pending, submit() switches between its two paths; order and the bound hold."""
    recorder = RecordingHandler(tmp_path / "out.jsonl")
    dispatcher = make_dispatcher(max_pending=1500)
    dispatcher.start()
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, dispatcher.stats().pending)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for i in range(6000):
            dispatcher.submit(Event("test", recorder, i), timeout=WAIT)
        assert dispatcher.wait(WAIT)
    finally:
        done.set()
        sampler.join(WAIT)
    assert data_of(recorder.records()) == list(range(6000))
    # One submitting thread: at most one event over, the one whose append raced the check.
    assert 0 < peak <= 1501


def test_outcomes_arrive_while_a_submitter_reads_the_acknowledgements(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """Failures reach the error handler, and every other event runs once, without a wait() call.

    A busy submitter reads acknowledgements itself and the dispatcher thread leaves the
    result pipe to it; once the submitter goes quiet, the dispatcher thread reads them again.
    """
    recorder = LineRecorder(tmp_path / "ran.jsonl")
    dispatcher = make_dispatcher()
    dispatcher.start()

    def produce() -> None:
        for i in range(20_000):
            dispatcher.submit(Event("test", recorder if i % 400 else failing_handler_function, i))

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(WAIT)
    assert errors.wait_for(50, WAIT)
    deadline = time.monotonic() + WAIT
    while dispatcher.stats().processed + dispatcher.stats().failed < 20_000:
        assert time.monotonic() < deadline, dispatcher.stats()
        time.sleep(0.01)
    stats = dispatcher.stats()
    assert (stats.processed, stats.failed, stats.pending) == (19_950, 50, 0)
    assert sorted(event.data for event in errors.failed_events if event) == list(
        range(0, 20_000, 400)
    )
    # An event counts as processed only once its handler returned: its line is written.
    ran = recorder.ran()
    assert ran == [i for i in range(20_000) if i % 400]  # one worker: in order, each once
    assert (len(ran), len(errors.events)) == (stats.processed, stats.failed)


# == timeouts and workers ========================================================================


class Endless(EventGenerator):
    """A generator that never has events and never finishes: the loop wakes every poll."""

    def get_events(self) -> list[Event]:
        return []


@pytest.mark.parametrize("polled", [False, True], ids=["submit-only", "with-polled-generator"])
def test_event_timeout_kills_the_worker(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path, polled: bool
) -> None:
    """A handler running past event_timeout fails with HandlerTimeoutError; a new worker goes on.

    ``submit-only`` is the plain case; ``with-polled-generator`` adds a generator whose polls
    keep waking the dispatcher thread, to tell a broken timeout from a loop that sleeps.
    """
    path = tmp_path / "out.jsonl"
    recording = RecordingHandler(path)
    dispatcher = make_dispatcher(event_timeout=1, kill_grace=0.2)
    if polled:
        dispatcher.add_event_generator(Endless())
    dispatcher.start()
    slow = Event("test", sleepy_handler, (str(path), 50))
    dispatcher.submit(slow)
    dispatcher.submit(Event("test", recording, "next"))
    # Far more than event_timeout + kill_grace, far less than the 50s the handler sleeps.
    assert errors.wait_for(1, 15), "the hung handler was not timed out"
    records = recording.wait_for(2, WAIT)
    assert len(errors.events) == 1
    exception, original = errors.events[0].data
    assert isinstance(exception, HandlerTimeoutError)
    assert isinstance(exception, TimeoutError)
    assert exception.timeout == 1
    assert original is slow
    assert data_of(records) == ["started", "next"]
    assert records[0]["pid"] != records[1]["pid"]
    assert records[1]["pid"] in dispatcher.stats().worker_pids


def test_event_timeout_times_an_event_written_straight_to_an_idle_worker(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """A hung event that submit() wrote itself to an idle worker is still timed out.

    The first event teaches the worker the handler, so the second takes the idle fast path
    (one event, a known handler, plain data), which must wake the dispatcher thread to time it.
    """
    path = tmp_path / "out.jsonl"
    dispatcher = make_dispatcher(event_timeout=1, kill_grace=0.2)
    dispatcher.start()
    dispatcher.submit(Event("test", sleepy_handler, (str(path), 0)))
    assert dispatcher.wait(WAIT)
    time.sleep(0.5)  # the dispatcher thread goes back to sleep, with nothing to time
    slow = Event("test", sleepy_handler, (str(path), 50))
    dispatcher.submit(slow)
    assert errors.wait_for(1, 15), "the hung handler was not timed out"
    assert errors.failed_events == [slow]
    assert isinstance(errors.exceptions[0], HandlerTimeoutError)


class Unpicklable:
    """An originator plain pickle refuses (it holds a lock); eventmp sends its description."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __str__(self) -> str:
        return "unpicklable-originator"


def test_events_on_an_idle_pipeline_arrive_whole_whatever_path_they_take(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """One event at a time, each alone on an idle pipeline, each arrives with its own fields.

    Between them: a new handler, the same again, a non-string originator, data that only dill
    carries, data nothing carries, and a handler the worker already has; submit() writes some
    itself and leaves the rest to the general path, and none may be lost or mixed up.
    """
    first = RecordingHandler(tmp_path / "first.jsonl")
    second = RecordingHandler(tmp_path / "second.jsonl")
    dispatcher = make_dispatcher()
    dispatcher.start()
    unpicklable_data = Event("test", first, (i for i in range(3)))
    sequence = [
        Event("plain", first, 1),
        Event("plain", first, 2),
        Event("plain", second, 3),
        Event(Unpicklable(), second, 4),
        Event("plain", second, [lambda: 5]),
        unpicklable_data,
        Event(7, first, 7),
        Event("plain", first, {"eight": 8}),
    ]
    for event in sequence:
        dispatcher.submit(event)
        assert dispatcher.wait(WAIT)
    assert errors.failed_events == [unpicklable_data]
    firsts = first.records()
    seconds = second.records()
    assert data_of(firsts) == [1, 2, 7, {"eight": 8}]
    assert [r["originator"] for r in firsts] == ["plain", "plain", "7", "plain"]
    assert data_of(seconds)[:2] == [3, 4]
    assert seconds[1]["originator"] == "unpicklable-originator"
    assert seconds[2]["data"][0].startswith("<function")  # a lambda, by value through dill
    assert [r["timestamp"] for r in firsts] == [
        e.timestamp for e in sequence if e.handler is first and e is not unpicklable_data
    ]
    assert dispatcher.stats().processed == 7


@pytest.mark.parametrize("idle_spin", [0.0, 0.0002, 0.01])
def test_a_steady_stream_arrives_whole_and_in_order_with_and_without_idle_spin(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path, idle_spin: float
) -> None:
    """Whether a worker polls between batches or sleeps, it loses and reorders nothing."""
    recorder = RecordingHandler(tmp_path / "out.jsonl")
    dispatcher = make_dispatcher(idle_spin=idle_spin)
    dispatcher.start()
    for i in range(300):
        dispatcher.submit(Event("test", recorder, i))
        time.sleep(0.0002)
    assert dispatcher.wait(WAIT)
    assert data_of(recorder.records()) == list(range(300))
    assert not errors.events


def test_run_called_directly_in_a_thread(make_dispatcher: MakeDispatcher, tmp_path: Path) -> None:
    """run() on an unstarted dispatcher starts its workers; stop() from another thread ends it."""
    before = child_pids()
    recording = RecordingHandler(tmp_path / "out.jsonl")
    dispatcher = make_dispatcher()
    dispatcher.submit(Event("test", recording, "first"))
    thread = threading.Thread(target=dispatcher.run, daemon=True)
    thread.start()
    records = recording.wait_for(1, WAIT)
    assert data_of(records) == ["first"]
    assert records[0]["pid"] != os.getpid()
    dispatcher.submit(Event("test", recording, "second"))
    dispatcher.stop()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert data_of(recording.records()) == ["first", "second"]
    assert child_pids() == before


# == routing by key =============================================================================


def file_key(event: Event) -> str:
    """The routing key of the key tests: the first item of the event's data."""
    return str(event.data[0])


@pytest.mark.parametrize("count", [400, 20_000], ids=["a-few", "a-flood"])
def test_key_keeps_per_key_order_on_one_worker_each(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path, count: int
) -> None:
    """Events with equal keys run on one worker, in acceptance order; keys spread over workers."""
    recorder = RecordingHandler(tmp_path / "seen.jsonl")
    dispatcher = make_dispatcher(workers=2, key=file_key)
    dispatcher.start()
    # 40 keys: string hashes are salted per process, and with 6 keys all landing on one of
    # two workers is a 1-in-32 chance; with 40 it is 1 in 500 billion.
    keys = [f"file{n}" for n in range(40)]
    for n in range(count):
        dispatcher.submit(Event("key", recorder, [keys[n % 40], n]))
    assert dispatcher.wait(WAIT)
    assert len(recorder.records()) == count
    by_key: dict[str, list[tuple[int, int]]] = {}
    for record in recorder.records():
        key, n = record["data"]
        by_key.setdefault(key, []).append((n, record["pid"]))
    assert sorted(by_key) == sorted(keys)
    for runs in by_key.values():
        assert [n for n, _pid in runs] == sorted(n for n, _pid in runs)
        assert len({pid for _n, pid in runs}) == 1
    assert len({pid for runs in by_key.values() for _n, pid in runs}) == 2
    assert errors.events == []


def test_key_function_that_raises_fails_only_that_event(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """An event whose key cannot be computed becomes an error event; the others run."""
    recorder = RecordingHandler(tmp_path / "seen.jsonl")
    dispatcher = make_dispatcher(workers=2, key=file_key)
    dispatcher.start()
    dispatcher.submit(Event("key", recorder, ["a", 1]))
    dispatcher.submit(Event("key", recorder, None))
    dispatcher.submit(Event("key", recorder, ["b", 2]))
    assert dispatcher.wait(WAIT)
    assert sorted(r["data"][1] for r in recorder.records()) == [1, 2]
    assert len(errors.events) == 1
    exception, original = errors.events[0].data
    assert isinstance(exception, EventmpError)
    assert "key function raised TypeError" in str(exception)
    assert isinstance(exception.__cause__, TypeError)
    assert original.data is None


def test_keyed_events_survive_a_crash_in_order(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """A crash on one key's worker re-sends that worker's other events to its replacement."""
    recorder = RecordingHandler(tmp_path / "seen.jsonl")
    dispatcher = make_dispatcher(workers=2, key=file_key)
    dispatcher.start()
    for n in range(40):
        dispatcher.submit(Event("key", recorder, ["same", n]))
        if n == 10:
            dispatcher.submit(Event("key", os_exit, ["same", "crash"]))
    assert dispatcher.wait(WAIT)
    assert [r["data"][1] for r in recorder.records()] == list(range(40))
    assert [type(e) for e in errors.exceptions] == [WorkerCrashedError]


def test_a_tracking_generator_hears_of_an_event_whose_key_raised(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """Routing fails the event at once, its generator hears of that outcome, the other one runs."""
    recorder = RecordingHandler(tmp_path / "seen.jsonl")
    generator = TrackingGenerator([Event("key", recorder, ["a", 1]), Event("key", recorder, None)])
    dispatcher = make_dispatcher(workers=2, key=file_key)
    dispatcher.add_event_generator(generator)
    dispatcher.start()
    assert dispatcher.wait(WAIT)
    dispatcher.stop(timeout=WAIT)
    assert sorted((data is None, name) for data, name, _ in generator.outcomes) == [
        (False, None),
        (True, "EventmpError"),
    ]
    assert len(errors.events) == 1
    ran = data_of(recorder.records())
    assert ran == [["a", 1]]
    # Settled as processed: exactly the events whose handler ran; as failed: the error event's.
    assert [data for data, name, _ in generator.outcomes if name is None] == ran
    assert [data for data, name, _ in generator.outcomes if name is not None] == [None]
    assert [event.data for event in errors.failed_events] == [None]
    stats = dispatcher.stats()
    assert (stats.accepted, stats.processed, stats.failed) == (2, 1, 1)


def os_exit(event: Event) -> None:
    """A handler that ends its worker process at once."""
    os._exit(7)


class TrackingGenerator(ListEventGenerator):
    """A ListEventGenerator that asks to hear of each of its events' outcome."""

    track_outcomes = True

    def __init__(self, events: list[Event]) -> None:
        super().__init__(events)
        self.outcomes: list[tuple[Any, str | None, int]] = []

    def settled(self, event: Event, exception: BaseException | None) -> None:
        name = None if exception is None else type(exception).__name__
        self.outcomes.append((event.data, name, threading.get_ident()))


def test_tracking_generator_hears_every_outcome_before_stop(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """A tracking generator hears each event's true outcome, in the dispatcher thread."""
    recorder = RecordingHandler(tmp_path / "seen.jsonl", fail_on=[2])
    generator = TrackingGenerator([Event("track", recorder, n) for n in range(5)])
    dispatcher = make_dispatcher()
    dispatcher.add_event_generator(generator)
    dispatcher.start()
    assert dispatcher.wait(WAIT)
    dispatcher.stop()
    assert sorted((data, name) for data, name, _ in generator.outcomes) == [
        (0, None),
        (1, None),
        (2, "ValueError"),
        (3, None),
        (4, None),
    ]
    assert {ident for _, _, ident in generator.outcomes} == {dispatcher.ident}
    ran = data_of(recorder.records())
    assert ran == [0, 1, 3, 4]  # one worker: in order, each once
    # Settled as processed: exactly the events whose handler ran; as failed: the error event's.
    assert sorted(data for data, name, _ in generator.outcomes if name is None) == ran
    assert [event.data for event in errors.failed_events] == [2]
    stats = dispatcher.stats()
    assert (stats.accepted, stats.processed, stats.failed) == (5, 4, 1)


def test_poll_interval_zero_still_reads_results(
    make_dispatcher: MakeDispatcher, tmp_path: Path
) -> None:
    """With poll_interval=0 the loop polls without pause and still collects outcomes."""
    recorder = RecordingHandler(tmp_path / "seen.jsonl")
    dispatcher = make_dispatcher(poll_interval=0)
    dispatcher.add_event_generator(ListEventGenerator(Event("g", recorder, n) for n in range(50)))
    dispatcher.start()
    dispatcher.submit(Event("s", recorder, "submitted"))
    assert dispatcher.wait(WAIT)
    assert len(recorder.records()) == 51


class Trickle(ListEventGenerator):
    """Gives one event per poll and says it has more, like a tail on its read budget."""

    def get_events(self) -> list[Event]:
        events = super().get_events()
        self.has_more = not self.finished
        return events


def test_generator_with_more_is_polled_again_at_once(
    make_dispatcher: MakeDispatcher, tmp_path: Path
) -> None:
    """has_more makes the dispatcher poll again without waiting out poll_interval."""
    recorder = RecordingHandler(tmp_path / "seen.jsonl")
    generator = Trickle([Event("t", recorder, n) for n in range(20)], per_poll=1)
    dispatcher = make_dispatcher(poll_interval=60)
    dispatcher.add_event_generator(generator)
    dispatcher.start()
    assert dispatcher.wait(WAIT)  # 20 polls of 60 s each would blow this bound
    assert [r["data"] for r in recorder.records()] == list(range(20))
    assert generator.polls == 20


class GateOn(RecordingHandler):
    """Records each event; the event whose data is ``blocked`` first waits for ``gate``."""

    def __init__(self, path: Path, gate: Path, blocked: object) -> None:
        super().__init__(path)
        self.hang = HangOn(gate, blocked)

    def process_event(self, event: Event) -> bool:
        self.hang.process_event(event)
        return super().process_event(event)


def test_finished_events_settle_before_their_batch_is_done(
    make_dispatcher: MakeDispatcher, tmp_path: Path
) -> None:
    """A tracking generator hears of finished events while a later one of the batch still runs."""
    handler = GateOn(tmp_path / "seen.jsonl", tmp_path / "gate", blocked=1)
    generator = TrackingGenerator([Event("track", handler, n) for n in range(3)])
    dispatcher = make_dispatcher()
    dispatcher.add_event_generator(generator)
    dispatcher.start()
    deadline = time.monotonic() + WAIT
    while not generator.outcomes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [data for data, _, _ in generator.outcomes] == [0], "event 0 settled, 1 still runs"
    assert [name for _, name, _ in generator.outcomes] == [None]
    assert data_of(handler.records()) == [0], "event 0 settled as processed ran; 1 is held"
    assert dispatcher.stats().pending == 2
    (tmp_path / "gate").touch()
    assert dispatcher.wait(WAIT)
    ran = data_of(handler.records())
    assert ran == [0, 1, 2]  # one worker: in order, each once
    assert sorted((data, name) for data, name, _ in generator.outcomes) == [
        (0, None),
        (1, None),
        (2, None),
    ]
    stats = dispatcher.stats()
    assert (stats.processed, stats.failed) == (3, 0)
    assert stats.processed == len(ran)
