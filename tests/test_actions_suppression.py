"""eventmp.actions.suppression: count and throttle, driven by a clock the test sets."""

from __future__ import annotations

from pathlib import Path

import dill
import pytest
from conftest import STAMP, tail_event

from eventmp import ChainEventHandler, Event
from eventmp.actions.suppression import CountEventHandler, ThrottleEventHandler
from eventmp.errors import TemplateError
from eventmp.testing import RecordingHandler


class FakeClock:
    """A clock the test moves by hand, standing in for time.monotonic."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# == count =======================================================================================


def test_count_passes_every_nth_within_window() -> None:
    """count=3 passes the third event, then starts again and passes the sixth."""
    clock = FakeClock()
    handler = CountEventHandler(3, window="10s", clock=clock)
    results = []
    for _ in range(6):
        results.append(handler.process_event(tail_event()))
        clock.now += 1
    assert results == [False, False, True, False, False, True]


def test_count_forgets_occurrences_older_than_window() -> None:
    """Occurrences that left the window no longer count towards the next pass."""
    clock = FakeClock()
    handler = CountEventHandler(3, window=10, clock=clock)
    assert handler.process_event(tail_event()) is False  # t=0
    clock.now += 5
    assert handler.process_event(tail_event()) is False  # t=5
    clock.now += 5  # t=10: the first is exactly one window old, so out
    assert handler.process_event(tail_event()) is False
    clock.now += 1
    assert handler.process_event(tail_event()) is True  # t=5, 10, 11


def test_count_counts_each_key_apart() -> None:
    """With a key template, each filled key is counted on its own."""
    clock = FakeClock()
    handler = CountEventHandler(2, key="{ip}", clock=clock)
    a = tail_event(named={"ip": "10.0.0.1"})
    b = tail_event(named={"ip": "10.0.0.2"})
    assert [handler.process_event(e) for e in (a, b, a, b)] == [False, False, True, True]


def test_count_of_one_passes_everything() -> None:
    """count=1 passes every event."""
    handler = CountEventHandler(1, clock=FakeClock())
    assert all(handler.process_event(tail_event()) for _ in range(5))


def test_count_stops_a_chain(tmp_path: Path) -> None:
    """As a link in a chain, count lets only the events it passes reach the next handler."""
    recorder = RecordingHandler(tmp_path / "seen.jsonl")
    chain = ChainEventHandler(CountEventHandler(2, clock=FakeClock()), recorder)
    results = [chain.process_event(Event("app", None, n)) for n in range(6)]
    assert results == [False, True, False, True, False, True]
    assert [record["data"] for record in recorder.records()] == [1, 3, 5]


def test_count_forgets_idle_keys() -> None:
    """Keys not seen for a window are dropped, so memory follows the active keys."""
    clock = FakeClock()
    handler = CountEventHandler(5, window=10, key="{data}", clock=clock)
    for n in range(100):
        handler.process_event(Event("app", None, n))
    clock.now += 20
    handler.process_event(Event("app", None, "new"))
    assert list(handler._times) == ["new"]


def test_count_state_starts_fresh_in_each_copy() -> None:
    """A serialized handler (what a worker receives) starts counting from zero."""
    clock = FakeClock()
    handler = CountEventHandler(2, clock=clock)
    assert handler.process_event(tail_event()) is False
    copy = dill.loads(dill.dumps(handler))
    assert copy.process_event(tail_event()) is False
    assert handler.process_event(tail_event()) is True


def test_count_str_shows_settings_not_state() -> None:
    """str() shows count, window and key, not the clock or the counts."""
    assert str(CountEventHandler("4", "1m", "{ip}")) == (
        "CountEventHandler(count=4, window=60.0, key='{ip}', max_keys=100000)"
    )


def test_count_missing_key_field_is_a_template_error() -> None:
    """A key naming a field the event lacks raises TemplateError."""
    with pytest.raises(TemplateError, match="ip"):
        CountEventHandler(2, key="{ip}").process_event(Event("app", None, 1))


# == throttle ====================================================================================


def test_throttle_passes_at_most_limit_per_interval() -> None:
    """At most limit events pass in any interval; suppressed ones do not count."""
    clock = FakeClock()
    handler = ThrottleEventHandler(2, interval="10s", clock=clock)
    timeline = []
    for offset in (0, 1, 2, 9.5, 10, 10.5, 11, 11.5):
        clock.now = 1000 + offset
        timeline.append(handler.process_event(tail_event()))
    # Passed at 0 and 1; at 10 the one of 0 has left the window; at 11 the one of 1 has.
    assert timeline == [True, True, False, False, True, False, True, False]


def test_throttle_is_per_key() -> None:
    """Each filled key has its own limit."""
    clock = FakeClock()
    handler = ThrottleEventHandler(1, key="{ip}", clock=clock)
    a = tail_event(named={"ip": "10.0.0.1"})
    b = tail_event(named={"ip": "10.0.0.2"})
    assert [handler.process_event(e) for e in (a, b, a, b)] == [True, True, False, False]


def test_throttle_steady_flood_passes_limit_each_interval() -> None:
    """A steady flood (one event per second) passes exactly limit events in each interval."""
    clock = FakeClock(0.0)
    handler = ThrottleEventHandler(3, interval=10, clock=clock)
    passed = []
    for second in range(60):
        clock.now = float(second)
        if handler.process_event(tail_event()):
            passed.append(second)
    assert passed == [0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32, 40, 41, 42, 50, 51, 52]


def test_throttle_str_shows_settings() -> None:
    """str() shows limit, interval and key."""
    assert str(ThrottleEventHandler(5, 30, "", "10")) == (
        "ThrottleEventHandler(limit=5, interval=30.0, key='', max_keys=10)"
    )


# == bounded state ===============================================================================


def keyed(value: str) -> Event:
    """An event whose data is ``value``, for a count or throttle keyed on ``{data}``."""
    return Event("app", None, value, timestamp=STAMP)


def test_count_keeps_at_most_max_keys_evicting_the_least_recently_seen() -> None:
    """Many distinct keys never make count hold more than max_keys; the least recently seen
    key goes, and seen again it counts from zero."""
    clock = FakeClock()
    handler = CountEventHandler(2, window="1h", key="{data}", max_keys=3, clock=clock)
    assert [handler.process_event(keyed(k)) for k in "abc"] == [False, False, False]
    assert handler.process_event(keyed("a")) is True  # a is now the most recently seen
    assert handler.process_event(keyed("d")) is False  # evicts b, the least recently seen
    assert list(handler._times) == ["c", "a", "d"]
    assert handler.process_event(keyed("b")) is False  # afresh: b's first occurrence is gone
    assert handler.process_event(keyed("d")) is True  # d was kept (c was evicted for b)
    for n in range(10_000):
        handler.process_event(keyed(f"2001:db8::{n:x}"))
        assert len(handler._times) <= 3
    assert handler.evictions == 2 + 10_000  # b, c, then one per new address


def test_throttle_keeps_at_most_max_keys_and_an_evicted_key_passes_afresh() -> None:
    """A throttled key evicted by max_keys newer keys passes again as if new."""
    clock = FakeClock()
    handler = ThrottleEventHandler(1, interval="1h", key="{data}", max_keys=2, clock=clock)
    assert handler.process_event(keyed("a")) is True
    assert handler.process_event(keyed("a")) is False
    assert handler.process_event(keyed("b")) is True
    assert handler.process_event(keyed("a")) is False  # a is seen again: now b is the oldest
    assert handler.process_event(keyed("c")) is True  # evicts b
    assert handler.process_event(keyed("a")) is False  # a was kept
    assert handler.process_event(keyed("b")) is True  # b was evicted: it passes afresh
    assert list(handler._times) == ["a", "b"]
    assert handler.evictions == 2


def test_evictions_are_logged_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """Evictions give one warning per minute of the handler's clock, with the counts."""
    clock = FakeClock()
    handler = CountEventHandler(5, window="1h", key="{data}", max_keys=10, clock=clock)
    with caplog.at_level("WARNING", logger="eventmp"):
        for n in range(10):
            handler.process_event(keyed(str(n)))
        assert caplog.records == []  # full, nothing evicted yet
        for n in range(10, 1010):
            handler.process_event(keyed(str(n)))
        clock.now += 59
        handler.process_event(keyed("next"))
        assert len(caplog.records) == 1
        clock.now += 1
        handler.process_event(keyed("last"))
    first, second = (record.getMessage() for record in caplog.records)
    assert "max_keys=10" in first and "evicted 1 least recently seen keys" in first
    assert "1 in all" in first
    assert "evicted 1001 least recently seen keys since the last report, 1002 in all" in second
    assert handler.evictions == 1002
