"""eventmp.stopping with a real ledger and an unstarted pool: deadlines, abandoning, breaking."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from eventmp.errors import EventAbandonedError, WorkerStartError
from eventmp.event import Event
from eventmp.ledger import Ledger
from eventmp.pool import WorkerPool
from eventmp.shared import NEW, RUNNING, STOPPED, STOPPING, Mode, Waker
from eventmp.stopping import Stopping
from eventmp.workers import Slot


def make_stopping(queued: int = 0, *, retired: bool = False) -> tuple[Stopping, Ledger, Mode]:
    """A Stopping over a ledger with ``queued`` events in its backlog and one worker slot, empty
    (its worker between two processes) or ``retired``; no process is started."""
    ledger = Ledger(1)
    mode = Mode()
    pool = WorkerPool(
        ledger,
        threading.Condition(),
        Waker(),
        mode,
        context=multiprocessing.get_context("spawn"),
        count=1,
        keyed=False,
        event_timeout=None,
        kill_grace=1.0,
        start_timeout=10.0,
        idle_spin=0.0,
        max_events_per_worker=None,
        max_memory_per_worker=None,
    )
    slot = Slot(0, bytearray(64))
    slot.retired = retired
    pool.slots.append(slot)
    ledger.queue(ledger.accept([Event("test", None, n) for n in range(queued)]))
    return Stopping(ledger, pool, mode, "Dispatcher"), ledger, mode


def failures(ledger: Ledger) -> list[BaseException]:
    return [outcome.exception for outcome in ledger.failures if outcome.exception is not None]


def test_a_stop_with_a_timeout_sets_the_deadline_and_a_second_may_only_shorten_it() -> None:
    """begin() stops a running pipeline; a later, shorter timeout wins, a longer one does not."""
    stopping, _ledger, mode = make_stopping()
    mode.state = RUNNING
    stopping.begin(10.0, True, now=100.0)
    assert mode.state == STOPPING and stopping.deadline == 110.0 and mode.draining
    stopping.begin(30.0, True, now=101.0)
    assert stopping.deadline == 110.0
    stopping.begin(2.0, True, now=102.0)
    assert stopping.deadline == 104.0 and stopping.timer() == 104.0


def test_a_passed_deadline_abandons_what_is_queued() -> None:
    """After the deadline, maintain() fails every queued event with EventAbandonedError."""
    stopping, ledger, mode = make_stopping(queued=3)
    mode.state = RUNNING
    stopping.begin(1.0, True, now=0.0)
    assert not stopping.maintain(0.5)  # nothing given up: nobody to wake
    assert not ledger.failures and mode.abandoning is None
    assert stopping.maintain(1.5)
    assert mode.abandoning is not None and "expired" in mode.abandoning
    assert [type(e) for e in failures(ledger)] == [EventAbandonedError] * 3
    assert ledger.abandoned == 3 and not ledger.pending
    assert stopping.timer() is None and stopping.ended()


def test_queued_events_no_worker_is_left_to_run_are_abandoned_while_stopping() -> None:
    """Once the only slot retired (its worker left on SIGTERM), the backlog is stranded."""
    stopping, ledger, mode = make_stopping(queued=2, retired=True)
    mode.state = RUNNING
    stopping.maintain(0.0)
    assert not ledger.failures  # running: a worker may still come
    stopping.begin(None, True, now=0.0)
    assert stopping.maintain(0.0)
    assert mode.abandoning is None
    assert [str(e) for e in failures(ledger)] == [
        "event abandoned: its worker left on SIGTERM while the dispatcher was stopping"
    ] * 2


def test_a_stop_without_drain_abandons_at_once() -> None:
    """drain=False says why, stops the drain, and the next look fails what is queued."""
    stopping, ledger, mode = make_stopping(queued=2)
    mode.state = RUNNING
    stopping.begin(None, False, now=0.0)
    assert mode.abandoning == "stop(drain=False) was called" and not mode.draining
    stopping.maintain(0.0)
    assert len(failures(ledger)) == 2


def test_a_stop_before_start_gives_submitted_events_their_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """never_started() fails what was accepted before start() and logs the total once."""
    stopping, ledger, mode = make_stopping(queued=4)
    assert mode.state == NEW
    stopping.never_started()
    assert mode.state == STOPPED
    assert ledger.abandoned == 4 and not ledger.pending
    assert "4 events abandoned: the dispatcher was stopped before it was started" in caplog.text


def test_a_worker_that_cannot_start_breaks_the_pipeline() -> None:
    """break_down() keeps the error, stops, and fails every event no worker holds."""
    stopping, ledger, mode = make_stopping(queued=2)
    mode.state = RUNNING
    error = WorkerStartError("could not start a replacement worker: no descriptors")
    stopping.break_down(error)
    assert stopping.broken is error
    assert mode.state == STOPPING and mode.abandoning == str(error)
    assert failures(ledger) == [error, error]
    assert stopping.ended()


def test_the_dispatcher_thread_failing_is_kept_as_the_first_cause() -> None:
    """thread_failed() wraps the exception once and abandons what is queued."""
    stopping, ledger, mode = make_stopping(queued=1)
    mode.state = STOPPING
    stopping.thread_failed(RuntimeError("bug"))
    first = stopping.broken
    assert first is not None and isinstance(first.__cause__, RuntimeError)
    stopping.thread_failed(RuntimeError("later"))
    assert stopping.broken is first
    assert mode.abandoning == "the dispatcher thread failed"
    assert [type(e) for e in failures(ledger)] == [EventAbandonedError]


def test_a_draining_pipeline_has_not_ended_while_events_are_queued() -> None:
    """ended() waits for the queue to empty (or be abandoned) once no worker is left."""
    stopping, ledger, mode = make_stopping(queued=1)
    assert not stopping.ended()  # not even stopping
    mode.state = RUNNING
    stopping.begin(None, True, now=0.0)
    assert not stopping.ended()
    ledger.fail_queued("test", lambda: EventAbandonedError("gone"))
    assert stopping.ended()
