"""eventmp.event: the Event value and the EventGenerator base."""

from __future__ import annotations

import pickle
import time
from typing import Any

import pytest

from eventmp import Event, EventGenerator
from eventmp.event import describe_originator


def named_handler(event: Event) -> bool:
    """A module-level handler, so that events holding it pickle by reference."""
    return True


class NamedGenerator(EventGenerator):
    """A generator with a readable name, used as an originator."""

    def __str__(self) -> str:
        return "logfile:/var/log/app.log"


def test_fields_are_kept() -> None:
    """An event keeps the originator, handler and data it was built with."""
    event = Event("watcher", named_handler, {"line": 42})
    assert event.originator == "watcher"
    assert event.handler is named_handler
    assert event.data == {"line": 42}


def test_data_defaults_to_none() -> None:
    """An event built without data has data None."""
    assert Event("watcher", named_handler).data is None


def test_timestamp_defaults_to_time_time_at_creation() -> None:
    """Without a timestamp, an event is stamped with time.time() when it is created."""
    before = time.time()
    event = Event("watcher", named_handler, 1)
    after = time.time()
    assert isinstance(event.timestamp, float)
    assert before <= event.timestamp <= after


def test_timestamps_differ_between_events_created_apart() -> None:
    """Each event gets its own creation time, not one fixed at import or class definition."""
    first = Event("watcher", named_handler, 1)
    time.sleep(0.01)
    second = Event("watcher", named_handler, 2)
    assert second.timestamp - first.timestamp >= 0.005


def test_explicit_timestamp_is_kept_as_float() -> None:
    """An explicit timestamp is used instead of the current time, converted to float."""
    event = Event("watcher", named_handler, 1, timestamp=1_000)
    assert event.timestamp == 1000.0
    assert isinstance(event.timestamp, float)


def test_explicit_zero_timestamp_is_not_replaced() -> None:
    """A timestamp of 0.0 (the epoch) is a real value, not a request for the current time."""
    assert Event("watcher", named_handler, 1, timestamp=0.0).timestamp == 0.0


def test_str_shows_readable_local_time_with_millis_originator_and_data() -> None:
    """str() shows the local time to the millisecond, then the originator and the data."""
    stamp = 1_700_000_000.25
    event = Event("watcher", named_handler, "disk full", timestamp=stamp)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_000))
    assert str(event) == f"{when}.250 watcher: disk full"


def test_str_shows_non_string_data_by_repr() -> None:
    """str() shows data that is not a string by its repr, so types stay visible."""
    event = Event("watcher", named_handler, {"code": 7}, timestamp=1_700_000_000.0)
    assert str(event).endswith("watcher: {'code': 7}")


def test_str_names_a_generator_originator_by_its_str() -> None:
    """str() names a generator originator by its str(), not by an object address."""
    event = Event(NamedGenerator(), named_handler, "x", timestamp=1_700_000_000.0)
    assert "logfile:/var/log/app.log: x" in str(event)
    assert "object at 0x" not in str(event)


def test_str_survives_an_originator_whose_str_raises() -> None:
    """str() of an event still works when the originator's own str() raises."""

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no name")

    text = str(Event(Broken(), named_handler, "x", timestamp=1_700_000_000.0))
    assert "Broken" in text
    assert text.endswith(": x")


def test_str_of_a_pre_epoch_timestamp_is_well_formed() -> None:
    """str() of an event stamped before 1970 still shows a well-formed time with 3-digit millis."""
    event = Event("watcher", named_handler, "old", timestamp=-1.25)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(-2))
    assert str(event) == f"{when}.750 watcher: old"


def test_describe_originator_keeps_strings_and_names_objects() -> None:
    """describe_originator() returns a string originator as-is and names others by str()."""
    assert describe_originator("plain") == "plain"
    assert describe_originator(NamedGenerator()) == "logfile:/var/log/app.log"
    assert describe_originator(42) == "42"


def test_events_with_equal_fields_are_equal() -> None:
    """Two events with the same originator, handler, data and timestamp compare equal."""
    a = Event("watcher", named_handler, [1, 2], timestamp=5.0)
    b = Event("watcher", named_handler, [1, 2], timestamp=5.0)
    assert a == b
    assert (a != b) is False


@pytest.mark.parametrize(
    "other",
    [
        Event("other", named_handler, [1, 2], timestamp=5.0),
        Event("watcher", print, [1, 2], timestamp=5.0),
        Event("watcher", named_handler, [1, 3], timestamp=5.0),
        Event("watcher", named_handler, [1, 2], timestamp=6.0),
    ],
    ids=["originator", "handler", "data", "timestamp"],
)
def test_events_differing_in_one_field_are_unequal(other: Event) -> None:
    """Events that differ in any one field compare unequal."""
    assert Event("watcher", named_handler, [1, 2], timestamp=5.0) != other


def test_event_is_not_equal_to_other_types() -> None:
    """An event never equals a non-event, even one with the same contents."""
    event = Event("watcher", named_handler, 1, timestamp=5.0)
    assert event != ("watcher", named_handler, 1, 5.0)
    assert event != None  # noqa: E711 - the comparison itself is under test


def test_event_is_not_hashable() -> None:
    """Events are mutable values with __eq__, so they are deliberately unhashable."""
    with pytest.raises(TypeError):
        hash(Event("watcher", named_handler, 1))


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip_keeps_every_field(protocol: int) -> None:
    """An event survives a pickle round trip with every field, timestamp included."""
    event = Event("watcher", named_handler, {"line": "x" * 100}, timestamp=1234.5678)
    loaded = pickle.loads(pickle.dumps(event, protocol))
    assert type(loaded) is Event
    assert loaded == event
    assert loaded.handler is named_handler
    assert loaded.timestamp == 1234.5678


def test_repr_shows_every_field() -> None:
    """repr() names every field, for debugging."""
    text = repr(Event("watcher", None, 3, timestamp=2.0))
    for part in ("originator='watcher'", "handler=None", "data=3", "timestamp=2.0"):
        assert part in text


def test_generator_base_get_events_raises_not_implemented() -> None:
    """The EventGenerator base has no events to give: get_events() raises NotImplementedError."""
    with pytest.raises(NotImplementedError):
        EventGenerator().get_events()


def test_generator_finished_is_false_by_default() -> None:
    """A new generator is not finished, so the dispatcher keeps polling it."""
    assert EventGenerator().finished is False
    assert NamedGenerator().finished is False


def test_generator_finished_is_per_instance() -> None:
    """Setting finished on one generator does not finish the others."""
    done, other = NamedGenerator(), NamedGenerator()
    done.finished = True
    assert done.finished is True
    assert other.finished is False
    assert EventGenerator.finished is False


def test_generator_base_stop_is_a_no_op() -> None:
    """The base stop() releases nothing, returns None, and may be called repeatedly."""
    generator = EventGenerator()
    generator.stop()
    generator.stop()
    assert generator.finished is False


def test_generator_str_is_its_class_name() -> None:
    """A generator's default str() is its class name, as used when naming originators."""

    class Tail(EventGenerator):
        def get_events(self) -> list[Event]:
            return []

    assert str(EventGenerator()) == "EventGenerator"
    assert str(Tail()).endswith("Tail")


def test_subclass_get_events_returns_events() -> None:
    """A subclass overriding get_events() returns its events and an empty list when none."""

    class Once(EventGenerator):
        def __init__(self) -> None:
            self.pending: list[Any] = [Event(self, named_handler, "boot")]

        def get_events(self) -> list[Event]:
            events, self.pending = self.pending, []
            return events

    generator = Once()
    assert [e.data for e in generator.get_events()] == ["boot"]
    assert generator.get_events() == []
