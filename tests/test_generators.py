"""eventmp.generators alone: one poll's outcome, finished generators, and stop()."""

from __future__ import annotations

import logging

import pytest

from eventmp.event import Event, EventGenerator
from eventmp.generators import Generators


class ListGenerator(EventGenerator):
    """Returns the items it was given, once, then says it is finished if asked to."""

    def __init__(self, items: list[object], *, finish: bool = False, more: bool = False) -> None:
        self.items = items
        self.finish = finish
        self.has_more = more
        self.finished = False
        self.stopped = False

    def get_events(self) -> list[Event]:
        items, self.items = self.items, []
        self.finished = self.finish
        return items  # type: ignore[return-value]

    def stop(self) -> None:
        self.stopped = True


def test_poll_keeps_events_in_order_and_turns_other_items_into_errors() -> None:
    """Events come back in order; each non-event item becomes a TypeError naming its type."""
    first, second = Event("t", None, 1), Event("t", None, 2)
    polled = Generators.poll(ListGenerator([first, "junk", second, 3]))
    assert polled.events == [first, second]
    assert [type(e) for e in polled.errors] == [TypeError, TypeError]
    assert "str" in str(polled.errors[0]) and "int" in str(polled.errors[1])


def test_poll_of_a_raising_generator_is_one_error_and_no_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """get_events() raising gives its exception as the one error, logged at WARNING."""

    class Broken(EventGenerator):
        def get_events(self) -> list[Event]:
            raise OSError("disk gone")

    with caplog.at_level(logging.WARNING, logger="eventmp"):
        polled = Generators.poll(Broken())
    assert polled.events == [] and not polled.finished and not polled.has_more
    assert [str(e) for e in polled.errors] == ["disk gone"]
    assert "disk gone" in caplog.text


def test_none_from_get_events_is_no_events() -> None:
    """A generator may return None for "nothing now"."""

    class Quiet(EventGenerator):
        def get_events(self) -> None:  # type: ignore[override]
            return None

    polled = Generators.poll(Quiet())
    assert polled.events == [] and polled.errors == []


def test_finished_wins_over_has_more() -> None:
    """A generator that says it is finished is not polled again, even if has_more is set."""
    polled = Generators.poll(ListGenerator([], finish=True, more=True))
    assert polled.finished and not polled.has_more
    assert Generators.poll(ListGenerator([], more=True)).has_more


def test_tracks_follows_track_outcomes() -> None:
    """Only a generator with track_outcomes hears of its events' outcomes."""
    tracking = ListGenerator([])
    tracking.track_outcomes = True  # type: ignore[attr-defined]
    assert Generators.poll(tracking).tracks
    assert not Generators.poll(ListGenerator([])).tracks


def test_marked_finished_generators_are_no_longer_due() -> None:
    """due() leaves out finished generators; all_finished() and wants_polling() follow."""
    generators = Generators()
    assert generators.all_finished() and not generators.wants_polling()
    one, two = ListGenerator([]), ListGenerator([])
    generators.add(one)
    generators.add(two)
    assert generators.due() == [one, two] and generators.wants_polling()
    generators.mark_finished(one)
    assert generators.due() == [two] and not generators.all_finished()
    generators.mark_finished(two)
    assert generators.due() == [] and generators.all_finished()
    assert not generators.wants_polling()


def test_stop_all_stops_the_rest_when_one_raises(caplog: pytest.LogCaptureFixture) -> None:
    """A generator whose stop() raises is logged; the ones after it are still stopped."""

    class BadStop(ListGenerator):
        def stop(self) -> None:
            raise RuntimeError("cannot stop")

    generators = Generators()
    before, bad, after = ListGenerator([]), BadStop([]), ListGenerator([])
    for generator in (before, bad, after):
        generators.add(generator)
    with caplog.at_level(logging.ERROR, logger="eventmp"):
        generators.stop_all()
    assert before.stopped and after.stopped
    assert "cannot stop" in caplog.text
