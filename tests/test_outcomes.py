"""eventmp.outcomes alone: each queued outcome reaches the error handler or its generator once."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from eventmp.event import Event, EventGenerator
from eventmp.ledger import Ledger
from eventmp.outcomes import OutcomeDelivery


def delivery_with(count: int, tracker: Any = None) -> tuple[Ledger, OutcomeDelivery, list[int]]:
    ledger = Ledger(1)
    seqs = list(ledger.accept([Event("test", None, n) for n in range(count)], tracker))
    return ledger, OutcomeDelivery(ledger, threading.Condition()), seqs


def test_each_failure_reaches_the_error_handler_once_with_its_event() -> None:
    """An error event carries (exception, original event) and the failure's originator."""
    ledger, delivery, seqs = delivery_with(3)
    received: list[Event] = []
    delivery.error_handler = received.append
    for seq in seqs[:2]:
        ledger.fail(seq, "origin", ValueError(f"bad {seq}"))
    delivery.deliver_all()
    assert [e.originator for e in received] == ["origin", "origin"]
    assert [(str(e.data[0]), e.data[1].data) for e in received] == [("bad 1", 0), ("bad 2", 1)]
    delivery.deliver_all()
    assert len(received) == 2
    assert not delivery.undelivered()


def test_without_an_error_handler_failures_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """No error handler: the failure is logged at WARNING with its exception."""
    ledger, delivery, seqs = delivery_with(1)
    ledger.fail(seqs[0], "origin", KeyError("missing"))
    with caplog.at_level(logging.WARNING, logger="eventmp"):
        delivery.deliver_all()
    assert "KeyError" in caplog.text and "missing" in caplog.text


def test_a_raising_error_handler_is_logged_and_the_rest_still_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error handler that raises does not stop the outcomes behind it."""
    ledger, delivery, seqs = delivery_with(2)
    calls: list[object] = []

    def handler(event: Event) -> None:
        calls.append(event.data[1].data)
        raise RuntimeError("handler broke")

    delivery.error_handler = handler
    for seq in seqs:
        ledger.fail(seq, "origin", ValueError("x"))
    with caplog.at_level(logging.ERROR, logger="eventmp"):
        delivery.deliver_all()
    assert calls == [0, 1]
    raised = [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
    assert raised == ["handler broke", "handler broke"]


def test_tracking_generator_hears_each_outcome_once() -> None:
    """A tracker's settled() gets every tracked outcome, processed (None) or failed."""
    heard: list[tuple[object, object]] = []

    class Tracking(EventGenerator):
        def get_events(self) -> list[Event]:
            return []

        def settled(self, event: Event, exc: BaseException | None) -> None:
            heard.append((event.data, None if exc is None else type(exc)))

    ledger, delivery, seqs = delivery_with(2, tracker=Tracking())
    delivery.error_handler = lambda event: None
    ledger.fail(seqs[1], "origin", ValueError("x"))
    ledger.queue([seqs[0]])
    ledger.worker_started(1, 0)
    ledger.assign(1, 1, ledger.take(0, 1))
    assert ledger.batch_done(1, 1) == 1
    delivery.deliver_all()
    assert sorted(heard, key=repr) == sorted([(1, ValueError), (0, None)], key=repr)


def test_generator_errors_are_delivered_with_no_original_event() -> None:
    """A generator's failure is an error event whose original event is None."""
    _, delivery, _ = delivery_with(0)
    received: list[Event] = []
    delivery.error_handler = received.append
    generator = object()
    delivery.generator_failed(generator, OSError("gone"))  # type: ignore[arg-type]
    assert delivery.undelivered()
    delivery.deliver_all()
    assert [(e.originator, str(e.data[0]), e.data[1]) for e in received] == [
        (generator, "gone", None)
    ]


def test_undelivered_while_a_callback_runs() -> None:
    """undelivered() stays true until the callback of a taken outcome has returned."""
    ledger, delivery, seqs = delivery_with(1)
    seen: list[bool] = []
    delivery.error_handler = lambda event: seen.append(delivery.undelivered())
    ledger.fail(seqs[0], "origin", ValueError("x"))
    delivery.deliver_all()
    assert seen == [True]
    assert not delivery.undelivered()


def processed_by_two_trackers(first: Any, second: Any) -> tuple[Ledger, OutcomeDelivery]:
    """A ledger whose six events (first's, then second's, then first's again) were processed."""
    ledger = Ledger(1)
    seqs: list[int] = []
    for tracker, data in ((first, [0, 1]), (second, [2, 3]), (first, [4, 5])):
        seqs += ledger.accept([Event("test", None, n) for n in data], tracker)
    ledger.queue(seqs)
    ledger.worker_started(1, 0)
    ledger.assign(1, 1, ledger.take(0, len(seqs)))
    assert ledger.batch_done(1, 1) == len(seqs)
    return ledger, OutcomeDelivery(ledger, threading.Condition())


def test_a_generator_with_settled_batch_hears_its_runs_in_order() -> None:
    """settled_batch() gets each run of its own processed events, in order; settled() none."""

    class Batched(EventGenerator):
        def __init__(self) -> None:
            self.runs: list[list[tuple[object, object]]] = []

        def get_events(self) -> list[Event]:
            return []

        def settled(self, event: Event, exc: BaseException | None) -> None:
            raise AssertionError("settled_batch() should have been called")

        def settled_batch(self, outcomes: list[tuple[Event, BaseException | None]]) -> None:
            self.runs.append([(event.data, exc) for event, exc in outcomes])

    first, second = Batched(), Batched()
    _ledger, delivery = processed_by_two_trackers(first, second)
    delivery.deliver_all()
    assert first.runs == [[(0, None), (1, None)], [(4, None), (5, None)]]
    assert second.runs == [[(2, None), (3, None)]]
    assert not delivery.undelivered()


def test_a_settled_that_raises_does_not_keep_the_next_events_from_theirs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without settled_batch(), settled() runs for each event; one raising is logged alone."""

    class Fussy(EventGenerator):
        def __init__(self) -> None:
            self.heard: list[object] = []

        def get_events(self) -> list[Event]:
            return []

        def settled(self, event: Event, exc: BaseException | None) -> None:
            self.heard.append(event.data)
            if event.data == 1:
                raise RuntimeError("settled broke")

    first, second = Fussy(), Fussy()
    _ledger, delivery = processed_by_two_trackers(first, second)
    with caplog.at_level(logging.ERROR, logger="eventmp"):
        delivery.deliver_all()
    assert first.heard == [0, 1, 4, 5] and second.heard == [2, 3]
    assert [r.getMessage().endswith("failed in settled()") for r in caplog.records] == [True]
