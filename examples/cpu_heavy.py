"""A CPU-heavy handler in worker processes, while the parent stays responsive.

The handler burns CPU for each event (a pure-Python loop, which holds its worker's GIL); the
parent's heartbeat thread keeps ticking on time because the work happens in other processes.
With ``workers=2`` on two cores the events finish about twice as fast as with one.

    python examples/cpu_heavy.py
"""

from __future__ import annotations

import os
import threading
import time

from eventmp import Event, EventDispatcher


def crunch(event: Event) -> bool:
    """About 20 ms of pure-Python arithmetic per event (data=3), in a worker process."""
    total = 0
    for n in range(event.data * 100_000):
        total += n * n
    return True


def heartbeat(stop: threading.Event, late: list[float]) -> None:
    """Ticks every 10 ms in the parent and records how late each tick was."""
    next_tick = time.monotonic()
    while not stop.is_set():
        next_tick += 0.01
        time.sleep(max(0.0, next_tick - time.monotonic()))
        late.append(time.monotonic() - next_tick)


def main() -> None:
    for workers in (1, 2):
        stop, late = threading.Event(), []
        beat = threading.Thread(target=heartbeat, args=(stop, late))
        beat.start()
        started = time.monotonic()
        with EventDispatcher(workers=workers) as dispatcher:
            for _ in range(100):
                dispatcher.submit(Event("cpu", crunch, 3))
            dispatcher.wait()
        elapsed = time.monotonic() - started
        stop.set()
        beat.join()
        print(
            f"workers={workers}: 100 events in {elapsed:.2f} s; parent pid {os.getpid()} "
            f"heartbeat late by {1000 * max(late):.1f} ms at worst"
        )


if __name__ == "__main__":
    main()
