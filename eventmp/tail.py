"""The file tail: follow log files, ``tail -F`` style, and turn matching lines into events.

Everything here runs in the parent process, in the dispatcher thread. Each ``get_events()``
reads what was appended to the followed files since the last poll, cuts it into lines, checks
each line against the :class:`Rule` list in order, and returns one event per matching rule; the
rules' handlers run in the workers as usual.

Files and rotation:

- ``paths`` are file names or glob patterns. Patterns are expanded again every
  ``rescan_interval`` seconds; a file that appears after the first scan is read from its
  beginning. A file is known by its identity ``(st_dev, st_ino)`` and followed under the path
  that names it.
- Rename-and-create: at a rescan, the path names another inode. The old file stays open and is
  read to its end first (lines written to it after the rename are not lost); the new one is read
  from offset 0, only once the old one is at its end, so a path's lines keep their order. The old
  file is closed once a read finds it at its end and nothing more arrived for
  ``rescan_interval`` seconds, which gives a writer time to reopen its log. A deleted file is
  drained and closed the same way. A renamed file that the patterns still match (``app.log``
  renamed ``app-2024-05-01.log`` under ``*.log``) is recognised by its identity and not read
  again.
- Only regular files are read. A glob matching a directory (or a FIFO, a socket...) skips it
  silently; a path named literally that is not a regular file is a warning, once, and skipped
  until it is one. Files are opened with ``O_NONBLOCK`` and checked on the open descriptor, so
  a name swapped for a FIFO between the scan and the open is skipped too, without blocking.
- Patterns that match no regular file at the first scan are logged once (a warning, unless
  ``missing_ok``); ``matched_no_file`` stays true until one appears (in once mode, for good).
- Copy-truncate: same inode, size below our read position; reading restarts at 0. Lines written
  between our last read and the copy are only in the copy (a limit of copy-truncate itself), and
  a file truncated and then grown past our position between two polls looks merely appended to
  (as with ``tail -F``).

Lines:

- A line is emitted when its newline arrives; in ``once`` mode a last line without one is
  emitted at the end of its file, and so is the last line of a rotated file when it is closed.
  ``\\n`` and ``\\r\\n`` are stripped. Bytes are decoded with ``errors="replace"``; the encoding
  must write ``"\\n"`` as the byte 0x0A (UTF-8, Latin-1, cp1252..., not UTF-16).
- A line longer than ``max_line_bytes`` is cut into pieces of that many bytes, each checked
  against the rules on its own and carrying the line's number (a cut may split a multi-byte
  character, whose bytes are then replaced): memory stays bounded whatever the file holds.
- Line numbers are the file's own, from 1: starting at the end counts the lines skipped (in
  bounded steps, over several polls for a huge file), and a checkpoint stores them.
- Each poll reads at most 2 MiB per file and 4 MiB in all, and makes at most 5000 events,
  starting with a different file each time: one busy file does not starve the others, the
  dispatcher thread is not held for long, and the pipeline's ``max_pending`` is overshot by a
  bounded amount. So the read rate is bounded by the dispatcher's ``poll_interval``: a batch
  run over big files wants a short one. In ``once`` mode files are opened a few at a time.

Where a file starts (for one that appears after the first scan, step 4 is always offset 0):

1. the state file's entry for that path, if it has the same identity and the file is at least
   as long as the saved offset;
2. else an entry under another path with the same identity (renamed while we were stopped);
3. else, if the path has an entry for another identity, or a shorter file, offset 0: it was
   rotated or truncated while we were stopped, so all of it is new to us;
4. else ``start_at``: ``"end"`` (after the last complete line) or ``"beginning"``.

Checkpoints (``state_file``): JSON ``{"version": 1, "files": {path: {"inode", "device",
"offset", "line"}}}``, written to a temporary file in the same directory, fsynced, and moved in
place with ``os.replace``. The saved offset of a file is the start of the oldest line that still
has an event without an outcome (the dispatcher reports outcomes through ``settled()``), or the
end of the last complete line read when none is outstanding; ``line`` counts the lines before
it. So after a clean stop (every event settled) a restart resumes right after the last line
read, skipping none and repeating none; after a kill -9 it reads again at most the lines whose
events were in flight. The offset is one number per file: with several workers and no per-file
``key``, lines after the oldest one in flight that were already handled are read again too. An
event the dispatcher abandoned (``EventAbandonedError``: ``stop(drain=False)``, an expired
``stop(timeout=...)``) or could not run (``WorkerStartError``) did not complete, so its line
stays outstanding and is read again by the next run; any other failure is an outcome. In
``once`` mode a last line without a newline counts as read. The checkpoint is saved at most
every ``checkpoint_interval`` seconds from ``get_events()`` when it changed, and always in
``stop()``. A path followed before but missing now keeps its entry while it is named literally
in ``paths`` or still exists, so a file created there while we are stopped is read whole.

Limits: inode numbers are reused by file systems, so a file deleted and replaced by another of
the same inode and at least the same size while we were stopped is taken for the old one; the
unread end of a rotated file that the patterns do not match is not resumed after a restart (its
new name is unknown); one state file serves one tail.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import stat
import tempfile
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import EventAbandonedError, WorkerStartError
from .event import Event, EventGenerator
from .matching import (
    DEFAULT_MAX_LINE_BYTES,
    SLOW_LINE_SECONDS,
    Hits,
    LineMatcher,
    Rule,
    RuleStats,
    check_encoding,
)

__all__ = ["DEFAULT_MAX_LINE_BYTES", "FileTailGenerator", "Rule", "RuleStats", "check_encoding"]

logger = logging.getLogger("eventmp")

STATE_VERSION = 1
_CHUNK = 1 << 20
# What one poll may read and make: it runs in the dispatcher thread, which reads the workers'
# acknowledgements in between.
_BYTES_PER_POLL = 2 << 20  # per file
_POLL_BYTES = 4 << 20  # over all files
_EVENTS_PER_POLL = 5000
# A batch run over many files opens a few at a time, not one descriptor per file at once.
_ONCE_OPEN_FILES = 4
# Counting the lines skipped by a start at the end is cheap (bytes.count), so it may take
# bigger steps than reading, but it still happens in the dispatcher thread.
_COUNT_BYTES_PER_POLL = 64 << 20

# Outcomes that mean the handler never ran: the line must be read again next time.
_NEVER_RAN = (EventAbandonedError, WorkerStartError)

Identity = tuple[int, int]
_AT_END = "the end"


@dataclass
class _File:
    """One open file: where we are in it, and its lines whose events have no outcome yet."""

    path: str
    fd: int
    identity: Identity
    pos: int = 0  # where the next read starts
    offset: int = 0  # start of the bytes not yet cut into lines (pos - len(buffer))
    lines: int = 0  # newlines before ``offset``
    size: int = 0  # at the last fstat
    buffer: bytearray = field(default_factory=bytearray)
    # Line start offset -> [events without outcome, newlines before it]; oldest first.
    outstanding: OrderedDict[int, list[int]] = field(default_factory=OrderedDict)
    count_until: int | None = None  # counting skipped lines up to here (a start at the end)
    last_newline: int = -1  # while counting
    predecessor: _File | None = None  # the file this path named before a rotation
    at_eof: bool = False
    last_data: float = 0.0  # monotonic time of the last read that returned bytes

    def position(self) -> tuple[int, int] | None:
        """``(offset, lines before it)`` to save, or None while its start is not known."""
        if self.count_until is not None:
            return None
        for offset, (_count, lines) in self.outstanding.items():
            return offset, lines
        return self.offset, self.lines

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        self.buffer = bytearray()


class FileTailGenerator(EventGenerator):
    """Follows files (or glob patterns) and makes an event per line and matching rule.

    See the module's docstring for rotation, partial lines, start positions and checkpoints.
    ``track_outcomes`` is true so that the checkpoint stays behind lines still being handled;
    set it false on an instance driven without a dispatcher that reports outcomes, and the
    checkpoint follows the lines read instead.
    """

    track_outcomes = True

    def __init__(
        self,
        paths: Sequence[str],
        rules: Sequence[Rule],
        *,
        name: str = "tail",
        start_at: str = "end",
        encoding: str = "utf-8",
        state_file: str | os.PathLike[str] | None = None,
        once: bool = False,
        rescan_interval: float = 1.0,
        checkpoint_interval: float = 1.0,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        missing_ok: bool = False,
        slow_line_seconds: float = SLOW_LINE_SECONDS,
    ) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [os.fspath(paths)]
        if not paths:
            raise ValueError("a file tail needs at least one path")
        if start_at not in ("end", "beginning"):
            raise ValueError(f"start_at must be 'end' or 'beginning', got {start_at!r}")
        check_encoding(encoding)
        if rescan_interval < 0:
            raise ValueError(f"rescan_interval must be >= 0, got {rescan_interval!r}")
        if checkpoint_interval < 0:
            raise ValueError(f"checkpoint_interval must be >= 0, got {checkpoint_interval!r}")
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be >= 1, got {max_line_bytes!r}")
        if slow_line_seconds <= 0:
            raise ValueError(f"slow_line_seconds must be > 0, got {slow_line_seconds!r}")
        self.name = name
        self.patterns = [os.path.abspath(os.path.expanduser(os.fspath(p))) for p in paths]
        self.rules = list(rules)
        self.start_at = start_at
        self.encoding = encoding
        self.state_file = None if state_file is None else os.path.abspath(os.fspath(state_file))
        self.once = once
        self.rescan_interval = float(rescan_interval)
        self.checkpoint_interval = float(checkpoint_interval)
        self.max_line_bytes = int(max_line_bytes)
        self.missing_ok = bool(missing_ok)
        self.slow_line_seconds = float(slow_line_seconds)
        self._matcher = LineMatcher(
            self.rules, encoding, self.max_line_bytes, slow_seconds=self.slow_line_seconds
        )
        self._slow_reported: set[str] = set()  # rules already logged as slow
        self._deadline = 0.0  # perf_counter: when this poll yields to the other inputs
        # True while the patterns match no regular file (from the first scan until one appears;
        # in once mode, for good): the command's ``--once`` exits 1 then, unless ``missing_ok``.
        self.matched_no_file = False

        self._files: dict[str, _File] = {}  # path -> the file it names now
        self._draining: dict[Identity, _File] = {}  # rotated away or deleted, read to the end
        self._inflight: dict[int, tuple[Event, OrderedDict[int, list[int]], int]] = {}
        self._saved_entries = self._load_state()  # from the state file, by path
        self._stale: dict[str, dict[str, int]] = {}  # last entry of a path no longer open
        self._seen_paths: set[str] = set()
        self._literal = frozenset(p for p in self.patterns if glob.escape(p) == p)
        self._scanned = False
        self._stopped = False
        self._next_rescan = 0.0
        self._last_save = time.monotonic()
        self._last_saved: dict[str, dict[str, int]] | None = None
        self._turn = 0
        self._budget = _POLL_BYTES  # bytes this poll may still read
        self._cut_short = False  # a file stopped at a budget this poll, short of its end
        self._queued: deque[tuple[str, int]] = deque()  # once mode: files not opened yet
        self._done: dict[str, _File] = {}  # once mode: read to the end and closed
        self._identities: set[Identity] = set()  # once mode: files opened so far
        self._warned: set[tuple[str, str]] = set()
        self._retired_bytes = 0  # bytes of files closed or truncated, for the progress figures
        self._bytes_read = 0
        self._bytes_total = 0
        self._lines_read = 0

    # == the generator API =======================================================================

    @property
    def bytes_read(self) -> int:
        """Bytes consumed so far over all files (skipped starts included), as of the last poll."""
        return self._bytes_read

    @property
    def bytes_total(self) -> int:
        """Size of every file being read (and of those read and closed), as of the last poll."""
        return self._bytes_total

    @property
    def lines_read(self) -> int:
        """Lines checked against the rules so far (a line cut into pieces counts once)."""
        return self._lines_read

    def rule_stats(self) -> dict[str, RuleStats]:
        """Per rule name: events made, lines it spent over ``slow_line_seconds`` on, seconds."""
        return self._matcher.stats()

    def get_events(self) -> list[Event]:
        if self._stopped or self.finished:
            return []
        now = time.monotonic()
        # A poll that has matched for this long yields: another input's lines wait at most
        # about that much behind a slow rule here (and one line's match, which nothing stops).
        self._deadline = time.perf_counter() + self.slow_line_seconds
        if not self._scanned:
            self._rescan(now, initial=True)
            self._scanned = True
            self._next_rescan = now + self.rescan_interval
        elif not self.once and now >= self._next_rescan:
            self._rescan(now, initial=False)
            self._next_rescan = now + self.rescan_interval
        events: list[Event] = []
        self._budget = _POLL_BYTES
        self._cut_short = False
        # Old files first: a rotated file's last lines come before its successor's first.
        for f in list(self._draining.values()):
            self._read(f, events, now)
            if f.at_eof and now - f.last_data >= self.rescan_interval:
                self._retire(f, events)
        while True:
            if self.once:
                self._open_queued(now)
            done_before = len(self._done)
            self._read_current(events, now)
            # A batch run goes on to its next files within the poll while the poll has room,
            # rather than one set of (maybe small) files per poll_interval.
            if (
                not self._queued
                or self._cut_short
                or self._budget <= 0
                or len(events) >= _EVENTS_PER_POLL
                or len(self._done) == done_before
            ):
                break
        if self.once and not self._queued and not self._files:
            self.finished = True
        # Stopped by a budget (a file's, the poll's, the events'), not by the end of the files:
        # ask to be polled again at once rather than after poll_interval, so that a backlog is
        # read without a pause between two budgets.
        self.has_more = not self.finished and (
            self._cut_short or self._budget <= 0 or len(events) >= _EVENTS_PER_POLL
        )
        self._update_progress()
        if self.state_file is not None and now - self._last_save >= self.checkpoint_interval:
            self._save(force=False)
            self._last_save = now
        return events

    def _read_current(self, events: list[Event], now: float) -> None:
        current = list(self._files.values())
        if current:
            self._turn = (self._turn + 1) % len(current)
            current = current[self._turn :] + current[: self._turn]
            # A file renamed to a name we follow may be the predecessor of a new file: its
            # last lines are read first.
            current.sort(key=lambda f: f.predecessor is not None)
        for f in current:
            if len(events) >= _EVENTS_PER_POLL:
                break
            if time.perf_counter() > self._deadline:
                self._cut_short = True
                break
            self._read(f, events, now)

    def settled(self, event: Event, exception: BaseException | None) -> None:
        entry = self._inflight.pop(id(event), None)
        if entry is None or entry[0] is not event:
            return
        if isinstance(exception, _NEVER_RAN):
            return  # the line stays outstanding: the checkpoint never passes it
        _event, outstanding, offset = entry
        slot = outstanding.get(offset)
        if slot is None:
            return
        slot[0] -= 1
        if slot[0] <= 0:
            del outstanding[offset]
            # Outcomes keep coming while the dispatcher drains, when nothing polls this tail
            # any more: the checkpoint follows them at the same rate as during polls.
            if self.state_file is not None and not self._stopped:
                now = time.monotonic()
                if now - self._last_save >= self.checkpoint_interval:
                    self._save(force=False)
                    self._last_save = now

    def stop(self) -> None:
        """Save the final checkpoint and close every file; later polls return nothing."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.state_file is not None and self._scanned:
                self._save(force=True)
        finally:
            for f in [*self._files.values(), *self._draining.values()]:
                f.close()
            self._draining.clear()

    def __str__(self) -> str:
        return f"tail:{self.name}"

    # == finding files ===========================================================================

    def _rescan(self, now: float, *, initial: bool) -> None:
        matched: list[str] = []
        empty: list[str] = []  # patterns that match nothing
        for pattern in self.patterns:
            if pattern in self._literal:
                found = [pattern] if os.path.exists(pattern) else []
            else:
                found = sorted(glob.glob(pattern))
            if not found:
                empty.append(pattern)
            matched.extend(found)
        # The state file may sit in a followed directory: it is never a log.
        matched = [p for p in dict.fromkeys(matched) if p != self.state_file]
        if self.once:
            self._queue(matched)
            self._report_missing(empty, found_any=bool(self._queued), initial=initial)
            return

        # A path that no longer names the file we have open: drain that file, then close it.
        detached: dict[str, _File] = {}
        for path, f in list(self._files.items()):
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                st = None
            except OSError as exc:
                self._warn_once(path, "stat", "%s: cannot stat %s: %s", self, path, exc)
                continue
            if st is not None and (st.st_dev, st.st_ino) == f.identity:
                continue
            logger.info(
                "%s: %s was %s; reading the old file to its end",
                self,
                path,
                "deleted" if st is None else "rotated",
            )
            del self._files[path]
            entry = self._entry(f)
            if entry is not None:
                self._stale[path] = entry
            f.last_data = now
            self._draining[f.identity] = f
            detached[path] = f

        found_any = False  # a regular file among the matches
        for path in matched:
            if path in self._files:
                found_any = True
                continue
            self._seen_paths.add(path)
            st = self._stat_regular(path)
            if st is None:
                continue
            found_any = True
            identity = (st.st_dev, st.st_ino)
            adopted = self._draining.pop(identity, None)
            if adopted is None and any(f.identity == identity for f in self._files.values()):
                continue  # the same file under a second name (a link): read it once
            if adopted is not None:
                logger.info("%s: %s is %s renamed; following it there", self, path, adopted.path)
                adopted.path = path
                self._files[path] = adopted
                continue
            opened = self._open(path, now, initial=initial)
            if opened is not None:
                opened.predecessor = detached.get(path)
                self._files[path] = opened
        self._report_missing(empty, found_any=found_any, initial=initial)

    def _report_missing(self, empty: list[str], *, found_any: bool, initial: bool) -> None:
        """Log patterns that match nothing, once (at the first scan); track an input without files.

        An input whose patterns match no regular file is one warning naming it (information
        with ``missing_ok``); in follow mode it goes on looking, silently. A pattern that
        matches nothing while another matches is a warning in once mode, information otherwise.
        """
        if initial:
            self.matched_no_file = not found_any
        elif found_any:
            self.matched_no_file = False  # follow mode: a file appeared
        if not initial:
            return
        if not found_any:
            level = logging.INFO if self.missing_ok else logging.WARNING
            waiting = "" if self.once else " (yet); waiting for one to appear"
            logger.log(level, "%s: no file matches %s%s", self, ", ".join(self.patterns), waiting)
            return
        level = logging.WARNING if self.once and not self.missing_ok else logging.INFO
        for pattern in empty:
            logger.log(level, "%s: no file matches %s (yet)", self, pattern)

    def _stat_regular(self, path: str) -> os.stat_result | None:
        """The stat of a regular file at ``path``; None if it is gone, unreadable or not one.

        A glob may match directories and other files that are not logs: they are skipped
        silently. A path named literally that is not a regular file is a warning (once).
        """
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn_once(path, "stat", "%s: cannot stat %s: %s", self, path, exc)
            return None
        if stat.S_ISREG(st.st_mode):
            return st
        if path in self._literal:
            self._warn_not_regular(path, st.st_mode)
        return None

    def _warn_not_regular(self, path: str, mode: int) -> None:
        self._warn_once(
            path,
            "type",
            "%s: %s is %s, not a regular file; skipping it",
            self,
            path,
            _file_kind(mode),
        )

    def _queue(self, matched: list[str]) -> None:
        """Once mode: note the files to read (and their sizes, for the progress figures)."""
        for path in matched:
            st = self._stat_regular(path)
            if st is not None:
                self._seen_paths.add(path)
                self._queued.append((path, st.st_size))

    def _open_queued(self, now: float) -> None:
        while self._queued and len(self._files) < _ONCE_OPEN_FILES:
            path, _size = self._queued.popleft()
            f = self._open(path, now, initial=True)
            if f is None:
                continue
            if f.identity in self._identities:
                f.close()  # the same file under a second name (a link): read it once
                continue
            self._identities.add(f.identity)
            self._files[path] = f

    def _open(self, path: str, now: float, *, initial: bool) -> _File | None:
        """Open a regular file; None (with a warning, once) if it is gone or is not one.

        The name was a regular file when it was stat()ed, but it may have been replaced since
        (a FIFO, a device): the open does not wait (``O_NONBLOCK``, so a FIFO without a writer
        does not hold the dispatcher thread), and the open descriptor is what is checked.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn_once(path, "open", "%s: cannot open %s: %s", self, path, exc)
            return None
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                # No effect on a regular file's reads on Linux (open(2)), but a FUSE or network
                # file system is told the flags: reads are plain blocking preads, as before.
                os.set_blocking(fd, True)
        except OSError as exc:
            os.close(fd)
            self._warn_once(path, "open", "%s: cannot stat %s: %s", self, path, exc)
            return None
        self._warned.discard((path, "open"))
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            self._warn_not_regular(path, st.st_mode)
            return None
        self._warned.discard((path, "type"))
        f = _File(path, fd, (st.st_dev, st.st_ino), size=st.st_size, last_data=now)
        entry, how = self._start_entry(path, f.identity, st.st_size, initial=initial)
        if entry is not None:
            f.pos = f.offset = entry["offset"]
            f.lines = entry["line"]
        elif how == _AT_END:
            f.count_until = st.st_size
        logger.info("%s: following %s from %s", self, path, how)
        return f

    def _start_entry(
        self, path: str, identity: Identity, size: int, *, initial: bool
    ) -> tuple[dict[str, int] | None, str]:
        """Where a newly opened file starts: a saved entry, or how (the module docstring)."""
        own = self._saved_entries.get(path)
        if own is not None and _identity(own) == identity and size >= own["offset"]:
            del self._saved_entries[path]
            return own, f"its checkpoint (byte {own['offset']}, line {own['line'] + 1})"
        for other, entry in self._saved_entries.items():
            if other != path and _identity(entry) == identity and size >= entry["offset"]:
                del self._saved_entries[other]
                return entry, f"the checkpoint of {other}, renamed (byte {entry['offset']})"
        if own is not None:
            # Kept: the entry's own file may turn up under another path later in this scan.
            return None, "the beginning (rotated or truncated since its checkpoint)"
        if initial and self.start_at == "end":
            return None, _AT_END
        return None, "the beginning"

    # == reading =================================================================================

    def _read(self, f: _File, events: list[Event], now: float) -> None:
        if f.fd < 0:
            return
        try:
            st = os.fstat(f.fd)
            f.size = st.st_size
            if f.count_until is not None and not self._count(f):
                self._cut_short = True  # counting goes on at the next poll
                return
            if not self.once and st.st_size < f.pos:
                self._truncated(f)
            pred = f.predecessor
            if pred is not None:
                if pred.fd >= 0 and not pred.at_eof:
                    return
                f.predecessor = None
            budget = min(_BYTES_PER_POLL, self._budget)
            f.at_eof = False  # until a read finds the end with every whole line cut
            while True:
                self._cut_lines(f, events)
                if (
                    len(events) >= _EVENTS_PER_POLL
                    or budget <= 0
                    or time.perf_counter() > self._deadline
                ):
                    self._cut_short = True
                    return
                data = os.pread(f.fd, min(_CHUNK, budget), f.pos)
                if not data:
                    f.at_eof = True
                    break
                f.last_data = now
                f.pos += len(data)
                budget -= len(data)
                self._budget -= len(data)
                f.buffer += data
        except OSError as exc:
            self._warn_once(f.path, "read", "%s: cannot read %s: %s", self, f.path, exc)
            if self.once:
                self._finish(f)  # a batch run must end: give up on this file
            return
        self._warned.discard((f.path, "read"))
        if self.once:
            self._emit_rest(f, events)
            self._finish(f)

    def _finish(self, f: _File) -> None:
        """Once mode: close a file read to its end; it stays known for the checkpoint."""
        f.close()
        del self._files[f.path]
        self._done[f.path] = f
        self._retired_bytes += f.pos

    def _count(self, f: _File) -> bool:
        """Count the lines a start at the end skips; true once done (the file starts there)."""
        assert f.count_until is not None
        target = min(f.count_until, f.size)  # a file truncated meanwhile: stop at its end
        budget = _COUNT_BYTES_PER_POLL
        while f.pos < target and budget > 0:
            data = os.pread(f.fd, min(_CHUNK, target - f.pos, budget), f.pos)
            if not data:
                break
            f.lines += data.count(b"\n")
            last = data.rfind(b"\n")
            if last >= 0:
                f.last_newline = f.pos + last
            f.pos += len(data)
            budget -= len(data)
        if f.pos < target:
            return False
        # Start after the last complete line: a line being written as we start comes out whole.
        f.pos = f.offset = f.last_newline + 1
        f.count_until = None
        return True

    def _truncated(self, f: _File) -> None:
        logger.info("%s: %s was truncated; reading it again from the start", self, f.path)
        self._retired_bytes += f.pos
        f.pos = f.offset = f.lines = 0
        f.buffer = bytearray()
        # Events of the old contents settle into the old table, which no longer counts.
        f.outstanding = OrderedDict()
        f.at_eof = False

    def _cut_lines(self, f: _File, events: list[Event]) -> None:
        """Match the buffer's complete lines, and pieces of a partial line over the limit."""
        buf = f.buffer
        limit = self.max_line_bytes
        consumed = 0
        whole = buf.rfind(b"\n") + 1
        if whole and len(events) < _EVENTS_PER_POLL:
            block = self._matcher.block(buf[:whole], _EVENTS_PER_POLL - len(events), self._deadline)
            for line in block.lines:
                for piece in line.pieces:
                    self._emit(
                        f, f.lines + line.line_index, piece.text, piece.offset, piece.hits, events
                    )
            for name, index in block.slow:
                self._slow(f, name, f.lines + index + 1)
            f.lines += block.lines_done
            self._lines_read += block.lines_done
            consumed = block.bytes_done
        if consumed == whole:
            # The partial line after the last newline: cut only what exceeds the limit (one
            # byte more, which may be the \r of a line of exactly the limit). Its pieces count
            # as a line when its newline comes.
            while len(buf) - consumed > limit + 1 and len(events) < _EVENTS_PER_POLL:
                self._piece(f, buf[consumed : consumed + limit], consumed, events)
                consumed += limit
        if consumed:
            del buf[:consumed]
            f.offset += consumed

    def _piece(self, f: _File, raw: bytes | bytearray, start: int, events: list[Event]) -> None:
        """A piece of the line being read (not complete yet), at ``start`` in the buffer."""
        text = self._matcher.decode(raw)
        hits, slow = self._matcher.match_line(text)
        for name in slow:
            self._slow(f, name, f.lines + 1)
        self._emit(f, f.lines, text, start, hits, events)

    def _emit_rest(self, f: _File, events: list[Event]) -> None:
        """A file's last line, without its newline: emitted when nothing can complete it."""
        rest = f.buffer
        if rest:
            self._lines_read += 1
        while rest:
            piece = rest[: self.max_line_bytes]
            self._piece(f, piece, 0, events)
            del rest[: len(piece)]
            f.offset += len(piece)

    def _slow(self, f: _File, rule: str, line_number: int) -> None:
        """A rule slower than the threshold on one line: said once per rule, always counted."""
        if rule in self._slow_reported:
            return
        self._slow_reported.add(rule)
        logger.warning(
            "%s: rule %r took over %g s on line %d of %s; it holds up every input while it "
            "runs (see 'Slow rules' in docs/tailing.md)",
            self,
            rule,
            self.slow_line_seconds,
            line_number,
            f.path,
        )

    def _emit(
        self, f: _File, before: int, text: str, start: int, hits: Hits, events: list[Event]
    ) -> None:
        """The events of one line (or piece) at ``start`` in the buffer, after ``before`` lines."""
        if not hits:
            return
        offset = f.offset + start
        line_number = before + 1
        for rule, match in hits:
            event = Event(
                self,
                rule.handler,
                {
                    "input": self.name,
                    "file": f.path,
                    "line_number": line_number,
                    "line": text,
                    "rule": rule.name,
                    "match": match.group(0),
                    "groups": list(match.groups()),
                    "named": match.groupdict(),
                },
            )
            events.append(event)
            if self.track_outcomes:
                self._inflight[id(event)] = (event, f.outstanding, offset)
        if self.track_outcomes:
            f.outstanding[offset] = [len(hits), before]

    def _retire(self, f: _File, events: list[Event]) -> None:
        """Close a drained file that no path names any more."""
        self._emit_rest(f, events)
        self._retired_bytes += f.pos
        del self._draining[f.identity]
        f.close()
        logger.info("%s: closed %s (rotated or deleted, read to its end)", self, f.path)

    def _update_progress(self) -> None:
        read = total = self._retired_bytes
        total += sum(size for _path, size in self._queued)
        for f in [*self._files.values(), *self._draining.values()]:
            read += f.pos
            total += max(f.size, f.pos)
        self._bytes_read = read
        self._bytes_total = total

    def _warn_once(self, path: str, kind: str, message: str, *args: object) -> None:
        """Log a failing file once, not at every poll, until it works again."""
        if (path, kind) in self._warned:
            return
        self._warned.add((path, kind))
        logger.warning(message, *args)

    # == checkpoints =============================================================================

    def _entry(self, f: _File) -> dict[str, int] | None:
        position = f.position()
        if position is None:
            return None
        return {
            "inode": f.identity[1],
            "device": f.identity[0],
            "offset": position[0],
            "line": position[1],
        }

    def _snapshot(self) -> dict[str, dict[str, int]]:
        entries: dict[str, dict[str, int]] = {}
        # A path followed before but missing now keeps its entry while the path exists or is
        # named literally: a file recreated there while we are stopped is then known to be new.
        literal = {p for p in self.patterns if glob.escape(p) == p}
        for path, entry in [*self._saved_entries.items(), *self._stale.items()]:
            if path in literal or (path in self._seen_paths and os.path.lexists(path)):
                entries[path] = entry
        for path, f in [*self._done.items(), *self._files.items()]:
            current = self._entry(f)
            if current is not None:
                entries[path] = current
        return entries

    def _save(self, *, force: bool) -> None:
        assert self.state_file is not None
        entries = self._snapshot()
        if not force and entries == self._last_saved:
            return
        state = {"version": STATE_VERSION, "files": entries}
        path = self.state_file
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, exist_ok=True)
            fd, temp = tempfile.mkstemp(
                prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
            )
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(state, out, indent=1, sort_keys=True)
                    out.write("\n")
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
            _fsync_directory(directory)
        except OSError as exc:
            self._warn_once(path, "save", "%s: cannot save the checkpoint %s: %s", self, path, exc)
            return
        self._warned.discard((path, "save"))
        self._last_saved = entries

    def _load_state(self) -> dict[str, dict[str, int]]:
        path = self.state_file
        if path is None:
            return {}
        try:
            with open(path, encoding="utf-8") as file:
                state = json.load(file)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning(
                "%s: cannot read the state file %s (%s); starting at the %s of each file",
                self,
                path,
                exc,
                self.start_at,
            )
            return {}
        files = state.get("files") if isinstance(state, dict) else None
        if (
            not isinstance(state, dict)
            or state.get("version") != STATE_VERSION
            or not isinstance(files, dict)
        ):
            logger.warning(
                "%s: the state file %s is not a version %d eventmp tail state; starting at the "
                "%s of each file",
                self,
                path,
                STATE_VERSION,
                self.start_at,
            )
            return {}
        entries: dict[str, dict[str, int]] = {}
        for file_path, entry in files.items():
            keys = ("inode", "device", "offset", "line")
            if (
                isinstance(entry, dict)
                and all(type(entry.get(k)) is int and entry[k] >= 0 for k in keys)
                and isinstance(file_path, str)
            ):
                entries[file_path] = {k: entry[k] for k in keys}
            else:
                logger.warning(
                    "%s: ignoring a bad entry for %r in the state file %s", self, file_path, path
                )
        return entries


def _file_kind(mode: int) -> str:
    """What a file that is not a regular file is, for a message: "a directory", "a FIFO"..."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    for test, kind in kinds:
        if test(mode):
            return kind
    return "a special file"


def _identity(entry: dict[str, int]) -> Identity:
    return (entry["device"], entry["inode"])


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable; some file systems refuse, which costs nothing here."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
