"""eventmp.sending with a real ledger and a worker's real task pipe, no process: what is written.

Whole pipelines are in ``test_dispatcher.py``; here, the choices of the sending room on their
own, read back from the pipe the worker would read.
"""

from __future__ import annotations

import ctypes
import os
from collections import deque
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from eventmp import serialization
from eventmp.event import Event
from eventmp.ledger import Ledger
from eventmp.messages import ACKED, PROGRESS_FIELDS, FrameReader, plain_batch
from eventmp.sending import Sender
from eventmp.shared import RUNNING, Mode, Waker
from eventmp.workers import Slot, WorkerHandle, close


def handler(event: Event) -> None:
    """The events' handler (never run here)."""


class Rig:
    """A sender, its ledger, one slot with a worker whose task pipe this test reads."""

    def __init__(self) -> None:
        self.ledger = Ledger(1)
        self.mode = Mode()
        self.mode.state = RUNNING
        self.waker = Waker()
        self.slot = Slot(0, (ctypes.c_int64 * PROGRESS_FIELDS)())
        self.sender = Sender(
            self.ledger, [self.slot], self.waker, self.mode, keyed=False, event_timeout=None
        )
        self.read_end, write_end = os.pipe()
        os.set_blocking(self.read_end, False)
        process = SimpleNamespace(pid=4242, sentinel=-1, close=lambda: None)
        self.worker = WorkerHandle(0, process, write_end, os.dup(self.read_end), deque())
        self.worker.batches = self.ledger.worker_started(self.worker.id, 0)
        self.worker.ready = True
        self.slot.worker = self.worker
        self.reader = FrameReader()

    def submit(self, data: object) -> None:
        """Queue an event and send what may go (feed, as the dispatcher does)."""
        self.ledger.queue(self.ledger.accept([Event("test", handler, data)]))
        self.sender.feed()

    def written(self) -> list[list[object]]:
        """The data of each batch written since the last call, in order."""
        batches: list[list[object]] = []
        try:
            chunk = os.read(self.read_end, 1 << 20)
        except BlockingIOError:
            return batches
        for payload in self.reader.feed(chunk):
            plain = plain_batch(payload)
            if plain is not None:
                batches.append([item[3] for item in serialization.loads(plain[1])])
        return batches

    def close(self) -> None:
        close(self.worker)
        os.close(self.read_end)
        self.waker.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = Rig()
    yield made
    made.close()


def test_an_idle_worker_takes_an_event_alone(rig: Rig) -> None:
    """With nothing in flight, send_alone() writes the event as a batch of its own."""
    rig.submit("first")
    assert rig.written() == [["first"]]
    rig.ledger.batch_done(rig.worker.id, rig.worker.last_batch)
    rig.sender.find_idle_worker()
    assert rig.sender.send_alone(Event("test", handler, "second"))
    assert rig.written() == [["second"]]


def test_a_worker_that_finished_takes_the_next_event_before_its_acknowledgement_is_read(
    rig: Rig,
) -> None:
    """caught_up: its progress array says it acknowledged everything, so the event goes now."""
    rig.submit("first")
    assert rig.written() == [["first"]]
    event = Event("test", handler, "second")
    # Running the first batch: not idle by the ledger, nor by its progress array.
    assert not rig.sender.send_alone(event, caught_up=True)
    assert not rig.sender.send_alone(event)
    rig.slot.view[ACKED] = rig.worker.last_batch  # it finished; the acknowledgement is unread
    assert not rig.sender.send_alone(event)  # without caught_up, the ledger's word only
    assert rig.sender.send_alone(event, caught_up=True)
    assert rig.written() == [["second"]]
    assert len(rig.worker.batches) == 2  # both held until their acknowledgements are read
    assert rig.ledger.batch_done(rig.worker.id, rig.worker.last_batch) == 1
    assert not rig.ledger.pending
