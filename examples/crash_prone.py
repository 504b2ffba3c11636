"""A crash-prone handler: a segfault, an os._exit and a hang cost one event each, no more.

python examples/crash_prone.py
"""

from __future__ import annotations

import ctypes
import os
import time

from eventmp import Event, EventDispatcher


def fragile(event: Event) -> bool:
    """Misbehaves on some inputs, as a buggy C extension or a stuck library call would."""
    if event.data == "segfault":
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    elif event.data == "exit":
        os._exit(3)
    elif event.data == "hang":
        time.sleep(3600)
    print(f"  worker {os.getpid()} handled {event.data!r}", flush=True)
    return True


def report(error_event: Event) -> None:
    exception, original = error_event.data
    print(f"  error event for {original.data!r}: {type(exception).__name__}: {exception}")


def main() -> None:
    with EventDispatcher(event_timeout=2, kill_grace=0.5) as dispatcher:
        dispatcher.error_handler(report)
        for data in ["a", "segfault", "b", "exit", "c", "hang", "d"]:
            dispatcher.submit(Event("example", fragile, data))
        dispatcher.wait()
        print(dispatcher.stats())


if __name__ == "__main__":
    main()
