"""Tests for eventmp.checkpoint: the state file written atomically and read back warily."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from eventmp.checkpoint import STATE_VERSION, load_state, save_state


def test_saved_entries_read_back_the_same(tmp_path: Path) -> None:
    """What save_state writes, load_state returns, in a versioned JSON file."""
    path = os.fspath(tmp_path / "sub" / "state.json")
    entries = {"/var/log/a.log": {"inode": 5, "device": 1, "offset": 120, "line": 3}}
    save_state(path, entries)
    assert json.loads(Path(path).read_text())["version"] == STATE_VERSION
    assert load_state(path, "tail:t", "end") == entries
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["state.json"]  # no temporary left


def test_a_missing_state_file_is_no_state(tmp_path: Path) -> None:
    """No state file yet: no entries, and nothing to warn about."""
    assert load_state(os.fspath(tmp_path / "none.json"), "tail:t", "end") == {}


def test_a_broken_state_file_is_a_warning_and_no_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A state file that is not JSON is a warning naming the tail; every file starts afresh."""
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="eventmp"):
        assert load_state(os.fspath(path), "tail:t", "beginning") == {}
    assert "tail:t: cannot read the state file" in caplog.text


def test_a_bad_entry_is_skipped_and_the_rest_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An entry with a negative or missing field is skipped with a warning; others load."""
    path = tmp_path / "state.json"
    good = {"inode": 5, "device": 1, "offset": 0, "line": 0}
    files = {"/a.log": good, "/b.log": {**good, "offset": -1}, "/c.log": {"inode": 1}}
    path.write_text(json.dumps({"version": STATE_VERSION, "files": files}))
    with caplog.at_level(logging.WARNING, logger="eventmp"):
        assert load_state(os.fspath(path), "tail:t", "end") == {"/a.log": good}
    assert caplog.text.count("ignoring a bad entry") == 2
