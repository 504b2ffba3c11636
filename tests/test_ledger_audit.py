"""eventmp.ledger_audit alone: the whole-ledger scans, on hand-made ledgers and through Ledger."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from eventmp.errors import LedgerError
from eventmp.event import Event
from eventmp.ledger import Ledger
from eventmp.ledger_audit import AUDIT_UP_TO, audit_problems, held_seqs, holder
from eventmp.ledger_records import Batch


def scan(pending: dict[int, Any], **parts: Any) -> list[str]:
    """audit_problems() of one slot, with every part empty unless given."""
    defaults: dict[str, Any] = {
        "shared": deque(),
        "lanes": [deque()],
        "resync": [[]],
        "held": {},
        "in_hand": [],
        "sizes": {},
        "bytes_held": 0,
    }
    return audit_problems(pending, **(defaults | parts))


def test_audit_finds_an_event_in_two_places() -> None:
    """audit() raises when a held event is also queued."""
    ledger = Ledger(1)
    ledger.queue(ledger.accept([Event("test", None, n) for n in range(2)]))
    ledger.worker_started(1, 0)
    ledger.assign(1, 1, ledger.take(0, 1))
    ledger.shared.append(1)
    with pytest.raises(LedgerError, match="event 1 is both"):
        ledger.audit()


def test_a_ledger_with_each_event_in_one_place_has_no_problems() -> None:
    """Queued, held, in hand and resync events, each once and pending, pass the audit."""
    pending = dict.fromkeys(range(1, 6), "event")
    held = {7: deque([Batch(1, [2, 3])])}
    problems = scan(
        pending,
        shared=deque([1]),
        held=held,
        in_hand=[4],
        resync=[[5]],
        sizes={1: 10},
        bytes_held=10,
    )
    assert problems == []


def test_audit_problems_name_each_misplaced_event_in_the_order_found() -> None:
    """Every breach is reported, not just the first: the ledger logs them all in production."""
    pending = dict.fromkeys([1, 2], "event")
    settled = Batch(1, [3])
    settled.settled = 1
    held = {7: deque([Batch(2, [1, 9]), settled])}
    problems = scan(pending, shared=deque([1]), held=held, sizes={2: 5}, bytes_held=4)
    assert problems == [
        "event 1 is both in the shared backlog and held by worker 7",
        "event 9 held by worker 7 has an outcome",
        "event 9 is held by worker 7 but not pending",
        "4 bytes held, but the pending events' sizes differ",
    ]


def test_an_event_settled_by_a_worker_yet_pending_is_a_problem_unless_in_hand() -> None:
    """A settled position whose event is still pending is wrong, except for one taken again."""
    batch = Batch(1, [1])
    batch.settled = 1
    held = {7: deque([batch])}
    assert scan({1: "event"}, held=held) == ["event 1 settled by worker 7, yet pending"]
    assert scan({1: "event"}, held=held, in_hand=[1]) == []


def test_a_ledger_past_the_audit_limit_is_not_scanned() -> None:
    """Above AUDIT_UP_TO pending events the audit reports nothing: a pass would cost too much."""
    pending = dict.fromkeys(range(AUDIT_UP_TO + 1), "event")
    assert scan(pending, shared=deque([1, 1])) == []
    del pending[0]
    assert scan(pending, shared=deque([1, 1])) != []


def test_holder_is_the_worker_whose_position_of_the_event_has_no_outcome() -> None:
    """holder() names the worker holding the event open, and none once it settled or failed."""
    batch = Batch(1, [4, 5, 6])
    held = {3: deque([Batch(2, [])]), 8: deque([batch])}
    assert holder(held, 5) == 8
    assert holder(held, 7) is None
    batch.failed = {1}
    assert holder(held, 5) is None
    batch.settled = 3
    assert holder(held, 6) is None


def test_held_seqs_are_every_event_of_every_batch_settled_or_not() -> None:
    """held_seqs() gathers the events of every worker's batches, whatever became of them."""
    settled = Batch(1, [1, 2])
    settled.settled = 2
    held = {1: deque([settled, Batch(3, [5])]), 2: deque([Batch(2, [3, 4])])}
    assert held_seqs(held) == {1, 2, 3, 4, 5}
    assert held_seqs({}) == set()
