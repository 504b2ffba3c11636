"""Tests for eventmp.matching: the per-line definition and its statistics."""

from __future__ import annotations

import re

from eventmp.block_search import BlockSearch
from eventmp.matching import LineMatcher, Rule, RuleStats


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
