"""Tests for eventmp.processor: a real worker process, driven over its pipes as the parent does.

The test plays the dispatcher: it writes framed batches and handler updates to the task pipe,
reads the worker's messages off the result pipe, and reads the shared progress array.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import select
import time
from collections.abc import Iterator
from typing import Any

import pytest

from eventmp import Event
from eventmp.ledger import position
from eventmp.messages import (
    ACKED,
    FINISHED,
    PROGRESS_FIELDS,
    RING,
    STARTED,
    STOP_HANDLER_ID,
    BatchDone,
    BatchRejected,
    EventFailed,
    FrameReader,
    HandlerUpdate,
    WorkerReady,
    decode_result,
    encode_batch,
    encode_handler_update,
)
from eventmp.processor import EventProcessor, worker_main
from eventmp.serialization import dump_handler

WAIT = 30.0


def append_data(event: Event) -> bool:
    """Appends the event's data to the file named by its originator."""
    with open(event.originator, "a") as file:
        file.write(f"{event.data}\n")
    return True


def fail_on_negative(event: Event) -> bool:
    if event.data < 0:
        raise ValueError(f"negative: {event.data}")
    return True


class Worker:
    """A worker process and the parent's ends of its pipes and progress array."""

    def __init__(self, start_method: str) -> None:
        context = multiprocessing.get_context(start_method)
        task_r, self.task_w = os.pipe()
        self.result_r, result_w = os.pipe()
        self.ring_r, ring_w = os.pipe2(os.O_NONBLOCK)  # non-blocking, as the dispatcher's
        self.progress: Any = context.RawArray("q", PROGRESS_FIELDS)
        tasks = multiprocessing.connection.Connection(task_r, writable=False)
        results = multiprocessing.connection.Connection(result_w, readable=False)
        ring = multiprocessing.connection.Connection(ring_w, readable=False)
        processor = EventProcessor(
            "test-worker",
            tasks,
            results,
            self.progress,
            ring=ring,
            idle_spin_ns=200_000,  # as the dispatcher's default
            close_fds=[self.task_w, self.result_r, self.ring_r] if start_method == "fork" else [],
        )
        self.process = context.Process(target=worker_main, args=(processor,), daemon=True)
        self.process.start()
        tasks.close()  # the worker has its own copies now
        results.close()
        ring.close()
        self.reader = FrameReader()
        self.messages: list[Any] = []

    def send(self, frame: bytes) -> None:
        view = memoryview(frame)
        while view:
            view = view[os.write(self.task_w, view) :]

    def send_batch(self, batch_no: int, items: list[tuple[Any, ...]]) -> None:
        self.send(encode_batch(batch_no, pickle.dumps(items, 5)))

    def define(self, handler_id: int, handler: Any) -> None:
        self.send(encode_handler_update(HandlerUpdate([(handler_id, dump_handler(handler))], [])))

    def read_until(self, kind: type, count: int = 1) -> list[Any]:
        """Read messages until ``count`` of ``kind`` arrived; return every message so far."""
        deadline = time.monotonic() + WAIT
        while sum(type(m) is kind for m in self.messages) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {count} {kind.__name__} within {WAIT}s: {self.messages}"
            ready, _, _ = select.select([self.result_r], [], [], remaining)
            if ready:
                data = os.read(self.result_r, 65536)
                assert data, f"the worker closed its result pipe: {self.messages}"
                self.messages += [decode_result(p) for p in self.reader.feed(data)]
        return self.messages

    def close(self) -> None:
        os.close(self.task_w)  # the end of the task pipe ends the worker
        self.process.join(WAIT)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(WAIT)
        os.close(self.result_r)
        os.close(self.ring_r)

    def rings(self, within: float) -> int:
        """How many bytes the worker wrote to the wake-up pipe within ``within`` seconds."""
        select.select([self.ring_r], [], [], within)
        try:
            return len(os.read(self.ring_r, 4096))
        except BlockingIOError:
            return 0


@pytest.fixture
def worker(start_method: str) -> Iterator[Worker]:
    started = Worker(start_method)
    try:
        started.read_until(WorkerReady)
        yield started
    finally:
        started.close()


def test_a_batch_runs_in_order_and_is_acknowledged_once(worker: Worker, tmp_path: Any) -> None:
    """The events of a batch run in order; one BatchDone follows, then the array shows it done."""
    out = tmp_path / "out.txt"
    worker.define(5, append_data)
    worker.send_batch(41, [(seq, 5, str(out), seq * 10, 0.0) for seq in (1, 2, 3)])
    messages = worker.read_until(BatchDone)
    assert [type(m) for m in messages] == [WorkerReady, BatchDone]
    assert messages[1].batch_no == 41
    assert out.read_text().split() == ["10", "20", "30"]
    # Positions in the worker's batches, not sequence numbers: batch 41, index 2.
    assert (worker.progress[STARTED], worker.progress[FINISHED]) == (position(41, 2),) * 2
    # Marked just after the acknowledgement is written, so it may trail it by a moment.
    deadline = time.monotonic() + WAIT
    while worker.progress[ACKED] != 41 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert worker.progress[ACKED] == 41


def test_a_failure_is_reported_at_once_and_the_batch_goes_on(worker: Worker) -> None:
    """A raising handler sends EventFailed for its event; the rest of the batch still runs."""
    worker.define(6, fail_on_negative)
    worker.send_batch(7, [(1, 6, "t", 1, 0.0), (2, 6, "t", -2, 0.0), (3, 6, "t", 3, 0.0)])
    messages = worker.read_until(BatchDone)
    failed = [m for m in messages if type(m) is EventFailed]
    assert [(m.position, m.seq, m.type_name, m.message) for m in failed] == [
        (position(7, 1), 2, "ValueError", "negative: -2")
    ]
    assert messages.index(failed[0]) < messages.index(messages[-1])
    assert worker.progress[FINISHED] == position(7, 2)


def test_an_unknown_handler_fails_its_event_not_the_worker(worker: Worker, tmp_path: Any) -> None:
    """An event whose handler id the worker was never sent fails; the next event runs."""
    out = tmp_path / "out.txt"
    worker.define(5, append_data)
    worker.send_batch(1, [(1, 99, "t", 1, 0.0), (2, 5, str(out), "after", 0.0)])
    messages = worker.read_until(BatchDone)
    failed = [m for m in messages if type(m) is EventFailed]
    assert [(m.seq, m.type_name) for m in failed] == [(1, "eventmp.errors.SerializationError")]
    assert "never sent it" in failed[0].message
    assert out.read_text().split() == ["after"]


def test_a_batch_that_does_not_unpickle_is_rejected_until_a_resync(
    worker: Worker, tmp_path: Any
) -> None:
    """A corrupt batch is rejected, later batches are dropped, and a resync batch runs again."""
    out = tmp_path / "out.txt"
    worker.define(5, append_data)
    worker.send(encode_batch(1, b"not a pickle"))
    worker.send_batch(2, [(1, 5, str(out), "dropped", 0.0)])
    resync = [(2, pickle.dumps((2, 5, str(out), "resent", 0.0), 5))]
    worker.send(encode_batch(3, pickle.dumps(resync, 5), resync=True))
    messages = worker.read_until(BatchDone)
    assert [type(m) for m in messages] == [WorkerReady, BatchRejected, BatchDone]
    assert messages[1].batch_no == 1
    assert messages[2].batch_no == 3
    assert out.read_text().split() == ["resent"]


def test_the_poison_pill_ends_the_worker_after_what_came_before(
    worker: Worker, tmp_path: Any
) -> None:
    """Events ahead of the poison pill run; the pill is acknowledged and the worker exits 0."""
    out = tmp_path / "out.txt"
    worker.define(5, append_data)
    worker.send_batch(1, [(1, 5, str(out), "before", 0.0), (2, STOP_HANDLER_ID, "t", None, 0.0)])
    worker.read_until(BatchDone)
    worker.process.join(WAIT)
    assert worker.process.exitcode == 0
    assert out.read_text().split() == ["before"]
    assert worker.progress[FINISHED] == position(1, 1)


def test_an_idle_worker_rings_once_when_asked_and_never_otherwise(worker: Worker) -> None:
    """With RING set, a worker out of batches rings the wake-up pipe once per idle spell."""
    worker.define(6, fail_on_negative)
    worker.send_batch(1, [(1, 6, "t", 1, 0.0)])
    worker.read_until(BatchDone)
    assert worker.rings(within=0.3) == 0
    worker.progress[RING] = 1
    worker.send_batch(2, [(2, 6, "t", 2, 0.0)])
    worker.read_until(BatchDone, count=2)
    assert worker.rings(within=WAIT) == 1
    assert worker.rings(within=0.3) == 0  # once per idle spell, not again and again
    worker.send_batch(3, [(3, 6, "t", 3, 0.0)])
    worker.read_until(BatchDone, count=3)
    assert worker.rings(within=WAIT) == 1


def test_the_spin_window_grows_with_short_sleeps_and_shrinks_to_nothing_with_long_ones() -> None:
    """The spin window doubles from 25 us up to its limit, and halves down to 0 (as haltpoll)."""
    processor = EventProcessor("unit", None, None, None, idle_spin_ns=200_000)  # type: ignore[arg-type]
    windows = []
    for _ in range(5):
        processor._adapt_spin(30_000)  # slept 30 us: spinning would have caught the batch
        windows.append(processor._spin_ns)
    assert windows == [25_000, 50_000, 100_000, 200_000, 200_000]
    for _ in range(4):
        processor._adapt_spin(5_000_000)  # slept 5 ms: spinning would have been wasted
        windows.append(processor._spin_ns)
    assert windows[5:] == [100_000, 50_000, 25_000, 0]
