"""eventmp.lifecycle alone: each exit settled by the table of workers that leave, no processes.

The workers here are handles whose processes never ran: their progress marks are set by hand,
and the ledger (a real one) holds what they were given, so that each row of the table is
decided alone. Real crashes, and replacements that cannot start, are in ``tests/test_crash.py``.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from eventmp.errors import (
    EventAbandonedError,
    HandlerTimeoutError,
    WorkerCrashedError,
    WorkerStartError,
)
from eventmp.event import Event
from eventmp.ledger import Ledger
from eventmp.ledger_records import position
from eventmp.lifecycle import NO_CHANGE, SlotChange, WorkerLifecycle
from eventmp.messages import FINISHED, PROGRESS_FIELDS, STARTED
from eventmp.shared import Mode, Waker
from eventmp.workers import BACKOFF_FIRST, Slot, WorkerHandle, WorkerSettings, close

PID = 4242


class Bench:
    """A lifecycle, its ledger with events 1..4 queued for slot 0, and the worker in slot 0."""

    def __init__(
        self,
        context: Any = None,
        event_timeout: float | None = None,
        slots: int = 1,
        keyed: bool = False,
    ) -> None:
        self.ledger = Ledger(slots, keyed=keyed)
        seqs = self.ledger.accept([Event("test", None, n) for n in range(4)])
        self.ledger.queue(seqs, slot=0 if keyed else None)
        self.mode = Mode()
        self.mode.state = "running"
        self.waker = Waker()
        self.changed = threading.Condition()  # held around each call, as the pool holds it
        self.slots = [Slot(index, (ctypes.c_int64 * PROGRESS_FIELDS)()) for index in range(slots)]
        self.slot = self.slots[0]
        self.workers: list[WorkerHandle] = []
        self.lifecycle = WorkerLifecycle(
            self.ledger,
            self.waker,
            self.mode,
            self.slots,
            # Real, and never used: no test here reaches a start (test_crash.py starts them).
            context=context or multiprocessing.get_context("spawn"),
            settings=WorkerSettings(0.0, None, None, event_timeout is not None),
            event_timeout=event_timeout,
        )
        self.worker = self.put_worker()

    def put_worker(self) -> WorkerHandle:
        """A ready worker in the slot, as if started; its pipe ends are real, to be closed."""
        read_end, write_end = os.pipe()
        process = SimpleNamespace(pid=PID, sentinel=-1, close=lambda: None)
        worker = WorkerHandle(0, process, write_end, read_end, deque())
        worker.batches = self.ledger.worker_started(worker.id, 0)
        worker.ready = True
        self.slot.worker = worker
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        """Close what the test left open: the wake-up pipe, the pipes of workers still in place."""
        self.waker.close()
        for worker in self.workers:
            if not worker.exited:
                close(worker)

    def give(self, batch_no: int, count: int, stop: bool = False) -> None:
        """Write the worker a batch of the next ``count`` queued events (or its poison pill)."""
        self.ledger.assign(self.worker.id, batch_no, self.ledger.take(0, count), stop=stop)

    def marks(self, started: int, finished: int) -> None:
        self.slot.view[STARTED] = started
        self.slot.view[FINISHED] = finished

    def exit(self, exitcode: int | None) -> SlotChange:
        with self.changed:
            return self.lifecycle.worker_exited(self.worker, exitcode)

    def restart(self) -> SlotChange:
        with self.changed:
            return self.lifecycle.restart(self.slot, ringing=False, flooded=False)

    def failures(self) -> list[tuple[int, BaseException | None]]:
        return [(outcome.seq, outcome.exception) for outcome in self.ledger.failures]


MakeBench = Callable[..., Bench]


@pytest.fixture
def make_bench() -> Iterator[MakeBench]:
    """Benches with the given options, closed after the test."""
    made: list[Bench] = []

    def make(**options: Any) -> Bench:
        made.append(Bench(**options))
        return made[-1]

    yield make
    for bench in made:
        bench.close()


@pytest.fixture
def bench(make_bench: MakeBench) -> Bench:
    """A bench of one slot, events not keyed, no event_timeout."""
    return make_bench()


def test_a_worker_that_dies_running_an_event_fails_it_and_is_replaced_at_once(
    bench: Bench,
) -> None:
    """The event in hand fails with WorkerCrashedError; a first crash restarts with no delay."""
    bench.give(1, 3)
    bench.marks(started=position(1, 1), finished=position(1, 0))
    began = time.monotonic()
    assert bench.exit(-9) == SlotChange(failed=True)
    ((seq, error),) = bench.failures()
    assert seq == 2 and isinstance(error, WorkerCrashedError)
    assert (error.exitcode, error.pid) == (-9, PID)
    assert bench.ledger.failures[0].originator == f"EventProcessor-0[pid {PID}]"
    assert bench.ledger.processed == 1
    assert list(bench.ledger.shared) == [3, 4]  # the unstarted event, back in front
    assert bench.worker.exited and bench.slot.worker is None
    assert bench.slot.crash_streak == 1 and not bench.slot.retired
    assert bench.slot.restart_at is not None and began <= bench.slot.restart_at < began + 1


def test_a_worker_killed_for_event_timeout_fails_its_event_with_handler_timeout(
    make_bench: MakeBench,
) -> None:
    """The event a worker was killed for fails with HandlerTimeoutError, not as a crash."""
    bench = make_bench(event_timeout=2.5)
    bench.give(1, 1)
    bench.marks(started=position(1, 0), finished=0)
    bench.worker.timed_out = position(1, 0)
    assert bench.exit(-9) == SlotChange(failed=True)
    ((_seq, error),) = bench.failures()
    assert isinstance(error, HandlerTimeoutError)
    assert (error.timeout, error.pid) == (2.5, PID)


def test_a_worker_that_dies_while_everything_is_abandoned_fails_its_event_as_abandoned(
    bench: Bench,
) -> None:
    """While abandoning, the event in hand is abandoned and the slot gets no fresh worker."""
    bench.mode.abandoning = "stop(timeout=...) expired"
    bench.give(1, 1)
    bench.marks(started=position(1, 0), finished=0)
    assert bench.exit(-15) == SlotChange(failed=True)
    ((_seq, error),) = bench.failures()
    assert isinstance(error, EventAbandonedError)
    assert bench.slot.retired and bench.slot.restart_at is None


def test_idle_crashes_in_a_row_restart_after_a_growing_back_off(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker dying between events fails nothing, is logged, and its streak delays the next."""
    caplog.set_level(logging.WARNING, logger="eventmp")
    bench.exit(1)
    bench.worker = bench.put_worker()
    began = time.monotonic()
    assert bench.exit(1) == NO_CHANGE
    assert bench.failures() == []
    assert bench.slot.crash_streak == 2
    assert bench.slot.restart_at is not None
    assert bench.slot.restart_at >= began + BACKOFF_FIRST
    assert "idle worker 4242 exited with status 1" in caplog.text


def test_a_worker_that_dies_before_it_is_ready_breaks_the_pipeline(bench: Bench) -> None:
    """Dying unready while running is a start error for the pool, and the slot is retired."""
    bench.worker.ready = False
    change = bench.exit(1)
    assert isinstance(change.start_error, WorkerStartError)
    assert "before it was ready" in str(change.start_error)
    assert bench.slot.retired and bench.slot.restart_at is None


def test_a_recycled_worker_is_counted_and_replaced_at_once(bench: Bench) -> None:
    """A worker that left at its recycling limit is reported recycled, with no crash streak."""
    bench.worker.retiring = "max_events_per_worker=10 reached"
    began = time.monotonic()
    assert bench.exit(0) == SlotChange(recycled=True)
    assert bench.slot.crash_streak == 0
    assert bench.slot.restart_at is not None and bench.slot.restart_at < began + 1


def test_a_worker_told_to_leave_while_running_is_replaced(bench: Bench) -> None:
    """SIGTERM while the dispatcher runs: nothing fails, not a crash, a fresh worker at once."""
    bench.worker.signalled = True
    assert bench.exit(255) == NO_CHANGE
    assert bench.failures() == []
    assert bench.slot.crash_streak == 0 and bench.slot.restart_at is not None


def test_a_worker_told_to_leave_while_stopping_with_nothing_queued_is_not_replaced(
    bench: Bench,
) -> None:
    """SIGTERM while stopping, with no event left for its slot: the slot is retired."""
    bench.ledger.take(0, 4)  # the queue is empty (these events are someone else's concern)
    bench.mode.state = "stopping"
    bench.worker.signalled = True
    assert bench.exit(0) == NO_CHANGE
    assert bench.slot.retired and bench.slot.restart_at is None


def test_a_worker_told_to_leave_while_stopping_with_events_queued_is_replaced(
    bench: Bench,
) -> None:
    """SIGTERM while stopping, with events queued for the drain: a fresh worker runs them."""
    bench.mode.state = "stopping"
    bench.worker.signalled = True
    bench.exit(0)
    assert not bench.slot.retired and bench.slot.restart_at is not None


def test_a_worker_that_took_its_poison_pill_is_not_replaced(bench: Bench) -> None:
    """A worker that finished its poison pill left as told: the slot is retired."""
    bench.give(1, 0, stop=True)
    bench.marks(started=position(1, 0), finished=position(1, 0))
    assert bench.exit(0) == NO_CHANGE
    assert bench.slot.retired


def test_no_restart_while_everything_is_abandoned(bench: Bench) -> None:
    """A restart due while abandoning starts nothing and clears the slot's restart time."""
    bench.slot.worker = None
    bench.slot.restart_at = 0.0
    bench.mode.abandoning = "stopping"
    assert bench.restart() == NO_CHANGE
    assert bench.slot.restart_at is None and bench.slot.worker is None


def test_a_retired_slot_strands_its_resync_list_and_the_last_one_the_shared_backlog(
    make_bench: MakeBench,
) -> None:
    """Stopping, a retired slot's resync list has no one to run it; the shared backlog only
    once every slot is retired."""
    bench = make_bench(slots=2)
    bench.ledger.resync[0] = bench.ledger.take(0, 1)
    bench.slots[0].retired = True
    with bench.changed:
        assert bench.lifecycle.take_stranded() == [1]
        assert list(bench.ledger.shared) == [2, 3, 4]
        bench.slots[1].retired = True
        assert bench.lifecycle.take_stranded() == [2, 3, 4]
        assert bench.ledger.queued() == 0
        assert bench.lifecycle.take_stranded() == []


def test_a_retired_slot_strands_its_own_keyed_backlog_only(make_bench: MakeBench) -> None:
    """With keyed events, a retired slot's backlog is stranded; a live slot's is left to it."""
    bench = make_bench(slots=2, keyed=True)
    bench.ledger.queue(bench.ledger.accept([Event("test", None, "other")]), slot=1)
    bench.slots[0].retired = True
    with bench.changed:
        assert bench.lifecycle.take_stranded() == [1, 2, 3, 4]
    assert list(bench.ledger.lanes[1]) == [5]
