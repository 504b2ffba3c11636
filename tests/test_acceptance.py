"""eventmp.acceptance with a real ledger, no process: the inbox, its room, routing by key."""

from __future__ import annotations

import threading

from eventmp.acceptance import Acceptance, Inbox
from eventmp.batching import MAX_BATCH_EVENTS
from eventmp.errors import EventmpError
from eventmp.event import Event
from eventmp.ledger import Ledger
from eventmp.shared import RUNNING, STOPPING, Mode, Waker


def make_acceptance(
    *, key: object = None, workers: int = 1, max_pending: int = 100
) -> tuple[Acceptance, Ledger, Mode]:
    ledger = Ledger(workers, keyed=key is not None)
    mode = Mode()
    mode.state = RUNNING
    acceptance = Acceptance(
        ledger,
        mode,
        threading.Condition(),
        Waker(),
        key=key,  # type: ignore[arg-type]
        workers=workers,
        max_pending=max_pending,
    )
    return acceptance, ledger, mode


def events(*data: object) -> list[Event]:
    return [Event("test", None, d) for d in data]


def test_the_inbox_is_a_list_with_room() -> None:
    """An Inbox starts empty and closed; it is a list of events."""
    inbox = Inbox()
    assert inbox == [] and inbox.room == 0
    inbox.append(Event("test", None, 1))
    assert len(inbox) == 1


def test_taking_the_inbox_accepts_its_events_in_order() -> None:
    """take_inbox() numbers what the fast path appended, in order, and queues it."""
    acceptance, ledger, _mode = make_acceptance()
    acceptance.inbox.extend(events("a", "b", "c"))
    acceptance.take_inbox()
    assert not acceptance.inbox
    assert [ledger.pending[seq].data for seq in ledger.shared] == ["a", "b", "c"]
    assert ledger.accepted == 3


def test_after_stop_the_inbox_is_left_for_its_submitters_to_take_back() -> None:
    """Once stopping, take_inbox() accepts nothing; take_back() removes a refused event."""
    acceptance, ledger, mode = make_acceptance()
    late = events("late")[0]
    mode.state = STOPPING
    acceptance.inbox.append(late)
    acceptance.take_inbox()
    assert ledger.accepted == 0 and acceptance.inbox == [late]
    assert acceptance.take_back(late)
    assert not acceptance.take_back(late)
    assert not acceptance.inbox


def test_the_room_is_a_batch_at_most_and_never_past_max_pending() -> None:
    """reopen() opens the fast path within max_pending and a batch; closes it when stopping."""
    acceptance, _ledger, mode = make_acceptance(max_pending=10)
    acceptance.reopen()
    assert acceptance.inbox.room == 10
    acceptance.enqueue(events(*range(4)))
    acceptance.inbox.extend(events(*range(2)))
    acceptance.reopen()
    assert acceptance.inbox.room == 4
    big, _, _ = make_acceptance(max_pending=10 * MAX_BATCH_EVENTS)
    big.reopen()
    assert big.inbox.room == MAX_BATCH_EVENTS
    mode.state = STOPPING
    acceptance.reopen()
    assert acceptance.inbox.room == 0


def test_close_shuts_the_fast_path_and_accepts_what_it_holds() -> None:
    """close() (before a stop) accepts the inbox while still running, and leaves no room."""
    acceptance, ledger, _mode = make_acceptance()
    acceptance.reopen()
    acceptance.inbox.extend(events(1, 2))
    acceptance.close()
    assert acceptance.inbox.room == 0 and ledger.accepted == 2


def test_a_key_routes_each_event_to_its_lane() -> None:
    """With a key function, equal keys share a lane; the lanes keep acceptance order."""
    acceptance, ledger, _mode = make_acceptance(key=lambda event: event.data % 2, workers=2)
    acceptance.enqueue(events(0, 1, 2, 3, 4))
    lanes = [[ledger.pending[seq].data for seq in lane] for lane in ledger.lanes]
    assert sorted(lanes) == [[0, 2, 4], [1, 3]]


def test_a_key_function_that_raises_fails_that_event_alone() -> None:
    """The event whose key raises fails with EventmpError (the cause kept); the rest queue."""

    def key(event: Event) -> int:
        if event.data == "bad":
            raise KeyError("no key")
        return 0

    acceptance, ledger, _mode = make_acceptance(key=key, workers=2)
    with acceptance.changed:  # the dispatcher's lock, held as the dispatcher holds it
        acceptance.enqueue(events("ok", "bad", "fine"))
    assert [ledger.pending[seq].data for lane in ledger.lanes for seq in lane] == ["ok", "fine"]
    (failure,) = ledger.failures
    assert isinstance(failure.exception, EventmpError)
    assert isinstance(failure.exception.__cause__, KeyError)
    assert failure.event is not None and failure.event.data == "bad"
