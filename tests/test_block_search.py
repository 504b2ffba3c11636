"""Tests for eventmp.block_search: one search per rule over a block finds the definition's hits."""

from __future__ import annotations

import gc
import re
import time
from typing import Any

from conftest import log_texts, rule_sets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from eventmp.block_search import BlockSearch
from eventmp.matching import Block, LineMatcher, Rule


def hits_of(block: Block) -> list[Any]:
    return [
        (
            line.line_index,
            piece.offset,
            piece.text,
            [(r.name, m.group(), m.groups(), m.groupdict()) for r, m in piece.hits],
        )
        for line in block.lines
        for piece in line.pieces
    ]


TRICKY = [
    (["$"], b"\n\n"),
    (["a$"], b"a\nb\na\r\nx\n"),
    (["^b", r"\Ab\Z"], b"ab\nb\nb\r\n"),
    ([r"(?<!\s)x", r"x(?!\s)"], b"x\n x\nx\r\n"),
    ([r"a\sb", "(?s)a.b", "a[^x]b"], b"a\nb\na b\n"),
    ([r"(?>\s*)$", r"\s*+$"], b"a \n  \r\nb\n"),
    (["é$", "\ufffd"], b"\xc3\xa9\n\xe2\x82\r\n\xff\n"),
    (["x(?![^a])", "(?<![^a])b"], b"x\nbx\nb\n"),
    (["x(?![^ab])"], b"x\nbx\nb\n"),
    (["(?>[^ab]*)$"], b"x\nbx\nb\n"),
]


def tricky(patterns: list[str], data: bytes) -> dict[str, Any]:
    """The arguments of an example: these patterns as rules over ``data``."""
    rules = [Rule(f"r{n}", re.compile(p), None) for n, p in enumerate(patterns)]
    return {"rules": rules, "data": data, "limit": 8, "max_hits": 100}


@settings(
    max_examples=2000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@example(**tricky(*TRICKY[0]))
@example(**tricky(*TRICKY[1]))
@example(**tricky(*TRICKY[2]))
@example(**tricky(*TRICKY[3]))
@example(**tricky(*TRICKY[4]))
@example(**tricky(*TRICKY[5]))
@example(**tricky(*TRICKY[6]))
@example(**tricky(*TRICKY[7]))
@example(**tricky(*TRICKY[8]))
@example(**tricky(*TRICKY[9]))
@given(rules=rule_sets(), data=log_texts, limit=st.integers(1, 12), max_hits=st.integers(1, 30))
def test_block_search_agrees_with_the_line_by_line_definition(
    rules: list[Rule], data: bytes, limit: int, max_hits: int
) -> None:
    """For any rules and text, the block search finds what the per-line path finds (given, as
    a tail gives it, a buffer whose complete lines end at ``size``, a partial line after)."""
    whole = data.rfind(b"\n") + 1
    fast_matcher = LineMatcher(rules, "utf-8", limit)
    fast = BlockSearch(fast_matcher).block(bytearray(data), max_hits, size=whole)
    data = data[:whole]
    slow_matcher = LineMatcher(rules, "utf-8", limit)
    slow = slow_matcher.block_reference(data, max_hits)
    assert hits_of(fast) == hits_of(slow)
    assert (fast.lines_done, fast.bytes_done) == (slow.lines_done, slow.bytes_done)
    # Each rule's match count too, the lines the block search settles without match_text
    # included.
    assert {name: s.matches for name, s in fast_matcher.stats().items()} == {
        name: s.matches for name, s in slow_matcher.stats().items()
    }


@settings(max_examples=500, deadline=None, database=None)
@given(rules=rule_sets(), data=log_texts, window=st.integers(1, 20), max_hits=st.integers(1, 30))
def test_windows_of_any_size_agree(
    rules: list[Rule], data: bytes, window: int, max_hits: int
) -> None:
    """Searching a block in windows of any number of characters finds the same hits."""
    data = data[: data.rfind(b"\n") + 1]
    search = BlockSearch(LineMatcher(rules, "utf-8", 8))
    search._window_size = window  # production windows are thousands of characters
    fast = search.block(data, max_hits)
    slow = LineMatcher(rules, "utf-8", 8).block_reference(data, max_hits)
    assert hits_of(fast) == hits_of(slow)
    assert (fast.lines_done, fast.bytes_done) == (slow.lines_done, slow.bytes_done)


@settings(max_examples=100, deadline=None, database=None)
@given(rules=rule_sets(), data=log_texts, encoding=st.sampled_from(["latin-1", "cp1252", "ascii"]))
def test_single_byte_encodings_agree_too(rules: list[Rule], data: bytes, encoding: str) -> None:
    """A single-byte encoding's block decodes as its lines do: the same hits either way."""
    data = data[: data.rfind(b"\n") + 1]
    fast = BlockSearch(LineMatcher(rules, encoding, 8)).block(data, 1000)
    slow = LineMatcher(rules, encoding, 8).block_reference(data, 1000)
    assert hits_of(fast) == hits_of(slow)


def test_a_block_stops_after_the_line_that_reaches_max_hits() -> None:
    """The budget stops the search after a whole line, and says how far it got."""
    rules = [Rule("a", re.compile("a"), None), Rule("b", re.compile("b"), None)]
    block = BlockSearch(LineMatcher(rules)).block(b"x\nab\nab\na\n", 3)
    assert [line.line_index for line in block.lines] == [1, 2]
    assert (block.lines_done, block.bytes_done) == (3, 8)


def test_a_passed_deadline_still_gets_one_line_through() -> None:
    """A block whose deadline has passed goes through at least one line, so a tail advances."""
    rules = [Rule("nested", re.compile(r"(\d+)+x"), None)]
    block = BlockSearch(LineMatcher(rules)).block(b"1\n2\n3\n", 100, deadline=0.0)
    assert 1 <= block.lines_done <= 3


def test_a_pause_of_the_process_does_not_make_a_rule_slow(monkeypatch: Any) -> None:
    """A wall clock that leaps (the process paused) sets no rule to line by line: CPU time does."""
    wall = iter(range(0, 10**9, 10))  # ten seconds pass between any two readings
    monkeypatch.setattr("eventmp.block_search.time.perf_counter", lambda: float(next(wall)))
    matcher = LineMatcher([Rule("failed", re.compile(r"Failed (\w+)"), None)])
    search = BlockSearch(matcher)
    data = b"".join(b"Failed %d\nok\n" % n for n in range(1000))
    for _ in range(2):
        block = search.block(data, 10_000)
        assert len(block.lines) == 1000 and not block.slow
    assert matcher.stats()["failed"].slow_lines == 0


def test_a_garbage_collection_during_a_search_does_not_make_a_rule_slow(monkeypatch: Any) -> None:
    """CPU time the window's garbage collections took is not the rule's: it stays block-searched
    (were it line by line, the leaping wall clock would make every line slow)."""
    wall = iter(range(0, 10**9, 10))
    monkeypatch.setattr("eventmp.block_search.time.perf_counter", lambda: float(next(wall)))
    matcher = LineMatcher([Rule("failed", re.compile(r"Failed (\w+)"), None)])
    search = BlockSearch(matcher)
    data = b"".join(b"Failed %d\nok\n" % n for n in range(1000))

    def slow_collection(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            spent = time.thread_time() + 0.0002
            while time.thread_time() < spent:
                pass

    threshold = gc.get_threshold()
    gc.callbacks.append(slow_collection)
    gc.set_threshold(1)  # a collection at every few allocations: hundreds in the window
    try:
        block = search.block(data, 10_000)
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(slow_collection)
    assert len(block.lines) == 1000 and not block.slow


def test_an_encoding_decoded_line_by_line_keeps_the_time_budget() -> None:
    """Shift JIS is matched one line at a time; a passed deadline still stops it after a line."""
    rules = [Rule("a", re.compile("a"), None)]
    search = BlockSearch(LineMatcher(rules, "shift_jis"))
    assert [line.line_index for line in search.block(b"a\nb\na\n", 100).lines] == [0, 2]
    assert search.block(b"a\nb\na\n", 100, deadline=0.0).lines_done == 1
