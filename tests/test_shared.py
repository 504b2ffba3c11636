"""eventmp.shared: the dispatcher's condition, which wakes wait() only when the pipeline is idle."""

from __future__ import annotations

import threading

from eventmp.shared import Changed


def test_a_waiter_for_idle_sleeps_through_every_notification_until_idle() -> None:
    """Notifications while busy wake no idle waiter; the first one made idle wakes it."""
    lock = threading.Lock()
    changed = Changed(lock)
    idle = False
    looks = 0

    def is_idle() -> bool:
        nonlocal looks
        looks += 1
        return idle

    changed.is_idle = is_idle
    woke = threading.Event()

    def waiter() -> None:
        with lock:
            changed.idle_waiters += 1
            try:
                changed.idle.wait_for(lambda: idle, timeout=30)
            finally:
                changed.idle_waiters -= 1
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    while True:  # until the waiter waits
        with lock:
            if changed.idle_waiters:
                break
    for _ in range(1000):
        with lock:
            changed.notify_all()
    assert not woke.wait(0.1)
    with lock:
        idle = True
        changed.notify_all()
    assert woke.wait(30)
    thread.join(30)
    assert looks == 1001  # is_idle at each notification; the waiter woke once


def test_without_idle_waiters_a_notification_does_not_ask_whether_idle() -> None:
    """notify_all() tests is_idle only while someone waits for idle."""
    lock = threading.Lock()
    changed = Changed(lock)
    asked = []
    changed.is_idle = lambda: asked.append(1) or True
    waiting = threading.Event()

    def waiter() -> None:
        with lock:
            waiting.set()
            changed.wait(timeout=30)

    thread = threading.Thread(target=waiter)
    thread.start()
    assert waiting.wait(30)
    with lock:
        changed.notify_all()  # wakes the ordinary waiter, as a Condition does
    thread.join(30)
    assert not thread.is_alive()
    assert asked == []
