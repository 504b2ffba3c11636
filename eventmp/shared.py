"""What the parent's rooms share: the dispatcher thread's wake-up pipe, the pipeline's mode, and
the dispatcher's condition (:class:`Changed`).

Runs in the parent process. The dispatcher owns both and hands them to the rooms that need
them (:mod:`eventmp.pool`, :mod:`eventmp.lifecycle`, :mod:`eventmp.sending`), so that none of
them calls back into the dispatcher: waking the dispatcher thread is a write to a pipe, and the
mode is three fields the dispatcher sets with its lock held.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["NEW", "RUNNING", "STOPPED", "STOPPING", "Changed", "Mode", "Waker"]

# The dispatcher's states, in order: set by the dispatcher (and its stopping room), lock held.
NEW, RUNNING, STOPPING, STOPPED = "new", "running", "stopping", "stopped"


class Mode:
    """The dispatcher's state as the rooms need it (set by the dispatcher, lock held)."""

    __slots__ = ("abandoning", "drain", "state")

    def __init__(self) -> None:
        self.state = NEW
        self.drain = True  # stop() sends poison pills behind the queued events
        self.abandoning: str | None = None  # why queued events are abandoned, once they are

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def draining(self) -> bool:
        """Stopping with a drain: workers get their poison pill once their queue is empty."""
        return self.state == STOPPING and self.drain and self.abandoning is None


class Waker:
    """The dispatcher thread's wake-up pipe (also rung by idle workers, see RING).

    One byte at most per look of the dispatcher thread, not one per event: a wake that finds
    one owed already is dropped. So the loop calls :meth:`arm` *before* it looks at what it
    must do, never between that look and its wait: a wake dropped before ``arm()`` asked for
    nothing that look does not see, and every wake after it leaves a byte for the wait.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.pending = False
        self.loop_ident: int | None = None  # the dispatcher thread, once it runs

    def in_loop(self) -> bool:
        """True in the dispatcher thread."""
        return threading.get_ident() == self.loop_ident

    def arm(self) -> None:
        """The dispatcher thread is about to look at its state: the next wake writes a byte."""
        self.pending = False

    def wake(self) -> None:
        """Wake the dispatcher thread."""
        if self.pending or self.write_fd < 0:
            return
        self.pending = True
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.write_fd, b"\0")

    def wake_from_elsewhere(self) -> None:
        """Wake the dispatcher thread unless this is it (it will look anyway)."""
        if not self.in_loop():
            self.wake()

    def drain(self) -> None:
        """Empty the pipe (the dispatcher thread, before it looks at everything)."""
        try:
            while os.read(self.read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)
        self.read_fd = self.write_fd = -1


class Changed(threading.Condition):
    """The dispatcher's condition (on its lock), notified whenever its state changes; and a
    second one, :attr:`idle`, that ``wait()`` waits on, notified only when the pipeline is idle.

    The state changes with every acknowledgement, poll and outcome; a thread in ``wait()`` woken
    for each of them would take the lock and the GIL from the dispatcher thread only to find
    work still pending, thousands of times a second under load. ``is_idle`` is the test (set by
    the dispatcher), made at each notification while someone waits in ``wait()``.
    """

    def __init__(self, lock: Any) -> None:
        super().__init__(lock)
        self.idle = threading.Condition(lock)
        self.idle_waiters = 0
        self.is_idle: Callable[[], bool] = lambda: False

    def notify_all(self) -> None:
        super().notify_all()
        if self.idle_waiters and self.is_idle():
            self.idle.notify_all()
