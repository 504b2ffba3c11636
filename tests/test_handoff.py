"""eventmp.handoff alone: who reads the acknowledgements, decided by the clock it is given."""

from __future__ import annotations

from eventmp.handoff import ACK_CHECK_INTERVAL, ACK_HANDOFF, BUSY_SUBMITTER, AckHandoff


def test_the_dispatcher_thread_reads_acknowledgements_until_a_submitter_is_busy() -> None:
    """A fresh hand-off leaves the result pipes to the dispatcher thread."""
    handoff = AckHandoff()
    assert not handoff.loop_leaves_acks(1000.0)
    assert handoff.next_check <= 1000.0


def test_a_submitter_back_within_the_busy_gap_takes_the_acknowledgements_over() -> None:
    """Two reads by a submitter closer than BUSY_SUBMITTER make the dispatcher thread leave them."""
    handoff = AckHandoff()
    handoff.collecting(10.0, by_submitter=True)
    assert not handoff.loop_leaves_acks(10.0)  # once is an idle pipeline's submitter
    handoff.collecting(10.0 + BUSY_SUBMITTER / 2, by_submitter=True)
    assert handoff.loop_leaves_acks(10.0 + BUSY_SUBMITTER / 2)
    assert handoff.loop_leaves_acks(10.0 + ACK_HANDOFF / 2)
    assert not handoff.loop_leaves_acks(10.0 + BUSY_SUBMITTER + ACK_HANDOFF)


def test_a_submitter_that_reads_now_and_then_leaves_them_to_the_dispatcher_thread() -> None:
    """Reads further apart than BUSY_SUBMITTER never hand the pipes over."""
    handoff = AckHandoff()
    for n in range(5):
        handoff.collecting(10.0 + n * BUSY_SUBMITTER * 2, by_submitter=True)
        assert not handoff.loop_leaves_acks(10.0 + n * BUSY_SUBMITTER * 2)


def test_reads_by_the_dispatcher_thread_set_the_next_check_only() -> None:
    """The dispatcher thread's own reads schedule the next check and hand nothing over."""
    handoff = AckHandoff()
    for n in range(3):
        handoff.collecting(10.0 + n * BUSY_SUBMITTER / 4, by_submitter=False)
    assert handoff.next_check == 10.0 + 2 * BUSY_SUBMITTER / 4 + ACK_CHECK_INTERVAL
    assert not handoff.loop_leaves_acks(10.0 + BUSY_SUBMITTER)


def test_take_back_returns_the_pipes_and_says_whether_a_submitter_had_them() -> None:
    """A submitter that stops to wait hands them back: true once (wake the thread), then false."""
    handoff = AckHandoff()
    assert not handoff.take_back()
    handoff.collecting(10.0, by_submitter=True)
    handoff.collecting(10.0001, by_submitter=True)
    assert handoff.take_back()
    assert not handoff.loop_leaves_acks(10.0002)
    assert not handoff.take_back()
