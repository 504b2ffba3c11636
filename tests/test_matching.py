"""Tests for eventmp.matching: the per-line definition, its statistics, and a tail driving it."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from conftest import log_texts, rule_sets
from hypothesis import example, given, settings
from hypothesis import strategies as st

from eventmp.block_search import BlockSearch
from eventmp.matching import LineMatcher, Rule, RuleStats
from eventmp.tail import FileTailGenerator


def test_matches_known_from_a_block_search_are_trusted_and_the_rules_it_skipped_are_run() -> None:
    """A rule the block search searched matches only as ``known`` says; one it skipped is run."""
    rules = [Rule("a", re.compile("a"), None), Rule("b", re.compile("b"), None)]
    matcher = LineMatcher(rules)
    hits, _slow = matcher.match_text("ab", {}, line_by_line={1})
    assert [rule.name for rule, _match in hits] == ["b"]
    hits, _slow = matcher.match_text("ab")
    assert [rule.name for rule, _match in hits] == ["a", "b"]


def test_rule_stats_count_matches_and_time() -> None:
    """Each rule's matches (events) and seconds add up per rule name."""
    rules = [Rule("a", re.compile("a"), None), Rule("b", re.compile("b"), None, quick=True)]
    matcher = LineMatcher(rules)
    BlockSearch(matcher).block(b"a\nb\nab\nxx\n", 100)
    stats = matcher.stats()
    assert stats["a"].matches == 2 and stats["b"].matches == 2
    assert stats["a"].slow_lines == 0 and stats["a"].seconds > 0
    assert isinstance(stats["a"], RuleStats)


def test_a_slow_rule_is_counted_on_its_line() -> None:
    """A rule over the threshold on a line is named with that line's index, and counted once."""
    rules = [Rule("nested", re.compile(r"(\d+)+x"), None), Rule("ok", re.compile("ok"), None)]
    matcher = LineMatcher(rules, slow_seconds=1e-9)
    block = BlockSearch(matcher).block(b"ok\n" + b"1" * 12 + b"\nok\n", 100)
    assert ("nested", 1) in block.slow
    assert matcher.stats()["nested"].slow_lines == len([s for s in block.slow if s[0] == "nested"])


# == through a tail ================================================================================


def per_line(data: bytes, rules: list[Rule], limit: int) -> list[Any]:
    """What the tail must make of ``data``, written independently of the matcher: one line at a
    time, ``\\r`` stripped, cut into pieces of ``limit`` bytes, each decoded and matched alone."""
    made = []
    offset = 0
    for number, line in enumerate(data.split(b"\n")[:-1], 1):
        raw = line[:-1] if line.endswith(b"\r") else line
        for at in range(0, max(len(raw), 1), limit):
            text = raw[at : at + limit].decode("utf-8", "replace")
            for rule in rules:
                match = rule.regex.search(text)
                if match is None or (rule.exclude is not None and rule.exclude.search(text)):
                    continue
                made.append((rule.name, number, text, match.group(), match.groups(), offset + at))
                if rule.quick:
                    break
        offset += len(line) + 1
    return made


@settings(max_examples=300, deadline=None, database=None)
@example(rules=[Rule("all", re.compile(""), None)], data=b"ab\r", limit=2, cuts=[3])
@example(rules=[Rule("e", re.compile("é"), None)], data=b"x\xc3\xa9\xc3\xa9", limit=3, cuts=[2, 4])
@given(
    rules=rule_sets(),
    data=log_texts,
    limit=st.integers(1, 12),
    cuts=st.lists(st.integers(0, 300), max_size=8),
)
def test_a_tail_reading_at_random_boundaries_makes_the_per_line_events(
    rules: list[Rule], data: bytes, limit: int, cuts: list[int]
) -> None:
    """Written in random pieces (multibyte characters split, lines cut), a log gives a tail
    exactly the events, line numbers and checkpoint offsets of the per-line definition."""
    data += b"\n"
    made: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp, "app.log")
        log.write_bytes(b"")
        tail = FileTailGenerator(
            [str(log)],
            rules,
            start_at="beginning",
            rescan_interval=0,
            checkpoint_interval=0,
            max_line_bytes=limit,
            slow_line_seconds=60,
        )
        try:
            written = 0
            for cut in [*sorted(c for c in set(cuts) if c < len(data)), len(data)]:
                with open(log, "ab") as out:
                    out.write(data[written:cut])
                written = cut
                for _ in range(100):  # bounded: a poll always gets somewhere
                    events = tail.get_events()
                    for event in events:
                        d = event.data
                        offset = tail._inflight[id(event)][2]
                        made.append((d["rule"], d["line_number"], d["line"], d["match"]))
                        made[-1] += (tuple(d["groups"]), offset)
                        tail.settled(event, None)
                    if not tail.has_more:
                        break
        finally:
            tail.stop()
    assert made == per_line(data, rules, limit)
    assert tail.lines_read == data.count(b"\n")
