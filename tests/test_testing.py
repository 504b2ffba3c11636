"""eventmp.testing: helpers for testing handlers and pipelines, on real worker processes."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import dill
import pytest
from conftest import child_pids

from eventmp import Event, EventGenerator
from eventmp.testing import ErrorCollector, ListEventGenerator, RecordingHandler, run_events


def error_event(exc: BaseException, original: Event | None) -> Event:
    return Event("processor", None, (exc, original))


def sleep_for_a_while(event: Event) -> bool:
    time.sleep(float(event.data))
    return True


# == ErrorCollector ==============================================================================


def test_error_collector_records_events_and_returns_true() -> None:
    """ErrorCollector keeps every error event it gets, in order, and reports success."""
    collector = ErrorCollector()
    first, second = error_event(ValueError("a"), None), error_event(KeyError("b"), None)
    assert collector.process_event(first) is True
    assert collector.process_event(second) is True
    assert collector.events == [first, second]


def test_error_collector_exposes_exceptions_and_failed_events() -> None:
    """`exceptions` and `failed_events` unpack the (exception, original_event) tuples in order."""
    collector = ErrorCollector()
    original = Event("gen", None, "data", timestamp=1.0)
    value_error, type_error = ValueError("a"), TypeError("b")
    collector.process_event(error_event(value_error, original))
    collector.process_event(error_event(type_error, None))
    assert collector.exceptions == [value_error, type_error]
    assert collector.failed_events == [original, None]


def test_error_collector_wait_for_wakes_when_events_arrive() -> None:
    """wait_for() returns True as soon as another thread delivers the awaited count."""
    collector = ErrorCollector()

    def deliver() -> None:
        for i in range(3):
            time.sleep(0.01)
            collector.process_event(error_event(ValueError(str(i)), None))

    thread = threading.Thread(target=deliver)
    start = time.monotonic()
    thread.start()
    try:
        assert collector.wait_for(3, timeout=10) is True
    finally:
        thread.join(10)
    assert time.monotonic() - start < 5
    assert len(collector.events) == 3


def test_error_collector_wait_for_gives_up_after_timeout() -> None:
    """wait_for() returns False once its timeout passes without enough error events."""
    collector = ErrorCollector()
    collector.process_event(error_event(ValueError("only one"), None))
    start = time.monotonic()
    assert collector.wait_for(2, timeout=0.1) is False
    assert 0.09 <= time.monotonic() - start < 5


def test_error_collector_wait_for_returns_at_once_when_already_there() -> None:
    """wait_for() does not wait when the count is already reached."""
    collector = ErrorCollector()
    collector.process_event(error_event(ValueError("x"), None))
    start = time.monotonic()
    assert collector.wait_for(1, timeout=10) is True
    assert time.monotonic() - start < 1


# == ListEventGenerator ==========================================================================


def make_events(n: int) -> list[Event]:
    return [Event("list", None, i) for i in range(n)]


def test_list_generator_gives_all_events_on_first_poll_then_finishes() -> None:
    """By default every event comes on the first poll, and the generator is then finished."""
    events = make_events(4)
    generator = ListEventGenerator(events)
    assert isinstance(generator, EventGenerator)
    assert generator.finished is False
    assert generator.get_events() == events
    assert generator.finished is True
    assert generator.get_events() == []
    assert generator.polls == 2


def test_list_generator_per_poll_paces_events_and_finishes_with_the_last() -> None:
    """With per_poll, each poll gives that many events; finished turns true with the last ones."""
    events = make_events(5)
    generator = ListEventGenerator(events, per_poll=2)
    batches: list[list[Event]] = []
    finished_after: list[bool] = []
    for _ in range(3):
        batches.append(generator.get_events())
        finished_after.append(generator.finished)
    assert batches == [events[0:2], events[2:4], events[4:5]]
    assert finished_after == [False, False, True]
    assert generator.polls == 3


def test_list_generator_of_no_events_is_finished_after_first_poll() -> None:
    """An empty list yields nothing and is finished after the first poll."""
    generator = ListEventGenerator([])
    assert generator.get_events() == []
    assert generator.finished is True


def test_list_generator_records_stop() -> None:
    """stop() is recorded, so a test can check that the dispatcher called it."""
    generator = ListEventGenerator(make_events(1))
    assert generator.stopped is False
    generator.stop()
    assert generator.stopped is True


# == RecordingHandler ============================================================================


def test_recording_handler_writes_one_json_line_per_event(tmp_path: Path) -> None:
    """Each event becomes one JSON line with its data, this pid, originator and timestamp."""
    path = tmp_path / "seen.jsonl"
    handler = RecordingHandler(path)
    assert handler.process_event(Event("gen-a", handler, {"n": 1}, timestamp=10.5)) is True
    assert handler.process_event(Event("gen-b", handler, "two", timestamp=11.0)) is True
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0]) == {
        "data": {"n": 1},
        "pid": os.getpid(),
        "originator": "gen-a",
        "timestamp": 10.5,
    }
    assert handler.records() == [json.loads(line) for line in lines]
    assert handler.records()[1]["data"] == "two"


def test_recording_handler_records_skip_a_record_still_being_written(tmp_path: Path) -> None:
    """records() leaves out a last line without its newline: a worker is still writing it."""
    path = tmp_path / "seen.jsonl"
    handler = RecordingHandler(path)
    handler.process_event(Event("gen", handler, "whole", timestamp=1.0))
    with open(path, "a") as file:
        file.write('{"data": "half wri')
    assert [record["data"] for record in handler.records()] == ["whole"]


def test_recording_handler_appends_to_existing_file(tmp_path: Path) -> None:
    """Records are appended: lines already in the file are kept."""
    path = tmp_path / "seen.jsonl"
    path.write_text(json.dumps({"data": "old"}) + "\n")
    handler = RecordingHandler(path)
    handler.process_event(Event("g", handler, "new"))
    assert [r["data"] for r in handler.records()] == ["old", "new"]


def test_recording_handler_writes_unserializable_data_by_repr(tmp_path: Path) -> None:
    """Data that JSON cannot hold is recorded by its repr instead of failing."""
    handler = RecordingHandler(tmp_path / "seen.jsonl")
    handler.process_event(Event("g", handler, {1, 2}))
    assert handler.records()[0]["data"] == repr({1, 2})


def test_recording_handler_raises_for_fail_on_values_and_records_nothing(tmp_path: Path) -> None:
    """Data listed in fail_on raises ValueError naming it, and is not recorded."""
    handler = RecordingHandler(tmp_path / "seen.jsonl", fail_on=[2, "bad"])
    handler.process_event(Event("g", handler, 1))
    with pytest.raises(ValueError, match="'bad'"):
        handler.process_event(Event("g", handler, "bad"))
    with pytest.raises(ValueError, match="2"):
        handler.process_event(Event("g", handler, 2))
    handler.process_event(Event("g", handler, 3))
    assert [r["data"] for r in handler.records()] == [1, 3]


def test_recording_handler_records_empty_before_any_event(tmp_path: Path) -> None:
    """records() of a handler whose file does not exist yet is an empty list."""
    assert RecordingHandler(tmp_path / "missing.jsonl").records() == []


def test_recording_handler_wait_for_returns_when_count_reached(tmp_path: Path) -> None:
    """wait_for() returns the records as soon as the awaited count is written."""
    handler = RecordingHandler(tmp_path / "seen.jsonl")

    def write_later() -> None:
        time.sleep(0.05)
        handler.process_event(Event("g", handler, "late"))

    thread = threading.Thread(target=write_later)
    thread.start()
    try:
        records = handler.wait_for(1, timeout=10)
    finally:
        thread.join(10)
    assert [r["data"] for r in records] == ["late"]


def test_recording_handler_wait_for_is_bounded(tmp_path: Path) -> None:
    """wait_for() gives up after its timeout and returns what was written so far."""
    handler = RecordingHandler(tmp_path / "seen.jsonl")
    handler.process_event(Event("g", handler, "only"))
    start = time.monotonic()
    records = handler.wait_for(5, timeout=0.1)
    assert 0.09 <= time.monotonic() - start < 5
    assert [r["data"] for r in records] == ["only"]


def test_recording_handler_survives_dill(tmp_path: Path) -> None:
    """A RecordingHandler survives a dill round trip with its path and fail_on values."""
    handler = dill.loads(dill.dumps(RecordingHandler(tmp_path / "x.jsonl", fail_on=[9])))
    assert handler.path == str(tmp_path / "x.jsonl")
    assert handler.fail_on == [9]


# == run_events ==================================================================================


def test_run_events_runs_handlers_in_a_worker_and_returns_error_events(tmp_path: Path) -> None:
    """run_events runs each event in another process and returns the error events, in order."""
    handler = RecordingHandler(tmp_path / "seen.jsonl", fail_on=[2, 4])
    events = [Event("list", handler, i) for i in range(1, 6)]
    before = child_pids()

    error_events = run_events(events, timeout=30, poll_interval=0.05)

    assert [type(e.data[0]) for e in error_events] == [ValueError, ValueError]
    assert [e.data[1].data for e in error_events] == [2, 4]
    assert error_events[0].data[1].timestamp == events[1].timestamp
    records = handler.records()
    assert [r["data"] for r in records] == [1, 3, 5]
    assert os.getpid() not in {r["pid"] for r in records}
    assert child_pids() <= before


def test_run_events_returns_no_errors_when_all_succeed(tmp_path: Path) -> None:
    """run_events returns an empty list when every handler succeeds."""
    handler = RecordingHandler(tmp_path / "seen.jsonl")
    assert run_events([Event("list", handler, "ok")], timeout=30, poll_interval=0.05) == []
    assert [r["data"] for r in handler.records()] == ["ok"]


def test_run_events_raises_timeout_error_when_events_do_not_finish() -> None:
    """run_events raises TimeoutError, bounded by its timeout, when events have no outcome."""
    before = child_pids()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        run_events(
            [Event("list", sleep_for_a_while, 30)], timeout=0.5, poll_interval=0.05, kill_grace=0.1
        )
    assert time.monotonic() - start < 20
    assert child_pids() <= before
