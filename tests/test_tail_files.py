"""Tests for eventmp.tail_files: which files a tail follows, and where each one starts."""

from __future__ import annotations

import os
import re
from pathlib import Path

from eventmp.tail import FileTailGenerator, Rule

EVERYTHING = [Rule("all", re.compile(""), "handler")]


def test_a_file_seen_under_two_names_is_followed_once(tmp_path: Path) -> None:
    """A hard link and its target are one identity: the tail reads its lines once."""
    log = tmp_path / "a.log"
    log.write_text("one\n")
    os.link(log, tmp_path / "b.log")
    tail = FileTailGenerator([os.fspath(tmp_path / "*.log")], EVERYTHING, start_at="beginning")
    try:
        assert [e.data["line"] for e in tail.get_events()] == ["one"]
    finally:
        tail.stop()


def test_a_checkpoint_entry_of_a_renamed_file_is_found_by_identity(tmp_path: Path) -> None:
    """A file renamed while the tail was stopped resumes from its old path's entry."""
    log, state = tmp_path / "a.log", tmp_path / "state.json"
    log.write_text("one\ntwo\n")
    first = FileTailGenerator(
        [os.fspath(tmp_path / "*.log")], EVERYTHING, start_at="beginning", state_file=state
    )
    first.track_outcomes = False
    assert len(first.get_events()) == 2
    first.stop()
    os.rename(log, tmp_path / "b.log")
    with open(tmp_path / "b.log", "a") as out:
        out.write("three\n")
    second = FileTailGenerator(
        [os.fspath(tmp_path / "*.log")], EVERYTHING, start_at="beginning", state_file=state
    )
    try:
        assert [(e.data["line_number"], e.data["line"]) for e in second.get_events()] == [
            (3, "three")
        ]
    finally:
        second.stop()
