"""Recycling: workers replaced between events after N events or past a memory limit."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eventmp import Event, EventDispatcher
from eventmp.testing import ErrorCollector, RecordingHandler

MakeDispatcher = Callable[..., EventDispatcher]


class Hog(RecordingHandler):
    """Records the event, then keeps 30 MB more alive in the worker for every event it sees."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.kept: list[bytearray] = []

    def process_event(self, event: Event) -> bool:
        super().process_event(event)
        self.kept.append(bytearray(30 * 1024 * 1024))
        return True


def _run(dispatcher: EventDispatcher, handler: Any, count: int) -> None:
    dispatcher.start()
    for n in range(count):
        dispatcher.submit(Event("recycling", handler, n))
    assert dispatcher.wait(60)
    dispatcher.stop()


def test_max_events_per_worker_replaces_workers_without_loss_or_repeat(
    tmp_path: Path, make_dispatcher: MakeDispatcher, errors: ErrorCollector
) -> None:
    """With max_events_per_worker=3, each worker runs at most 3 events and none is lost."""
    recorder = RecordingHandler(tmp_path / "seen.jsonl")
    dispatcher = make_dispatcher(max_events_per_worker=3)
    _run(dispatcher, recorder, 20)
    records = recorder.records()
    assert [r["data"] for r in records] == list(range(20))
    per_pid: dict[int, int] = {}
    for record in records:
        per_pid[record["pid"]] = per_pid.get(record["pid"], 0) + 1
    assert max(per_pid.values()) == 3
    assert len(per_pid) == 7  # ceil(20 / 3)
    assert dispatcher.stats().worker_recycles == 6
    assert errors.events == []


def test_recycling_keeps_order_across_a_backlog(
    tmp_path: Path, make_dispatcher: MakeDispatcher, errors: ErrorCollector
) -> None:
    """Events queued behind a recycled worker's batch run once each, in order, on the next."""
    recorder = RecordingHandler(tmp_path / "seen.jsonl")
    dispatcher = make_dispatcher(max_events_per_worker=50, start_method="fork")
    _run(dispatcher, recorder, 1000)
    assert [r["data"] for r in recorder.records()] == list(range(1000))
    assert dispatcher.stats().worker_recycles == 20  # the last one too, at its 50th event
    assert errors.events == []


def test_max_memory_per_worker_replaces_a_bloated_worker(
    tmp_path: Path, make_dispatcher: MakeDispatcher, errors: ErrorCollector
) -> None:
    """A worker whose RSS passes max_memory_per_worker is replaced before its next event."""
    hog = Hog(tmp_path / "seen.jsonl")
    dispatcher = make_dispatcher(max_memory_per_worker="100MB")
    _run(dispatcher, hog, 8)
    records = hog.records()
    assert [r["data"] for r in records] == list(range(8))
    assert len({r["pid"] for r in records}) >= 2
    assert dispatcher.stats().worker_recycles >= 1
    assert errors.events == []


def test_replacement_above_the_memory_limit_does_not_loop(
    tmp_path: Path,
    make_dispatcher: MakeDispatcher,
    errors: ErrorCollector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A limit below a fresh worker's own RSS warns once instead of replacing every event."""
    recorder = RecordingHandler(tmp_path / "seen.jsonl")
    dispatcher = make_dispatcher(max_memory_per_worker="1MB")
    with caplog.at_level(logging.WARNING, logger="eventmp"):
        _run(dispatcher, recorder, 10)
    records = recorder.records()
    assert [r["data"] for r in records] == list(range(10))
    assert len({r["pid"] for r in records}) == 1
    assert dispatcher.stats().worker_recycles == 0
    assert "above max_memory_per_worker" in caplog.text
    assert errors.events == []


@pytest.mark.parametrize("value", ["512MB", "1.5GiB", 1048576, "100k"])
def test_memory_limit_accepts_sizes_as_strings_or_bytes(value: str | int) -> None:
    """max_memory_per_worker takes bytes or strings such as '512MB' (powers of 1024)."""
    dispatcher = EventDispatcher(max_memory_per_worker=value)
    expected = {"512MB": 512 << 20, "1.5GiB": int(1.5 * (1 << 30)), 1048576: 1 << 20}
    assert dispatcher.max_memory_per_worker == expected.get(value, 100 << 10)
    dispatcher.stop()


def test_bad_memory_limit_is_a_clear_error() -> None:
    """A memory limit that is not a size raises ValueError naming the value."""
    with pytest.raises(ValueError, match="lots"):
        EventDispatcher(max_memory_per_worker="lots")
