"""Tests for eventmp.batching: how many events go to which worker, and when."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import WAIT, GatedRecorder, HangOn, LineRecorder, data_of

from eventmp import Event, EventDispatcher
from eventmp.batching import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_INFLIGHT_BATCHES,
    PIPELINE_BELOW,
    SPREAD_AT_ONCE_NS,
    STALLED_AFTER,
    Estimates,
    FloodGauge,
    caught_up,
    hold_back,
    idle_worker,
    inflight_progressing,
    wants_batch,
    workers_with_room,
)
from eventmp.ledger_records import Batch
from eventmp.messages import ACKED, PROGRESS_FIELDS
from eventmp.testing import ErrorCollector, ListEventGenerator, RecordingHandler

MakeDispatcher = Callable[..., EventDispatcher]

NOW = 1000.0


class FakeWorker:
    """The attributes of a WorkerHandle that the batching rules read; one batch per size."""

    def __init__(
        self, *sizes: int, opened: bool = True, progressed_at: float = NOW, last_batch: int = 0
    ) -> None:
        self.batches = deque(Batch(no, list(range(size))) for no, size in enumerate(sizes, 1))
        self.open = opened
        self.progressed_at = progressed_at
        self.last_batch = last_batch or len(sizes)

    @property
    def inflight_events(self) -> int:
        return sum(len(batch.seqs) for batch in self.batches)


class FakeSlot:
    """A slot holding ``worker`` (or none), with a progress array whose ACKED is ``acked``."""

    def __init__(self, worker: FakeWorker | None, acked: int = 0) -> None:
        self.worker = worker
        self.view = [0] * PROGRESS_FIELDS
        self.view[ACKED] = acked


def slots(*workers: FakeWorker | None) -> list[Any]:
    return [FakeSlot(worker) for worker in workers]


# == batch sizes, seen through the pipes of a real worker ========================================


class BatchSizeSpy(EventDispatcher):
    """Records the size of every batch it writes (the pipes and worker are real)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.batches: list[tuple[int, int]] = []  # (events, bytes)
        sender = self._pool.sender
        write_batch = sender.write_batch

        def spy(worker: Any, definitions: Any, blob: bytes, seqs: Any, **kw: Any) -> None:
            self.batches.append((len(seqs), len(blob)))
            write_batch(worker, definitions, blob, seqs, **kw)

        sender.write_batch = spy  # type: ignore[method-assign]


@pytest.fixture
def spy(errors: ErrorCollector) -> Iterator[BatchSizeSpy]:
    """A started BatchSizeSpy wired to the ``errors`` collector, stopped after the test."""
    dispatcher = BatchSizeSpy(poll_interval=0.05)
    dispatcher.error_handler(errors)
    dispatcher.start()
    yield dispatcher
    dispatcher.stop(timeout=10)


def test_batches_are_capped_in_bytes(
    spy: BatchSizeSpy, errors: ErrorCollector, tmp_path: Path
) -> None:
    """Heavy events that pile up go in batches of at most 1 MiB past their first event, in order."""
    recorder = GatedRecorder(tmp_path / "out.jsonl", tmp_path / "gate")
    for i in range(40):
        spy.submit(Event("test", recorder, [i, "x" * 200_000]))
    (tmp_path / "gate").touch()
    assert spy.wait(WAIT)
    assert [record["data"][0] for record in recorder.records()] == list(range(40))
    assert not errors.events
    assert sum(count for count, _size in spy.batches) == 40
    assert all(size <= 1 << 20 for count, size in spy.batches if count > 1)
    assert max(count for count, _size in spy.batches) > 1  # still batched


def test_a_busy_worker_with_a_small_batch_gets_the_next_one_at_once(
    spy: BatchSizeSpy, errors: ErrorCollector, tmp_path: Path
) -> None:
    """While a worker holds one slow event, the next events go to its pipe, not to a queue."""
    gate = tmp_path / "gate"
    recorder = GatedRecorder(tmp_path / "out.jsonl", gate)
    spy.submit(Event("test", recorder, 0))
    # Far fewer than a full batch: only a small batch in hand lets these go before it.
    for _ in range(100):
        time.sleep(0.001)  # each submit() past 100 us reads acknowledgements and sends
        spy.submit(Event("test", recorder, "more"))
        if len(spy.batches) >= 2:
            break
    assert len(spy.batches) >= 2, spy.batches
    assert not gate.exists()  # the worker is still on event 0
    gate.touch()
    assert spy.wait(WAIT)
    assert data_of(recorder.records())[0] == 0
    assert not errors.events


def test_events_faster_than_100k_per_second_make_a_flood_until_they_slow_down() -> None:
    """The arrival rate over each window of at least 10 ms decides: a flood, or a trickle."""
    gauge = FloodGauge()
    now, arrived = 1000.0, 0

    def batches(count: int, events: int, every: float) -> bool:
        nonlocal now, arrived
        for _ in range(count):
            now += every
            arrived += events
            gauge.update(now, arrived)
        return gauge.flooded

    assert not batches(500, 1, 40e-6)  # 25,000 events/s: a busy producer at a modest rate
    assert batches(200, 20, 100e-6)  # 200,000 events/s in small batches: a flood all the same
    assert not batches(200, 5, 100e-6)  # 50,000 events/s: slowed down
    assert batches(200, 15, 100e-6)  # 150,000 events/s
    assert not batches(1, 0, 0.05)  # a quiet spell
    assert not batches(1, 2000, 1e-6)  # a burst right after it: within the window
    assert batches(1, 0, 0.01)  # closed: 2,000 events in 10 ms
    assert not batches(200, 3, 100e-6)  # 30,000 events/s again
    # A producer held up for 5 ms catches up with 150 events at once: not a flood.
    assert not batches(1, 0, 0.005)
    assert not batches(1, 150, 0.0003) and not batches(8, 3, 100e-6)
    assert not batches(100, 3, 100e-6)
    assert not batches(1, 0, 0.02)  # a window closes here
    assert not gauge.update(now + 0.005, arrived + 10_000)  # one under 10 ms waits, however full


def test_two_workers_use_two_processes(make_dispatcher: MakeDispatcher, tmp_path: Path) -> None:
    """With workers=2, events run in two distinct worker processes."""
    gate = tmp_path / "gate"
    recording = GatedRecorder(tmp_path / "out.jsonl", gate)
    dispatcher = make_dispatcher(workers=2)
    dispatcher.start()
    workers = set(dispatcher.stats().worker_pids)
    assert len(workers) == 2
    # The first worker holds at most two unacknowledged batches: the rest go to the second.
    for i in range(6):
        dispatcher.submit(Event("test", recording, i))
    gate.touch()
    assert dispatcher.wait(WAIT)
    records = recording.records()
    assert sorted(data_of(records)) == list(range(6))
    assert {record["pid"] for record in records} == workers


@pytest.mark.parametrize("idle_spin", [0.0, 0.0002])
def test_a_flood_of_cheap_events_on_two_workers_arrives_whole_and_once(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path, idle_spin: float
) -> None:
    """Cheap events sent as fast as possible to two workers, which batch them up, all arrive."""
    recorder = RecordingHandler(tmp_path / "out.jsonl")
    dispatcher = make_dispatcher(workers=2, idle_spin=idle_spin)
    dispatcher.start()
    for i in range(20_000):
        dispatcher.submit(Event("test", recorder, i))
    assert dispatcher.wait(WAIT)  # the last partial batch went out without another submit
    assert sorted(data_of(recorder.records())) == list(range(20_000))
    assert dispatcher.stats().processed == 20_000
    assert not errors.events


def test_a_worker_stuck_on_an_event_does_not_hold_back_cheap_events_for_the_other(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """Cheap events wait for a busy worker to batch up, but not for one that is stuck."""
    gate = tmp_path / "gate"
    recorder = LineRecorder(tmp_path / "ran.jsonl", hang=HangOn(gate, blocked="hang"))
    dispatcher = make_dispatcher(workers=2, poll_interval=0.05)
    dispatcher.start()
    for n in range(2_000):  # the workers learn that these events are cheap
        dispatcher.submit(Event("test", recorder, n))
    assert dispatcher.wait(WAIT)
    # One poll hands a single worker the hanging event and 100 behind it: far more in flight
    # than a modest rate leaves, so cheap events would wait for that worker to finish.
    burst = [Event("test", recorder, "hang")]
    burst += [Event("test", recorder, n) for n in range(2_000, 2_100)]
    dispatcher.add_event_generator(ListEventGenerator(burst))
    deadline = time.monotonic() + WAIT
    while dispatcher.stats().accepted < 2_101:
        assert time.monotonic() < deadline, dispatcher.stats()
        time.sleep(0.0005)
    # Most likely within the moment the stuck worker still counts as busy: the event waits,
    # and nothing but the dispatcher thread's own timer can send it once it counts as stuck.
    dispatcher.submit(Event("test", recorder, 2_100))
    while dispatcher.stats().processed < 2_001:
        assert time.monotonic() < deadline, f"the other worker got nothing: {dispatcher.stats()}"
        time.sleep(0.01)
    while 2_100 not in recorder.ran():
        assert time.monotonic() < deadline, f"event 2100 did not run: {dispatcher.stats()}"
        time.sleep(0.01)
    for n in range(2_101, 2_110):
        dispatcher.submit(Event("test", recorder, n))
        time.sleep(0.005)
    while dispatcher.stats().processed < 2_010:
        assert time.monotonic() < deadline, f"the other worker stopped: {dispatcher.stats()}"
        time.sleep(0.01)
    while not set(range(2_101, 2_110)) <= set(recorder.ran()):
        assert time.monotonic() < deadline, f"the other worker stopped: {dispatcher.stats()}"
        time.sleep(0.01)
    assert not gate.exists()  # the first worker is still stuck
    assert "hang" not in recorder.ran()
    gate.touch()
    assert dispatcher.wait(WAIT)
    ran = recorder.ran()
    assert sorted(ran, key=str) == sorted([*range(2_110), "hang"], key=str)  # each ran once
    stats = dispatcher.stats()
    assert (stats.processed, stats.failed) == (2_111, 0)
    assert stats.processed == len(ran)
    assert not errors.events


# == Estimates ===================================================================================


def test_estimates_start_costly_and_weightless() -> None:
    """Until a worker reports, events count as costly (not cheap) and weigh nothing."""
    estimates = Estimates()
    assert estimates.event_cost_ns == SPREAD_AT_ONCE_NS
    assert estimates.event_bytes == 0
    assert not estimates.cheap


def test_batch_limit_unpooled_is_the_event_cap_whatever_the_cost() -> None:
    """With one worker, light events go MAX_BATCH_EVENTS at a time, however slow they are."""
    estimates = Estimates()
    assert estimates.batch_limit(pooled=False) == MAX_BATCH_EVENTS
    estimates.event_cost_ns = 1e9
    assert estimates.batch_limit(pooled=False) == MAX_BATCH_EVENTS


def test_batch_limit_pooled_holds_about_two_ms_of_work() -> None:
    """Workers sharing a backlog get batches of about 2 ms of work, 1 to MAX_BATCH_EVENTS."""
    estimates = Estimates()
    assert estimates.batch_limit(pooled=True) == 40  # 2 ms / 50 us
    estimates.event_cost_ns = 10_000
    assert estimates.batch_limit(pooled=True) == 200
    estimates.event_cost_ns = 100
    assert estimates.batch_limit(pooled=True) == MAX_BATCH_EVENTS
    estimates.event_cost_ns = 0
    assert estimates.batch_limit(pooled=True) == MAX_BATCH_EVENTS
    estimates.event_cost_ns = 1e9  # a second per event: one at a time
    assert estimates.batch_limit(pooled=True) == 1


@pytest.mark.parametrize("pooled", [False, True])
def test_batch_limit_of_heavy_events_keeps_a_batch_near_one_mib(pooled: bool) -> None:
    """Heavy events go as many as fit in MAX_BATCH_BYTES, and at least one."""
    estimates = Estimates()
    estimates.event_cost_ns = 1_000  # cheap: the bytes decide
    estimates.event_bytes = 200_000
    assert estimates.batch_limit(pooled) == MAX_BATCH_BYTES // 200_000 == 5
    estimates.event_bytes = 4 * MAX_BATCH_BYTES
    assert estimates.batch_limit(pooled) == 1


def test_note_batch_smooths_the_cost_towards_what_workers_report() -> None:
    """Each batch moves the estimate 30% of the way to its cost per event; empty ones don't."""
    estimates = Estimates()
    estimates.note_batch(busy_ns=100_000, events=10)  # 10 us per event
    assert estimates.event_cost_ns == pytest.approx(50_000 + (10_000 - 50_000) * 0.3)
    assert estimates.cheap
    before = estimates.event_cost_ns
    estimates.note_batch(busy_ns=123_456, events=0)
    assert estimates.event_cost_ns == before
    for _ in range(100):
        estimates.note_batch(busy_ns=1_000_000, events=1)  # 1 ms per event
    assert estimates.event_cost_ns == pytest.approx(1_000_000)
    assert not estimates.cheap


def test_note_bytes_smooths_the_weight_per_event() -> None:
    """The pickled weight per event is smoothed the same way; no events leaves it alone."""
    estimates = Estimates()
    estimates.note_bytes(size=1_000, events=10)
    assert estimates.event_bytes == pytest.approx(30.0)
    estimates.note_bytes(size=5_000, events=0)
    assert estimates.event_bytes == pytest.approx(30.0)
    for _ in range(100):
        estimates.note_bytes(size=100_000, events=1)
    assert estimates.event_bytes == pytest.approx(100_000)


# == wants_batch =================================================================================


def test_an_idle_worker_wants_whatever_there_is() -> None:
    """A worker with nothing in flight gets a batch as soon as one event is queued."""
    worker: Any = FakeWorker()
    assert wants_batch(worker, queued=1, limit=100)
    assert not wants_batch(worker, queued=0, limit=100)


def test_a_busy_worker_with_little_in_flight_gets_a_partial_batch() -> None:
    """Below PIPELINE_BELOW events in flight, a busy worker gets the next batch at once."""
    worker: Any = FakeWorker(PIPELINE_BELOW - 1)
    assert wants_batch(worker, queued=1, limit=100)
    assert not wants_batch(worker, queued=0, limit=100)


def test_a_busy_worker_with_much_in_flight_waits_for_a_full_batch() -> None:
    """With PIPELINE_BELOW or more events in flight, only a full batch goes to a busy worker."""
    worker: Any = FakeWorker(PIPELINE_BELOW)
    assert not wants_batch(worker, queued=99, limit=100)
    assert wants_batch(worker, queued=100, limit=100)


def test_a_worker_holding_the_most_batches_gets_no_more() -> None:
    """A worker with MAX_INFLIGHT_BATCHES unacknowledged batches gets nothing, even full."""
    worker: Any = FakeWorker(*[1] * MAX_INFLIGHT_BATCHES)
    assert not wants_batch(worker, queued=1000, limit=100)


# == hold_back and inflight_progressing ==========================================================


def test_a_full_batch_is_never_held_back() -> None:
    """However much is in flight, and under a flood, a full batch goes out."""
    busy = slots(FakeWorker(500))
    assert not hold_back(busy, queued=100, limit=100, flooded=True, now=NOW)


def test_nothing_in_flight_holds_nothing_back() -> None:
    """With every worker idle, a partial batch goes out at once, flood or not."""
    idle = slots(FakeWorker(), FakeWorker())
    assert not hold_back(idle, queued=1, limit=100, flooded=False, now=NOW)
    assert not hold_back(idle, queued=1, limit=100, flooded=True, now=NOW)


def test_a_partial_batch_waits_while_much_is_in_flight() -> None:
    """At PIPELINE_BELOW events in flight, a partial batch waits for more, flood or not."""
    busy = slots(FakeWorker(PIPELINE_BELOW), FakeWorker())
    assert hold_back(busy, queued=1, limit=100, flooded=False, now=NOW)
    assert hold_back(busy, queued=1, limit=100, flooded=True, now=NOW)


def test_a_flood_holds_back_while_anything_is_in_flight() -> None:
    """With a little in flight, a partial batch goes at a modest rate and waits under a flood."""
    trickling = slots(FakeWorker(1), FakeWorker())
    assert not hold_back(trickling, queued=1, limit=100, flooded=False, now=NOW)
    assert hold_back(trickling, queued=1, limit=100, flooded=True, now=NOW)


def test_a_stalled_worker_holds_nothing_back() -> None:
    """Events in flight to a worker silent for longer than STALLED_AFTER do not count."""
    stalled = slots(FakeWorker(500, progressed_at=NOW - 2 * STALLED_AFTER), FakeWorker())
    assert inflight_progressing(stalled, NOW) == 0
    assert not hold_back(stalled, queued=1, limit=100, flooded=True, now=NOW)


def test_inflight_progressing_sums_the_workers_that_progress() -> None:
    """Only workers with batches that acknowledged something lately count; empty slots skip."""
    mixed = slots(
        FakeWorker(3, 4),
        None,
        FakeWorker(),
        FakeWorker(10, progressed_at=NOW - 1),
        FakeWorker(5, progressed_at=NOW - STALLED_AFTER / 2),
    )
    assert inflight_progressing(mixed, NOW) == 3 + 4 + 5


# == idle_worker, workers_with_room, caught_up ===================================================


def test_idle_worker_is_the_first_open_one_with_nothing_in_flight() -> None:
    """Empty slots, closed workers and busy ones are passed over."""
    idle: Any = FakeWorker()
    candidates = slots(None, FakeWorker(opened=False), FakeWorker(1), idle, FakeWorker())
    assert idle_worker(candidates) is idle


def test_idle_worker_is_none_when_every_worker_is_busy_or_closed() -> None:
    """No open worker without batches: no idle worker."""
    assert idle_worker(slots(None, FakeWorker(opened=False), FakeWorker(1))) is None
    assert idle_worker([]) is None


def test_workers_with_room_counts_open_workers_below_the_batch_cap() -> None:
    """Open workers holding fewer than MAX_INFLIGHT_BATCHES batches count."""
    full = FakeWorker(*[1] * MAX_INFLIGHT_BATCHES)
    mixed = slots(FakeWorker(), FakeWorker(1), full, FakeWorker(opened=False), None)
    assert workers_with_room(mixed) == 2


def test_workers_with_room_is_at_least_one() -> None:
    """With no worker that has room (or none at all) it says 1, to divide by."""
    full = FakeWorker(*[1] * MAX_INFLIGHT_BATCHES)
    assert workers_with_room(slots(full, FakeWorker(opened=False))) == 1
    assert workers_with_room([]) == 1


def test_caught_up_when_a_worker_acknowledged_its_last_batch() -> None:
    """True once a busy worker's progress array shows its last batch acknowledged."""
    worker = FakeWorker(1, 1)  # batches 1 and 2 sent
    behind: list[Any] = [FakeSlot(worker, acked=1)]
    assert not caught_up(behind)
    done: list[Any] = [FakeSlot(worker, acked=2)]
    assert caught_up(done)
    idle: list[Any] = [FakeSlot(FakeWorker(), acked=5), FakeSlot(None, acked=5)]
    assert not caught_up(idle)  # nothing in flight: nothing to read
