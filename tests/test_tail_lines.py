"""Tests for eventmp.tail_lines: a tail's bytes cut into lines, matched, and made into events."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    CATASTROPHIC,
    DIGITS,
    SLOWEST,
    MakeTail,
    append,
    lines,
    log_texts,
    numbered,
    poll,
    poll_until_read,
    rule_sets,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from eventmp.tail import FileTailGenerator, Rule

# == lines =======================================================================================


def test_partial_line_waits_for_its_newline(make_tail: MakeTail, tmp_path: Path) -> None:
    """A line is emitted only once its newline has arrived."""
    log = tmp_path / "app.log"
    log.write_text("")
    tail = make_tail(log)
    poll(tail)
    append(log, "hel")
    assert poll(tail) == []
    append(log, "lo")
    assert poll(tail) == []
    append(log, "\nwor")
    assert numbered(poll(tail)) == [(1, "hello")]
    append(log, "ld\n")
    assert numbered(poll(tail)) == [(2, "world")]


def test_crlf_and_lf_endings_are_stripped(make_tail: MakeTail, tmp_path: Path) -> None:
    """\\r\\n and \\n are both stripped; a lone \\r inside a line stays."""
    log = tmp_path / "app.log"
    log.write_bytes(b"dos\r\nunix\nmid\rdle\r\n\r\n")
    tail = make_tail(log, start_at="beginning")
    assert lines(poll(tail)) == ["dos", "unix", "mid\rdle", ""]


def test_undecodable_bytes_are_replaced(make_tail: MakeTail, tmp_path: Path) -> None:
    """Bytes that are not valid in the encoding become U+FFFD instead of an error."""
    log = tmp_path / "app.log"
    log.write_bytes(b"caf\xe9 \xff\xfe ok\n")
    tail = make_tail(log, start_at="beginning")
    assert lines(poll(tail)) == ["caf\ufffd \ufffd\ufffd ok"]


def test_encoding_is_used_to_decode(make_tail: MakeTail, tmp_path: Path) -> None:
    """A Latin-1 file read with encoding="latin-1" decodes exactly."""
    log = tmp_path / "app.log"
    log.write_bytes("café crème\n".encode("latin-1"))
    tail = make_tail(log, start_at="beginning", encoding="latin-1")
    assert lines(poll(tail)) == ["café crème"]


def test_long_line_is_cut_into_pieces_with_its_number(make_tail: MakeTail, tmp_path: Path) -> None:
    """A line over max_line_bytes comes out in pieces of that size, all with the line's number."""
    log = tmp_path / "app.log"
    log.write_text("")
    tail = make_tail(log, max_line_bytes=10)
    poll(tail)
    append(log, "a" * 25)
    assert numbered(poll(tail)) == [(1, "a" * 10), (1, "a" * 10)]
    append(log, "\nshort\n")
    assert numbered(poll(tail)) == [(1, "aaaaa"), (2, "short")]


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_the_cap_applies_to_the_text_of_the_line_not_its_ending(
    make_tail: MakeTail, tmp_path: Path, ending: str
) -> None:
    """A line of exactly max_line_bytes is one piece with \r\n too; twice that is two pieces."""
    log = tmp_path / "app.log"
    log.write_text("")
    tail = make_tail(log, max_line_bytes=10)
    poll(tail)
    append(log, "a" * 10 + ending + "b" * 20 + ending + "c" * 10 + ending)
    assert numbered(poll(tail)) == [(1, "a" * 10), (2, "b" * 10), (2, "b" * 10), (3, "c" * 10)]
    assert tail.lines_read == 3


def test_a_partial_line_of_exactly_the_cap_waits_for_its_crlf(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """A line still being written is not cut when only its \r passes the cap."""
    log = tmp_path / "app.log"
    log.write_text("")
    tail = make_tail(log, max_line_bytes=10)
    poll(tail)
    append(log, "a" * 10 + "\r")
    assert poll(tail) == []
    append(log, "\n")
    assert numbered(poll(tail)) == [(1, "a" * 10)]
    assert tail.lines_read == 1


def test_lines_read_counts_every_line_matched_or_not(make_tail: MakeTail, tmp_path: Path) -> None:
    """lines_read counts each line checked against the rules, whether a rule matched or not."""
    log = tmp_path / "app.log"
    log.write_text("a\nb\nc\n")
    tail = make_tail(log, start_at="beginning", rules=[Rule("b", re.compile("b"), "h")])
    assert lines(poll(tail)) == ["b"]
    assert tail.lines_read == 3


# == rules =======================================================================================


def test_event_data_carries_file_line_match_and_groups(make_tail: MakeTail, tmp_path: Path) -> None:
    """The event has the handler of its rule and data with the file, line, match and groups."""
    log = tmp_path / "app.log"
    log.write_text("ok\nERROR 42 disk full\n")
    rule = Rule("error", re.compile(r"ERROR (?P<code>\d+) (\w+)"), "error-handler")
    tail = make_tail(log, start_at="beginning", rules=[rule], name="web")
    [event] = poll(tail)
    assert event.originator is tail
    assert event.handler == "error-handler"
    assert event.data == {
        "input": "web",
        "file": os.fspath(log),
        "line_number": 2,
        "line": "ERROR 42 disk full",
        "rule": "error",
        "match": "ERROR 42 disk",
        "groups": ["42", "disk"],
        "named": {"code": "42"},
    }


def test_rules_apply_in_order_with_exclude_and_quick(make_tail: MakeTail, tmp_path: Path) -> None:
    """Each matching rule makes an event; exclude vetoes its rule; a quick match ends the line."""
    log = tmp_path / "app.log"
    log.write_text("DEBUG ERROR 1 x\nERROR 42 disk\nERROR 7 ignored\nfine\n")
    rules = [
        Rule("debug", re.compile("DEBUG"), "h-debug", quick=True),
        Rule("error", re.compile(r"ERROR (\d+)"), "h-error", exclude=re.compile("ignored")),
        Rule("any-error", re.compile("ERROR"), "h-any"),
    ]
    tail = make_tail(log, start_at="beginning", rules=rules)
    events = poll(tail)
    assert [(e.data["line_number"], e.data["rule"], e.handler) for e in events] == [
        (1, "debug", "h-debug"),
        (2, "error", "h-error"),
        (2, "any-error", "h-any"),
        (3, "any-error", "h-any"),
    ]


def test_quick_rule_excluded_does_not_stop_later_rules(make_tail: MakeTail, tmp_path: Path) -> None:
    """A quick rule whose exclude matched did not match, so the next rules still run."""
    log = tmp_path / "app.log"
    log.write_text("ERROR but ignored\n")
    rules = [
        Rule("quick", re.compile("ERROR"), "h1", exclude=re.compile("ignored"), quick=True),
        Rule("other", re.compile("ERROR"), "h2"),
    ]
    tail = make_tail(log, start_at="beginning", rules=rules)
    assert [e.data["rule"] for e in poll(tail)] == ["other"]


# == slow rules ==================================================================================


def test_a_slow_rule_is_logged_once_with_its_file_and_line(
    make_tail: MakeTail, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first slow line of a rule is a warning naming the rule, file and line; later ones
    are counted, not logged."""
    log = tmp_path / "app.log"
    log.write_text(f"fine\n{DIGITS}\n{DIGITS}\n")
    rules = [Rule("nested", CATASTROPHIC, "h")]
    tail = make_tail(log, rules=rules, start_at="beginning", slow_line_seconds=SLOWEST)
    with caplog.at_level(logging.WARNING, logger="eventmp"):
        assert poll_until_read(tail, 3) == []
    warnings = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
    assert len(warnings) == 1
    assert "'nested'" in warnings[0] and f"line 2 of {log}" in warnings[0]
    stats = tail.rule_stats()["nested"]
    assert (stats.matches, stats.slow_lines) == (0, 2) and stats.seconds > 0


# == at random read boundaries ===================================================================


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
            state_file=Path(tmp, "app.state"),  # the checkpoint whose offsets are checked
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
