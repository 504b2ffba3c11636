"""Tests for eventmp.tail: FileTailGenerator on real files, real rotations, real dispatchers."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import (
    CATASTROPHIC,
    DIGITS,
    EVERYTHING,
    SLOWEST,
    MakeTail,
    append,
    lines,
    numbered,
    poll,
)

from eventmp import Event, EventAbandonedError, EventDispatcher, tail_files
from eventmp import tail as tail_module
from eventmp.tail import FileTailGenerator, Rule
from eventmp.testing import ErrorCollector, RecordingHandler

MakeDispatcher = Callable[..., EventDispatcher]

# Generous upper bounds for waits: they only matter when something is broken.
WAIT = 30.0

# == handlers (module level: under spawn/forkserver the worker imports them) =====================


class GateRecorder(RecordingHandler):
    """Records each event; on the line ``block`` it first notes the start, then waits for ``gate``.

    Each start on ``block`` appends a line to ``starts``, so a test can count how many times the
    line reached a handler, finished or not.
    """

    def __init__(self, path: Path, gate: Path, starts: Path) -> None:
        super().__init__(path)
        self.gate = os.fspath(gate)
        self.starts = os.fspath(starts)

    def process_event(self, event: Event) -> bool:
        if event.data["line"] == "block":
            with open(self.starts, "a") as out:
                out.write("started\n")
            deadline = time.monotonic() + WAIT
            while not os.path.exists(self.gate) and time.monotonic() < deadline:
                time.sleep(0.01)
        return super().process_event(event)


class SlowRecorder(RecordingHandler):
    """Records each event after a pause, so that a drain lasts long enough to watch."""

    def process_event(self, event: Event) -> bool:
        time.sleep(0.1)
        return super().process_event(event)


# == helpers =====================================================================================


def poll_until(
    tail: FileTailGenerator, count: int, *, settle: bool = True, timeout: float = WAIT
) -> list[Event]:
    """Poll until ``count`` events arrived in all (or ``timeout``); return them all."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        events += poll(tail, settle=settle)
        if len(events) < count:
            time.sleep(0.02)
    return events


def state_of(state_file: Path) -> dict[str, Any]:
    files: dict[str, Any] = json.loads(state_file.read_text())["files"]
    return files


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def is_open(path: Path) -> bool:
    """Whether this process holds ``path`` open (a deleted file shows as "path (deleted)")."""
    return any(f.path.startswith(os.fspath(path)) for f in psutil.Process().open_files())


def recorded_lines(recording: RecordingHandler) -> list[str]:
    return [record["data"]["line"] for record in recording.records()]


# == start position ==============================================================================


def test_start_at_end_skips_existing_lines_and_counts_them(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """Starting at the end skips what is there, and later lines keep their real numbers."""
    log = tmp_path / "app.log"
    log.write_text("one\ntwo\nthree\n")
    tail = make_tail(log)
    assert poll(tail) == []
    append(log, "four\nfive\n")
    assert numbered(poll(tail)) == [(4, "four"), (5, "five")]


def test_start_at_end_emits_a_line_being_written_whole(make_tail: MakeTail, tmp_path: Path) -> None:
    """A start at the end backs up to the last newline, so a half-written line comes out whole."""
    log = tmp_path / "app.log"
    log.write_text("one\ntwo\nthr")
    tail = make_tail(log)
    assert poll(tail) == []
    append(log, "ee\n")
    assert numbered(poll(tail)) == [(3, "three")]


def test_start_at_beginning_reads_existing_lines(make_tail: MakeTail, tmp_path: Path) -> None:
    """start_at="beginning" reads what the file already holds, numbered from 1."""
    log = tmp_path / "app.log"
    log.write_text("one\ntwo\n")
    tail = make_tail(log, start_at="beginning")
    assert numbered(poll(tail)) == [(1, "one"), (2, "two")]


def test_start_at_end_counts_lines_of_a_file_bigger_than_one_step(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """Skipped lines are counted over several polls when the file is big; none is emitted."""
    log = tmp_path / "big.log"
    line = b"x" * 99 + b"\n"
    count = (tail_module._COUNT_BYTES_PER_POLL // len(line)) * 2 + 7
    log.write_bytes(line * count)
    tail = make_tail(log)
    for _ in range(4):
        assert poll(tail) == []
    append(log, "after\n")
    assert numbered(poll(tail)) == [(count + 1, "after")]


@pytest.mark.parametrize("once", [False, True])
def test_a_file_stopped_at_its_byte_budget_asks_to_be_polled_again(
    make_tail: MakeTail, tmp_path: Path, once: bool
) -> None:
    """A backlog larger than one poll's bytes keeps has_more set until it is read to its end."""
    log = tmp_path / "big.log"
    # Lines that match no rule: the byte budget, not the events' cap, must stop each poll.
    line = b"y" * 99 + b"\n"
    count = (tail_module._BYTES_PER_POLL // len(line)) * 3 + 11
    log.write_bytes(line * count)
    tail = make_tail(
        log, rules=[Rule("none", re.compile("^never$"), "handler")], once=once, start_at="beginning"
    )
    polls = 0
    while True:
        assert poll(tail) == []
        polls += 1
        if tail.lines_read == count:
            break
        assert tail.has_more, f"poll {polls} stopped at line {tail.lines_read} of {count}"
        assert polls < 10
    assert polls >= 3
    if once:
        assert tail.finished and not tail.has_more


def test_counting_a_big_start_at_end_asks_to_be_polled_again(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """While the lines a start at the end skips are still being counted, has_more is set."""
    log = tmp_path / "big.log"
    line = b"x" * 99 + b"\n"
    log.write_bytes(line * ((tail_module._COUNT_BYTES_PER_POLL // len(line)) + 5))
    tail = make_tail(log)
    assert poll(tail) == []
    assert tail.has_more
    poll(tail)
    assert not tail.has_more


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    """start_at, the encoding and the limits are checked when the tail is built."""
    log = os.fspath(tmp_path / "a.log")
    with pytest.raises(ValueError, match="start_at"):
        FileTailGenerator([log], [], start_at="middle")
    with pytest.raises(ValueError, match="0x0A"):
        FileTailGenerator([log], [], encoding="utf-16")
    with pytest.raises(ValueError, match="unknown encoding"):
        FileTailGenerator([log], [], encoding="no-such-codec")
    with pytest.raises(ValueError, match="max_line_bytes"):
        FileTailGenerator([log], [], max_line_bytes=0)
    with pytest.raises(ValueError, match="at least one path"):
        FileTailGenerator([], [])


def test_str_names_the_input(make_tail: MakeTail, tmp_path: Path) -> None:
    """str() of a tail is "tail:" and its name, which workers see as the originator."""
    assert str(make_tail(tmp_path / "a.log", name="web")) == "tail:web"


# == caps and budgets ============================================================================


def test_the_default_cap_is_16_kib(tmp_path: Path) -> None:
    """Without max_line_bytes, lines are cut at 16 KiB."""
    tail = FileTailGenerator([os.fspath(tmp_path / "a.log")], [])
    assert tail.max_line_bytes == tail_module.DEFAULT_MAX_LINE_BYTES == 16 << 10


def test_a_poll_makes_a_bounded_number_of_events(make_tail: MakeTail, tmp_path: Path) -> None:
    """One poll returns at most _EVENTS_PER_POLL events; the rest come, in order, next time."""
    log = tmp_path / "app.log"
    total = tail_module._EVENTS_PER_POLL + 123
    log.write_text("".join(f"{i}\n" for i in range(total)))
    # No time budget: on a busy machine 5,000 events may take longer than a poll may.
    tail = make_tail(log, start_at="beginning", slow_line_seconds=WAIT)
    first = poll(tail)
    assert len(first) == tail_module._EVENTS_PER_POLL
    rest = poll(tail)
    assert lines(first + rest) == [str(i) for i in range(total)]


# == files appearing =============================================================================


def test_glob_picks_up_a_new_file_from_its_beginning(make_tail: MakeTail, tmp_path: Path) -> None:
    """A file that starts matching the pattern later is read from its first line."""
    (tmp_path / "a.log").write_text("old\n")
    tail = make_tail(tmp_path / "*.log")
    assert poll(tail) == []
    (tmp_path / "b.log").write_text("x\ny\n")
    (tmp_path / "b.txt").write_text("not matched\n")
    events = poll(tail)
    assert [(e.data["file"], e.data["line_number"], e.data["line"]) for e in events] == [
        (os.fspath(tmp_path / "b.log"), 1, "x"),
        (os.fspath(tmp_path / "b.log"), 2, "y"),
    ]


def test_named_file_created_later_is_read_from_its_beginning(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """A named file missing at the start is followed from its first line once it appears."""
    log = tmp_path / "later.log"
    tail = make_tail(log)
    assert poll(tail) == []
    log.write_text("first\n")
    assert numbered(poll(tail)) == [(1, "first")]


def test_rescan_interval_paces_the_search_for_new_files(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """A new file is found at the next rescan, not at every poll."""
    tail = make_tail(tmp_path / "*.log", rescan_interval=3600)
    assert poll(tail) == []
    (tmp_path / "new.log").write_text("x\n")
    assert poll(tail) == []


def test_directories_matching_the_pattern_are_ignored(
    make_tail: MakeTail, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only regular files are followed; a directory matching the glob is skipped silently."""
    caplog.set_level(logging.WARNING, logger="eventmp")
    (tmp_path / "dir.log").mkdir()
    (tmp_path / "real.log").write_text("x\n")
    tail = make_tail(tmp_path / "*.log", start_at="beginning")
    assert lines(poll(tail)) == ["x"]
    assert caplog.records == []


# == rotation ====================================================================================


def test_rename_rotation_drains_the_old_file_then_reads_the_new_one(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """After rename-and-create, lines written to the old file after the rename come first."""
    log = tmp_path / "app.log"
    log.write_text("one\n")
    tail = make_tail(log, start_at="beginning")
    assert lines(poll(tail)) == ["one"]
    os.rename(log, tmp_path / "app.log.1")
    append(tmp_path / "app.log.1", "two\n")  # the writer had not reopened yet
    log.write_text("three\n")
    append(tmp_path / "app.log.1", "two-and-a-half")  # its last line, never finished
    events = poll(tail)
    assert [(e.data["file"], e.data["line_number"], e.data["line"]) for e in events] == [
        (os.fspath(log), 2, "two"),
        (os.fspath(log), 3, "two-and-a-half"),
        (os.fspath(log), 1, "three"),
    ]
    append(log, "four\n")
    assert numbered(poll(tail)) == [(2, "four")]


def test_rotated_file_is_still_read_until_quiet_then_closed(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """An old file keeps being read for a rescan interval after a rotation, then is closed."""
    log = tmp_path / "app.log"
    old = tmp_path / "app.log.1"
    log.write_text("one\n")
    tail = make_tail(log, start_at="beginning", rescan_interval=1.0)
    assert lines(poll(tail)) == ["one"]
    os.rename(log, old)
    log.write_text("new\n")
    assert lines(poll_until(tail, 1)) == ["new"]
    append(old, "late\n")
    assert lines(poll(tail)) == ["late"]
    assert is_open(old)
    assert wait_until(lambda: poll(tail) == [] and not is_open(old))
    assert is_open(log)


def test_new_file_waits_until_the_old_one_is_read_to_its_end(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """When the old file holds more than one poll reads, the new file's lines wait their turn."""
    log = tmp_path / "app.log"
    log.write_text("")
    tail = make_tail(log)
    poll(tail)
    total = tail_module._EVENTS_PER_POLL + 10
    append(log, "".join(f"old {i}\n" for i in range(total)))
    os.rename(log, tmp_path / "app.log.1")
    log.write_text("new\n")
    events = poll_until(tail, total + 1)
    assert lines(events) == [f"old {i}" for i in range(total)] + ["new"]


def test_renamed_file_still_matching_is_not_read_again(make_tail: MakeTail, tmp_path: Path) -> None:
    """A file renamed to a name the glob also matches is known by its inode and carried on."""
    log = tmp_path / "app.log"
    log.write_text("a\n")
    tail = make_tail(tmp_path / "*.log", start_at="beginning")
    assert lines(poll(tail)) == ["a"]
    os.rename(log, tmp_path / "app-2024.log")
    append(tmp_path / "app-2024.log", "b\n")
    events = poll(tail)
    assert [(e.data["file"], e.data["line_number"], e.data["line"]) for e in events] == [
        (os.fspath(tmp_path / "app-2024.log"), 2, "b")
    ]


def test_copy_truncate_restarts_from_the_beginning(make_tail: MakeTail, tmp_path: Path) -> None:
    """After copy-truncate (same inode, smaller size) reading restarts at offset 0, line 1."""
    log = tmp_path / "app.log"
    log.write_text("line one\nline two\nline three\n")
    tail = make_tail(log, start_at="beginning")
    assert len(poll(tail)) == 3
    inode = log.stat().st_ino
    shutil.copy(log, tmp_path / "app.log.1")
    with open(log, "r+b") as out:
        out.truncate(0)
    append(log, "new\n")
    assert log.stat().st_ino == inode
    assert numbered(poll(tail)) == [(1, "new")]
    append(log, "next\n")
    assert numbered(poll(tail)) == [(2, "next")]


def test_deleted_file_is_drained_then_closed(make_tail: MakeTail, tmp_path: Path) -> None:
    """Lines written just before a file was deleted are read, then the file is closed."""
    log = tmp_path / "app.log"
    log.write_text("")
    tail = make_tail(log)
    poll(tail)
    append(log, "last words\n")
    log.unlink()
    assert lines(poll(tail)) == ["last words"]
    assert wait_until(lambda: poll(tail) == [] and not is_open(log))
    log.write_text("reborn\n")
    assert numbered(poll(tail)) == [(1, "reborn")]


def test_unreadable_file_does_not_stop_the_others(
    make_tail: MakeTail, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A path that cannot be opened (a symlink loop) is logged once; other files are read."""
    caplog.set_level(logging.WARNING, logger="eventmp")
    os.symlink(tmp_path / "loop.log", tmp_path / "loop.log")
    (tmp_path / "good.log").write_text("fine\n")
    tail = make_tail(tmp_path / "*.log", start_at="beginning")
    assert lines(poll(tail)) == ["fine"]
    append(tmp_path / "good.log", "still fine\n")
    assert lines(poll(tail)) == ["still fine"]
    warnings = [r for r in caplog.records if "loop.log" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_file_without_read_permission_does_not_stop_the_others(
    make_tail: MakeTail, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file we may not read is logged and skipped; the others are read."""
    caplog.set_level(logging.WARNING, logger="eventmp")
    secret = tmp_path / "secret.log"
    secret.write_text("hidden\n")
    secret.chmod(0)
    (tmp_path / "good.log").write_text("fine\n")
    tail = make_tail(tmp_path / "*.log", start_at="beginning")
    assert lines(poll(tail)) == ["fine"]
    assert any("secret.log" in r.getMessage() for r in caplog.records)


# == files that are not regular files ============================================================


def unblock(fifo: Path) -> None:
    """Let an open of ``fifo`` for reading that waits for a writer return (a test that failed)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            return
        except OSError:  # ENXIO: no reader yet
            time.sleep(0.01)


def poll_in_thread(tail: FileTailGenerator, fifo: Path, limit: float = 5.0) -> list[Event]:
    """One poll in another thread; fail if it takes more than ``limit`` s (then unblock it)."""
    result: list[list[Event]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(poll(tail))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        unblock(fifo)
        thread.join(WAIT)
        pytest.fail(f"a poll blocked for more than {limit} s on the FIFO {fifo}")
    if errors:
        raise errors[0]
    return result[0]


def type_warnings(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
        and "not a regular file" in r.getMessage()
        and os.fspath(path) in r.getMessage()
    ]


@pytest.mark.parametrize("once", [False, True], ids=["follow", "once"])
def test_a_fifo_named_in_paths_is_skipped_with_one_warning(
    make_tail: MakeTail, tmp_path: Path, caplog: pytest.LogCaptureFixture, once: bool
) -> None:
    """A FIFO named literally is skipped with one warning naming it; the other files are read."""
    caplog.set_level(logging.WARNING, logger="eventmp")
    fifo = tmp_path / "pipe.log"
    os.mkfifo(fifo)
    good = tmp_path / "good.log"
    good.write_text("fine\n")
    tail = make_tail(fifo, good, start_at="beginning", once=once)
    assert lines(poll_in_thread(tail, fifo)) == ["fine"]
    if once:
        assert tail.finished
        assert not tail.matched_no_file  # good.log was read
    else:
        append(good, "still fine\n")
        assert lines(poll_in_thread(tail, fifo)) == ["still fine"]
        assert lines(poll_in_thread(tail, fifo)) == []
    assert type_warnings(caplog, fifo) == [
        f"tail:tail: {fifo} is a FIFO, not a regular file; skipping it"
    ]


@pytest.mark.parametrize("once", [False, True], ids=["follow", "once"])
def test_a_name_swapped_for_a_fifo_after_its_stat_is_not_opened_blocking(
    make_tail: MakeTail,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    once: bool,
) -> None:
    """A name that is a regular file when stat()ed but a FIFO when opened is skipped, unblocked."""
    caplog.set_level(logging.WARNING, logger="eventmp")
    log = tmp_path / "app.log"
    log.write_text("lost\n")
    good = tmp_path / "good.log"
    good.write_text("fine\n")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    tail = make_tail(tmp_path / "*.log", start_at="beginning", once=once)
    stat_regular = tail._stat_regular

    def stat_then_swap(path: str) -> os.stat_result | None:
        st = stat_regular(path)
        if path == os.fspath(log) and st is not None:
            os.link(fifo, tmp_path / "swap")  # the FIFO stays reachable as "pipe" (unblock)
            os.rename(tmp_path / "swap", log)
        return st

    monkeypatch.setattr(tail, "_stat_regular", stat_then_swap)
    assert lines(poll_in_thread(tail, fifo)) == ["fine"]
    assert type_warnings(caplog, log) == [
        f"tail:tail: {log} is a FIFO, not a regular file; skipping it"
    ]
    if not once:
        append(good, "still fine\n")
        assert lines(poll_in_thread(tail, fifo)) == ["still fine"]


def test_a_racing_renamer_swapping_in_a_fifo_never_blocks_a_poll(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """A renamer swapping a followed name between new files and a FIFO never blocks a poll."""
    log = tmp_path / "app.log"
    log.write_text("")
    good = tmp_path / "good.log"
    good.write_text("")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    tail = make_tail(log, good)
    poll(tail)
    stop = threading.Event()

    def rename() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            regular = tmp_path / f"new-{n}"
            regular.write_text(f"{n}\n")
            os.rename(regular, log)
            os.link(fifo, tmp_path / "swap")
            os.rename(tmp_path / "swap", log)

    renamer = threading.Thread(target=rename, daemon=True)
    renamer.start()
    longest = 0.0
    polls = 0
    try:
        end = time.monotonic() + 2.0  # the race is lost in a few hundred polls without O_NONBLOCK
        while polls < 2000 and time.monotonic() < end:
            started = time.monotonic()
            poll_in_thread(tail, fifo, limit=3.0)
            longest = max(longest, time.monotonic() - started)
            polls += 1
    finally:
        stop.set()
        renamer.join(WAIT)
    assert longest < 3.0
    append(good, "alive\n")
    assert "alive" in lines(poll_until(tail, 1))


def test_a_named_file_replaced_by_a_directory_is_skipped_with_one_warning(
    make_tail: MakeTail, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A named file replaced by a directory is drained, then one warning; a file there is read."""
    caplog.set_level(logging.WARNING, logger="eventmp")
    log = tmp_path / "app.log"
    log.write_text("")
    good = tmp_path / "good.log"
    good.write_text("")
    tail = make_tail(log, good)
    poll(tail)
    append(log, "last\n")
    log.unlink()
    log.mkdir()
    assert lines(poll(tail)) == ["last"]
    append(good, "fine\n")
    assert lines(poll(tail)) == ["fine"]
    assert poll(tail) == []
    assert type_warnings(caplog, log) == [
        f"tail:tail: {log} is a directory, not a regular file; skipping it"
    ]
    log.rmdir()
    log.write_text("back\n")
    assert lines(poll(tail)) == ["back"]


# == inputs that match no file ===================================================================


@pytest.mark.parametrize("missing_ok", [False, True])
def test_once_input_matching_no_file_is_one_warning_unless_missing_ok(
    make_tail: MakeTail, tmp_path: Path, caplog: pytest.LogCaptureFixture, missing_ok: bool
) -> None:
    """--once: an input matching no file is flagged and named in a warning (info if missing_ok)."""
    caplog.set_level(logging.INFO, logger="eventmp")
    (tmp_path / "dir.log").mkdir()  # a glob's directory is no file
    tail = make_tail(
        tmp_path / "*.log", tmp_path / "gone.log", name="auth", once=True, missing_ok=missing_ok
    )
    assert poll(tail) == []
    assert tail.finished
    assert tail.matched_no_file
    messages = [
        (r.levelno, r.getMessage()) for r in caplog.records if "no file matches" in r.getMessage()
    ]
    level = logging.INFO if missing_ok else logging.WARNING
    assert messages == [
        (level, f"tail:auth: no file matches {tmp_path / '*.log'}, {tmp_path / 'gone.log'}")
    ]


def test_follow_input_matching_no_file_warns_once_and_waits_for_it(
    make_tail: MakeTail, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Follow mode: an input without files is one warning, however long it waits for one."""
    caplog.set_level(logging.WARNING, logger="eventmp")
    tail = make_tail(tmp_path / "*.log", name="auth")
    for _ in range(5):
        assert poll(tail) == []
        assert tail.matched_no_file
    warnings = [r.getMessage() for r in caplog.records if "no file matches" in r.getMessage()]
    assert warnings == [
        f"tail:auth: no file matches {tmp_path / '*.log'} (yet); waiting for one to appear"
    ]
    (tmp_path / "app.log").write_text("first\n")
    assert lines(poll(tail)) == ["first"]
    assert not tail.matched_no_file


# == checkpoints =================================================================================


def test_restart_after_clean_stop_resumes_after_the_last_line(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """A new tail on the same state file reads exactly the lines appended since, numbered on."""
    log = tmp_path / "app.log"
    state = tmp_path / "state" / "tail.json"
    log.write_text("one\ntwo\n")
    first = make_tail(log, start_at="beginning", state_file=state)
    assert lines(poll(first)) == ["one", "two"]
    append(log, "three\npart")
    assert lines(poll(first)) == ["three"]
    first.stop()
    assert state_of(state)[os.fspath(log)]["offset"] == len("one\ntwo\nthree\n")
    append(log, "ial\nfour\n")
    second = make_tail(log, start_at="beginning", state_file=state)
    assert numbered(poll(second)) == [(4, "partial"), (5, "four")]


def test_checkpoint_format(make_tail: MakeTail, tmp_path: Path) -> None:
    """The state file is version 1 JSON with inode, device, offset and line; no temp file stays."""
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    log.write_text("one\ntwo\n")
    tail = make_tail(log, start_at="beginning", state_file=state)
    poll(tail)
    poll(tail)
    st = log.stat()
    assert json.loads(state.read_text()) == {
        "version": 1,
        "files": {
            os.fspath(log): {"inode": st.st_ino, "device": st.st_dev, "offset": 8, "line": 2}
        },
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.log", "tail.json"]


def test_state_file_in_a_followed_directory_is_not_followed(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """A state file that the glob matches is left out: the tail never reads its own checkpoints."""
    (tmp_path / "app.log").write_text("one\n")
    tail = make_tail(tmp_path / "*", start_at="beginning", state_file=tmp_path / "tail.state")
    assert lines(poll(tail)) == ["one"]
    poll(tail)
    assert (tmp_path / "tail.state").exists()
    append(tmp_path / "app.log", "two\n")
    assert [e.data["file"] for e in poll(tail)] == [os.fspath(tmp_path / "app.log")]


def test_checkpoint_stays_at_the_oldest_line_without_outcome(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """Settling later lines first does not move the checkpoint past an earlier unsettled one."""
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    log.write_text("one\ntwo\nthree\n")
    rules = [Rule("a", EVERYTHING, "h1"), Rule("b", re.compile("two"), "h2")]
    tail = make_tail(log, start_at="beginning", state_file=state, rules=rules)
    one_a, two_a, two_b, three_a = poll(tail, settle=False)
    tail.settled(one_a, None)
    tail.settled(three_a, None)
    tail.settled(two_a, ValueError("a failure is an outcome too"))
    poll(tail)
    assert state_of(state)[os.fspath(log)] | {"inode": 0, "device": 0} == {
        "inode": 0,
        "device": 0,
        "offset": len("one\n"),
        "line": 1,
    }
    tail.settled(two_b, None)
    poll(tail)
    assert state_of(state)[os.fspath(log)]["offset"] == len("one\ntwo\nthree\n")
    assert state_of(state)[os.fspath(log)]["line"] == 3


def test_stop_saves_the_checkpoint_even_inside_the_interval(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """With a long checkpoint_interval, polls do not save but stop() does."""
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    log.write_text("one\n")
    tail = make_tail(log, start_at="beginning", state_file=state, checkpoint_interval=3600)
    poll(tail)
    poll(tail)
    assert not state.exists()
    tail.stop()
    assert state_of(state)[os.fspath(log)]["offset"] == 4


def test_abandoned_event_keeps_its_line_for_the_next_run(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """A line whose event was abandoned (never ran) is read again by the next run."""
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    log.write_text("one\ntwo\nthree\n")
    first = make_tail(log, start_at="beginning", state_file=state)
    one, two, three = poll(first, settle=False)
    first.settled(one, None)
    first.settled(two, EventAbandonedError("stop(drain=False) was called"))
    first.settled(three, EventAbandonedError("stop(drain=False) was called"))
    first.stop()
    second = make_tail(log, start_at="end", state_file=state)
    assert numbered(poll(second)) == [(2, "two"), (3, "three")]


def test_corrupt_state_file_warns_and_starts_per_start_at(
    make_tail: MakeTail, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A state file that is not JSON is logged on "eventmp" and start_at applies."""
    caplog.set_level(logging.WARNING, logger="eventmp")
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    log.write_text("old\n")
    state.write_text("{not json")
    tail = make_tail(log, start_at="end", state_file=state)
    assert poll(tail) == []
    append(log, "new\n")
    assert numbered(poll(tail)) == [(2, "new")]
    assert any("state file" in r.getMessage() for r in caplog.records)
    poll(tail)  # the poll after the settling saves it
    assert state_of(state)[os.fspath(log)]["offset"] == len("old\nnew\n")


@pytest.mark.parametrize(
    "content",
    [
        '{"version": 99, "files": {}}',
        "[1, 2, 3]",
        '{"version": 1, "files": {"%s": {"inode": "x", "device": 1, "offset": 0, "line": 0}}}',
    ],
    ids=["other-version", "not-an-object", "bad-entry"],
)
def test_unusable_state_file_warns_and_starts_per_start_at(
    make_tail: MakeTail, tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    """A state file of another version, shape or with a bad entry is logged and not trusted."""
    caplog.set_level(logging.WARNING, logger="eventmp")
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    log.write_text("old\n")
    state.write_text(content.replace("%s", os.fspath(log)))
    tail = make_tail(log, start_at="beginning", state_file=state)
    assert lines(poll(tail)) == ["old"]
    assert any("state file" in r.getMessage() for r in caplog.records)


def test_file_rotated_while_stopped_is_read_from_its_beginning(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """A path whose checkpoint names another inode was rotated meanwhile: all of it is new."""
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    log.write_text("one\n")
    first = make_tail(log, start_at="beginning", state_file=state)
    poll(first)
    first.stop()
    os.rename(log, tmp_path / "app.log.1")
    log.write_text("new one\nnew two\n")
    second = make_tail(log, start_at="end", state_file=state)
    assert numbered(poll(second)) == [(1, "new one"), (2, "new two")]


def test_file_truncated_while_stopped_is_read_from_its_beginning(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """A file now shorter than its checkpoint was truncated meanwhile: it is read from 0."""
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    log.write_text("a long first line\n")
    first = make_tail(log, start_at="beginning", state_file=state)
    poll(first)
    first.stop()
    with open(log, "r+b") as out:
        out.truncate(0)
    append(log, "short\n")
    second = make_tail(log, start_at="end", state_file=state)
    assert numbered(poll(second)) == [(1, "short")]


def test_file_renamed_while_stopped_resumes_under_its_new_name(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """A checkpointed file renamed to another matching name resumes from its checkpoint."""
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    log.write_text("a\nb\n")
    first = make_tail(tmp_path / "*.log", start_at="beginning", state_file=state)
    assert lines(poll(first)) == ["a", "b"]
    first.stop()
    os.rename(log, tmp_path / "app-1.log")
    append(tmp_path / "app-1.log", "c\n")
    second = make_tail(tmp_path / "*.log", start_at="beginning", state_file=state)
    events = poll(second)
    assert [(e.data["file"], e.data["line_number"], e.data["line"]) for e in events] == [
        (os.fspath(tmp_path / "app-1.log"), 3, "c")
    ]


def test_named_file_missing_at_stop_keeps_its_checkpoint(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """A named file rotated away when we stop is read whole next time it is there."""
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    log.write_text("one\n")
    first = make_tail(log, start_at="beginning", state_file=state)
    poll(first)
    os.rename(log, tmp_path / "app.log.1")
    poll(first)
    first.stop()
    assert os.fspath(log) in state_of(state)
    log.write_text("written while we were stopped\n")
    second = make_tail(log, start_at="end", state_file=state)
    assert lines(poll(second)) == ["written while we were stopped"]


def test_unwritable_state_file_is_logged_not_raised(
    make_tail: MakeTail, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint that cannot be written (its directory is a file) is logged; reading goes on."""
    caplog.set_level(logging.WARNING, logger="eventmp")
    log = tmp_path / "app.log"
    (tmp_path / "not-a-dir").write_text("")
    log.write_text("one\n")
    tail = make_tail(log, start_at="beginning", state_file=tmp_path / "not-a-dir" / "s.json")
    assert lines(poll(tail)) == ["one"]
    append(log, "two\n")
    assert lines(poll(tail)) == ["two"]
    tail.stop()
    assert len([r for r in caplog.records if "checkpoint" in r.getMessage()]) == 1


# == once mode and progress ======================================================================


def test_once_reads_every_file_to_its_end_then_finishes(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """In once mode every file is read to its end, a last line without newline included."""
    (tmp_path / "a.log").write_text("a1\na2 no newline")
    (tmp_path / "b.log").write_text("b1\n")
    tail = make_tail(tmp_path / "*.log", start_at="beginning", once=True)
    events = poll(tail)
    assert tail.finished
    assert sorted(numbered(events)) == [(1, "a1"), (1, "b1"), (2, "a2 no newline")]
    assert poll(tail) == []
    assert not is_open(tmp_path / "a.log")


def test_once_opens_a_few_files_at_a_time(make_tail: MakeTail, tmp_path: Path) -> None:
    """A batch run over many files holds only a few open at once, and reads every one."""
    for i in range(tail_files._ONCE_OPEN_FILES * 3):
        (tmp_path / f"{i:02}.log").write_text(f"file {i}\n")
    tail = make_tail(tmp_path / "*.log", start_at="beginning", once=True)
    seen: list[str] = []
    while not tail.finished:
        seen += lines(poll(tail))
        open_logs = [f for f in psutil.Process().open_files() if f.path.endswith(".log")]
        assert len(open_logs) <= tail_files._ONCE_OPEN_FILES
    assert sorted(seen) == sorted(f"file {i}" for i in range(tail_files._ONCE_OPEN_FILES * 3))


def test_rename_to_a_followed_name_keeps_the_order_of_lines(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """A rotated file renamed to a followed name still gives its last lines before the new file."""
    log = tmp_path / "app.log"
    log.write_text("")
    tail = make_tail(tmp_path / "*.log")
    poll(tail)
    os.rename(log, tmp_path / "app-1.log")
    append(tmp_path / "app-1.log", "old last\n")
    log.write_text("new first\n")
    assert lines(poll(tail)) == ["old last", "new first"]
    append(tmp_path / "app-1.log", "old later\n")
    append(log, "new second\n")
    assert sorted(lines(poll(tail))) == ["new second", "old later"]


def test_once_with_a_checkpoint_reads_only_what_is_new(make_tail: MakeTail, tmp_path: Path) -> None:
    """Two batch runs on one state file: the second reads only the lines added in between."""
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    log.write_text("one\n")
    first = make_tail(log, start_at="beginning", once=True, state_file=state)
    assert lines(poll(first)) == ["one"]
    first.stop()
    append(log, "two\n")
    second = make_tail(log, start_at="beginning", once=True, state_file=state)
    assert numbered(poll(second)) == [(2, "two")]
    assert second.finished


def test_once_with_no_matching_file_finishes(
    make_tail: MakeTail, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch run over a pattern that matches nothing finishes at once, with a warning."""
    caplog.set_level(logging.WARNING, logger="eventmp")
    tail = make_tail(tmp_path / "*.log", once=True)
    assert poll(tail) == []
    assert tail.finished
    assert any("no file matches" in r.getMessage() for r in caplog.records)


def test_bytes_read_and_total_track_progress(make_tail: MakeTail, tmp_path: Path) -> None:
    """bytes_read grows a bounded step per poll towards bytes_total, and meets it at the end."""
    log = tmp_path / "big.log"
    line = b"y" * 63 + b"\n"
    log.write_bytes(line * ((tail_module._BYTES_PER_POLL // len(line)) * 2 + 5))
    size = log.stat().st_size
    tail = make_tail(log, start_at="beginning", once=True, rules=[Rule("none", re.compile("z"), 1)])
    assert (tail.bytes_read, tail.bytes_total) == (0, 0)
    poll(tail)
    assert tail.bytes_total == size
    assert 0 < tail.bytes_read < size
    assert wait_until(lambda: poll(tail) == [] and tail.finished)
    assert tail.bytes_read == tail.bytes_total == size


def test_bytes_read_counts_a_skipped_start(make_tail: MakeTail, tmp_path: Path) -> None:
    """After a start at the end bytes_read equals the file size; appended bytes count too."""
    log = tmp_path / "app.log"
    log.write_text("old\n")
    tail = make_tail(log)
    poll(tail)
    assert tail.bytes_read == tail.bytes_total == 4
    append(log, "new\n")
    poll(tail)
    assert tail.bytes_read == tail.bytes_total == 8


# == end to end, with a real dispatcher and worker processes =====================================


def test_follow_mode_end_to_end(make_dispatcher: MakeDispatcher, tmp_path: Path) -> None:
    """Lines appended while the pipeline runs reach the rule's handler in a worker, in order."""
    log = tmp_path / "app.log"
    log.write_text("before start\n")
    recording = RecordingHandler(tmp_path / "out.jsonl")
    tail = FileTailGenerator(
        [os.fspath(tmp_path / "*.log")],
        [Rule("errors", re.compile(r"ERROR (?P<what>\w+)"), recording)],
        name="web",
        rescan_interval=0.05,
    )
    dispatcher = make_dispatcher()
    dispatcher.add_event_generator(tail)
    dispatcher.start()
    assert wait_until(lambda: tail.bytes_total > 0)
    append(log, "INFO fine\nERROR disk\nERROR net\n")
    (tmp_path / "other.log").write_text("ERROR other\n")
    records = recording.wait_for(3, WAIT)
    dispatcher.stop()
    by_file = [(r["data"]["file"], r["data"]["line_number"], r["data"]["named"]) for r in records]
    assert [entry for entry in by_file if entry[0] == os.fspath(log)] == [
        (os.fspath(log), 3, {"what": "disk"}),
        (os.fspath(log), 4, {"what": "net"}),
    ]
    assert (os.fspath(tmp_path / "other.log"), 1, {"what": "other"}) in by_file
    assert {r["originator"] for r in records} == {"tail:web"}
    assert all(r["pid"] != os.getpid() for r in records)
    assert len(recording.records()) == 3


def test_restart_from_checkpoint_end_to_end(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """A second run on the state file handles exactly the lines appended while it was down."""
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    recording = RecordingHandler(tmp_path / "out.jsonl")
    log.write_text("one\ntwo\n")

    def run(expected: int) -> None:
        tail = FileTailGenerator(
            [os.fspath(log)],
            [Rule("all", EVERYTHING, recording)],
            start_at="beginning",
            state_file=state,
        )
        dispatcher = make_dispatcher()
        dispatcher.add_event_generator(tail)
        dispatcher.start()
        assert len(recording.wait_for(expected, WAIT)) == expected
        dispatcher.stop()

    run(2)
    append(log, "three\nfour\n")
    run(4)
    run(4)  # nothing new: nothing read
    assert [(r["data"]["line_number"], r["data"]["line"]) for r in recording.records()] == [
        (1, "one"),
        (2, "two"),
        (3, "three"),
        (4, "four"),
    ]
    assert errors.events == []


def test_checkpoint_never_passes_a_running_event_end_to_end(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """The checkpoint stays at a running line; stopped mid-line it runs once more, then never."""
    # Run 1 is stopped while the handler of "block" still runs (it is abandoned); run 2 starts
    # that line once more and finishes it; after its clean stop, run 3 repeats nothing.
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    gate, starts = tmp_path / "gate", tmp_path / "starts"
    recording = GateRecorder(tmp_path / "out.jsonl", gate, starts)
    log.write_text("one\ntwo\n")
    block_at = len("one\ntwo\n")

    def start() -> tuple[EventDispatcher, FileTailGenerator]:
        tail = FileTailGenerator(
            [os.fspath(log)],
            [Rule("all", EVERYTHING, recording)],
            start_at="beginning",
            state_file=state,
            checkpoint_interval=0,
        )
        dispatcher = make_dispatcher(kill_grace=0.2)
        dispatcher.add_event_generator(tail)
        dispatcher.start()
        return dispatcher, tail

    dispatcher, _ = start()
    # A worker acknowledges a batch as a whole: "block" comes in a batch after the first lines'.
    assert wait_until(lambda: state.exists() and state_of(state)[str(log)]["offset"] == block_at)
    append(log, "block\nfour\n")
    # The poll that read "block" saved the checkpoint before the line reached the worker.
    assert wait_until(starts.exists)
    entry = state_of(state)[os.fspath(log)]
    assert (entry["offset"], entry["line"]) == (block_at, 2)
    dispatcher.stop(timeout=0.2)  # "block" is still running: it and "four" are abandoned
    assert [type(e) for e in errors.exceptions] == [EventAbandonedError, EventAbandonedError]
    entry = state_of(state)[os.fspath(log)]
    assert (entry["offset"], entry["line"]) == (block_at, 2)

    gate.touch()
    dispatcher, _ = start()
    assert len(recording.wait_for(4, WAIT)) == 4
    dispatcher.stop()
    assert state_of(state)[os.fspath(log)]["offset"] == log.stat().st_size

    append(log, "five\n")
    dispatcher, _ = start()
    assert len(recording.wait_for(5, WAIT)) == 5
    dispatcher.stop()
    assert recorded_lines(recording) == ["one", "two", "block", "four", "five"]
    assert starts.read_text().count("started") == 2
    assert len(errors.events) == 2


def test_the_checkpoint_follows_outcomes_during_a_drain(
    make_dispatcher: MakeDispatcher, tmp_path: Path
) -> None:
    """While stop() drains, nothing polls the tail, yet its checkpoint follows the outcomes."""
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    recording = SlowRecorder(tmp_path / "out.jsonl")
    count = 12
    log.write_text("".join(f"line {n}\n" for n in range(count)))
    size = log.stat().st_size
    tail = FileTailGenerator(
        [os.fspath(log)],
        [Rule("all", EVERYTHING, recording)],
        start_at="beginning",
        state_file=state,
        checkpoint_interval=0,
    )
    dispatcher = make_dispatcher()
    dispatcher.add_event_generator(tail)
    dispatcher.start()
    assert wait_until(lambda: tail.lines_read == count)
    stopping = threading.Thread(target=dispatcher.stop)
    stopping.start()
    offsets: set[int] = set()
    try:
        while stopping.is_alive():
            if state.exists():
                with contextlib.suppress(ValueError, KeyError):
                    offsets.add(state_of(state)[os.fspath(log)]["offset"])
            time.sleep(0.01)
    finally:
        stopping.join(WAIT)
    assert len(recording.wait_for(count, WAIT)) == count
    assert state_of(state)[os.fspath(log)]["offset"] == size
    assert {offset for offset in offsets if 0 < offset < size}, sorted(offsets)


KILLED_RUN = textwrap.dedent(
    """
    import os, re, sys, time
    from eventmp import EventDispatcher
    from eventmp.tail import FileTailGenerator, Rule
    from eventmp.testing import RecordingHandler

    class GateRecorder(RecordingHandler):
        def __init__(self, path, gate, starts):
            super().__init__(path)
            self.gate, self.starts = gate, starts

        def process_event(self, event):
            if event.data["line"] == "block":
                with open(self.starts, "a") as out:
                    out.write("started\\n")
                deadline = time.monotonic() + 60
                while not os.path.exists(self.gate) and time.monotonic() < deadline:
                    time.sleep(0.01)
            return super().process_event(event)

    if __name__ == "__main__":
        log, state, out, gate, starts = sys.argv[1:]
        tail = FileTailGenerator(
            [log], [Rule("all", re.compile(""), GateRecorder(out, gate, starts))],
            start_at="beginning", state_file=state, checkpoint_interval=0,
        )
        dispatcher = EventDispatcher(poll_interval=0.02)
        dispatcher.add_event_generator(tail)
        dispatcher.serve_forever()
    """
)


def test_kill_9_reads_again_only_the_in_flight_lines(
    make_dispatcher: MakeDispatcher, errors: ErrorCollector, tmp_path: Path
) -> None:
    """After a kill -9 of the whole command, the next run handles exactly the unfinished lines."""
    log = tmp_path / "app.log"
    state = tmp_path / "tail.json"
    gate, starts = tmp_path / "gate", tmp_path / "starts"
    out = tmp_path / "out.jsonl"
    recording = GateRecorder(out, gate, starts)
    log.write_text("one\ntwo\n")
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    args = [os.fspath(p) for p in (log, state, out, gate, starts)]
    proc = subprocess.Popen([sys.executable, os.fspath(script), *args])
    try:
        offset = len("one\ntwo\n")
        assert wait_until(lambda: state.exists() and state_of(state)[str(log)]["offset"] == offset)
        append(log, "block\nfour\n")
        assert wait_until(starts.exists)
        assert state_of(state)[os.fspath(log)]["offset"] == offset
        family = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT)
        # Its workers follow it (their watchdog sees the parent die); the blocked one must be
        # gone before the gate opens, or it would record "block" too.
        _gone, alive = psutil.wait_procs(family, timeout=WAIT)
        assert alive == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)

    gate.touch()
    tail = FileTailGenerator(
        [os.fspath(log)],
        [Rule("all", EVERYTHING, recording)],
        start_at="beginning",
        state_file=state,
    )
    dispatcher = make_dispatcher()
    dispatcher.add_event_generator(tail)
    dispatcher.start()
    assert len(recording.wait_for(4, WAIT)) == 4
    dispatcher.stop()
    assert recorded_lines(recording) == ["one", "two", "block", "four"]
    assert starts.read_text().count("started") == 2
    assert errors.events == []


# == slow rules ==================================================================================


def test_a_pathological_line_does_not_hold_back_another_file(
    make_tail: MakeTail, tmp_path: Path
) -> None:
    """A poll stops after one catastrophic line: the other file's lines come within two polls."""
    slow_log, ordinary = tmp_path / "a-slow.log", tmp_path / "b-ordinary.log"
    slow_log.write_text(f"{DIGITS}\n" * 4)
    ordinary.write_text("ok 1\nok 2\nok 3\n")
    rules = [Rule("nested", CATASTROPHIC, "h"), Rule("ok", re.compile("^ok"), "h")]
    tail = make_tail(
        slow_log, ordinary, rules=rules, start_at="beginning", slow_line_seconds=SLOWEST
    )
    events: list[list[Event]] = []
    slow_per_poll = []
    while tail.lines_read < 4 + 3:
        before = tail.rule_stats()["nested"].slow_lines
        events.append(poll(tail))
        slow_per_poll.append(tail.rule_stats()["nested"].slow_lines - before)
        assert tail.has_more or tail.lines_read == 4 + 3
        assert len(events) <= 4 + 3  # bounded: each poll reads at least one line
    # Each poll yields after the first line that took it past its time budget...
    assert slow_per_poll == [1] * 4 or sorted(slow_per_poll) == [0] + [1] * 4
    # ... so the ordinary file, whichever file a poll starts with, waits at most one line.
    assert lines(events[0] + events[1]) == ["ok 1", "ok 2", "ok 3"]


def test_rule_stats_count_each_rule_s_events(make_tail: MakeTail, tmp_path: Path) -> None:
    """rule_stats() counts each rule's events, in a frozen RuleStats per rule name."""
    log = tmp_path / "app.log"
    log.write_text("a\nb\nab\n")
    rules = [Rule("a", re.compile("a"), "h"), Rule("b", re.compile("b"), "h", quick=True)]
    tail = make_tail(log, rules=rules, start_at="beginning")
    assert len(poll(tail)) == 4
    stats = tail.rule_stats()
    assert (stats["a"].matches, stats["b"].matches) == (2, 2)
    assert stats["a"].slow_lines == 0
    with pytest.raises(AttributeError):
        stats["a"].matches = 0  # type: ignore[misc]


def test_max_pending_bytes_pauses_reading_long_lines_and_loses_none(
    make_dispatcher: MakeDispatcher, tmp_path: Path
) -> None:
    """A tail of long lines behind a blocked handler reads about max_pending_bytes' worth.

    Its events are sized by event_size(); once the handler goes on, every line runs once.
    """
    log = tmp_path / "long.log"
    long_lines = [f"{n:04d} " + "x" * 16_000 for n in range(1000)]
    log.write_text("block\n" + "".join(line + "\n" for line in long_lines))
    gate, starts = tmp_path / "gate", tmp_path / "starts"
    recording = GateRecorder(tmp_path / "out.jsonl", gate, starts)
    tail = FileTailGenerator(
        [os.fspath(log)],
        [Rule("all", EVERYTHING, recording)],
        start_at="beginning",
        rescan_interval=0.05,
    )
    budget = 1 << 20
    dispatcher = make_dispatcher(poll_interval=0.01, max_pending_bytes=budget)
    dispatcher.add_event_generator(tail)
    dispatcher.start()
    assert wait_until(lambda: dispatcher.stats().pending_bytes >= budget)
    assert wait_until(starts.exists)
    time.sleep(0.3)  # thirty poll intervals: without the bound, the whole file would be read
    per_event = tail.event_size(Event("t", None, {"line": long_lines[0]}))
    assert per_event > 4 * 16_000
    # One poll reads at most 2 MiB of a file: past the budget, at most one poll's worth more.
    assert tail.lines_read <= budget // per_event + 1 + (2 << 20) // 16_000 + 1
    assert dispatcher.stats().pending_bytes <= (tail.lines_read + 1) * per_event
    gate.touch()
    assert wait_until(lambda: len(recording.records()) == 1001)
    dispatcher.stop()
    assert recorded_lines(recording) == ["block", *long_lines]
    assert dispatcher.stats().pending_bytes == 0


def test_standard_input_must_be_alone_and_without_a_checkpoint(tmp_path: Path) -> None:
    """'-' is standard input only as an input's one path, and never with a state_file."""
    rules = [Rule("all", EVERYTHING, "handler")]
    with pytest.raises(ValueError, match="only path"):
        FileTailGenerator(["-", os.fspath(tmp_path / "a.log")], rules)
    with pytest.raises(ValueError, match="no checkpoint"):
        FileTailGenerator(["-"], rules, state_file=tmp_path / "x.state")
    assert FileTailGenerator(["-"], rules).stdin


def test_a_tail_keeps_books_of_outcomes_only_for_a_checkpoint(tmp_path: Path) -> None:
    """Without a state_file track_outcomes starts false (nothing to hold back); with one, true."""
    log = str(tmp_path / "app.log")
    assert not FileTailGenerator([log], []).track_outcomes
    assert FileTailGenerator([log], [], state_file=tmp_path / "app.state").track_outcomes
