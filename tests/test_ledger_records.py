"""eventmp.ledger_records alone: positions and the batches a worker was given."""

from __future__ import annotations

from eventmp.ledger_records import INDEX_BITS, INDEX_MASK, MAX_BATCH_EVENTS, Batch, position


def test_position_packs_batch_and_index() -> None:
    """A position is the batch number above INDEX_BITS and the index below, ordered by both."""
    assert position(3, 5) == (3 << INDEX_BITS) | 5
    assert position(3, 5) >> INDEX_BITS == 3
    assert position(2, (1 << INDEX_BITS) - 1) < position(3, 0)


def test_index_mask_takes_the_index_back_for_every_index_a_batch_can_have() -> None:
    """position() & INDEX_MASK is the index, from 0 to MAX_BATCH_EVENTS - 1."""
    for index in (0, 1, MAX_BATCH_EVENTS - 1):
        assert position(7, index) & INDEX_MASK == index
        assert position(7, index) >> INDEX_BITS == 7


def test_unsettled_leaves_out_settled_and_failed_events_in_order() -> None:
    """Batch.unsettled() lists the events before the bound with no outcome yet, in batch order."""
    batch = Batch(1, [10, 11, 12, 13, 14])
    assert batch.unsettled(5) == [10, 11, 12, 13, 14]
    batch.settled = 1
    batch.failed = {3}
    assert batch.unsettled(5) == [11, 12, 14]
    assert batch.unsettled(3) == [11, 12]
    assert batch.unsettled(1) == []
