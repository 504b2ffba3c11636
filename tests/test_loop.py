"""eventmp.loop: the dispatcher thread's loop, driven through a real dispatcher and its workers.

What the loop does for each event (sending, polling, delivering) is in ``test_dispatcher.py``
and the modules of the rooms; here, what is the loop's own: when it looks, when it waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from conftest import WAIT, data_of, wait_until

from eventmp import Event, EventDispatcher
from eventmp.testing import ListEventGenerator, RecordingHandler

MakeDispatcher = Callable[..., EventDispatcher]


def test_stop_racing_the_loop_before_its_wait_is_seen(make_dispatcher: MakeDispatcher) -> None:
    """A stop() that lands after the loop has looked at its state, but before it waits, wakes it.

    The wake-up pipe carries one byte per wait: a wake that finds one already owed is dropped.
    This holds the loop between its last look and its wait, with a wake owed (from before that
    look), and stops the dispatcher meanwhile: with nothing else to wake it (no timer, idle
    workers), a stop that rode on the owed wake would never be seen.
    """
    dispatcher = make_dispatcher(poll_interval=3600)
    dispatcher.start()
    pool = dispatcher._pool
    original = pool.wait_for_io
    at_wait, go_on = threading.Event(), threading.Event()
    armed = threading.Event()

    def wait_for_io(timeout: float | None, leave_acks: bool) -> None:
        if armed.is_set():
            armed.clear()
            at_wait.set()
            assert go_on.wait(WAIT)
        original(timeout, leave_acks)

    pool.wait_for_io = wait_for_io  # type: ignore[method-assign]
    armed.set()
    dispatcher._waker.wake()  # the loop wakes, looks, and stops at the wait above
    assert at_wait.wait(WAIT)
    stopper = threading.Thread(target=dispatcher.stop)
    stopper.start()
    time.sleep(0.1)  # stop() has set the state and rung (it blocks in join() now)
    go_on.set()
    stopper.join(WAIT)
    assert not stopper.is_alive(), "stop() was not seen by the dispatcher thread"
    assert not dispatcher.is_alive()


def test_poll_now_polls_at_once_whatever_the_poll_interval(
    make_dispatcher: MakeDispatcher, tmp_path: Path
) -> None:
    """poll_now() from another thread has the generators polled at once, not an hour later."""
    recording = RecordingHandler(tmp_path / "out.jsonl")
    generator = ListEventGenerator([Event("gen", recording, i) for i in range(3)], per_poll=1)
    dispatcher = make_dispatcher(poll_interval=3600)
    dispatcher.add_event_generator(generator)
    dispatcher.start()
    assert wait_until(lambda: generator.polls == 1)  # the first poll comes when the loop starts
    for polls in (2, 3):
        dispatcher.poll_now()
        assert wait_until(lambda: generator.polls == polls)  # noqa: B023 (called at once)
    assert dispatcher.wait(WAIT)
    assert data_of(recording.records()) == [0, 1, 2]
