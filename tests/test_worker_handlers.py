"""Tests for eventmp.worker_handlers: a worker's handlers by id, and the totals they counted."""

from __future__ import annotations

from typing import Any

import pytest

from eventmp import Event
from eventmp.errors import SerializationError
from eventmp.handlers import ChainEventHandler
from eventmp.messages import STOP_HANDLER_ID
from eventmp.serialization import dump_handler
from eventmp.worker_handlers import HandlerTable


class Counting:
    """A handler that counts the events it saw (``counters()``)."""

    def __init__(self, name: str, seen: int = 0) -> None:
        self.name = name
        self.seen = seen

    def process_event(self, event: Event) -> bool:
        self.seen += 1
        return True

    def counters(self) -> dict[str, int]:
        return {self.name: self.seen}


class BrokenCounters(Counting):
    """A handler whose ``counters()`` raises."""

    def counters(self) -> dict[str, int]:
        raise RuntimeError("no counters today")


def double(event: Event) -> Any:
    return event.data * 2


def event_of(data: Any) -> Event:
    return Event("test", None, data)


def test_a_defined_handler_is_looked_up_by_id_and_called() -> None:
    """A function handler is called as it is; the poison pill's handler is always there."""
    table = HandlerTable()
    table.define(5, dump_handler(double))
    _handler, run = table.lookup(5)
    assert run(event_of(21)) == 42
    assert STOP_HANDLER_ID in table.callables


def test_an_unknown_or_unloadable_handler_raises_with_its_reason() -> None:
    """An id never sent, or one whose blob did not load, raises SerializationError saying why."""
    table = HandlerTable()
    with pytest.raises(SerializationError, match="never sent it"):
        table.lookup(7)
    table.define(8, b"not a pickle")
    assert 8 not in table.callables
    with pytest.raises(SerializationError, match="could not be loaded in the worker: "):
        table.lookup(8)
    table.forget(8)
    with pytest.raises(SerializationError, match="never sent it"):
        table.lookup(8)


def test_counters_of_chained_handlers_are_summed_and_reported_when_changed() -> None:
    """The links of a chain that count are found; a report goes only when the totals changed."""
    table = HandlerTable()
    table.define(1, dump_handler(ChainEventHandler(Counting("seen", 2), Counting("kept", 1))))
    table.define(2, dump_handler(Counting("seen", 3)))
    table.define(3, dump_handler(BrokenCounters("broken")))
    assert table.counters_to_report(force=True) == {"seen": 5, "kept": 1}
    assert table.counters_to_report(force=True) is None  # nothing changed
    _handler, run = table.lookup(2)
    run(event_of(None))
    assert table.counters_to_report(force=False) is None  # within the interval
    assert table.counters_to_report(force=True) == {"seen": 6, "kept": 1}


def test_a_forgotten_handler_s_counts_stay_in_the_totals() -> None:
    """What a handler counted before the parent dropped it still counts; it no longer runs."""
    table = HandlerTable()
    table.define(1, dump_handler(Counting("seen", 4)))
    table.define(2, dump_handler(Counting("seen", 1)))
    table.forget(1)
    assert 1 not in table.callables
    assert table.counters_to_report(force=True) == {"seen": 5}


def test_a_table_without_counting_handlers_reports_nothing() -> None:
    """No handler counts anything: there is never a report, forced or not."""
    table = HandlerTable()
    table.define(5, dump_handler(double))
    assert not table.counting
    assert table.counters_to_report(force=True) is None
